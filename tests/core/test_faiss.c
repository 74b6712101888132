/* test_faiss.c: FAISS's C API, as compiled by this build, agrees with a brute-force search. */
#include <criterion/criterion.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

enum { DIM = 32, N = 2000, K = 10, NQ = 20 };

static float frand(uint64_t *state) {
  *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
  return (float)((*state >> 40) & 0xFFFFFF) / (float)0xFFFFFF - 0.5f;
}

static void fill_random(float *x, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++) x[i] = frand(&seed);
}

/* Indices of the K largest inner products with q, best first. */
static void brute_force_top_k(const float *base, const float *q, int64_t *out) {
  float best[K];
  for (int j = 0; j < K; j++) best[j] = -INFINITY, out[j] = -1;
  for (int i = 0; i < N; i++) {
    float s = 0;
    for (int d = 0; d < DIM; d++) s += base[(size_t)i * DIM + d] * q[d];
    int pos = K;
    while (pos > 0 && s > best[pos - 1]) pos--;
    if (pos == K) continue;
    for (int j = K - 1; j > pos; j--) best[j] = best[j - 1], out[j] = out[j - 1];
    best[pos] = s;
    out[pos] = i;
  }
}

Test(faiss_c_api, flat_inner_product_matches_brute_force) {
  float *base = malloc(sizeof(float) * N * DIM), *queries = malloc(sizeof(float) * NQ * DIM);
  fill_random(base, (size_t)N * DIM, 1);
  fill_random(queries, (size_t)NQ * DIM, 2);
  FaissIndexFlatIP *index = NULL;
  cr_assert_eq(faiss_IndexFlatIP_new_with(&index, DIM), 0, "%s", faiss_get_last_error());
  cr_assert_eq(faiss_Index_add(index, N, base), 0, "%s", faiss_get_last_error());
  cr_assert_eq(faiss_Index_ntotal(index), N);

  float dist[NQ * K];
  int64_t labels[NQ * K];
  cr_assert_eq(faiss_Index_search(index, NQ, queries, K, dist, labels), 0);
  for (int q = 0; q < NQ; q++) {
    int64_t expected[K];
    brute_force_top_k(base, queries + q * DIM, expected);
    for (int j = 0; j < K; j++)
      cr_expect_eq(labels[q * K + j], expected[j], "query %d rank %d: faiss %ld, brute force %ld",
                   q, j, (long)labels[q * K + j], (long)expected[j]);
  }
  faiss_Index_free(index);
  free(base);
  free(queries);
}

Test(faiss_c_api, errors_are_reported_not_thrown) {
  FaissIndexFlatIP *index = NULL;
  cr_assert_eq(faiss_IndexFlatIP_new_with(&index, DIM), 0);
  float q[DIM] = {0};
  float dist[K];
  int64_t labels[K];
  /* k <= 0 makes FAISS throw inside; the C API must turn it into an error code. */
  cr_expect_neq(faiss_Index_search(index, 1, q, 0, dist, labels), 0);
  cr_expect_str_not_empty(faiss_get_last_error());
  faiss_Index_free(index);
}
