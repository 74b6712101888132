/* test_kmeans.c: the nearest-centroid kernels (index/ipkernel.h) of every ISA this CPU has
 * against a plain double-precision reference, and k-means (index/kmeans.h): unit centroids,
 * no empty cluster left unhandled, the same centroids for a seed whatever the thread count, and
 * an assignment equal to the reference's. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index/ipkernel.h"
#include "index/ivf.h"
#include "index/kmeans.h"
#include "src/pool.h"
#include "testdata.h"

static float *random_rows(int64_t n, int d, uint64_t seed) {
  float *x = malloc((size_t)n * (size_t)d * sizeof *x);
  uint64_t s = seed;
  for (int64_t i = 0; i < n * d; i++) x[i] = (float)td_normal(&s);
  return x;
}

static double ref_dot(const float *a, const float *b, int d) {
  double s = 0;
  for (int t = 0; t < d; t++) s += (double)a[t] * b[t];
  return s;
}

/* arg must be a best centroid up to rounding: its dot within tol of the reference maximum. */
static void check_kernel(cdb_ip_argmax_fn fn, const char *isa, int64_t n, int k, int d) {
  float *x = random_rows(n, d, 11 + (uint64_t)n), *c = random_rows(k, d, 97 + (uint64_t)k);
  int32_t *arg = malloc((size_t)n * sizeof *arg);
  float *best = malloc((size_t)n * sizeof *best);
  fn(x, n, c, k, d, arg, best);
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + (size_t)i * (size_t)d;
    double top = -INFINITY;
    for (int j = 0; j < k; j++) {
      double s = ref_dot(xi, c + (size_t)j * (size_t)d, d);
      if (s > top) top = s;
    }
    double tol = 1e-4 * (1 + sqrt((double)d));
    cr_assert(arg[i] >= 0 && arg[i] < k, "%s n=%lld k=%d d=%d row %lld: arg %d", isa,
              (long long)n, k, d, (long long)i, arg[i]);
    double got = ref_dot(xi, c + (size_t)arg[i] * (size_t)d, d);
    cr_assert(fabs(got - top) <= tol && fabs(best[i] - top) <= tol,
              "%s n=%lld k=%d d=%d row %lld: best %g (arg's %g), reference %g", isa, (long long)n,
              k, d, (long long)i, best[i], got, top);
  }
  free(x);
  free(c);
  free(arg);
  free(best);
}

Test(kmeans, every_isa_kernel_matches_reference) {
  static const char *const names[CDB_IP_ISA_COUNT] = {"generic", "avx2", "avx512"};
  static const int dims[] = {1, 3, 7, 8, 15, 16, 17, 33, 64, 100, 512};
  static const int64_t rows[] = {1, 3, 4, 5, 63, 64, 65, 130};
  static const int ks[] = {1, 2, 4, 5, 127, 128, 129, 300};
  int tested = 0;
  for (int isa = 0; isa < CDB_IP_ISA_COUNT; isa++) {
    cdb_ip_argmax_fn fn = cdb_ip_argmax_for((cdb_ip_isa)isa);
    if (!fn) {
      cr_log_info("%s: not supported by this CPU, skipped", names[isa]);
      continue;
    }
    tested++;
    for (size_t a = 0; a < sizeof dims / sizeof *dims; a++)
      for (size_t b = 0; b < sizeof rows / sizeof *rows; b++)
        for (size_t e = 0; e < sizeof ks / sizeof *ks; e++)
          check_kernel(fn, names[isa], rows[b], ks[e], dims[a]);
  }
  cr_assert(tested >= 1 && cdb_ip_argmax_for(CDB_IP_GENERIC));
}

/* Ties go to the lowest centroid index, in every ISA (duplicated centroids). */
Test(kmeans, ties_go_to_the_lowest_index) {
  int d = 40, k = 9;
  float *x = random_rows(20, d, 5), *c = random_rows(k, d, 6);
  memcpy(c + 2 * d, x, (size_t)d * sizeof *c); /* centroids 2 and 7 are both row 0 itself */
  memcpy(c + 7 * d, x, (size_t)d * sizeof *c);
  for (int isa = 0; isa < CDB_IP_ISA_COUNT; isa++) {
    cdb_ip_argmax_fn fn = cdb_ip_argmax_for((cdb_ip_isa)isa);
    if (!fn) continue;
    int32_t arg[20];
    float best[20];
    fn(x, 20, c, k, d, arg, best);
    cr_assert_eq(arg[0], 2, "isa %d: row 0 went to %d", isa, arg[0]);
  }
  free(x);
  free(c);
}

static float *train(const float *x, int64_t n, int d, int k, int threads) {
  float *c = malloc((size_t)k * (size_t)d * sizeof *c);
  cdb_error err = {{0}};
  cdb_pool_set_threads(threads);
  cr_assert_eq(cdb_kmeans_train(x, n, d, k, 10, 1234, c, &err), 0, "%s", err.msg);
  return c;
}

Test(kmeans, centroids_unit_deterministic_and_thread_independent) {
  int64_t n = 4000;
  int d = 48, k = 64;
  float *x = td_clustered(n, d, 40, 0.3, 77);
  float *c1 = train(x, n, d, k, 1), *c2 = train(x, n, d, k, 2), *c3 = train(x, n, d, k, 2);
  cr_assert(memcmp(c1, c2, (size_t)k * d * sizeof *c1) == 0, "1 vs 2 threads differ");
  cr_assert(memcmp(c2, c3, (size_t)k * d * sizeof *c1) == 0, "two runs differ");
  for (int j = 0; j < k; j++) {
    double nn = ref_dot(c1 + (size_t)j * d, c1 + (size_t)j * d, d);
    cr_assert(fabs(nn - 1) < 1e-4, "centroid %d squared norm %g", j, nn);
  }
  /* The assignment is the reference's nearest centroid. */
  int64_t *lists = malloc((size_t)n * sizeof *lists);
  cdb_error err = {{0}};
  cr_assert_eq(cdb_kmeans_assign(x, n, c1, k, d, lists, &err), 0, "%s", err.msg);
  for (int64_t i = 0; i < n; i++) {
    double mine = ref_dot(x + i * d, c1 + lists[i] * d, d), top = -INFINITY;
    for (int j = 0; j < k; j++) top = fmax(top, ref_dot(x + i * d, c1 + (size_t)j * d, d));
    cr_assert(mine >= top - 1e-5, "row %lld: %g < best %g", (long long)i, mine, top);
  }
  free(lists);
  free(x);
  free(c1);
  free(c2);
  free(c3);
  cdb_pool_set_threads(0);
}

/* Fewer distinct points than clusters: empty clusters are split off big ones, never NaN. */
Test(kmeans, empty_clusters_are_handled) {
  int64_t n = 600;
  int d = 16, k = 50;
  float *x = td_clustered(n, d, 10, 0.0, 3); /* 10 distinct points, 60 copies each */
  float *c = train(x, n, d, k, 2);
  for (int j = 0; j < k; j++) {
    double nn = ref_dot(c + (size_t)j * d, c + (size_t)j * d, d);
    cr_assert(isfinite(nn) && fabs(nn - 1) < 1e-4, "centroid %d squared norm %g", j, nn);
  }
  free(x);
  free(c);
  cdb_pool_set_threads(0);
}

Test(kmeans, too_few_points_is_an_error) {
  float x[8] = {1, 0, 0, 1, 1, 0, 0, 1};
  float c[4 * 2];
  cdb_error err = {{0}};
  cr_assert_eq(cdb_kmeans_train(x, 4, 2, 5, 3, 1, c, &err), -1);
  cr_assert(strstr(err.msg, "k-means") != NULL, "%s", err.msg);
}

/* CLIP-like vectors as bench/sqlite/bench_bulk.py makes them: a direction shared by all (cosine
 * ~0.55 to it) plus clustered variation in a lower-dimensional subspace. */
static float *clip_like(int64_t n, int d, int intrinsic, int clusters, uint64_t seed) {
  uint64_t s = seed;
  float *basis = random_rows(intrinsic + 1, d, seed + 1);
  float *centres = random_rows(clusters, intrinsic, seed + 2);
  float *x = calloc((size_t)n * (size_t)d, sizeof *x), *z = malloc((size_t)intrinsic * sizeof *z);
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(td_uniform(&s) * td_uniform(&s) * clusters); /* skewed cluster sizes */
    double zz = 0;
    for (int t = 0; t < intrinsic; t++) {
      z[t] = centres[(size_t)c * intrinsic + t] + 0.9f * (float)td_normal(&s);
      zz += (double)z[t] * z[t];
    }
    float *xi = x + (size_t)i * (size_t)d;
    for (int t = 0; t < d; t++) {
      double v = 0.55 * basis[t] / sqrt(d) + 0.05 * td_normal(&s) / d;
      for (int u = 0; u < intrinsic; u++)
        v += 0.83 * z[u] / sqrt(zz) * basis[(size_t)(u + 1) * d + t] / sqrt(d);
      xi[t] = (float)v;
    }
    double nn = ref_dot(xi, xi, d);
    for (int t = 0; t < d; t++) xi[t] = (float)(xi[t] / sqrt(nn));
  }
  free(basis);
  free(centres);
  free(z);
  return x;
}

/* The automatic IVF index trained with these kernels keeps recall@10 >= 0.95 at its default
 * nprobe on CLIP-like data, against brute force. */
Test(kmeans, auto_index_recall_on_clip_like_data) {
  int64_t n = 20000;
  int d = 128, nq = 200, k = 10;
  float *x = clip_like(n + nq, d, 40, 100, 2024);
  cdb_error err = {{0}};
  cdb_index_params p = cdb_index_default_params();
  cdb_index *idx = cdb_index_new(d, &p, &err);
  int64_t *ids = malloc((size_t)n * sizeof *ids);
  for (int64_t i = 0; i < n; i++) ids[i] = i;
  cr_assert_eq(cdb_index_add(idx, n, ids, x, &err), 0, "%s", err.msg);
  cr_assert_eq(cdb_index_train(idx, &err), 0, "%s", err.msg);
  cdb_index_info info;
  cdb_index_get_info(idx, &info);
  double sum = 0;
  for (int q = 0; q < nq; q++) {
    const float *qv = x + (size_t)(n + q) * d;
    int64_t got[10], truth[10];
    float sims[10], tsims[10];
    int found = 0;
    cr_assert_eq(cdb_index_search(idx, qv, k, NULL, got, sims, &found, &err), 0, "%s", err.msg);
    td_brute_topk(x, n, d, qv, k, NULL, truth, tsims);
    sum += td_recall(got, found, truth, k);
  }
  printf("kmeans: %s nprobe %d recall@10 %.4f (20k x 128 CLIP-like)\n", info.factory, info.nprobe,
         sum / nq);
  cr_assert(sum / nq >= 0.95, "recall@10 %.4f < 0.95 (%s, nprobe %d)", sum / nq, info.factory,
            info.nprobe);
  cdb_index_free(idx);
  free(ids);
  free(x);
}
