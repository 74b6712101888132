/* bench_index.c: the collection index (index/ivf.h) on synthetic clustered vectors: build and
 * train time, add throughput, single-query latency p50/p99 and recall@10 at several nprobe,
 * memory, the same queries on FAISS's exact IndexFlatIP (ratio), and cold start (a fresh
 * process opening the mmap cache file and answering one query).
 *
 * usage: bench_index [--n N] [--d D] [--centres C] [--noise X] [--nq Q] [--type T]
 *                    [--threads T] [--nlist L] [--cold-only 1] [--dir DIR]
 *        bench_index --cold PATH GENERATION D   (internal: the cold-start child) */
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "index/ivf.h"
#include "tests/index/testdata.h"

#define K 10

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static long rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld", &kb) == 1) break;
  if (f) fclose(f);
  return kb;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double percentile(double *v, int n, double p) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  int i = (int)ceil(p * n) - 1;
  return v[i < 0 ? 0 : i];
}

static void die(const char *what, const cdb_error *err) {
  fprintf(stderr, "bench_index: %s: %s\n", what, err ? err->msg : "");
  exit(1);
}

/* The cold-start child: open the cache file mapped and answer one query. */
static int cold_child(const char *path, uint64_t gen, int d) {
  double t0 = now_ms();
  long rss0 = rss_kb();
  cdb_error err = {{0}};
  cdb_index *idx = cdb_index_open_file_mmap(path, gen, &err);
  if (!idx) die("open mmap", &err);
  double t1 = now_ms();
  float *q = td_clustered(1, d, 1000, 1.0, 12345);
  int64_t ids[K];
  float sims[K];
  int found;
  if (cdb_index_search(idx, q, K, NULL, ids, sims, &found, &err)) die("search", &err);
  double t2 = now_ms();
  if (cdb_index_search(idx, q + 0, K, NULL, ids, sims, &found, &err)) die("search", &err);
  double t3 = now_ms();
  printf("cold start: open %.1f ms, first query %.1f ms (open+query %.1f ms), second query "
         "%.2f ms, RSS growth %ld MB\n",
         t1 - t0, t2 - t1, t2 - t0, t3 - t2, (rss_kb() - rss0) / 1024);
  cdb_index_free(idx);
  free(q);
  return 0;
}

typedef struct cfg {
  int64_t n;
  int d, centres, nq, threads, nlist, cold_only;
  double noise;
  const char *type, *dir;
} cfg;

static void parse(int argc, char **argv, cfg *c) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--n")) c->n = atoll(v);
    else if (!strcmp(k, "--d")) c->d = atoi(v);
    else if (!strcmp(k, "--centres")) c->centres = atoi(v);
    else if (!strcmp(k, "--noise")) c->noise = atof(v);
    else if (!strcmp(k, "--nq")) c->nq = atoi(v);
    else if (!strcmp(k, "--type")) c->type = v;
    else if (!strcmp(k, "--threads")) c->threads = atoi(v);
    else if (!strcmp(k, "--nlist")) c->nlist = atoi(v);
    else if (!strcmp(k, "--cold-only")) c->cold_only = atoi(v);
    else if (!strcmp(k, "--dir")) c->dir = v;
    else {
      fprintf(stderr, "bench_index: unknown option %s\n", k);
      exit(2);
    }
  }
}

/* Exact top-K of every query on FAISS's IndexFlatIP, one query at a time (timed). */
static void flat_truth(const cfg *c, const float *x, const float *qs, int64_t *truth, double *lat) {
  FaissIndexFlatIP *flat = NULL;
  if (faiss_IndexFlatIP_new_with(&flat, c->d) || faiss_Index_add((FaissIndex *)flat, c->n, x))
    die("flat index", NULL);
  float dist[K];
  for (int qi = 0; qi < c->nq; qi++) {
    double t0 = now_ms();
    faiss_Index_search((FaissIndex *)flat, 1, qs + (size_t)qi * c->d, K, dist, truth + qi * K);
    lat[qi] = now_ms() - t0;
  }
  faiss_Index_free((FaissIndex *)flat);
}

static void run_queries(const cdb_index *idx, const cfg *c, const float *qs, const int64_t *truth,
                        int nprobe, double flat_p50) {
  double *lat = malloc((size_t)c->nq * sizeof *lat), recall = 0;
  cdb_search_opts opts = {.nprobe = nprobe, .filter = NULL};
  cdb_error err = {{0}};
  for (int qi = 0; qi < c->nq; qi++) {
    int64_t ids[K];
    float sims[K];
    int found;
    double t0 = now_ms();
    if (cdb_index_search(idx, qs + (size_t)qi * c->d, K, &opts, ids, sims, &found, &err))
      die("search", &err);
    lat[qi] = now_ms() - t0;
    recall += td_recall(ids, found, truth + qi * K, K);
  }
  double p50 = percentile(lat, c->nq, 0.5), p99 = percentile(lat, c->nq, 0.99);
  printf("  nprobe %4d: p50 %7.3f ms  p99 %7.3f ms  recall@10 %.4f  speed-up vs flat %.1fx\n",
         nprobe, p50, p99, recall / c->nq, flat_p50 / p50);
  free(lat);
}

static int allow_every_100th(void *ctx, int64_t id) {
  (void)ctx;
  return id % 100 == 0;
}

/* Filtered queries: sorted id sets keeping 1% and 10%, and a 1% predicate. */
static void run_filtered(const cdb_index *idx, const cfg *c, const float *qs) {
  int64_t *set = malloc((size_t)c->n * sizeof *set);
  double *lat = malloc((size_t)c->nq * sizeof *lat);
  const char *names[3] = {"ids, 1%", "ids, 10%", "predicate, 1%"};
  for (int kind = 0; kind < 3; kind++) {
    int64_t step = kind == 1 ? 10 : 100, n_set = 0;
    for (int64_t i = 0; i < c->n; i += step) set[n_set++] = i;
    cdb_filter f = {kind < 2 ? set : NULL, kind < 2 ? n_set : 0,
                    kind == 2 ? allow_every_100th : NULL, NULL, 0};
    cdb_search_opts opts = {.nprobe = 0, .filter = &f};
    int short_results = 0;
    for (int qi = 0; qi < c->nq; qi++) {
      int64_t ids[K];
      float sims[K];
      int found;
      cdb_error err = {{0}};
      double t0 = now_ms();
      if (cdb_index_search(idx, qs + (size_t)qi * c->d, K, &opts, ids, sims, &found, &err))
        die("filtered search", &err);
      lat[qi] = now_ms() - t0;
      short_results += found < K;
    }
    printf("  filter %-14s: p50 %7.3f ms  p99 %7.3f ms  queries with < k results: %d\n",
           names[kind], percentile(lat, c->nq, 0.5), percentile(lat, c->nq, 0.99), short_results);
  }
  free(set);
  free(lat);
}

static void cold_start(const cdb_index *idx, const cfg *c, const char *self) {
  char path[512];
  snprintf(path, sizeof path, "%s/bench-index-%d.cdbivf", c->dir, (int)getpid());
  cdb_error err = {{0}};
  double t0 = now_ms();
  if (cdb_index_save_file(idx, path, 42, &err)) die("save_file", &err);
  printf("cache file written in %.0f ms\n", now_ms() - t0);
  char gen[32], dim[32];
  snprintf(gen, sizeof gen, "42");
  snprintf(dim, sizeof dim, "%d", c->d);
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    execl(self, self, "--cold", path, gen, dim, (char *)NULL);
    _exit(127);
  }
  int status;
  waitpid(pid, &status, 0);
  unlink(path);
}

int main(int argc, char **argv) {
  if (argc == 5 && !strcmp(argv[1], "--cold"))
    return cold_child(argv[2], strtoull(argv[3], NULL, 10), atoi(argv[4]));
  cfg c = {100000, 512, 1000, 200, 0, 0, 0, 1.0, "auto", "/tmp"};
  parse(argc, argv, &c);
  if (c.threads > 0) cdb_index_set_threads(c.threads);
  printf("index bench: n=%lld d=%d centres=%d noise=%.2f queries=%d type=%s threads=%d\n",
         (long long)c.n, c.d, c.centres, c.noise, c.nq, c.type, c.threads);
  double t0 = now_ms();
  float *all = td_clustered(c.n + c.nq, c.d, c.centres, c.noise, 1);
  float *qs = all + (size_t)c.n * c.d;
  printf("data generated in %.0f ms\n", now_ms() - t0);

  long rss0 = rss_kb();
  cdb_error err = {{0}};
  cdb_index_params p = cdb_index_default_params();
  p.type = c.type;
  p.nlist = c.nlist;
  cdb_index *idx = cdb_index_new(c.d, &p, &err);
  if (!idx) die("new", &err);
  int64_t *ids = malloc((size_t)c.n * sizeof *ids);
  for (int64_t i = 0; i < c.n; i++) ids[i] = i;
  t0 = now_ms();
  if (cdb_index_add(idx, c.n, ids, all, &err)) die("add", &err);
  double t_add = now_ms() - t0;
  t0 = now_ms();
  if (cdb_index_needs_training(idx) && cdb_index_train(idx, &err)) die("train", &err);
  double t_train = now_ms() - t0;
  cdb_index_info info;
  cdb_index_get_info(idx, &info);
  printf("build: add (untrained, exact) %.0f ms = %.0f vectors/s; train+re-add %.0f ms -> %s "
         "(nlist %d, default nprobe %d); RSS +%ld MB\n",
         t_add, c.n / (t_add / 1e3), t_train, info.factory, info.nlist, info.nprobe,
         (rss_kb() - rss0) / 1024);
  /* add throughput into the trained index: re-add (replace) the first 10k vectors */
  int64_t n_re = c.n < 10000 ? c.n : 10000;
  t0 = now_ms();
  if (cdb_index_add(idx, n_re, ids, all, &err)) die("re-add", &err);
  double t_re = now_ms() - t0;
  printf("add into trained index (replacing %lld ids): %.0f vectors/s\n", (long long)n_re,
         n_re / (t_re / 1e3));

  if (c.cold_only) {
    cold_start(idx, &c, argv[0]);
    cdb_index_free(idx);
    free(ids);
    free(all);
    return 0;
  }
  int64_t *truth = malloc((size_t)c.nq * K * sizeof *truth);
  double *flat_lat = malloc((size_t)c.nq * sizeof *flat_lat);
  flat_truth(&c, all, qs, truth, flat_lat);
  double flat_p50 = percentile(flat_lat, c.nq, 0.5);
  printf("FAISS IndexFlatIP (exact): p50 %.3f ms  p99 %.3f ms\n", flat_p50,
         percentile(flat_lat, c.nq, 0.99));
  printf("clipdb index %s:\n", info.factory);
  int np[4] = {info.nprobe / 4, info.nprobe / 2, info.nprobe, info.nprobe * 2};
  for (int i = 0; i < 4; i++)
    if (np[i] >= 1 && np[i] <= info.nlist && (i == 0 || np[i] != np[i - 1]))
      run_queries(idx, &c, qs, truth, np[i], flat_p50);
  run_filtered(idx, &c, qs);

  cold_start(idx, &c, argv[0]);
  cdb_index_free(idx);
  free(ids);
  free(truth);
  free(flat_lat);
  free(all);
  return 0;
}
