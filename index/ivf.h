/* ivf.h: a collection index over L2-normalised float32 vectors with int64 ids, on FAISS.
 *
 * Similarity is the inner product (cosine for normalised vectors); results come best first.
 * The index starts exact (flat) and becomes IVF once large enough to train (type "auto"), or
 * uses a FAISS factory string chosen by the user ("IVF1024,Flat", "IVF256,SQ8", "IVF256,PQ32",
 * "Flat"). It knows nothing of SQLite or CLIP: the caller owns the vectors and keeps the index
 * as a cache it can rebuild or serialise into pieces of bounded size.
 *
 * Thread-safety: searches may run concurrently with each other; add/remove/train/serialise need
 * exclusive access (the caller serialises writers). Functions return 0 / -1 with err set. */
#ifndef CDB_IVF_H
#define CDB_IVF_H

#include <stddef.h>
#include <stdint.h>

#include "src/err.h"

typedef struct cdb_index cdb_index;

typedef struct cdb_index_params {
  const char *type; /* "auto" (default), "flat", or a FAISS factory string such as "IVF1024,Flat" */
  int nlist;        /* 0: chosen from the size (about 4*sqrt(n), a power of two) */
  int nprobe;       /* 0: default chosen for recall */
} cdb_index_params;

cdb_index_params cdb_index_default_params(void);

/* Validates params (e.g. an unknown factory string is an error here, not at first add). */
cdb_index *cdb_index_new(int dim, const cdb_index_params *params, cdb_error *err);
void cdb_index_free(cdb_index *idx);

int cdb_index_dim(const cdb_index *idx);
int64_t cdb_index_count(const cdb_index *idx);

/* Adds n vectors; an id already present is replaced. Vectors with NaN/Inf are refused. */
int cdb_index_add(cdb_index *idx, int64_t n, const int64_t *ids, const float *vectors,
                  cdb_error *err);
/* Removes the ids present; *n_removed (optional) counts them. */
int cdb_index_remove(cdb_index *idx, int64_t n, const int64_t *ids, int64_t *n_removed,
                     cdb_error *err);

/* Filter for searches: an id is allowed when it is in the sorted `ids` array (when non-NULL)
 * and `allow(ctx, id)` returns non-zero (when non-NULL). n_ids is the set's size, used to pick
 * the strategy (exact scan of a small candidate set vs. FAISS selector during IVF search). */
typedef struct cdb_filter {
  const int64_t *ids; /* sorted ascending, or NULL */
  int64_t n_ids;
  int (*allow)(void *ctx, int64_t id);
  void *ctx;
} cdb_filter;

typedef struct cdb_search_opts {
  int nprobe;                 /* 0: the index's default */
  const cdb_filter *filter;   /* NULL: no filter */
} cdb_search_opts;

/* Top-k for one query: writes up to k (id, similarity) pairs best first; *n_found gets how
 * many (fewer than k only when fewer than k allowed items exist, or an IVF probe missed them). */
int cdb_index_search(const cdb_index *idx, const float *query, int k, const cdb_search_opts *opts,
                     int64_t *ids, float *sims, int *n_found, cdb_error *err);

/* All items with similarity >= min_sim; arrays malloc'd (caller frees), best first. */
int cdb_index_range_search(const cdb_index *idx, const float *query, float min_sim,
                           const cdb_search_opts *opts, int64_t **ids, float **sims,
                           int64_t *n_found, cdb_error *err);

/* Training policy. cdb_index_needs_training: the index should be (re)trained now (flat and
 * large enough for IVF, or grown several-fold since the last training). cdb_index_train
 * retrains from a deterministic sample of the vectors it holds and re-adds them; searches
 * before it returns see the old index. */
int cdb_index_needs_training(const cdb_index *idx);
int cdb_index_train(cdb_index *idx, cdb_error *err);

/* Description for `info`: kind ("flat"/"ivf"), nlist, nprobe, factory string. */
typedef struct cdb_index_info {
  char kind[16];
  char factory[64];
  int nlist;
  int nprobe;
  int64_t count;
  int64_t trained_at_count;
} cdb_index_info;
void cdb_index_get_info(const cdb_index *idx, cdb_index_info *info);

/* Serialisation into pieces of at most piece_bytes each: `emit` is called in order with each
 * piece (return non-zero to abort). Loading takes the pieces back through `next`, which returns
 * 1 with a piece, 0 at the end, -1 on error. */
typedef int (*cdb_piece_emit)(void *ctx, const void *data, size_t len);
typedef int (*cdb_piece_next)(void *ctx, const void **data, size_t *len);
int cdb_index_save(const cdb_index *idx, size_t piece_bytes, cdb_piece_emit emit, void *ctx,
                   cdb_error *err);
cdb_index *cdb_index_load(cdb_piece_next next, void *ctx, cdb_error *err);

#endif
