/* kmeans.c: spherical k-means and nearest-centroid assignment (kmeans.h). */
#include "index/kmeans.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/ipkernel.h"
#include "src/pool.h"

#define SPLIT_EPS (1.0f / 1024.0f) /* FAISS's perturbation when splitting a cluster */
#define ASSIGN_CHUNK 256           /* rows per pool task slice unit */

typedef struct assign_job {
  const float *x, *c;
  int64_t n;
  int k, d;
  int32_t *arg;
  float *best;
  cdb_ip_argmax_fn fn;
} assign_job;

/* Thread ith takes an even share of the rows, rounded to ASSIGN_CHUNK. */
static void assign_part(void *ctx, int ith, int nth) {
  assign_job *j = ctx;
  int64_t chunks = (j->n + ASSIGN_CHUNK - 1) / ASSIGN_CHUNK;
  int64_t a = chunks * ith / nth * ASSIGN_CHUNK, b = chunks * (ith + 1) / nth * ASSIGN_CHUNK;
  if (b > j->n) b = j->n;
  if (a < b)
    j->fn(j->x + (size_t)a * (size_t)j->d, b - a, j->c, j->k, j->d, j->arg + a, j->best + a);
}

static void assign_rows(const float *x, int64_t n, const float *c, int k, int d, int32_t *arg,
                        float *best) {
  assign_job job = {x, c, n, k, d, arg, best, cdb_ip_argmax_best()};
  int nth = cdb_pool_threads();
  if ((int64_t)nth * ASSIGN_CHUNK > n) nth = (int)((n + ASSIGN_CHUNK - 1) / ASSIGN_CHUNK);
  if (nth < 1) nth = 1;
  cdb_parallel(assign_part, &job, nth);
}

int cdb_kmeans_assign(const float *x, int64_t n, const float *centroids, int k, int d,
                      int64_t *lists, cdb_error *err) {
  int32_t *arg = malloc((size_t)n * sizeof *arg);
  float *best = malloc((size_t)n * sizeof *best);
  if (!arg || !best) {
    free(arg);
    free(best);
    return cdb_error_set(err, "index: out of memory");
  }
  assign_rows(x, n, centroids, k, d, arg, best);
  for (int64_t i = 0; i < n; i++) lists[i] = arg[i];
  free(arg);
  free(best);
  return 0;
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* The first k entries of a seeded partial Fisher-Yates shuffle of 0..n-1. */
static int pick_initial(const float *x, int64_t n, int d, int k, uint64_t seed, float *c) {
  int64_t *perm = malloc((size_t)n * sizeof *perm);
  if (!perm) return -1;
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  uint64_t state = seed;
  for (int j = 0; j < k; j++) {
    int64_t r = j + (int64_t)(splitmix64(&state) % (uint64_t)(n - j));
    int64_t t = perm[j];
    perm[j] = perm[r];
    perm[r] = t;
    memcpy(c + (size_t)j * (size_t)d, x + (size_t)perm[j] * (size_t)d, (size_t)d * sizeof *c);
  }
  free(perm);
  return 0;
}

static void normalise(float *v, int d) {
  double s = 0;
  for (int t = 0; t < d; t++) s += (double)v[t] * v[t];
  if (s > 0) {
    float inv = (float)(1.0 / sqrt(s));
    for (int t = 0; t < d; t++) v[t] *= inv;
  }
}

/* An empty cluster takes half of the largest one: both get its centroid, perturbed in opposite
 * directions. */
static void split_largest(float *c, int64_t *count, int k, int d, int empty) {
  int big = 0;
  for (int j = 1; j < k; j++)
    if (count[j] > count[big]) big = j;
  float *ce = c + (size_t)empty * (size_t)d, *cb = c + (size_t)big * (size_t)d;
  for (int t = 0; t < d; t++) {
    float s = t % 2 == 0 ? SPLIT_EPS : -SPLIT_EPS;
    ce[t] = cb[t] * (1 + s);
    cb[t] = cb[t] * (1 - s);
  }
  count[empty] = count[big] / 2;
  count[big] -= count[empty];
  normalise(ce, d);
  normalise(cb, d);
}

/* New centroids: the normalised sum of each cluster's members (summed in double, in row order,
 * so the result does not depend on threads). */
static void update_centroids(const float *x, int64_t n, int d, int k, const int32_t *arg,
                             float *c, double *sum, int64_t *count) {
  memset(sum, 0, (size_t)k * (size_t)d * sizeof *sum);
  memset(count, 0, (size_t)k * sizeof *count);
  for (int64_t i = 0; i < n; i++) {
    double *s = sum + (size_t)arg[i] * (size_t)d;
    const float *v = x + (size_t)i * (size_t)d;
    for (int t = 0; t < d; t++) s[t] += v[t];
    count[arg[i]]++;
  }
  for (int j = 0; j < k; j++) {
    if (count[j] == 0) continue;
    float *cj = c + (size_t)j * (size_t)d;
    for (int t = 0; t < d; t++) cj[t] = (float)sum[(size_t)j * (size_t)d + t];
    normalise(cj, d);
  }
  for (int j = 0; j < k; j++)
    if (count[j] == 0) split_largest(c, count, k, d, j);
}

int cdb_kmeans_train(const float *x, int64_t n, int d, int k, int niter, uint64_t seed,
                     float *centroids, cdb_error *err) {
  if (k < 1 || n < k || d < 1)
    return cdb_error_set(err, "index: k-means needs at least %d vectors (got %lld)", k,
                         (long long)n);
  int32_t *arg = malloc((size_t)n * sizeof *arg);
  float *best = malloc((size_t)n * sizeof *best);
  double *sum = malloc((size_t)k * (size_t)d * sizeof *sum);
  int64_t *count = malloc((size_t)k * sizeof *count);
  int rc = (!arg || !best || !sum || !count) ? -1 : pick_initial(x, n, d, k, seed, centroids);
  for (int it = 0; rc == 0 && it < niter; it++) {
    assign_rows(x, n, centroids, k, d, arg, best);
    update_centroids(x, n, d, k, arg, centroids, sum, count);
  }
  free(arg);
  free(best);
  free(sum);
  free(count);
  return rc < 0 ? cdb_error_set(err, "index: out of memory") : 0;
}
