/* serialize.c: cdb_index in bounded pieces (cdb_index_save / cdb_index_load) and as a
 * memory-mappable cache file (cdb_index_save_file / cdb_index_open_file_mmap). Both are a
 * file_header followed by FAISS's own format; FILE streams over pieces come from fopencookie.
 * Pieces of a trained index may instead hold FAISS's index with empty lists and then each
 * list's ids (cdb_index_save_ids / cdb_index_load_ids; version 2 for raw vectors, 3 for codes):
 * the caller keeps the vectors and hands them back on load (re-encoded into their lists), so
 * they are not stored twice.
 * A cache file ends with a checksum trailer: XXH64 of everything before the list data (header,
 * quantizer, list sizes; checked at open, before FAISS parses it) and of each inverted list
 * (checked when a search first touches the list), so damage is found without reading the
 * whole file at open. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <faiss/c_api/index_io_c.h>

#include "index/checksum.h"
#include "index/faiss_ext.h"
#include "index/ivf_internal.h"

static void fill_header(const cdb_index *idx, uint32_t version, uint64_t generation,
                        file_header *h) {
  memset(h, 0, sizeof *h);
  memcpy(h->magic, FILE_MAGIC, 8);
  h->version = version;
  h->dim = (uint32_t)idx->dim;
  h->generation = generation;
  h->trained_at = idx->trained_at;
  h->nlist_param = idx->nlist_param;
  h->nprobe_param = idx->nprobe_param;
  h->nprobe = idx->nprobe;
  snprintf(h->type, sizeof h->type, "%s", idx->type);
}

static int write_all(cdb_index *idx, FILE *f, uint32_t version, uint64_t generation,
                     cdb_error *err) {
  file_header h;
  fill_header(idx, version, generation, &h);
  if (fwrite(&h, sizeof h, 1, f) != 1)
    return cdb_error_set(err, "index: write failed: %s", strerror(errno));
  if (faiss_write_index(idx->faiss, f)) return ivf_faiss_fail(err, "writing index");
  if (fflush(f) != 0) return cdb_error_set(err, "index: write failed: %s", strerror(errno));
  return 0;
}

/* Builds an index from a header and the FAISS index read after it. Takes fi. */
static cdb_index *index_from(const file_header *h, FaissIndex *fi, cdb_error *err) {
  char type[sizeof h->type + 1];
  memcpy(type, h->type, sizeof h->type);
  type[sizeof h->type] = 0;
  cdb_index_params p = {type, h->nlist_param, h->nprobe_param};
  cdb_index *idx = ivf_alloc_index((int)h->dim, &p, err);
  if (!idx) {
    faiss_Index_free(fi);
    return NULL;
  }
  if (!faiss_IndexIVF_cast(fi) || faiss_Index_d(fi) != (int)h->dim ||
      faiss_Index_metric_type(fi) != METRIC_INNER_PRODUCT) {
    cdb_error_set(err, "index: stored index is not an inner-product IVF index of dim %u", h->dim);
    faiss_Index_free(fi);
    free(idx);
    return NULL;
  }
  ivf_set_faiss(idx, fi);
  if (h->nprobe > 0 && h->nprobe <= (int)idx->nlist) {
    idx->nprobe = h->nprobe;
    faiss_IndexIVF_set_nprobe(idx->ivf, (size_t)h->nprobe);
  }
  idx->trained_at = h->trained_at;
  /* "auto" trains SQ8 now; a table trained before holds IVF<n>,Flat until it is retrained. */
  const char *enc = ivf_is_flat(idx) ? "Flat" : idx->encoding;
  if (idx->nlist <= 1) snprintf(idx->factory, sizeof idx->factory, "IVF1,Flat");
  else snprintf(idx->factory, sizeof idx->factory, "IVF%zu,%s", idx->nlist, enc);
  return idx;
}

static int check_header(const file_header *h, uint32_t version, cdb_error *err) {
  if (memcmp(h->magic, FILE_MAGIC, 8) != 0)
    return cdb_error_set(err, "index: not a clipdb index (bad magic)");
  if (h->version != version)
    return cdb_error_set(err, "index: unsupported format version %u", h->version);
  if (h->dim < 1 || h->dim > CDB_INDEX_MAX_DIM)
    return cdb_error_set(err, "index: corrupt header (dim %u)", h->dim);
  return 0;
}

typedef struct piece_writer {
  unsigned char *buf;
  size_t cap, len;
  cdb_piece_emit emit;
  void *ctx;
  int aborted;
} piece_writer;

static ssize_t piece_write(void *cookie, const char *data, size_t size) {
  piece_writer *w = cookie;
  size_t done = 0;
  while (done < size) {
    size_t n = w->cap - w->len < size - done ? w->cap - w->len : size - done;
    memcpy(w->buf + w->len, data + done, n);
    w->len += n;
    done += n;
    if (w->len == w->cap) {
      if (w->emit(w->ctx, w->buf, w->len) != 0) {
        w->aborted = 1;
        errno = ECANCELED;
        return -1;
      }
      w->len = 0;
    }
  }
  return (ssize_t)size;
}

/* Lists as their ids only: per list a uint64 count, then the ids. */
static int write_list_ids(cdb_index *idx, FILE *f, cdb_error *err) {
  size_t cap = 0;
  int64_t *ids = NULL;
  int rc = 0;
  for (size_t l = 0; rc == 0 && l < idx->nlist; l++) {
    uint64_t n = faiss_IndexIVF_get_list_size(idx->ivf, l);
    if (n > cap) {
      free(ids);
      cap = n;
      ids = malloc(cap * sizeof *ids);
      if (!ids) return cdb_error_set(err, "index: out of memory");
    }
    if (n) faiss_IndexIVF_invlists_get_ids(idx->ivf, l, ids);
    if (fwrite(&n, sizeof n, 1, f) != 1 || (n && fwrite(ids, sizeof *ids, n, f) != n))
      rc = cdb_error_set(err, "index: write failed: %s", strerror(errno));
  }
  free(ids);
  return rc;
}

/* A trained index: its lists can be rebuilt from ids, centroids and the caller's vectors (codes
 * are a function of the vector and its list). The untrained exact stage is saved whole. */
static int ids_suffice(const cdb_index *idx) { return idx->nlist > 1; }

static int write_ids_only(cdb_index *idx, FILE *f, cdb_error *err) {
  file_header h;
  fill_header(idx, ivf_is_flat(idx) ? FILE_VERSION_IDS : FILE_VERSION_IDS_CODED, 0, &h);
  if (fwrite(&h, sizeof h, 1, f) != 1)
    return cdb_error_set(err, "index: write failed: %s", strerror(errno));
  if (cdb_faiss_IndexIVF_write_without_lists(idx->ivf, f))
    return ivf_faiss_fail(err, "writing index");
  if (write_list_ids(idx, f, err) < 0) return -1;
  if (fflush(f) != 0) return cdb_error_set(err, "index: write failed: %s", strerror(errno));
  return 0;
}

static int save_pieces(const cdb_index *cidx, size_t piece_bytes, cdb_piece_emit emit, void *ctx,
                       int ids_only, cdb_error *err) {
  cdb_index *idx = (cdb_index *)cidx; /* a mapped index is read in first (exclusive access) */
  if (piece_bytes < 4096 || !emit)
    return cdb_error_set(err, "index: save: piece size must be >= 4096 and emit non-NULL");
  if (ivf_make_writable(idx, err) < 0) return -1;
  piece_writer w = {malloc(piece_bytes), piece_bytes, 0, emit, ctx, 0};
  if (!w.buf) return cdb_error_set(err, "index: out of memory");
  cookie_io_functions_t io = {.write = piece_write};
  FILE *f = fopencookie(&w, "w", io);
  int rc = f ? 0 : cdb_error_set(err, "index: save: %s", strerror(errno));
  if (rc == 0)
    rc = ids_only && ids_suffice(idx) ? write_ids_only(idx, f, err)
                                      : write_all(idx, f, FILE_VERSION, 0, err);
  if (f && fclose(f) != 0 && rc == 0) rc = cdb_error_set(err, "index: save: write failed");
  if (rc == 0 && w.len > 0 && emit(ctx, w.buf, w.len) != 0) w.aborted = 1;
  if (w.aborted) rc = cdb_error_set(err, "index: save aborted by the caller");
  free(w.buf);
  return rc;
}

int cdb_index_save(const cdb_index *idx, size_t piece_bytes, cdb_piece_emit emit, void *ctx,
                   cdb_error *err) {
  return save_pieces(idx, piece_bytes, emit, ctx, 0, err);
}

int cdb_index_save_ids(const cdb_index *idx, size_t piece_bytes, cdb_piece_emit emit, void *ctx,
                       cdb_error *err) {
  return save_pieces(idx, piece_bytes, emit, ctx, 1, err);
}

typedef struct piece_reader {
  cdb_piece_next next;
  void *ctx;
  const unsigned char *cur;
  size_t left;
  int eof, failed;
} piece_reader;

static ssize_t piece_read(void *cookie, char *buf, size_t size) {
  piece_reader *r = cookie;
  while (r->left == 0 && !r->eof) {
    const void *data = NULL;
    size_t len = 0;
    int rc = r->next(r->ctx, &data, &len);
    if (rc < 0 || (rc > 0 && len > 0 && !data)) {
      r->failed = 1;
      errno = EIO;
      return -1;
    }
    if (rc == 0) r->eof = 1;
    else {
      r->cur = data;
      r->left = len;
    }
  }
  size_t n = size < r->left ? size : r->left;
  memcpy(buf, r->cur, n);
  r->cur += n;
  r->left -= n;
  return (ssize_t)n;
}

/* (id, list) of every entry of an ids-only snapshot, sorted by id, and how many got a vector. */
typedef struct id_place {
  int64_t id;
  int64_t list; /* -1 once its vector arrived */
} id_place;

typedef struct filler {
  cdb_index *idx;
  id_place *places;
  size_t n;
} filler;

static int cmp_place(const void *a, const void *b) {
  int64_t x = ((const id_place *)a)->id, y = ((const id_place *)b)->id;
  return (x > y) - (x < y);
}

static int read_list_ids(FILE *f, size_t nlist, filler *fl, cdb_error *err) {
  size_t cap = 0;
  for (size_t l = 0; l < nlist; l++) {
    uint64_t n = 0;
    if (fread(&n, sizeof n, 1, f) != 1 || n > ((uint64_t)1 << 40))
      return cdb_error_set(err, "index: load: truncated or corrupt list ids");
    if (fl->n + n > cap) {
      cap = (fl->n + n) * 2;
      id_place *p = realloc(fl->places, cap * sizeof *p);
      if (!p) return cdb_error_set(err, "index: out of memory");
      fl->places = p;
    }
    for (uint64_t i = 0; i < n; i++) {
      if (fread(&fl->places[fl->n].id, sizeof(int64_t), 1, f) != 1)
        return cdb_error_set(err, "index: load: truncated list ids");
      fl->places[fl->n++].list = (int64_t)l;
    }
  }
  qsort(fl->places, fl->n, sizeof *fl->places, cmp_place);
  for (size_t i = 1; i < fl->n; i++)
    if (fl->places[i].id == fl->places[i - 1].id)
      return cdb_error_set(err, "index: load: id %lld is in two lists",
                           (long long)fl->places[i].id);
  return 0;
}

/* Takes one vector from the caller: into its list when the snapshot holds its id (ids the
 * snapshot does not know were added after it, and come back with the change log's replay). */
static int fill_vector(void *ctx, int64_t id, const float *vec, cdb_error *err) {
  filler *fl = ctx;
  id_place key = {id, 0};
  id_place *p = bsearch(&key, fl->places, fl->n, sizeof key, cmp_place);
  if (!p || p->list < 0) return 0;
  if (ivf_check_unit(vec, fl->idx->dim, "vector", id, err) < 0) return -1;
  if (cdb_faiss_IndexIVF_add_to_list(fl->idx->ivf, (size_t)p->list, 1, &id, vec))
    return ivf_faiss_fail(err, "filling a list");
  p->list = -1;
  return 0;
}

/* The lists of an ids-only snapshot, filled with the vectors `vectors` hands over. */
static int fill_lists(cdb_index *idx, FILE *f, cdb_vector_source vectors, void *vctx,
                      cdb_error *err) {
  filler fl = {idx, NULL, 0};
  int rc = read_list_ids(f, idx->nlist, &fl, err);
  if (rc == 0 && (!vectors || faiss_Index_ntotal(idx->faiss) != 0))
    rc = cdb_error_set(err, "index: load: the snapshot holds ids only and no vectors were given");
  if (rc == 0) rc = vectors(vctx, fill_vector, &fl, err) != 0 ? -1 : 0;
  free(fl.places);
  return rc;
}

cdb_index *cdb_index_load(cdb_piece_next next, void *ctx, cdb_error *err) {
  return cdb_index_load_ids(next, ctx, NULL, NULL, err);
}

cdb_index *cdb_index_load_ids(cdb_piece_next next, void *ctx, cdb_vector_source vectors, void *vctx,
                              cdb_error *err) {
  if (!next) {
    cdb_error_set(err, "index: load: null callback");
    return NULL;
  }
  piece_reader r = {next, ctx, NULL, 0, 0, 0};
  cookie_io_functions_t io = {.read = piece_read};
  FILE *f = fopencookie(&r, "r", io);
  if (!f) {
    cdb_error_set(err, "index: load: %s", strerror(errno));
    return NULL;
  }
  file_header h;
  FaissIndex *fi = NULL;
  cdb_index *idx = NULL;
  int ids_only = 0;
  if (fread(&h, sizeof h, 1, f) != 1)
    cdb_error_set(err, "index: load: %s", r.failed ? "reading a piece failed" : "truncated header");
  else if ((ids_only = h.version == FILE_VERSION_IDS || h.version == FILE_VERSION_IDS_CODED) == 0 &&
           check_header(&h, FILE_VERSION, err))
    ;
  else if (ids_only && check_header(&h, h.version, err) < 0)
    ;
  else if (faiss_read_index(f, 0, &fi)) {
    ivf_faiss_fail(err, r.failed ? "load (reading a piece failed)" : "load");
  } else if ((idx = index_from(&h, fi, err)) &&
             ((ids_only && fill_lists(idx, f, vectors, vctx, err) < 0) ||
              ivf_rebuild_idset(idx, err) < 0)) {
    cdb_index_free(idx);
    idx = NULL;
  }
  fclose(f);
  return idx;
}

/* Rewrites the header of a written cache file with the payload size, so that opening can
 * refuse a truncated file before mapping it (reading past its end would be SIGBUS). */
static int finish_header(const cdb_index *idx, FILE *f, uint64_t generation, long *end,
                         cdb_error *err) {
  *end = ftell(f);
  file_header h;
  fill_header(idx, CACHE_VERSION, generation, &h);
  h.payload_bytes = (uint64_t)*end - sizeof h;
  if (*end < (long)sizeof h || fseek(f, 0, SEEK_SET) != 0 || fwrite(&h, sizeof h, 1, f) != 1 ||
      fflush(f) != 0)
    return cdb_error_set(err, "index: write failed: %s", strerror(errno));
  return 0;
}

/* XXH64 of the file's bytes [0, len) (read back: the header was rewritten after FAISS's part). */
static int hash_file_prefix(int fd, uint64_t len, uint64_t *out, cdb_error *err) {
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = malloc(CHUNK);
  if (!buf) return cdb_error_set(err, "index: out of memory");
  cdb_hash h;
  cdb_hash_init(&h, 0);
  int rc = 0;
  for (uint64_t off = 0; rc == 0 && off < len;) {
    size_t want = len - off < CHUNK ? (size_t)(len - off) : CHUNK;
    ssize_t got = pread(fd, buf, want, (off_t)off);
    if (got <= 0)
      rc = cdb_error_set(err, "index: cache file: read failed: %s",
                         got < 0 ? strerror(errno) : "unexpected end of file");
    else {
      cdb_hash_update(&h, buf, (size_t)got);
      off += (uint64_t)got;
    }
  }
  free(buf);
  *out = cdb_hash_final(&h);
  return rc;
}

static uint64_t trailer_hash(const uint64_t *list_hashes, const cache_trailer *t) {
  cdb_hash h;
  cdb_hash_init(&h, 0);
  cdb_hash_update(&h, list_hashes, t->nlist * sizeof *list_hashes);
  cdb_hash_update(&h, t, offsetof(cache_trailer, hash));
  return cdb_hash_final(&h);
}

/* A write sink that hashes the first `limit` bytes handed to it and counts the rest. */
typedef struct hash_sink {
  cdb_hash h;
  uint64_t pos, limit;
} hash_sink;

static ssize_t hash_write(void *cookie, const char *data, size_t size) {
  hash_sink *s = cookie;
  if (s->pos < s->limit) {
    uint64_t n = s->limit - s->pos < size ? s->limit - s->pos : size;
    cdb_hash_update(&s->h, data, (size_t)n);
  }
  s->pos += size;
  return (ssize_t)size;
}

/* The written file read back must hash like the bytes that were handed to stdio (header with
 * payload_bytes, FAISS's part serialised again from memory, the list hashes, the trailer): a
 * write that reached the file damaged is found before the file is renamed into place. */
static int check_written(const cdb_index *idx, FILE *f, uint64_t generation, uint64_t payload,
                         const uint64_t *hashes, const cache_trailer *t, cdb_error *err) {
  file_header h;
  fill_header(idx, CACHE_VERSION, generation, &h);
  h.payload_bytes = payload;
  hash_sink s = {.pos = 0, .limit = UINT64_MAX};
  cdb_hash_init(&s.h, 0);
  cookie_io_functions_t io = {.write = hash_write};
  FILE *sink = fopencookie(&s, "w", io);
  if (!sink) return cdb_error_set(err, "index: %s", strerror(errno));
  int rc = hash_write(&s, (const char *)&h, sizeof h) < 0 || faiss_write_index(idx->faiss, sink)
               ? ivf_faiss_fail(err, "hashing the cache file")
               : 0;
  fclose(sink);
  cdb_hash_update(&s.h, hashes, t->nlist * sizeof *hashes);
  cdb_hash_update(&s.h, t, sizeof *t);
  uint64_t got = 0, size = sizeof h + payload + t->nlist * sizeof *hashes + sizeof *t;
  if (rc == 0) rc = hash_file_prefix(fileno(f), size, &got, err);
  if (rc == 0 && got != cdb_hash_final(&s.h))
    rc = cdb_error_set(err, "index: cache file: the written data reads back different");
  return rc;
}

/* Appends the checksums: one per list, then the trailer over the bytes before the lists. */
static int write_trailer(const cdb_index *idx, FILE *f, long payload_end, uint64_t generation,
                         cdb_error *err) {
  uint64_t *hashes = malloc((idx->nlist ? idx->nlist : 1) * sizeof *hashes);
  if (!hashes) return cdb_error_set(err, "index: out of memory");
  size_t list_bytes = 0;
  cache_trailer t = {0};
  memcpy(t.magic, TRAILER_MAGIC, 8);
  t.nlist = idx->nlist;
  int rc = cdb_faiss_IndexIVF_list_hashes(idx->ivf, hashes, &list_bytes)
               ? ivf_faiss_fail(err, "hash")
           : list_bytes > (size_t)payload_end
               ? cdb_error_set(err, "index: cache file: lists larger than the file")
               : 0;
  t.lists_start = (uint64_t)payload_end - list_bytes;
  if (rc == 0) rc = hash_file_prefix(fileno(f), t.lists_start, &t.prefix_hash, err);
  t.hash = trailer_hash(hashes, &t);
  if (rc == 0 && (fseek(f, payload_end, SEEK_SET) != 0 ||
                  fwrite(hashes, sizeof *hashes, idx->nlist, f) != idx->nlist ||
                  fwrite(&t, sizeof t, 1, f) != 1 || fflush(f) != 0))
    rc = cdb_error_set(err, "index: write failed: %s", strerror(errno));
  if (rc == 0)
    rc = check_written(idx, f, generation, (uint64_t)payload_end - sizeof(file_header), hashes, &t,
                       err);
  free(hashes);
  return rc;
}

int cdb_index_save_file(const cdb_index *cidx, const char *path, uint64_t generation,
                        cdb_error *err) {
  cdb_index *idx = (cdb_index *)cidx;
  if (!path) return cdb_error_set(err, "index: save_file: null path");
  if (ivf_make_writable(idx, err) < 0) return -1;
  /* A name of its own: concurrent writers of the same cache file must not share a temp file. */
  uint64_t nonce = cdb_hash64(&idx, sizeof idx, (uint64_t)getpid() ^ (uint64_t)time(NULL));
  size_t len = strlen(path) + 40;
  char *tmp = malloc(len);
  if (!tmp) return cdb_error_set(err, "index: out of memory");
  snprintf(tmp, len, "%s.%d.%016llx.tmp", path, (int)getpid(), (unsigned long long)nonce);
  FILE *f = fopen(tmp, "w+bx");
  long end = 0;
  int rc = f ? write_all(idx, f, CACHE_VERSION, generation, err)
             : cdb_error_set(err, "index: %s: %s", tmp, strerror(errno));
  if (rc == 0) rc = finish_header(idx, f, generation, &end, err);
  if (rc == 0) rc = write_trailer(idx, f, end, generation, err);
  if (rc == 0 && fsync(fileno(f)) != 0)
    rc = cdb_error_set(err, "index: %s: fsync: %s", tmp, strerror(errno));
  if (f && fclose(f) != 0 && rc == 0)
    rc = cdb_error_set(err, "index: %s: %s", tmp, strerror(errno));
  if (rc == 0 && rename(tmp, path) != 0)
    rc = cdb_error_set(err, "index: rename to %s: %s", path, strerror(errno));
  if (rc < 0 && f) unlink(tmp);
  free(tmp);
  return rc;
}

static FILE *open_cache_file(const char *path, file_header *h, cdb_error *err) {
  FILE *f = path ? fopen(path, "rb") : NULL;
  if (!f) {
    cdb_error_set(err, "index: %s: %s", path ? path : "(null)", strerror(errno));
    return NULL;
  }
  if (fread(h, sizeof *h, 1, f) != 1) {
    cdb_error_set(err, "index: %s: truncated header", path);
  } else if (check_header(h, h->version == CACHE_VERSION_FLAT ? CACHE_VERSION_FLAT : CACHE_VERSION,
                          err) == 0) {
    return f;
  } else {
    cdb_error_prefix(err, "%s", path);
  }
  fclose(f);
  return NULL;
}

int cdb_index_file_generation(const char *path, uint64_t *generation, cdb_error *err) {
  file_header h;
  FILE *f = open_cache_file(path, &h, err);
  if (!f) return -1;
  *generation = h.generation;
  fclose(f);
  return 0;
}

/* Reads the checksum trailer of a cache file of file_size bytes whose FAISS part ends at
 * payload_end, and checks it and the bytes before the lists. *hashes: one per list (malloc'd). */
static int check_trailer(FILE *f, uint64_t file_size, uint64_t payload_end, cache_trailer *t,
                         uint64_t **hashes, cdb_error *err) {
  *hashes = NULL;
  int fd = fileno(f);
  uint64_t tail = file_size - payload_end;
  if (file_size < payload_end || tail < sizeof *t || (tail - sizeof *t) % 8 != 0 ||
      pread(fd, t, sizeof *t, (off_t)(file_size - sizeof *t)) != (ssize_t)sizeof *t ||
      memcmp(t->magic, TRAILER_MAGIC, 8) != 0 || t->nlist != (tail - sizeof *t) / 8 ||
      t->lists_start > payload_end)
    return cdb_error_set(err, "index: truncated or corrupt cache file (no checksums)");
  *hashes = malloc((t->nlist ? t->nlist : 1) * sizeof **hashes);
  if (!*hashes) return cdb_error_set(err, "index: out of memory");
  uint64_t prefix = 0;
  size_t bytes = t->nlist * sizeof **hashes;
  if (pread(fd, *hashes, bytes, (off_t)payload_end) != (ssize_t)bytes ||
      trailer_hash(*hashes, t) != t->hash)
    return cdb_error_set(err, "index: cache file damaged (checksum trailer)");
  if (hash_file_prefix(fd, t->lists_start, &prefix, err) < 0) return -1;
  if (prefix != t->prefix_hash)
    return cdb_error_set(err, "index: cache file damaged (header, quantizer or list sizes)");
  return 0;
}

/* After FAISS mapped the lists: they must sit where the trailer says, and each is checked
 * against its hash when first touched. */
static int check_mapped_lists(cdb_index *idx, const cache_trailer *t, uint64_t payload_end,
                              const uint64_t *hashes, cdb_error *err) {
  const unsigned char *data = NULL;
  size_t size = 0, start = 0, end = 0;
  if (cdb_faiss_IndexIVF_mapped_view(idx->ivf, &data, &size, &start, &end) != 1 ||
      start != t->lists_start || end != payload_end || t->nlist != idx->nlist)
    return cdb_error_set(err, "index: corrupt cache file (lists are not where the checksums say)");
  if (cdb_faiss_IndexIVF_prepare_mapped(idx->ivf) < 0 ||
      cdb_faiss_IndexIVF_check_lists(idx->ivf, hashes))
    return ivf_faiss_fail(err, "mapping the lists");
  return 0;
}

cdb_index *cdb_index_open_file_mmap(const char *path, uint64_t expected_generation,
                                    cdb_error *err) {
  file_header h;
  FILE *f = open_cache_file(path, &h, err);
  if (!f) return NULL;
  if (h.generation != expected_generation) {
    cdb_error_set(err, "index: %s: stale cache (generation %llu, expected %llu)", path,
                  (unsigned long long)h.generation, (unsigned long long)expected_generation);
    fclose(f);
    return NULL;
  }
  long offset = ftell(f);
  struct stat st;
  uint64_t payload_end = sizeof h + h.payload_bytes;
  cache_trailer t;
  uint64_t *hashes = NULL;
  int rc = fstat(fileno(f), &st) != 0 || h.payload_bytes == 0 ||
                   h.payload_bytes > (uint64_t)st.st_size
               ? cdb_error_set(err, "index: truncated or corrupt cache file")
               : check_trailer(f, (uint64_t)st.st_size, payload_end, &t, &hashes, err);
  if (rc < 0) cdb_error_prefix(err, "%s", path);
  FaissIndex *fi = NULL;
  cdb_index *idx = NULL;
  if (rc < 0)
    ;
  else if (faiss_read_index(f, FAISS_CXX_IO_FLAG_MMAP, &fi)) rc = ivf_faiss_fail(err, path);
  else if (ftell(f) != (long)payload_end) { /* the mapped lists must end where the trailer starts */
    rc = cdb_error_set(err, "index: %s: corrupt cache file (lists overrun their space)", path);
    faiss_Index_free(fi);
  } else if ((idx = index_from(&h, fi, err)) != NULL)
    rc = check_mapped_lists(idx, &t, payload_end, hashes, err);
  else rc = -1; /* index_from freed fi */
  free(hashes);
  if (rc < 0) {
    cdb_index_free(idx);
    fclose(f);
    return NULL;
  }
  idx->mapped = f;
  idx->faiss_offset = offset;
  idx->ids_valid = 0;
  return idx;
}
