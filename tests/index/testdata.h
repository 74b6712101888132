/* testdata.h: synthetic vectors and brute-force references for the index tests and bench. */
#ifndef CDB_TEST_INDEX_DATA_H
#define CDB_TEST_INDEX_DATA_H

#include <stdint.h>

/* Deterministic uniform in [0,1) / standard normal from a 64-bit state. */
double td_uniform(uint64_t *state);
double td_normal(uint64_t *state);

/* n L2-normalised vectors around ncentres random unit centres: centre + noise * N(0, 1/d)
 * per component (noise 0 gives the centres themselves). malloc'd n x d. */
float *td_clustered(int64_t n, int d, int ncentres, double noise, uint64_t seed);

/* Exact top-k by inner product over the rows of db allowed by `allowed` (NULL: all; else one
 * byte per row), ids are row numbers. Returns how many were found (<= k). */
int td_brute_topk(const float *db, int64_t n, int d, const float *q, int k,
                  const unsigned char *allowed, int64_t *ids, float *sims);

/* |found ∩ truth| / k for one query. */
double td_recall(const int64_t *found, int n_found, const int64_t *truth, int k);

#endif
