/* serialize.c: cdb_index in bounded pieces (cdb_index_save / cdb_index_load) and as a
 * memory-mappable cache file (cdb_index_save_file / cdb_index_open_file_mmap). Both are a
 * file_header followed by FAISS's own format; FILE streams over pieces come from fopencookie. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/index_io_c.h>

#include "index/faiss_ext.h"
#include "index/ivf_internal.h"

static void fill_header(const cdb_index *idx, uint64_t generation, file_header *h) {
  memset(h, 0, sizeof *h);
  memcpy(h->magic, FILE_MAGIC, 8);
  h->version = FILE_VERSION;
  h->dim = (uint32_t)idx->dim;
  h->generation = generation;
  h->trained_at = idx->trained_at;
  h->nlist_param = idx->nlist_param;
  h->nprobe_param = idx->nprobe_param;
  h->nprobe = idx->nprobe;
  snprintf(h->type, sizeof h->type, "%s", idx->type);
}

static int write_all(cdb_index *idx, FILE *f, uint64_t generation, cdb_error *err) {
  file_header h;
  fill_header(idx, generation, &h);
  if (fwrite(&h, sizeof h, 1, f) != 1)
    return cdb_error_set(err, "index: write failed: %s", strerror(errno));
  if (faiss_write_index(idx->faiss, f))
    return ivf_faiss_fail(err, "writing index");
  if (fflush(f) != 0)
    return cdb_error_set(err, "index: write failed: %s", strerror(errno));
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
  if (idx->nlist <= 1)
    snprintf(idx->factory, sizeof idx->factory, "IVF1,Flat");
  else
    snprintf(idx->factory, sizeof idx->factory, "IVF%zu,%s", idx->nlist, idx->encoding);
  return idx;
}

static int check_header(const file_header *h, cdb_error *err) {
  if (memcmp(h->magic, FILE_MAGIC, 8) != 0)
    return cdb_error_set(err, "index: not a clipdb index (bad magic)");
  if (h->version != FILE_VERSION)
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

int cdb_index_save(const cdb_index *cidx, size_t piece_bytes, cdb_piece_emit emit, void *ctx,
                   cdb_error *err) {
  cdb_index *idx = (cdb_index *)cidx; /* a mapped index is read in first (exclusive access) */
  if (piece_bytes < 4096 || !emit)
    return cdb_error_set(err, "index: save: piece size must be >= 4096 and emit non-NULL");
  if (ivf_make_writable(idx, err) < 0)
    return -1;
  piece_writer w = {malloc(piece_bytes), piece_bytes, 0, emit, ctx, 0};
  if (!w.buf)
    return cdb_error_set(err, "index: out of memory");
  cookie_io_functions_t io = {.write = piece_write};
  FILE *f = fopencookie(&w, "w", io);
  int rc = f ? 0 : cdb_error_set(err, "index: save: %s", strerror(errno));
  if (rc == 0)
    rc = write_all(idx, f, 0, err);
  if (f && fclose(f) != 0 && rc == 0)
    rc = cdb_error_set(err, "index: save: write failed");
  if (rc == 0 && w.len > 0 && emit(ctx, w.buf, w.len) != 0)
    w.aborted = 1;
  if (w.aborted)
    rc = cdb_error_set(err, "index: save aborted by the caller");
  free(w.buf);
  return rc;
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
    if (rc == 0)
      r->eof = 1;
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

cdb_index *cdb_index_load(cdb_piece_next next, void *ctx, cdb_error *err) {
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
  if (fread(&h, sizeof h, 1, f) != 1)
    cdb_error_set(err, "index: load: %s", r.failed ? "reading a piece failed" : "truncated header");
  else if (check_header(&h, err) < 0)
    ;
  else if (faiss_read_index(f, 0, &fi)) {
    ivf_faiss_fail(err, r.failed ? "load (reading a piece failed)" : "load");
  } else if ((idx = index_from(&h, fi, err)) && ivf_rebuild_idset(idx, err) < 0) {
    cdb_index_free(idx);
    idx = NULL;
  }
  fclose(f);
  return idx;
}

/* Rewrites the header of a written cache file with the payload size, so that opening can
 * refuse a truncated file before mapping it (reading past its end would be SIGBUS). */
static int finish_header(const cdb_index *idx, FILE *f, uint64_t generation, cdb_error *err) {
  long end = ftell(f);
  file_header h;
  fill_header(idx, generation, &h);
  h.payload_bytes = (uint64_t)end - sizeof h;
  if (end < (long)sizeof h || fseek(f, 0, SEEK_SET) != 0 || fwrite(&h, sizeof h, 1, f) != 1 ||
      fflush(f) != 0)
    return cdb_error_set(err, "index: write failed: %s", strerror(errno));
  return 0;
}

int cdb_index_save_file(const cdb_index *cidx, const char *path, uint64_t generation,
                        cdb_error *err) {
  cdb_index *idx = (cdb_index *)cidx;
  if (!path)
    return cdb_error_set(err, "index: save_file: null path");
  if (ivf_make_writable(idx, err) < 0)
    return -1;
  size_t len = strlen(path) + 5;
  char *tmp = malloc(len);
  if (!tmp)
    return cdb_error_set(err, "index: out of memory");
  snprintf(tmp, len, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  int rc = f ? write_all(idx, f, generation, err)
             : cdb_error_set(err, "index: %s: %s", tmp, strerror(errno));
  if (rc == 0)
    rc = finish_header(idx, f, generation, err);
  if (rc == 0 && fsync(fileno(f)) != 0)
    rc = cdb_error_set(err, "index: %s: fsync: %s", tmp, strerror(errno));
  if (f && fclose(f) != 0 && rc == 0)
    rc = cdb_error_set(err, "index: %s: %s", tmp, strerror(errno));
  if (rc == 0 && rename(tmp, path) != 0)
    rc = cdb_error_set(err, "index: rename to %s: %s", path, strerror(errno));
  if (rc < 0)
    unlink(tmp);
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
  } else if (check_header(h, err) == 0) {
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
  if (!f)
    return -1;
  *generation = h.generation;
  fclose(f);
  return 0;
}

cdb_index *cdb_index_open_file_mmap(const char *path, uint64_t expected_generation,
                                    cdb_error *err) {
  file_header h;
  FILE *f = open_cache_file(path, &h, err);
  if (!f)
    return NULL;
  if (h.generation != expected_generation) {
    cdb_error_set(err, "index: %s: stale cache (generation %llu, expected %llu)", path,
                  (unsigned long long)h.generation, (unsigned long long)expected_generation);
    fclose(f);
    return NULL;
  }
  long offset = ftell(f);
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || h.payload_bytes == 0 ||
      (uint64_t)st.st_size != sizeof h + h.payload_bytes) {
    cdb_error_set(err, "index: %s: truncated or corrupt cache file", path);
    fclose(f);
    return NULL;
  }
  FaissIndex *fi = NULL;
  if (faiss_read_index(f, FAISS_CXX_IO_FLAG_MMAP, &fi)) {
    ivf_faiss_fail(err, path);
    fclose(f);
    return NULL;
  }
  if (ftell(f) != (long)st.st_size) { /* the lists FAISS mapped must end where the file does */
    cdb_error_set(err, "index: %s: corrupt cache file (lists overrun the file)", path);
    faiss_Index_free(fi);
    fclose(f);
    return NULL;
  }
  cdb_index *idx = index_from(&h, fi, err);
  if (!idx) {
    fclose(f);
    return NULL;
  }
  if (cdbx_IndexIVF_prepare_mapped(idx->ivf) < 0) {
    ivf_faiss_fail(err, path);
    fclose(f);
    cdb_index_free(idx);
    return NULL;
  }
  idx->mapped = f;
  idx->faiss_offset = offset;
  idx->ids_valid = 0;
  return idx;
}
