/* ivf.c: the collection index (ivf.h) on FAISS's C API.
 *
 * Every state is a FAISS IndexIVF with METRIC_INNER_PRODUCT: before training it is "IVF1,Flat"
 * with a fixed zero centroid (one list scanned in full = exact search), after training the
 * chosen factory string. One code path thus serves exact and IVF search, filters (IDSelector in
 * SearchParametersIVF), range search, serialisation and the memory-mapped cache file
 * (serialize.c). */
#include "index/ivf.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "index/faiss_ext.h"
#include "index/faiss_assign.h"
#include "index/idset.h"
#include "index/ivf_internal.h"
#include "index/kmeans.h"
#include "index/scan.h"
#include "src/vec.h"

#define SAMPLE_SEED 0x9e3779b97f4a7c15ULL
/* k-means trains on 32 x nlist sampled vectors (FAISS asks for 39) with kmeans.h's own SIMD
 * kernels; 16 x nlist kept recall@10 0.99 on the 100k bench but fell to 0.93 on the tests'
 * 20k x 128 clustered data (index::ivf_recall_at_default_nprobe). */
#define SAMPLE_PER_LIST 32
#define SAMPLE_MIN 10000 /* PQ codebooks want ~39 x 256 points */
/* k-means iterations for the coarse centroids: recall@10 barely moves between 10 and FAISS's
 * default 25 on clustered data, while training (the cost of a bulk-load COMMIT) is 2.5x faster. */
#define KMEANS_ITERATIONS 10
/* The default nprobe of a trained index is the smallest (from MIN_NPROBE up) whose scans find
 * CALIBRATION_RECALL of the 10 nearest neighbours of CALIBRATION_QUERIES sample vectors. */
#define CALIBRATION_QUERIES 32
#define CALIBRATION_RECALL 0.98
#define MIN_NPROBE 8
#define LIST_CHUNK 16384 /* list entries handed to a list_fn at a time */
#define ADD_BATCH 16384       /* vectors normalised and added per FAISS call */
#define SMALL_FILTER_IDS 1000 /* sets this small always take the exhaustive selector path */
/* "auto" once trained: 8-bit scalar codes (a quarter of the raw floats), re-ranked exactly from
 * the caller's vectors (cdb_search_opts.fetch), so the vectors are stored once at full size. */
#define AUTO_ENCODING "SQ8"

/* ---- errors and small helpers ---- */

int ivf_faiss_fail(cdb_error *err, const char *what) {
  const char *msg = faiss_get_last_error();
  return cdb_error_set(err, "index: %s: %s", what, msg ? msg : "unknown FAISS error");
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Vectors arrive unit length (inner product = cosine); this refuses NaN, Inf, zero and other
 * non-unit vectors with an error rather than fixing them. */
int ivf_check_unit(const float *v, int dim, const char *what, int64_t i, cdb_error *err) {
  if (cdb_vec_is_unit(v, (size_t)dim)) return 0;
  size_t bad = cdb_vec_first_nonfinite(v, (size_t)dim);
  if (bad < (size_t)dim)
    return cdb_error_set(err, "index: %s %lld has a NaN or Inf component (element %zu)", what,
                         (long long)i, bad);
  double sq = cdb_vec_dot(v, v, (size_t)dim);
  if (!(sq > 0))
    return cdb_error_set(err, "index: %s %lld is a zero vector (cosine undefined)", what,
                         (long long)i);
  return cdb_error_set(err,
                       "index: %s %lld is not unit length (squared norm %g); normalise it "
                       "first",
                       what, (long long)i, sq);
}

/* Near sqrt(n), not FAISS's usual 4-16 sqrt(n): the own scan (scan.h) makes the codes of a
 * probed list cheap, while k-means and the assignment at COMMIT cost n x nlist. */
static int auto_nlist(int64_t n) {
  double target = sqrt((double)n);
  int p = 1;
  while (p < (1 << 20) && p * 2 <= target * 1.41421356) p *= 2;
  while (p > 1 && (int64_t)p * 39 > n) p /= 2;
  return p;
}

static int default_nprobe(const cdb_index *idx, size_t nlist) {
  int np;
  if (idx->nprobe_param > 0) np = idx->nprobe_param;
  else if (nlist <= 1) np = 1;
  else np = (int)ceil(2.0 * sqrt((double)nlist));
  if (np < MIN_NPROBE && idx->nprobe_param <= 0) np = MIN_NPROBE;
  return np > (int)nlist ? (int)nlist : np;
}

/* ---- type strings ---- */

/* FAISS's factory turns on polysemous training for "PQ<m>" unless it ends in "np"; that
 * training is slow (minutes for 10k vectors on 2 cores) and only serves polysemous filtering,
 * which clipdb does not use. */
static void no_polysemous_training(char *enc, size_t size) {
  const char *p = enc;
  if (strncmp(p, "PQ", 2) != 0) return;
  p += 2;
  size_t digits = strspn(p, "0123456789");
  if (!digits) return;
  p += digits;
  if (*p == 'x' && strspn(p + 1, "0123456789") > 0) p += 1 + strspn(p + 1, "0123456789");
  if (*p == 0 && strlen(enc) + 2 < size) strcat(enc, "np");
}

static int parse_type(cdb_index *idx, const char *type, cdb_error *err) {
  if (!type || !*type || !strcmp(type, "auto")) {
    strcpy(idx->type, "auto");
    strcpy(idx->encoding, AUTO_ENCODING);
    return 0;
  }
  if (!strcmp(type, "flat") || !strcmp(type, "Flat")) {
    strcpy(idx->type, "flat");
    strcpy(idx->encoding, "Flat");
    return 0;
  }
  if (strlen(type) >= sizeof idx->type || strncmp(type, "IVF", 3) != 0) goto bad;
  const char *p = type + 3;
  long nlist = 0;
  if (*p >= '0' && *p <= '9') {
    char *end;
    errno = 0;
    nlist = strtol(p, &end, 10);
    if (errno || nlist < 1 || nlist > (1 << 20)) goto bad;
    p = end;
  }
  if (*p != ',' || !p[1] || strlen(p + 1) >= sizeof idx->encoding) goto bad;
  strcpy(idx->type, type);
  strcpy(idx->encoding, p + 1);
  idx->fixed_nlist = (int)nlist;
  no_polysemous_training(idx->encoding, sizeof idx->encoding);
  return 0;
bad:
  return cdb_error_set(err,
                       "index: unsupported type '%s' (expected auto, flat, IVF,<encoding> or "
                       "IVF<nlist>,<encoding>, e.g. IVF1024,Flat, IVF,SQ8, IVF,PQ32)",
                       type);
}

static int train_enabled(const cdb_index *idx) { return strcmp(idx->type, "flat") != 0; }

static int target_nlist(const cdb_index *idx, int64_t n) {
  if (idx->fixed_nlist) return idx->fixed_nlist;
  if (idx->nlist_param > 0) return idx->nlist_param;
  return auto_nlist(n);
}

/* Creates an empty IndexIVF from "IVF<nlist>,<encoding>" (inner product). */
static FaissIndex *new_faiss_ivf(int dim, int nlist, const char *encoding, char *factory_out,
                                 cdb_error *err) {
  char factory[64];
  snprintf(factory, sizeof factory, "IVF%d,%s", nlist, encoding);
  FaissIndex *fi = NULL;
  if (faiss_index_factory(&fi, dim, factory, METRIC_INNER_PRODUCT)) {
    ivf_faiss_fail(err, factory);
    return NULL;
  }
  if (!faiss_IndexIVF_cast(fi)) {
    faiss_Index_free(fi);
    cdb_error_set(err, "index: factory string '%s' does not make an IVF index", factory);
    return NULL;
  }
  if (factory_out) strcpy(factory_out, factory);
  return fi;
}

/* The untrained state: "IVF1,Flat" whose single centroid is fixed at zero. */
static FaissIndex *new_exact_stage(int dim, char *factory_out, cdb_error *err) {
  FaissIndex *fi = new_faiss_ivf(dim, 1, "Flat", factory_out, err);
  if (!fi) return NULL;
  float *zero = calloc((size_t)dim, sizeof *zero);
  if (!zero) {
    faiss_Index_free(fi);
    cdb_error_set(err, "index: out of memory");
    return NULL;
  }
  FaissIndex *quantizer = faiss_IndexIVF_quantizer(faiss_IndexIVF_cast(fi));
  /* With the quantizer already holding nlist centroids, train() skips k-means. */
  int rc = faiss_Index_add(quantizer, 1, zero) || faiss_Index_train(fi, 1, zero);
  free(zero);
  if (rc) {
    ivf_faiss_fail(err, "creating exact index");
    faiss_Index_free(fi);
    return NULL;
  }
  return fi;
}

void ivf_set_faiss(cdb_index *idx, FaissIndex *fi) {
  idx->faiss = fi;
  idx->ivf = faiss_IndexIVF_cast(fi);
  idx->nlist = faiss_IndexIVF_nlist(idx->ivf);
  idx->nprobe = default_nprobe(idx, idx->nlist);
  faiss_IndexIVF_set_nprobe(idx->ivf, (size_t)idx->nprobe);
}

/* ---- lifecycle ---- */

cdb_index_params cdb_index_default_params(void) {
  cdb_index_params p = {"auto", 0, 0};
  return p;
}

cdb_index *ivf_alloc_index(int dim, const cdb_index_params *params, cdb_error *err) {
  cdb_index_params defaults = cdb_index_default_params();
  if (!params) params = &defaults;
  if (dim < 1 || dim > CDB_INDEX_MAX_DIM) {
    cdb_error_set(err, "index: dimension %d out of range 1..%d", dim, CDB_INDEX_MAX_DIM);
    return NULL;
  }
  if (params->nlist < 0 || params->nlist > (1 << 20) || params->nprobe < 0) {
    cdb_error_set(err, "index: nlist %d / nprobe %d out of range", params->nlist, params->nprobe);
    return NULL;
  }
  cdb_index *idx = calloc(1, sizeof *idx);
  if (!idx) {
    cdb_error_set(err, "index: out of memory");
    return NULL;
  }
  idx->dim = dim;
  idx->nlist_param = params->nlist;
  idx->nprobe_param = params->nprobe;
  idx->ids_valid = 1;
  if (parse_type(idx, params->type, err) < 0) {
    free(idx);
    return NULL;
  }
  return idx;
}

cdb_index *cdb_index_new(int dim, const cdb_index_params *params, cdb_error *err) {
  cdb_index *idx = ivf_alloc_index(dim, params, err);
  if (!idx) return NULL;
  if (train_enabled(idx)) { /* validate the trained form now (unknown encoding, PQ m vs dim) */
    FaissIndex *probe = new_faiss_ivf(dim, target_nlist(idx, 1), idx->encoding, NULL, err);
    if (!probe) {
      free(idx);
      return NULL;
    }
    faiss_Index_free(probe);
  }
  FaissIndex *fi = new_exact_stage(dim, idx->factory, err);
  if (!fi) {
    free(idx);
    return NULL;
  }
  ivf_set_faiss(idx, fi);
  return idx;
}

int ivf_is_flat(const cdb_index *idx) { return cdb_faiss_IndexIVF_is_flat(idx->ivf); }

static void release_faiss(cdb_index *idx) {
  if (idx->faiss) faiss_Index_free(idx->faiss);
  if (idx->mapped) fclose(idx->mapped);
  idx->faiss = NULL;
  idx->ivf = NULL;
  idx->mapped = NULL;
}

void cdb_index_free(cdb_index *idx) {
  if (!idx) return;
  release_faiss(idx);
  cdb_idset_free(&idx->ids);
  free(idx);
}

int cdb_index_dim(const cdb_index *idx) { return idx->dim; }

int64_t cdb_index_count(const cdb_index *idx) { return faiss_Index_ntotal(idx->faiss); }

void cdb_index_set_threads(int n) { omp_set_num_threads(n > 0 ? n : omp_get_num_procs()); }

void cdb_index_get_info(const cdb_index *idx, cdb_index_info *info) {
  memset(info, 0, sizeof *info);
  strcpy(info->kind, idx->nlist <= 1 ? "flat" : "ivf");
  snprintf(info->factory, sizeof info->factory, "%s", idx->factory);
  info->nlist = (int)idx->nlist;
  info->nprobe = idx->nprobe;
  info->count = cdb_index_count(idx);
  info->trained_at_count = idx->trained_at;
  info->mapped = idx->mapped != NULL;
}

/* ---- ids ---- */

int ivf_rebuild_idset(cdb_index *idx, cdb_error *err) {
  cdb_idset_free(&idx->ids);
  if (cdb_idset_reserve(&idx->ids, (size_t)cdb_index_count(idx)) < 0)
    return cdb_error_set(err, "index: out of memory");
  size_t cap = 0;
  int64_t *buf = NULL;
  for (size_t l = 0; l < idx->nlist; l++) {
    size_t n = faiss_IndexIVF_get_list_size(idx->ivf, l);
    if (n > cap) {
      free(buf);
      cap = n;
      buf = malloc(cap * sizeof *buf);
      if (!buf) return cdb_error_set(err, "index: out of memory");
    }
    if (n) faiss_IndexIVF_invlists_get_ids(idx->ivf, l, buf);
    for (size_t i = 0; i < n; i++) cdb_idset_put(&idx->ids, buf[i]);
  }
  free(buf);
  idx->ids_valid = 1;
  return 0;
}

int cdb_index_damaged(const cdb_index *idx) {
  return idx->mapped && cdb_faiss_IndexIVF_verify_lists(idx->ivf, 0) >= 0;
}

/* After reading a mapped index: -1 with err set when a list it read failed its checksum. */
static int check_damage(const cdb_index *idx, int all, cdb_error *err) {
  int64_t bad = idx->mapped ? cdb_faiss_IndexIVF_verify_lists(idx->ivf, all) : -1;
  return bad < 0 ? 0
                 : cdb_error_set(err,
                                 "index: cache file damaged (inverted list %lld fails its "
                                 "checksum)",
                                 (long long)bad);
}

int cdb_index_verify(const cdb_index *idx, cdb_error *err) { return check_damage(idx, 1, err); }

/* Before a write: a mapped index is read into memory (every list checked first); the id set is
 * built if missing. */
int ivf_make_writable(cdb_index *idx, cdb_error *err) {
  if (idx->mapped) {
    FaissIndex *fi = NULL;
    if (check_damage(idx, 1, err) < 0) return -1;
    if (fseek(idx->mapped, idx->faiss_offset, SEEK_SET) != 0)
      return cdb_error_set(err, "index: cache file: seek failed: %s", strerror(errno));
    if (faiss_read_index(idx->mapped, 0, &fi))
      return ivf_faiss_fail(err, "reading mapped cache file into memory");
    if (!faiss_IndexIVF_cast(fi)) {
      faiss_Index_free(fi);
      return cdb_error_set(err, "index: cache file does not hold an IVF index");
    }
    int nprobe = idx->nprobe;
    release_faiss(idx);
    ivf_set_faiss(idx, fi);
    idx->nprobe = nprobe;
    faiss_IndexIVF_set_nprobe(idx->ivf, (size_t)nprobe);
  }
  return idx->ids_valid ? 0 : ivf_rebuild_idset(idx, err);
}

static int remove_faiss_ids(cdb_index *idx, int64_t n, const int64_t *ids, cdb_error *err) {
  if (n == 0) return 0;
  FaissIDSelectorBatch *sel = NULL;
  size_t removed = 0;
  if (faiss_IDSelectorBatch_new(&sel, (size_t)n, ids)) return ivf_faiss_fail(err, "remove");
  int rc = faiss_Index_remove_ids(idx->faiss, (const FaissIDSelector *)sel, &removed);
  faiss_IDSelector_free((FaissIDSelector *)sel);
  if (rc) return ivf_faiss_fail(err, "remove");
  return 0;
}

/* ---- add / remove ---- */

static int validate_batch(const cdb_index *idx, int64_t n, const int64_t *ids, const float *vectors,
                          cdb_error *err) {
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] == -1)
      return cdb_error_set(err, "index: id -1 is reserved (vector %lld)", (long long)i);
    if (ivf_check_unit(vectors + (size_t)i * idx->dim, idx->dim, "vector", i, err) < 0) return -1;
  }
  return 0;
}

/* keep[i] = 1 for the last occurrence of each id in the batch. */
static int mark_last_occurrences(int64_t n, const int64_t *ids, unsigned char *keep,
                                 int64_t *n_keep, cdb_error *err) {
  cdb_idset seen = {0};
  if (cdb_idset_reserve(&seen, (size_t)n) < 0) return cdb_error_set(err, "index: out of memory");
  *n_keep = 0;
  for (int64_t i = n - 1; i >= 0; i--) {
    keep[i] = (unsigned char)cdb_idset_put(&seen, ids[i]);
    *n_keep += keep[i];
  }
  cdb_idset_free(&seen);
  return 0;
}

/* Adds below this many vectors run on the calling thread: waking (and afterwards spinning)
 * OpenMP workers costs far more than assigning a few vectors, above all on busy machines
 * (measured: 96 single-row inserts 736 ms with workers, 5 ms without). */
#define ADD_PARALLEL_MIN 256

static int faiss_add_batch(cdb_index *idx, int64_t n, const float *vectors, const int64_t *ids) {
  int threads = omp_get_max_threads();
  if (n < ADD_PARALLEL_MIN) omp_set_num_threads(1);
  int rc = faiss_Index_add_with_ids(idx->faiss, n, vectors, ids);
  if (n < ADD_PARALLEL_MIN) omp_set_num_threads(threads);
  return rc;
}

static int add_normalised(cdb_index *idx, int64_t n, const int64_t *ids, const float *vectors,
                          const unsigned char *keep, cdb_error *err) {
  size_t dim = (size_t)idx->dim;
  float *buf = malloc(ADD_BATCH * dim * sizeof *buf);
  int64_t *bids = malloc(ADD_BATCH * sizeof *bids);
  int rc = 0;
  if (!buf || !bids) rc = cdb_error_set(err, "index: out of memory");
  int64_t fill = 0;
  for (int64_t i = 0; rc == 0 && i <= n; i++) {
    if (i < n && keep[i]) {
      memcpy(buf + (size_t)fill * dim, vectors + (size_t)i * dim, dim * sizeof *buf);
      bids[fill++] = ids[i];
    }
    if (fill == ADD_BATCH || (i == n && fill > 0)) {
      if (faiss_add_batch(idx, fill, buf, bids)) rc = ivf_faiss_fail(err, "add");
      for (int64_t j = 0; rc == 0 && j < fill; j++) cdb_idset_put(&idx->ids, bids[j]);
      fill = 0;
    }
  }
  free(buf);
  free(bids);
  return rc;
}

int cdb_index_add(cdb_index *idx, int64_t n, const int64_t *ids, const float *vectors,
                  cdb_error *err) {
  if (n < 0 || (n > 0 && (!ids || !vectors)))
    return cdb_error_set(err, "index: add: bad arguments (n=%lld)", (long long)n);
  if (n == 0) return 0;
  unsigned char *keep = malloc((size_t)n);
  int64_t *replaced = NULL, n_keep = 0, n_replaced = 0;
  int rc = !keep ? cdb_error_set(err, "index: out of memory") : 0;
  if (rc == 0) rc = validate_batch(idx, n, ids, vectors, err);
  if (rc == 0) rc = ivf_make_writable(idx, err);
  if (rc == 0) rc = mark_last_occurrences(n, ids, keep, &n_keep, err);
  if (rc == 0 && cdb_idset_reserve(&idx->ids, idx->ids.n + (size_t)n_keep) < 0)
    rc = cdb_error_set(err, "index: out of memory");
  if (rc == 0 && !(replaced = malloc((size_t)n_keep * sizeof *replaced)))
    rc = cdb_error_set(err, "index: out of memory");
  for (int64_t i = 0; rc == 0 && i < n; i++)
    if (keep[i] && cdb_idset_has(&idx->ids, ids[i])) replaced[n_replaced++] = ids[i];
  if (rc == 0) rc = remove_faiss_ids(idx, n_replaced, replaced, err);
  for (int64_t i = 0; rc == 0 && i < n_replaced; i++) cdb_idset_del(&idx->ids, replaced[i]);
  if (rc == 0) rc = add_normalised(idx, n, ids, vectors, keep, err);
  free(keep);
  free(replaced);
  return rc;
}

int cdb_index_remove(cdb_index *idx, int64_t n, const int64_t *ids, int64_t *n_removed,
                     cdb_error *err) {
  if (n_removed) *n_removed = 0;
  if (n < 0 || (n > 0 && !ids))
    return cdb_error_set(err, "index: remove: bad arguments (n=%lld)", (long long)n);
  if (n == 0 || ivf_make_writable(idx, err) < 0) return n == 0 ? 0 : -1;
  int64_t *present = malloc((size_t)n * sizeof *present), n_present = 0;
  if (!present) return cdb_error_set(err, "index: out of memory");
  for (int64_t i = 0; i < n; i++)
    if (cdb_idset_del(&idx->ids, ids[i])) present[n_present++] = ids[i];
  int rc = remove_faiss_ids(idx, n_present, present, err);
  if (rc < 0) /* FAISS state unknown: rebuild the set from it */
    ivf_rebuild_idset(idx, NULL);
  else if (n_removed) *n_removed = n_present;
  free(present);
  return rc;
}

/* ---- search ---- */

/* Membership for a sorted id set: a bitmap over [lo, hi] when the ids are dense enough (SQLite
 * rowids usually are), else binary search. */
typedef struct filter_ctx {
  const cdb_filter *f;
  uint64_t *bits;
  int64_t lo, span;
} filter_ctx;

static void build_bitmap(filter_ctx *c) {
  const cdb_filter *f = c->f;
  c->bits = NULL;
  if (!f->ids || f->n_ids <= 0 || f->ids[f->n_ids - 1] < f->ids[0]) return;
  uint64_t span = (uint64_t)f->ids[f->n_ids - 1] - (uint64_t)f->ids[0] + 1;
  if (span > (uint64_t)f->n_ids * 64 || span > ((uint64_t)1 << 34)) return;
  c->bits = calloc((size_t)(span + 63) / 64, sizeof *c->bits);
  if (!c->bits) return; /* binary search still works */
  c->lo = f->ids[0];
  c->span = (int64_t)span;
  for (int64_t i = 0; i < f->n_ids; i++) {
    uint64_t off = (uint64_t)f->ids[i] - (uint64_t)c->lo;
    if (off < span) c->bits[off / 64] |= (uint64_t)1 << (off % 64);
  }
}

static int in_sorted_ids(const int64_t *ids, int64_t n, int64_t id) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (ids[mid] < id) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && ids[lo] == id;
}

/* Membership in the filter's ids (every id when it has none). */
static int in_filter_ids(void *ctx, int64_t id) {
  const filter_ctx *c = ctx;
  const cdb_filter *f = c->f;
  if (c->bits) {
    uint64_t off = (uint64_t)id - (uint64_t)c->lo;
    return off < (uint64_t)c->span && (c->bits[off / 64] >> (off % 64) & 1);
  }
  return !f->ids || in_sorted_ids(f->ids, f->n_ids, id);
}

static int filter_allows(void *ctx, int64_t id) {
  const filter_ctx *c = ctx;
  if (!in_filter_ids(ctx, id)) return 0;
  return c->f->allow ? c->f->allow(c->f->ctx, id) : 1;
}

/* How a search runs: clipdb's own scan (scan.h) or FAISS's with a selector, the filter's
 * tests, and the nprobe to start with (see ivf.h for the strategy). */
typedef struct search_plan {
  int own_scan;
  FaissIDSelector *sel; /* FAISS's search only */
  ivf_scan_filter scan; /* the own scan only */
  int widened;          /* probed once more for a lazy predicate */
  int spent;            /* the predicate's budget cannot take that */
  filter_ctx fctx;
  size_t nprobe;
} search_plan;

/* The FAISS selector for the filter: a batch set for small id sets (exhaustive), else one
 * asking filter_allows. */
static int make_selector(search_plan *plan, const cdb_filter *f, int exhaustive, cdb_error *err) {
  if (exhaustive && !f->allow) {
    FaissIDSelectorBatch *batch = NULL;
    if (faiss_IDSelectorBatch_new(&batch, (size_t)f->n_ids, f->ids))
      return ivf_faiss_fail(err, "filter");
    plan->sel = (FaissIDSelector *)batch;
    return 0;
  }
  if (cdb_faiss_IDSelectorCallback_new(&plan->sel, filter_allows, &plan->fctx))
    return ivf_faiss_fail(err, "filter");
  return 0;
}

static void free_plan(search_plan *plan) {
  if (plan->sel) faiss_IDSelector_free(plan->sel);
  free(plan->fctx.bits);
}

static int plan_search(const cdb_index *idx, const cdb_search_opts *opts, search_plan *plan,
                       cdb_error *err) {
  size_t nprobe = opts && opts->nprobe > 0 ? (size_t)opts->nprobe : (size_t)idx->nprobe;
  const cdb_filter *f = opts ? opts->filter : NULL;
  int64_t count = cdb_index_count(idx);
  memset(plan, 0, sizeof *plan);
  plan->own_scan = ivf_scan_supported(idx);
  if (f && f->ids && f->n_ids < 0) return cdb_error_set(err, "index: filter: negative id count");
  if (f && !f->ids && !f->allow) f = NULL; /* an empty filter allows everything */
  if (f && f->allow && f->max_allow > 0 && !plan->own_scan)
    return CDB_INDEX_FILTER_SPENT; /* FAISS would ask the predicate of every probed id */
  /* A set no bigger than twice (FAISS's SQ8 scan: once) what an unfiltered search scans: cheaper
   * to test every held id and compute similarities for the set only. */
  double scanned = (double)count * (double)nprobe / (double)idx->nlist;
  double factor = plan->own_scan || ivf_is_flat(idx) ? 2 : 1;
  int exhaustive = f && f->ids && (double)f->n_ids <= factor * scanned + SMALL_FILTER_IDS;
  if (f) {
    plan->fctx.f = f;
    build_bitmap(&plan->fctx);
    if (plan->own_scan) {
      plan->scan = (ivf_scan_filter){f->ids ? in_filter_ids : NULL, &plan->fctx, f->allow, f->ctx,
                                     f->max_allow > 0 ? f->max_allow : -1, 0, 0};
    } else if (make_selector(plan, f, exhaustive, err) < 0) {
      free(plan->fctx.bits);
      return -1;
    }
    if (exhaustive) nprobe = idx->nlist;
    else if (f->ids && f->n_ids > 0)
      nprobe = (size_t)ceil((double)nprobe * (double)count / (double)f->n_ids);
  }
  plan->nprobe = nprobe < 1 ? 1 : nprobe > idx->nlist ? idx->nlist : nprobe;
  return 0;
}

/* The nprobe of the next try, 0 when done. Widened x4 while the probed lists (or a filter) leave
 * fewer than k: at nprobe == nlist every list is scanned, so k results come back whenever k
 * (allowed) items exist. A lazy predicate that rejected many candidates: its allowed nearest
 * neighbours lie deeper than the unfiltered ones (rank ~ k / selectivity), so the lists are
 * probed once more, sqrt(1 / selectivity) times as many (at 1M x 512 and a 10 % filter recall@10
 * went from 0.92 to 0.97; the full 1 / selectivity of the id-set path costs 3x more). */
static size_t next_nprobe(const cdb_index *idx, search_plan *plan, size_t nprobe, int too_few) {
  if (nprobe >= idx->nlist) return 0;
  if (too_few) return nprobe * 4 > idx->nlist ? idx->nlist : nprobe * 4;
  ivf_scan_filter *f = &plan->scan;
  if (!plan->own_scan || !f->allow || plan->widened || f->accepted <= 0) return 0;
  plan->widened = 1;
  double rejects = (double)f->asked / (double)f->accepted;
  double wider = ceil((double)nprobe * sqrt(rejects));
  if (wider < 1.25 * (double)nprobe) return 0;
  /* about as many asks again: when the budget cannot take them, the caller lists the ids */
  if (f->allow_budget >= 0 && (double)f->asked > (double)f->allow_budget) plan->spent = 1;
  return plan->spent ? 0 : wider > (double)idx->nlist ? idx->nlist : (size_t)wider;
}

/* k results into dist/labels (-1 labels past the last found). */
static int search_once(const cdb_index *idx, const float *q, int64_t k, search_plan *plan,
                       size_t nprobe, float *dist, int64_t *labels, cdb_error *err) {
  if (plan->own_scan) {
    int64_t n = 0;
    int rc = ivf_scan_knn(idx, q, nprobe, k, plan->fctx.f ? &plan->scan : NULL, labels, dist, &n,
                          err);
    for (int64_t i = n; i < k; i++) labels[i] = -1;
    return rc == IVF_SCAN_BUDGET_SPENT ? CDB_INDEX_FILTER_SPENT : rc;
  }
  FaissSearchParametersIVF *sp = NULL;
  if (faiss_SearchParametersIVF_new_with(&sp, plan->sel, nprobe, 0))
    return ivf_faiss_fail(err, "search");
  int rc = faiss_Index_search_with_params(idx->faiss, 1, q, k, (FaissSearchParameters *)sp, dist,
                                          labels);
  faiss_SearchParametersIVF_free(sp);
  return rc ? ivf_faiss_fail(err, "search") : 0;
}

static int64_t count_found(const int64_t *labels, int64_t k) {
  int64_t n = 0;
  while (n < k && labels[n] != -1) n++;
  return n;
}

/* ---- exact re-ranking (compressed encodings) ---- */

static int reranks(const cdb_search_opts *opts) { return opts && opts->fetch; }

/* Raw vectors need no extra candidates: their k are only re-scored, so that similarities are
 * the same (double-accumulated) numbers whatever the index's kind. */
static int64_t candidate_count(const cdb_index *idx, const cdb_search_opts *opts, int64_t k,
                               int64_t count) {
  if (ivf_is_flat(idx)) return k;
  int64_t per = opts->rerank > 0 ? opts->rerank : CDB_INDEX_RERANK;
  int64_t n = k * per > k + CDB_INDEX_RERANK_MIN ? k * per : k + CDB_INDEX_RERANK_MIN;
  return min64(min64(n, CDB_INDEX_MAX_K), count);
}

typedef struct scored {
  int64_t id;
  float sim;
} scored;

static int cmp_scored_desc(const void *a, const void *b) {
  const scored *x = a, *y = b;
  if (x->sim != y->sim) return x->sim < y->sim ? 1 : -1;
  return (x->id > y->id) - (x->id < y->id);
}

/* Replaces the n candidates' similarities by exact ones from the caller's vectors, drops those
 * it has no vector for (and those below min_sim) and sorts best first. */
static int rescore(const cdb_index *idx, const float *q, const cdb_search_opts *opts, float min_sim,
                   int64_t *ids, float *sims, int64_t *n, cdb_error *err) {
  float *vec = malloc((size_t)idx->dim * sizeof *vec);
  scored *s = malloc((size_t)(*n > 0 ? *n : 1) * sizeof *s);
  int64_t kept = 0;
  int rc = (!vec || !s) ? cdb_error_set(err, "index: out of memory") : 0;
  for (int64_t i = 0; rc == 0 && i < *n; i++) {
    int found = opts->fetch(opts->fetch_ctx, ids[i], vec, err);
    if (found < 0) rc = -1;
    else if (found > 0) {
      float sim = (float)cdb_vec_dot(q, vec, (size_t)idx->dim);
      if (sim >= min_sim) s[kept++] = (scored){ids[i], sim};
    }
  }
  if (rc == 0) {
    qsort(s, (size_t)kept, sizeof *s, cmp_scored_desc);
    for (int64_t i = 0; i < kept; i++) {
      ids[i] = s[i].id;
      sims[i] = s[i].sim;
    }
    *n = kept;
  }
  free(vec);
  free(s);
  return rc;
}

int cdb_index_search(const cdb_index *idx, const float *query, int k, const cdb_search_opts *opts,
                     int64_t *ids, float *sims, int *n_found, cdb_error *err) {
  *n_found = 0;
  if (k < 1 || k > CDB_INDEX_MAX_K)
    return cdb_error_set(err, "index: k=%d out of range 1..%d", k, CDB_INDEX_MAX_K);
  if (!query || !ids || !sims) return cdb_error_set(err, "index: search: null argument");
  if (opts && opts->filter && opts->filter->ids && opts->filter->n_ids == 0)
    return 0; /* an empty allow-list */
  int64_t kk = min64(k, cdb_index_count(idx));
  if (kk == 0) return 0;
  int rerank = reranks(opts);
  int64_t kc = rerank ? candidate_count(idx, opts, kk, cdb_index_count(idx)) : kk;
  const float *q = query;
  float *dist = malloc((size_t)kc * sizeof *dist);
  int64_t *labels = malloc((size_t)kc * sizeof *labels);
  search_plan plan;
  int rc = (!dist || !labels) ? cdb_error_set(err, "index: out of memory") : 0;
  if (rc == 0) rc = ivf_check_unit(query, idx->dim, "query", 0, err);
  if (rc == 0) rc = plan_search(idx, opts, &plan, err);
  if (rc == 0) {
    size_t nprobe = plan.nprobe;
    do rc = search_once(idx, q, kc, &plan, nprobe, dist, labels, err);
    while (rc == 0 && (nprobe = next_nprobe(idx, &plan, nprobe, count_found(labels, kc) < kk)));
    if (rc == 0 && plan.spent) rc = CDB_INDEX_FILTER_SPENT;
    free_plan(&plan);
  }
  if (rc == 0) rc = check_damage(idx, 0, err);
  int64_t n = rc == 0 ? count_found(labels, kc) : 0;
  if (rc == 0 && rerank) rc = rescore(idx, q, opts, -INFINITY, labels, dist, &n, err);
  if (rc == 0) {
    n = min64(n, kk);
    memcpy(ids, labels, (size_t)n * sizeof *ids);
    memcpy(sims, dist, (size_t)n * sizeof *sims);
    *n_found = (int)n;
  }
  free(dist);
  free(labels);
  return rc;
}

static int collect_range(FaissRangeSearchResult *rsr, int64_t **ids, float **sims, int64_t *n_found,
                         cdb_error *err) {
  size_t *lims = NULL;
  int64_t *labels = NULL;
  float *dist = NULL;
  faiss_RangeSearchResult_lims(rsr, &lims);
  faiss_RangeSearchResult_labels(rsr, &labels, &dist);
  size_t n = lims[1] - lims[0];
  if (n == 0) return 0;
  scored *s = malloc(n * sizeof *s);
  *ids = malloc(n * sizeof **ids);
  *sims = malloc(n * sizeof **sims);
  if (!s || !*ids || !*sims) {
    free(s);
    free(*ids);
    free(*sims);
    *ids = NULL;
    *sims = NULL;
    return cdb_error_set(err, "index: out of memory");
  }
  for (size_t i = 0; i < n; i++) s[i] = (scored){labels[lims[0] + i], dist[lims[0] + i]};
  qsort(s, n, sizeof *s, cmp_scored_desc);
  for (size_t i = 0; i < n; i++) {
    (*ids)[i] = s[i].id;
    (*sims)[i] = s[i].sim;
  }
  free(s);
  *n_found = (int64_t)n;
  return 0;
}

/* The FAISS range search: items with similarity >= radius among the plan's lists. */
static int faiss_range(const cdb_index *idx, const float *q, float radius, const search_plan *plan,
                       int64_t **ids, float **sims, int64_t *n_found, cdb_error *err) {
  FaissRangeSearchResult *rsr = NULL;
  FaissSearchParametersIVF *sp = NULL;
  int rc = 0;
  if (faiss_RangeSearchResult_new(&rsr, 1) ||
      faiss_SearchParametersIVF_new_with(&sp, plan->sel, plan->nprobe, 0))
    rc = ivf_faiss_fail(err, "range search");
  /* FAISS keeps inner products strictly above the radius; ivf.h promises >= min_sim. */
  else if (cdb_faiss_Index_range_search_with_params(idx->faiss, 1, q,
                                                    nextafterf(radius, -INFINITY),
                                                    (FaissSearchParameters *)sp, rsr))
    rc = ivf_faiss_fail(err, "range search");
  else rc = collect_range(rsr, ids, sims, n_found, err);
  if (sp) faiss_SearchParametersIVF_free(sp);
  if (rsr) faiss_RangeSearchResult_free(rsr);
  return rc;
}

int cdb_index_range_search(const cdb_index *idx, const float *query, float min_sim,
                           const cdb_search_opts *opts, int64_t **ids, float **sims,
                           int64_t *n_found, cdb_error *err) {
  *ids = NULL;
  *sims = NULL;
  *n_found = 0;
  if (!isfinite(min_sim)) return cdb_error_set(err, "index: range search: min_sim must be finite");
  if (!query) return cdb_error_set(err, "index: range search: null query");
  if (cdb_index_count(idx) == 0 ||
      (opts && opts->filter && opts->filter->ids && opts->filter->n_ids == 0))
    return 0;
  const float *q = query;
  int rerank = reranks(opts);
  float radius = rerank && !ivf_is_flat(idx) ? min_sim - CDB_INDEX_RANGE_SLACK : min_sim;
  search_plan plan;
  int rc = ivf_check_unit(query, idx->dim, "query", 0, err);
  if (rc == 0) rc = plan_search(idx, opts, &plan, err);
  if (rc == 0) {
    if (!plan.own_scan) rc = faiss_range(idx, q, radius, &plan, ids, sims, n_found, err);
    else if ((rc = ivf_scan_range(idx, q, plan.nprobe, radius,
                                  plan.fctx.f ? &plan.scan : NULL, ids, sims, n_found, err)) ==
             IVF_SCAN_BUDGET_SPENT)
      rc = CDB_INDEX_FILTER_SPENT;
    if (rc == 0) rc = check_damage(idx, 0, err);
    if (rc == 0 && rerank && *n_found > 0)
      rc = rescore(idx, q, opts, min_sim, *ids, *sims, n_found, err);
    if (rc != 0) {
      free(*ids);
      free(*sims);
      *ids = NULL;
      *sims = NULL;
      *n_found = 0;
    }
    free_plan(&plan);
  }
  return rc;
}

/* ---- training ---- */

int cdb_index_needs_training(const cdb_index *idx) {
  if (!train_enabled(idx)) return 0;
  int64_t n = cdb_index_count(idx);
  if (idx->trained_at == 0) {
    int64_t min = CDB_INDEX_TRAIN_MIN;
    int fixed = idx->fixed_nlist ? idx->fixed_nlist : idx->nlist_param;
    if ((int64_t)fixed * 39 > min) min = (int64_t)fixed * 39;
    return n >= min;
  }
  return n >= CDB_INDEX_RETRAIN_GROWTH * idx->trained_at;
}

static int in_sample(int64_t id, double fraction) {
  uint64_t x = (uint64_t)id ^ SAMPLE_SEED;
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return (double)(x >> 11) * 0x1.0p-53 < fraction;
}

/* Walks every list of src, handing (ids, vectors) of each to fn. */
typedef cdb_index_scan_fn list_fn;

void cdb_index_set_vector_fetch(cdb_index *idx, cdb_vector_fetch fetch, void *ctx) {
  idx->fetch = fetch;
  idx->fetch_ctx = ctx;
}

/* Replaces decoded vectors by the caller's exact ones (kept when it has none for an id). */
static int fetch_exact(const cdb_index *src, size_t n, const int64_t *ids, float *vecs,
                       cdb_error *err) {
  for (size_t i = 0; i < n; i++)
    if (src->fetch(src->fetch_ctx, ids[i], vecs + i * (size_t)src->dim, err) < 0) return -1;
  return 0;
}

/* exact: vectors of compressed codes come from src->fetch when set (training, relisting). A long
 * list (the untrained stage's one list holds everything) goes to fn in parts of LIST_CHUNK, so
 * that walking 1M vectors needs 32 MiB, not a copy of them all. */
static int for_each_list(const cdb_index *src, int exact, list_fn fn, void *ctx, cdb_error *err) {
  exact = exact && src->fetch && !ivf_is_flat(src);
  if (check_damage(src, 1, err) < 0) return -1;
  int64_t *ids = malloc(LIST_CHUNK * sizeof *ids);
  float *vecs = malloc(LIST_CHUNK * (size_t)src->dim * sizeof *vecs);
  int rc = !ids || !vecs ? cdb_error_set(err, "index: out of memory") : 0;
  for (size_t l = 0; rc == 0 && l < src->nlist; l++) {
    size_t size = faiss_IndexIVF_get_list_size(src->ivf, l);
    for (size_t off = 0; rc == 0 && off < size; off += LIST_CHUNK) {
      size_t n = size - off < LIST_CHUNK ? size - off : LIST_CHUNK;
      if (cdb_faiss_IndexIVF_list_get(src->ivf, l, off, n, ids, vecs))
        rc = ivf_faiss_fail(err, "reading inverted list");
      else if (exact && fetch_exact(src, n, ids, vecs, err) < 0) rc = -1;
      else rc = fn(ctx, n, ids, vecs, err);
    }
  }
  free(ids);
  free(vecs);
  return rc;
}

int cdb_index_scan(const cdb_index *idx, cdb_index_scan_fn fn, void *ctx, cdb_error *err) {
  return for_each_list(idx, 0, fn, ctx, err);
}

typedef struct sampler {
  int dim;
  double fraction;
  float *data;
  int64_t *ids;
  int64_t n, cap;
} sampler;

static int take_sample(void *ctx, size_t n, const int64_t *ids, const float *vecs, cdb_error *err) {
  sampler *s = ctx;
  for (size_t i = 0; i < n; i++) {
    if (!in_sample(ids[i], s->fraction)) continue;
    if (s->n == s->cap) {
      int64_t cap = s->cap ? s->cap * 2 : 4096;
      float *p = realloc(s->data, (size_t)cap * (size_t)s->dim * sizeof *p);
      if (p) s->data = p;
      int64_t *pi = p ? realloc(s->ids, (size_t)cap * sizeof *pi) : NULL;
      if (!pi) return cdb_error_set(err, "index: out of memory");
      s->ids = pi;
      s->cap = cap;
    }
    s->ids[s->n] = ids[i];
    memcpy(s->data + (size_t)s->n * s->dim, vecs + i * (size_t)s->dim,
           (size_t)s->dim * sizeof *vecs);
    s->n++;
  }
  return 0;
}

typedef struct adder {
  FaissIndex *dst;
  int dim;
  float *buf;
  int64_t *ids;
  int64_t fill;
  const float *centroids; /* the trained quantizer's, or NULL: FAISS assigns */
  int nlist;
  int64_t *lists;
} adder;

static int flush_adder(adder *a, cdb_error *err) {
  if (!a->fill) return 0;
  if (a->centroids) {
    if (cdb_kmeans_assign(a->buf, a->fill, a->centroids, a->nlist, a->dim, a->lists, err) < 0)
      return -1;
    if (cdb_faiss_IndexIVF_add_preassigned(faiss_IndexIVF_cast(a->dst), a->fill, a->buf, a->ids,
                                           a->lists))
      return ivf_faiss_fail(err, "re-adding vectors");
  } else if (faiss_Index_add_with_ids(a->dst, a->fill, a->buf, a->ids)) {
    return ivf_faiss_fail(err, "re-adding vectors");
  }
  a->fill = 0;
  return 0;
}

static int readd(void *ctx, size_t n, const int64_t *ids, const float *vecs, cdb_error *err) {
  adder *a = ctx;
  for (size_t i = 0; i < n; i++) {
    memcpy(a->buf + (size_t)a->fill * a->dim, vecs + i * (size_t)a->dim,
           (size_t)a->dim * sizeof *vecs);
    a->ids[a->fill++] = ids[i];
    if (a->fill == ADD_BATCH && flush_adder(a, err) < 0) return -1;
  }
  return 0;
}

/* Vectors of the training sample kept to choose the default nprobe (scan.h). */
typedef struct calibration_queries {
  float *vecs;
  int64_t ids[CALIBRATION_QUERIES];
  int n;
} calibration_queries;

/* Keeps up to CALIBRATION_QUERIES of the sample's vectors, evenly spaced. */
static int keep_queries(const sampler *s, calibration_queries *cq, cdb_error *err) {
  int n = s->n < CALIBRATION_QUERIES ? (int)s->n : CALIBRATION_QUERIES;
  cq->vecs = malloc((size_t)(n > 0 ? n : 1) * (size_t)s->dim * sizeof *cq->vecs);
  if (!cq->vecs) return cdb_error_set(err, "index: out of memory");
  for (int i = 0; i < n; i++) {
    int64_t row = (int64_t)i * s->n / n;
    memcpy(cq->vecs + (size_t)i * s->dim, s->data + (size_t)row * s->dim,
           (size_t)s->dim * sizeof *cq->vecs);
    cq->ids[i] = s->ids[row];
  }
  cq->n = n;
  return 0;
}

/* k-means (kmeans.h) for the coarse centroids of fi on a sample of src's vectors; they go into
 * fi's quantizer (FAISS's train then skips its own k-means and trains only the encoder, on the
 * same sample) and, unit length, into centroids (nlist x dim) for the assignment. */
static int train_centroids(const cdb_index *src, FaissIndex *fi, int nlist, float *centroids,
                           calibration_queries *cq, cdb_error *err) {
  int64_t n = cdb_index_count(src);
  int64_t want = (int64_t)SAMPLE_PER_LIST * nlist;
  if (want < SAMPLE_MIN) want = SAMPLE_MIN;
  sampler s = {src->dim, want >= n ? 2.0 : (double)want / (double)n, NULL, NULL, 0, 0};
  int rc = for_each_list(src, 1, take_sample, &s, err);
  if (rc == 0 && s.n < nlist)
    rc = cdb_error_set(err, "index: %lld vectors are too few to train %d lists", (long long)s.n,
                       nlist);
  if (rc == 0)
    rc = cdb_kmeans_train(s.data, s.n, src->dim, nlist, KMEANS_ITERATIONS, SAMPLE_SEED,
                          centroids, err);
  if (rc == 0) rc = keep_queries(&s, cq, err);
  FaissIndex *quantizer = rc == 0 ? faiss_IndexIVF_quantizer(faiss_IndexIVF_cast(fi)) : NULL;
  if (rc == 0 &&
      (faiss_Index_add(quantizer, nlist, centroids) || faiss_Index_train(fi, s.n, s.data)))
    rc = ivf_faiss_fail(err, "training");
  free(s.data);
  free(s.ids);
  return rc;
}

/* A new FAISS index holding src's vectors: trained with nlist lists, or the exact stage when
 * nlist is 1. */
static FaissIndex *train_new_faiss(const cdb_index *src, int nlist, char *factory,
                                   calibration_queries *cq, cdb_error *err) {
  FaissIndex *fi = nlist > 1 ? new_faiss_ivf(src->dim, nlist, src->encoding, factory, err)
                             : new_exact_stage(src->dim, factory, err);
  if (!fi) return NULL;
  float *centroids =
      nlist > 1 ? malloc((size_t)nlist * (size_t)src->dim * sizeof *centroids) : NULL;
  adder a = {fi, src->dim, malloc(ADD_BATCH * (size_t)src->dim * sizeof(float)),
             malloc(ADD_BATCH * sizeof(int64_t)), 0, centroids, nlist,
             malloc(ADD_BATCH * sizeof(int64_t))};
  int rc = (!a.buf || !a.ids || !a.lists || (nlist > 1 && !centroids))
               ? cdb_error_set(err, "index: out of memory")
               : 0;
  if (rc == 0 && nlist > 1) rc = train_centroids(src, fi, nlist, centroids, cq, err);
  if (rc == 0) rc = for_each_list(src, 1, readd, &a, err);
  if (rc == 0) rc = flush_adder(&a, err);
  free(a.buf);
  free(a.ids);
  free(a.lists);
  free(centroids);
  if (rc < 0) {
    faiss_Index_free(fi);
    return NULL;
  }
  return fi;
}

/* The default nprobe from the data where the index can be scanned (scan.h), else the rule's. */
static void calibrate_nprobe(cdb_index *idx, const calibration_queries *cq) {
  int np = ivf_scan_calibrate_nprobe(idx, cq->vecs, cq->ids, cq->n, CALIBRATION_RECALL,
                                     MIN_NPROBE);
  if (np < 1) return;
  idx->nprobe = np;
  faiss_IndexIVF_set_nprobe(idx->ivf, (size_t)np);
}

/* A copy of idx holding the same vectors with nlist lists (1: the exact, untrained state). */
static cdb_index *relist_copy(const cdb_index *idx, int nlist, cdb_error *err) {
  int64_t n = cdb_index_count(idx);
  cdb_index *copy = calloc(1, sizeof *copy);
  if (!copy) {
    cdb_error_set(err, "index: out of memory");
    return NULL;
  }
  *copy = *idx;
  copy->mapped = NULL;
  memset(&copy->ids, 0, sizeof copy->ids);
  calibration_queries cq = {NULL, {0}, 0};
  FaissIndex *fi = train_new_faiss(idx, nlist, copy->factory, &cq, err);
  if (!fi) {
    free(cq.vecs);
    free(copy);
    return NULL;
  }
  ivf_set_faiss(copy, fi);
  if (nlist > 1 && idx->nprobe_param <= 0) calibrate_nprobe(copy, &cq);
  free(cq.vecs);
  copy->trained_at = nlist > 1 ? n : 0;
  int rc = idx->ids_valid ? (cdb_idset_copy(&copy->ids, &idx->ids) < 0
                                 ? cdb_error_set(err, "index: out of memory")
                                 : 0)
                          : ivf_rebuild_idset(copy, err);
  if (rc < 0) {
    cdb_index_free(copy);
    return NULL;
  }
  copy->ids_valid = 1;
  return copy;
}

static int trainable_nlist(const cdb_index *idx, int64_t n) {
  int nlist = target_nlist(idx, n);
  return nlist >= 2 && n >= 39LL * nlist ? nlist : 0;
}

cdb_index *cdb_index_train_copy(const cdb_index *idx, cdb_error *err) {
  if (!train_enabled(idx)) {
    cdb_error_set(err, "index: type 'flat' is never trained");
    return NULL;
  }
  int64_t n = cdb_index_count(idx);
  int nlist = trainable_nlist(idx, n);
  if (!nlist) {
    nlist = target_nlist(idx, n);
    cdb_error_set(err, "index: %lld vectors are too few to train %d lists (39 per list needed)",
                  (long long)n, nlist < 2 ? 2 : nlist);
    return NULL;
  }
  return relist_copy(idx, nlist, err);
}

/* Replaces idx's contents by fresh's (same vectors, new lists). */
static void swap_in(cdb_index *idx, cdb_index *fresh) {
  release_faiss(idx);
  cdb_idset_free(&idx->ids);
  *idx = *fresh;
  free(fresh);
}

int cdb_index_train(cdb_index *idx, cdb_error *err) {
  cdb_index *fresh = cdb_index_train_copy(idx, err);
  if (!fresh) return -1;
  swap_in(idx, fresh);
  return 0;
}

/* nlist * sum(size^2) / n^2: 1 when every list holds the same number of vectors, nlist when
 * one list holds them all. */
static double imbalance(const cdb_index *idx) {
  double n = 0, sq = 0;
  for (size_t l = 0; l < idx->nlist; l++) {
    double size = (double)faiss_IndexIVF_get_list_size(idx->ivf, l);
    n += size;
    sq += size * size;
  }
  return n > 0 ? (double)idx->nlist * sq / (n * n) : 1.0;
}

int cdb_index_needs_rebalance(const cdb_index *idx) {
  if (idx->nlist <= 1 || idx->trained_at == 0) return 0;
  int64_t n = cdb_index_count(idx);
  /* The factor cannot exceed nlist: small indexes get a lower bar. */
  double most = (double)idx->nlist / 2 < 1.5 ? 1.5 : (double)idx->nlist / 2;
  if (most > CDB_INDEX_MAX_IMBALANCE) most = CDB_INDEX_MAX_IMBALANCE;
  return n * CDB_INDEX_RETRAIN_GROWTH <= idx->trained_at || n < 39LL * (int64_t)idx->nlist / 4 ||
         imbalance(idx) > most;
}

int cdb_index_rebalance(cdb_index *idx, cdb_error *err) {
  int nlist = train_enabled(idx) ? trainable_nlist(idx, cdb_index_count(idx)) : 0;
  cdb_index *fresh = relist_copy(idx, nlist ? nlist : 1, err);
  if (!fresh) return -1;
  swap_in(idx, fresh);
  return 0;
}
