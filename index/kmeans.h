/* kmeans.h (internal to index/): spherical k-means for the coarse centroids of an IVF index and
 * the assignment of vectors to their nearest centroid, on ipkernel.h's SIMD kernels and the
 * process's worker pool (src/pool.h).
 *
 * It computes what FAISS's Clustering does for an IndexIVF with the inner product (Lloyd
 * iterations, assignment by the largest inner product, centroids re-normalised to unit length
 * each iteration, an empty cluster re-seeded by splitting the largest one), so the centroids go
 * straight into the IVF's IndexFlatIP quantizer. Deterministic for a given seed and thread
 * count-independent. */
#ifndef CDB_INDEX_KMEANS_H
#define CDB_INDEX_KMEANS_H

#include <stdint.h>

#include "src/err.h"

/* Trains k unit centroids (k x d, written to `centroids`) on n >= k unit vectors x (n x d) with
 * niter Lloyd iterations; the initial centroids are k distinct sample rows drawn with `seed`. */
int cdb_kmeans_train(const float *x, int64_t n, int d, int k, int niter, uint64_t seed,
                     float *centroids, cdb_error *err);

/* lists[i] = the centroid with the largest inner product with x_i (the lowest index on ties);
 * runs on the worker pool's threads. */
int cdb_kmeans_assign(const float *x, int64_t n, const float *centroids, int k, int d,
                      int64_t *lists, cdb_error *err);

#endif
