/* ivf.h: a collection index over L2-normalised float32 vectors with int64 ids, on FAISS.
 * It knows nothing of SQLite or CLIP: the caller owns the vectors and keeps the
 * index as a cache it can rebuild (re-add), serialise into pieces of bounded size, or save as a
 * memory-mappable cache file.
 *
 * Similarity is the inner product, which is the cosine because vectors and queries arrive unit
 * length (src/vec.h's cdb_vec_normalise, done once by the caller): the index checks this and
 * refuses zero, NaN, Inf and other non-unit vectors with an error, without copying or fixing
 * them. Results come best first.
 *
 * Index types (cdb_index_params.type):
 *   "auto" (default)  exact while small, then "IVF<nlist>,SQ8" once trained;
 *   "flat"            always exact;
 *   "IVF,SQ8", "IVF,PQ32", "IVF,Flat"   that encoding, nlist chosen from the size;
 *   "IVF1024,Flat", "IVF256,SQ8", ...   a FAISS factory string with a fixed nlist.
 * Until the first training every type searches exactly (one inverted list holding raw vectors).
 * nlist (auto): a power of two near sqrt(n) with at least 39 points per list (raw and SQ8 lists
 * are scanned with clipdb's own SIMD kernels, index/scan.h, so scanning more codes per query is
 * cheap, while training costs n x nlist). nprobe (default): measured at training, the smallest
 * from 8 up whose scans find 98 % of the 10 nearest neighbours of 32 sample vectors that a scan
 * of every list finds (e.g. 28 of 256 lists on the CLIP-like data of the 100k bench, recall@10
 * 0.995; 87 of 128 on the tests' diffuse 20k x 128 clusters); indexes that cannot be scanned
 * that way keep max(8, ceil(2*sqrt(nlist))). Recall is data-dependent (bench/README.md),
 * so callers may pass their own nprobe per index or per query.
 *
 * Training (cdb_index_needs_training / cdb_index_train) is the caller's call, e.g. at commit:
 * needed once an untrained index holds CDB_INDEX_TRAIN_MIN vectors, then whenever it has grown
 * CDB_INDEX_RETRAIN_GROWTH-fold since the last training. It samples the held vectors by a fixed
 * hash of their ids (deterministic) and re-adds all of them. Until it finishes the old index
 * keeps answering correctly; cdb_index_train_copy builds the retrained index without touching
 * the old one, so readers can keep searching it and the caller swaps when done.
 *
 * Thread-safety: searches may run concurrently with each other; add/remove/train/save need
 * exclusive access (the caller serialises writers). A single search runs on the calling thread. Training's k-means and the assignment of every
 * vector to its list run on clipdb's own kernels and worker pool (index/kmeans.h, src/pool.h);
 * FAISS's add and the encoding use OpenMP threads, see
 * cdb_index_set_threads (on shared machines OMP_WAIT_POLICY=PASSIVE avoids OpenMP workers
 * spinning against OpenBLAS's threads during k-means). Functions return 0 / -1 (or NULL) with err
 * set; FAISS's C++ exceptions never escape (their message is in err). */
#ifndef CDB_IVF_H
#define CDB_IVF_H

#include <stddef.h>
#include <stdint.h>

#include "src/err.h"

#define CDB_INDEX_MAX_DIM 65536
#define CDB_INDEX_MAX_K 100000      /* k outside 1..CDB_INDEX_MAX_K is an error */
#define CDB_INDEX_TRAIN_MIN 10000   /* "auto": exact below this many vectors */
#define CDB_INDEX_RETRAIN_GROWTH 4  /* retrain after growing this many times */
#define CDB_INDEX_MAX_IMBALANCE 4.0 /* list imbalance factor 'optimize' tolerates */

typedef struct cdb_index cdb_index;

typedef struct cdb_index_params {
  const char *type; /* see above; NULL means "auto" */
  int nlist;        /* 0: chosen from the size (ignored when the type fixes it) */
  int nprobe;       /* 0: default chosen for recall */
} cdb_index_params;

cdb_index_params cdb_index_default_params(void);

/* Validates params (an unknown or non-IVF factory string, or PQ m not dividing dim, is an error
 * here, not at first add). dim must be 1..CDB_INDEX_MAX_DIM. */
cdb_index *cdb_index_new(int dim, const cdb_index_params *params, cdb_error *err);
void cdb_index_free(cdb_index *idx);

int cdb_index_dim(const cdb_index *idx);
int64_t cdb_index_count(const cdb_index *idx);

/* Sets OpenMP threads for FAISS's batch work (add, train) started from the calling thread;
 * n <= 0 restores the default (OMP_NUM_THREADS or all cores). Single queries use one thread. */
void cdb_index_set_threads(int n);

/* Adds n vectors (n x dim floats); an id already present is replaced (so is a repeated id within
 * the batch: the last one wins). Id -1 is reserved. On error nothing was added. */
int cdb_index_add(cdb_index *idx, int64_t n, const int64_t *ids, const float *vectors,
                  cdb_error *err);
/* Removes the ids present; *n_removed (optional) counts them. Costs one pass over the ids held
 * (FAISS keeps no id->list map), so remove in batches. */
int cdb_index_remove(cdb_index *idx, int64_t n, const int64_t *ids, int64_t *n_removed,
                     cdb_error *err);

/* Filter for searches: an id is allowed when it is in the sorted `ids` array (when non-NULL)
 * and `allow(ctx, id)` returns non-zero (when non-NULL). `allow` may be called from the
 * searching thread only. Strategy (by selectivity):
 *  - ids only, n_ids <= 1000 + twice the vectors an unfiltered search scans (count * nprobe /
 *    nlist; e.g. 12.5k at 100k/IVF1024/nprobe 64): every list probed, one cheap membership test
 *    per held id and n_ids similarities: exact over the allowed set;
 *  - ids only, larger sets: membership tested per held id, nprobe widened by count/n_ids;
 *  - a predicate: the default nprobe; raw vectors and SQ8 codes (the indexes clipdb scans
 *    itself) ask it lazily, best candidate first, until k are allowed (about k / selectivity
 *    calls), other encodings for every held id of the probed lists;
 * in every case, while fewer than k results come back nprobe is widened (x4) up to all lists,
 * so k results come back whenever k allowed items exist.
 * max_allow > 0 caps the calls of `allow` for one search: when they run out (a predicate that
 * rejects almost everything) the search stops and returns CDB_INDEX_FILTER_SPENT, so that the
 * caller can list the allowed ids instead; 0: no cap. */
typedef struct cdb_filter {
  const int64_t *ids; /* sorted ascending, or NULL */
  int64_t n_ids;
  int (*allow)(void *ctx, int64_t id);
  void *ctx;
  int64_t max_allow;
} cdb_filter;

/* Returned by the searches when the filter's max_allow ran out (nothing is written). */
#define CDB_INDEX_FILTER_SPENT 1

/* Exact re-ranking for compressed encodings (SQ8, PQ): the caller's copy of vector `id` into
 * vec (dim floats, unit length). Returns 1 found, 0 when it has none (the candidate is dropped),
 * -1 with err set on error. */
typedef int (*cdb_vector_fetch)(void *ctx, int64_t id, float *vec, cdb_error *err);

/* With `fetch`, a search of a compressed index takes max(k x rerank, k + CDB_INDEX_RERANK_MIN)
 * candidates by their codes' similarity and returns the best k by the exact similarity of the
 * fetched vectors (a range search takes candidates down to min_sim - CDB_INDEX_RANGE_SLACK and
 * keeps those whose exact similarity is >= min_sim): similarities are exact, recall depends on
 * the candidates only. Raw vectors (Flat, and every index before training) take k candidates,
 * re-scored the same way, so a row's similarity does not depend on the index's kind (a double
 * sum, not FAISS's float one). Without `fetch`, the index's own similarities. */
#define CDB_INDEX_RERANK 4      /* default candidates per result */
#define CDB_INDEX_RERANK_MIN 32 /* at least k + this many candidates */
#define CDB_INDEX_RANGE_SLACK 0.05f

typedef struct cdb_search_opts {
  int nprobe;               /* 0: the index's default; clamped to nlist */
  const cdb_filter *filter; /* NULL: no filter */
  cdb_vector_fetch fetch;   /* NULL: no re-ranking */
  void *fetch_ctx;
  int rerank; /* candidates per result; 0: CDB_INDEX_RERANK */
} cdb_search_opts;

/* Top-k for one query: writes up to k (id, similarity) pairs best first; *n_found gets how
 * many (fewer than k only when fewer than k (allowed) items exist: while the probed lists hold
 * fewer, nprobe is widened x4 up to every list, with or without a filter). opts may be NULL. */
int cdb_index_search(const cdb_index *idx, const float *query, int k, const cdb_search_opts *opts,
                     int64_t *ids, float *sims, int *n_found, cdb_error *err);

/* All items with similarity >= min_sim (e.g. 0.95 for near-duplicates) among the probed lists
 * (all of them while exact; nprobe lists after training: near-duplicates of the query sit in
 * its nearest lists). Arrays malloc'd (caller frees; NULL when none), best first. */
int cdb_index_range_search(const cdb_index *idx, const float *query, float min_sim,
                           const cdb_search_opts *opts, int64_t **ids, float **sims,
                           int64_t *n_found, cdb_error *err);

/* Training policy, see above. cdb_index_train retrains in place (via cdb_index_train_copy). */
/* Where training and rebalancing of compressed codes read the vectors: fetch (the caller's exact
 * copies, by id) instead of the codes' decoded approximations, which re-encoded would add a
 * second quantisation error (and an exact index made from them would not hold the caller's
 * vectors). NULL: decoded codes. Kept by the retrained index. */
void cdb_index_set_vector_fetch(cdb_index *idx, cdb_vector_fetch fetch, void *ctx);
int cdb_index_needs_training(const cdb_index *idx);
int cdb_index_train(cdb_index *idx, cdb_error *err);
cdb_index *cdb_index_train_copy(const cdb_index *idx, cdb_error *err);

/* A trained index whose lists no longer fit its vectors: shrunk CDB_INDEX_RETRAIN_GROWTH-fold
 * since training, lists holding under ~10 vectors on average, or an imbalance factor
 * (nlist * sum(list size^2) / n^2) above CDB_INDEX_MAX_IMBALANCE (nlist/2 for nlist < 8, at
 * least 1.5). cdb_index_rebalance retrains
 * it for its current size, or returns it to the exact (untrained) state when too few vectors
 * remain to train (39 per list). */
int cdb_index_needs_rebalance(const cdb_index *idx);
int cdb_index_rebalance(cdb_index *idx, cdb_error *err);

/* Description for `info`. */
typedef struct cdb_index_info {
  char kind[16];    /* "flat" (exact, untrained) or "ivf" */
  char factory[64]; /* FAISS factory string of the current index */
  int nlist;
  int nprobe; /* default nprobe */
  int64_t count;
  int64_t trained_at_count; /* 0 while untrained */
  int mapped;               /* 1: opened with cdb_index_open_file_mmap and not yet written to */
} cdb_index_info;
void cdb_index_get_info(const cdb_index *idx, cdb_index_info *info);

/* Serialisation into pieces of at most piece_bytes each (>= 4096): `emit` is called in order
 * with each piece (return non-zero to abort). Memory use stays about piece_bytes beyond the
 * index. Loading takes the pieces back in the same order through `next`, which returns 1 with a
 * piece, 0 at the end, -1 on error; piece sizes on load need not match those on save. */
typedef int (*cdb_piece_emit)(void *ctx, const void *data, size_t len);
typedef int (*cdb_piece_next)(void *ctx, const void **data, size_t *len);
int cdb_index_save(const cdb_index *idx, size_t piece_bytes, cdb_piece_emit emit, void *ctx,
                   cdb_error *err);
cdb_index *cdb_index_load(cdb_piece_next next, void *ctx, cdb_error *err);
/* The same without the vectors of a trained index: its quantizer and encoder (e.g. SQ8's
 * ranges) and each list's ids (the untrained exact stage is saved whole). Loading asks `vectors`
 * to hand each (id, vector) to `sink`, which encodes it into its list as FAISS's add would;
 * a vector whose id the snapshot does not hold is skipped, and an id that gets no vector is left
 * out (both are the caller's changes after the snapshot). Vectors must be unit length.
 * cdb_index_load_ids reads both kinds of pieces; cdb_index_load only whole ones. */
typedef int (*cdb_vector_sink)(void *sink_ctx, int64_t id, const float *vec, cdb_error *err);
typedef int (*cdb_vector_source)(void *ctx, cdb_vector_sink sink, void *sink_ctx, cdb_error *err);
int cdb_index_save_ids(const cdb_index *idx, size_t piece_bytes, cdb_piece_emit emit, void *ctx,
                       cdb_error *err);
cdb_index *cdb_index_load_ids(cdb_piece_next next, void *ctx, cdb_vector_source vectors, void *vctx,
                              cdb_error *err);

/* Cold start cache file. cdb_index_save_file writes the index to `path` (via path.tmp and an
 * atomic rename) tagged with `generation` (e.g. the SQLite layer's data generation).
 * cdb_index_open_file_mmap opens it memory-mapped: only the header and the coarse centroids are
 * read; each search touches only the lists it probes, so a new process answers its first query
 * without reading the whole index. It fails (err says why) when the file is missing, corrupt or
 * tagged with another generation than expected_generation: the caller then rebuilds (load
 * pieces or re-add) and writes a fresh cache file. A mapped index is searchable at once; the
 * first add/remove/train/save reads it fully into memory (cost of a normal load). The mapping
 * stays valid if the file is replaced or deleted meanwhile. */
int cdb_index_save_file(const cdb_index *idx, const char *path, uint64_t generation,
                        cdb_error *err);
cdb_index *cdb_index_open_file_mmap(const char *path, uint64_t expected_generation, cdb_error *err);
/* A cache file carries an XXH64 checksum per inverted list and one over everything before the
 * lists. The latter is checked at open; a list is checked the first time anything reads it (a
 * search touches only the lists it probes, so opening stays cheap). A call that meets a damaged
 * list fails ("cache file damaged") and cdb_index_damaged then returns 1: the caller discards
 * the file and rebuilds the index from its own data. cdb_index_verify checks every list now
 * (0, or -1 naming the first damaged list); both are no-ops on an index not mapped from a file.
 * A mapped index checks every list before it is read into memory for a write. */
int cdb_index_damaged(const cdb_index *idx);
int cdb_index_verify(const cdb_index *idx, cdb_error *err);

/* Visits every held item, list by list (a long list in parts): fn gets n ids and their n x dim
 * (decoded) vectors;
 * returning non-zero (with err set) stops the walk with that error. */
typedef int (*cdb_index_scan_fn)(void *ctx, size_t n, const int64_t *ids, const float *vecs,
                                 cdb_error *err);
int cdb_index_scan(const cdb_index *idx, cdb_index_scan_fn fn, void *ctx, cdb_error *err);

/* Reads the generation a cache file is tagged with, without opening the index. */
int cdb_index_file_generation(const char *path, uint64_t *generation, cdb_error *err);

#endif
