/* scan.h (internal to index/): clipdb's own search of an IVF index's inverted lists, for raw
 * float32 vectors and FAISS's 8-bit scalar codes (SQ8).
 *
 * Debian's generic FAISS build decodes an SQ8 code one component at a time (~0.6 us per 512-d
 * code here), which made scanning, not the coarse step, most of a search at 1M rows. Here a
 * code's similarity to the query is one float x uint8 dot product plus a per-list constant:
 * for component i, x_i = vmin_i + (code_i + 0.5) / 255 * vdiff_i (+ the list's centroid for
 * residual codes), so q.x = q.c + sum_i q_i (vmin_i + 0.5 vdiff_i / 255) + sum_i w_i code_i with
 * w_i = q_i vdiff_i / 255, computed in integers (w as int16 with one scale: AVX-512BW / AVX2
 * vpmaddwd, 32 / 16 codes' bytes per instruction). The kernels (AVX-512, AVX2, plain C) follow
 * ipkernel.h's choice of instruction set. Other encodings (PQ, ...) stay with FAISS's search. */
#ifndef CDB_INDEX_SCAN_H
#define CDB_INDEX_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include "index/ivf_internal.h"

/* What a scan keeps. member is tested on every held id before its similarity is computed
 * (cheap: a bitmap or sorted ids); allow is tested lazily, best candidate first, only until k
 * are found, so a costly predicate (a row lookup) runs about k / selectivity times. */
typedef struct ivf_scan_filter {
  int (*member)(void *ctx, int64_t id); /* NULL: every id */
  void *member_ctx;
  int (*allow)(void *ctx, int64_t id); /* NULL: none */
  void *allow_ctx;
  int64_t allow_budget; /* allow calls left, decremented by each; < 0: unlimited */
  int64_t asked, accepted; /* allow calls so far, and how many said yes */
} ivf_scan_filter;

/* Returned when allow_budget ran out before the scan could finish. */
#define IVF_SCAN_BUDGET_SPENT 1

/* 1 when the scans below can search idx (a flat quantizer over raw vectors or SQ8 codes). */
int ivf_scan_supported(const cdb_index *idx);

/* The k best allowed items (by the codes' similarity) of the nprobe lists nearest q: ids and
 * sims best first (ties: lower id first), *n_found of them. Returns 0, -1 with err set, or
 * IVF_SCAN_BUDGET_SPENT. */
int ivf_scan_knn(const cdb_index *idx, const float *q, size_t nprobe, int64_t k,
                 ivf_scan_filter *f, int64_t *ids, float *sims, int64_t *n_found, cdb_error *err);

/* Every allowed item of the nprobe lists nearest q with similarity >= min_sim, best first, in
 * malloc'd arrays (NULL when none). Returns as ivf_scan_knn. */
int ivf_scan_range(const cdb_index *idx, const float *q, size_t nprobe, float min_sim,
                   ivf_scan_filter *f, int64_t **ids, float **sims, int64_t *n_found,
                   cdb_error *err);

/* The smallest nprobe >= min_nprobe (growing by a quarter) whose scans find `target` of the
 * 10 nearest neighbours that an exhaustive scan finds, for nq queries taken from the indexed
 * vectors (each query's own id left out); runs on the worker pool. -1 when idx cannot be
 * scanned or on failure (the caller keeps its rule). */
int ivf_scan_calibrate_nprobe(const cdb_index *idx, const float *queries,
                              const int64_t *query_ids, int nq, double target, int min_nprobe);

#endif
