/* faiss_opt.c: times the FAISS kernels clipdb relies on (exact IndexFlatIP search, IVF,Flat
 * search, IVF training = k-means through BLAS), to compare the libfaiss this build links (meson
 * option faiss_lib: the system one or one built with FAISS_OPT_LEVEL=avx2). See bench/README.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "tests/index/testdata.h"

typedef struct {
  long n, nq, train_n, nlist, nprobe, centres;
  int d;
  double noise;
} bench_args;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void check(int rc, const char *what) {
  if (rc) {
    fprintf(stderr, "faiss_opt: %s failed: %s\n", what, faiss_get_last_error());
    exit(1);
  }
}

/* p50 of single-query latencies (one faiss search call per query, k = 10). */
static double single_query_p50(FaissIndex *index, const float *queries, long nq, int d) {
  double *ms = malloc(sizeof *ms * (size_t)nq);
  float dist[10];
  idx_t ids[10];
  for (long i = 0; i < nq; i++) {
    double t0 = now_ms();
    check(faiss_Index_search(index, 1, queries + i * d, 10, dist, ids), "search");
    ms[i] = now_ms() - t0;
  }
  qsort(ms, (size_t)nq, sizeof *ms, cmp_double);
  double p50 = ms[nq / 2];
  free(ms);
  return p50;
}

static void bench_flat(const bench_args *a, const float *db, const float *queries) {
  FaissIndex *flat = NULL;
  check(faiss_index_factory(&flat, a->d, "Flat", METRIC_INNER_PRODUCT), "index_factory Flat");
  check(faiss_Index_add(flat, a->n, db), "add");
  printf("flat       n=%ld nq=%ld           p50 %.2f ms\n", a->n, a->nq,
         single_query_p50(flat, queries, a->nq, a->d));
  faiss_Index_free(flat);
}

static void bench_ivf(const bench_args *a, const float *db, const float *queries) {
  char key[64];
  snprintf(key, sizeof key, "IVF%ld,Flat", a->nlist);
  FaissIndex *ivf = NULL;
  check(faiss_index_factory(&ivf, a->d, key, METRIC_INNER_PRODUCT), "index_factory IVF");
  double t0 = now_ms();
  check(faiss_Index_train(ivf, a->train_n, db), "train");
  double train_s = (now_ms() - t0) / 1e3;
  t0 = now_ms();
  check(faiss_Index_add(ivf, a->n, db), "add");
  double add_s = (now_ms() - t0) / 1e3;
  faiss_IndexIVF_set_nprobe(faiss_IndexIVF_cast(ivf), (size_t)a->nprobe);
  printf("ivf        %s train %.2f s, add %.2f s, nprobe %ld p50 %.3f ms\n", key, train_s, add_s,
         a->nprobe, single_query_p50(ivf, queries, a->nq, a->d));
  faiss_Index_free(ivf);
}

static long arg_long(const char *name, const char *value) {
  char *end;
  long v = strtol(value, &end, 10);
  if (*end || v <= 0) {
    fprintf(stderr, "faiss_opt: %s wants a positive integer, got '%s'\n", name, value);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  bench_args a = {.n = 100000,
                  .nq = 100,
                  .train_n = 0,
                  .nlist = 1024,
                  .nprobe = 48,
                  .centres = 1000,
                  .d = 512,
                  .noise = 1.5};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--n")) a.n = arg_long(argv[i], argv[i + 1]);
    else if (!strcmp(argv[i], "--nq")) a.nq = arg_long(argv[i], argv[i + 1]);
    else if (!strcmp(argv[i], "--train-n")) a.train_n = arg_long(argv[i], argv[i + 1]);
    else if (!strcmp(argv[i], "--nlist")) a.nlist = arg_long(argv[i], argv[i + 1]);
    else if (!strcmp(argv[i], "--nprobe")) a.nprobe = arg_long(argv[i], argv[i + 1]);
    else {
      fprintf(stderr, "usage: faiss_opt [--n N] [--nq Q] [--train-n T] [--nlist L] "
                      "[--nprobe P]\n");
      return 2;
    }
  }
  if (!a.train_n) a.train_n = 48 * a.nlist; /* the sample cdb_index_train uses */
  if (a.train_n > a.n) a.train_n = a.n;
  float *all = td_clustered(a.n + a.nq, a.d, (int)a.centres, a.noise, 42);
  const float *db = all, *queries = all + a.n * a.d;
  bench_flat(&a, db, queries);
  bench_ivf(&a, db, queries);
  free(all);
  return 0;
}
