/* faiss_direct.c: FAISS used directly, as a FAISS user would, on the data bench_bulk.py loads into
 * clipdb: build (FAISS's own training through the index factory, on a sample of 32 x nlist
 * vectors, at least 10000, capped at n, then add of all vectors), the written index's size, and
 * KNN k=10 one query per search call, unfiltered and restricted to the rows with tag 3 by an
 * IDSelectorBatch in SearchParametersIVF. Results are FAISS's own order (no exact re-ranking).
 *
 * usage: faiss_direct DIR FACTORY NPROBE DIMS
 * DIR holds x.f32 (the vectors), q.f32 (the queries, float32, DIMS each) and tags.i32 (int32, one
 * per vector). Vector i gets FAISS id i + 1 (the row id in the SQL tables). Writes the top-10 ids
 * of every query to DIR/knn.i64 and DIR/tag3.i64 (-1 where fewer were found) and prints one line
 * of "key value" pairs: n, nlist, train_n, train_s, add_s, size_bytes, nprobe, p50_ms, allowed,
 * fnprobe, fp50_ms. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "faiss_c_extra.h"

#define K 10
#define SAMPLE_PER_LIST 32
#define SAMPLE_MIN 10000
#define FILTER_TAG 3

typedef struct dataset {
  int d;
  int64_t n, nq;
  float *x, *q;
  int32_t *tags;
} dataset;

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "faiss_direct: %s: %s\n", what, detail ? detail : "unknown error");
  exit(1);
}

static void check(int rc, const char *what) {
  if (rc) fail(what, faiss_get_last_error());
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The whole file DIR/name, its size in bytes in *size. */
static void *read_all(const char *dir, const char *name, size_t *size) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) fail("cannot open", path);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *buf = malloc(len > 0 ? (size_t)len : 1);
  if (!buf || len < 0 || fread(buf, 1, (size_t)len, f) != (size_t)len) fail("cannot read", path);
  fclose(f);
  *size = (size_t)len;
  return buf;
}

static void write_all(const char *dir, const char *name, const void *data, size_t size) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, size, f) != size || fclose(f)) fail("cannot write", path);
}

static dataset load(const char *dir, int d) {
  dataset s = {.d = d};
  size_t xb, qb, tb;
  s.x = read_all(dir, "x.f32", &xb);
  s.q = read_all(dir, "q.f32", &qb);
  s.tags = read_all(dir, "tags.i32", &tb);
  size_t row = (size_t)d * sizeof(float);
  s.n = (int64_t)(xb / row);
  s.nq = (int64_t)(qb / row);
  if (s.n == 0 || xb % row || qb % row || tb != (size_t)s.n * sizeof(int32_t))
    fail("inconsistent input files", dir);
  return s;
}

/* Every (n / want)-th vector: the rows come in random order, so a stride is a uniform sample. */
static float *strided_sample(const dataset *s, int64_t want) {
  float *out = malloc((size_t)want * (size_t)s->d * sizeof *out);
  if (!out) fail("out of memory", "training sample");
  for (int64_t i = 0; i < want; i++)
    memcpy(out + i * s->d, s->x + (i * s->n / want) * s->d, (size_t)s->d * sizeof *out);
  return out;
}

/* Trains on the sample and adds every vector with id row + 1; the seconds of each step. */
static FaissIndex *build(const dataset *s, const char *factory, int64_t *train_n, double *train_s,
                         double *add_s) {
  FaissIndex *index = NULL;
  check(faiss_index_factory(&index, s->d, factory, METRIC_INNER_PRODUCT), "index_factory");
  FaissIndexIVF *ivf = faiss_IndexIVF_cast(index);
  if (!ivf) fail("not an IVF index", factory);
  int64_t want = SAMPLE_PER_LIST * (int64_t)faiss_IndexIVF_nlist(ivf);
  want = want < SAMPLE_MIN ? SAMPLE_MIN : want;
  *train_n = want > s->n ? s->n : want;
  idx_t *ids = malloc((size_t)s->n * sizeof *ids);
  if (!ids) fail("out of memory", "ids");
  double t0 = now_s();
  float *sample = strided_sample(s, *train_n);
  check(faiss_Index_train(index, *train_n, sample), "train");
  double t1 = now_s();
  for (int64_t i = 0; i < s->n; i++) ids[i] = i + 1;
  check(faiss_Index_add_with_ids(index, s->n, s->x, ids), "add");
  *train_s = t1 - t0;
  *add_s = now_s() - t1;
  free(sample);
  free(ids);
  return index;
}

static long index_bytes(const FaissIndex *index, const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/faiss-direct.index", dir);
  check(faiss_write_index_fname(index, path), "write_index");
  FILE *f = fopen(path, "rb");
  if (!f) fail("cannot open", path);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fclose(f);
  unlink(path);
  return size;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* One search call per query (k = 10) with params; a warm pass first, then the timed pass whose
 * results go to labels (nq x K). Returns the median latency in ms. */
static double timed_queries(const FaissIndex *index, const dataset *s,
                            const FaissSearchParameters *params, idx_t *labels) {
  double *ms = malloc((size_t)s->nq * sizeof *ms);
  float dist[K];
  if (!ms) fail("out of memory", "latencies");
  for (int pass = 0; pass < 2; pass++)
    for (int64_t i = 0; i < s->nq; i++) {
      double t0 = now_s();
      check(faiss_Index_search_with_params(index, 1, s->q + i * s->d, K, params, dist,
                                           labels + i * K),
            "search");
      ms[i] = (now_s() - t0) * 1e3;
    }
  qsort(ms, (size_t)s->nq, sizeof *ms, cmp_double);
  double p50 = s->nq % 2 ? ms[s->nq / 2] : (ms[s->nq / 2 - 1] + ms[s->nq / 2]) / 2;
  free(ms);
  return p50;
}

/* Searches with nprobe and the selector sel (NULL: every vector); results to DIR/out. */
static double search_all(const FaissIndex *index, const dataset *s, FaissIDSelector *sel,
                         size_t nprobe, const char *dir, const char *out) {
  FaissSearchParametersIVF *params = NULL;
  check(faiss_SearchParametersIVF_new_with(&params, sel, nprobe, 0), "search parameters");
  idx_t *labels = malloc((size_t)s->nq * K * sizeof *labels);
  if (!labels) fail("out of memory", "labels");
  double p50 = timed_queries(index, s, (const FaissSearchParameters *)params, labels);
  write_all(dir, out, labels, (size_t)s->nq * K * sizeof *labels);
  free(labels);
  faiss_SearchParametersIVF_free(params);
  return p50;
}

/* The ids (row + 1) of the vectors with tag FILTER_TAG; their count in *n_allowed. */
static idx_t *allowed_ids(const dataset *s, int64_t *n_allowed) {
  idx_t *ids = malloc((size_t)s->n * sizeof *ids);
  if (!ids) fail("out of memory", "allowed ids");
  *n_allowed = 0;
  for (int64_t i = 0; i < s->n; i++)
    if (s->tags[i] == FILTER_TAG) ids[(*n_allowed)++] = i + 1;
  return ids;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: faiss_direct DIR FACTORY NPROBE DIMS\n");
    return 2;
  }
  const char *dir = argv[1], *factory = argv[2];
  long nprobe = atol(argv[3]);
  int d = atoi(argv[4]);
  if (nprobe < 1 || d < 1) fail("NPROBE and DIMS must be positive", argv[3]);
  dataset s = load(dir, d);
  int64_t train_n;
  double train_s, add_s;
  FaissIndex *index = build(&s, factory, &train_n, &train_s, &add_s);
  size_t nlist = faiss_IndexIVF_nlist(faiss_IndexIVF_cast(index));
  long size = index_bytes(index, dir);
  size_t probe = (size_t)nprobe > nlist ? nlist : (size_t)nprobe;
  double p50 = search_all(index, &s, NULL, probe, dir, "knn.i64");

  int64_t n_allowed;
  idx_t *allowed = allowed_ids(&s, &n_allowed);
  if (n_allowed == 0) fail("no vector has the filter's tag", "tags.i32");
  /* Widened as clipdb widens it: the lists scanned hold about as many allowed vectors. */
  double wide = ceil((double)probe * (double)s.n / (double)n_allowed);
  size_t fprobe = wide > (double)nlist ? nlist : (size_t)wide;
  FaissIDSelectorBatch *sel = NULL;
  check(faiss_IDSelectorBatch_new(&sel, (size_t)n_allowed, allowed), "IDSelectorBatch");
  double fp50 = search_all(index, &s, (FaissIDSelector *)sel, fprobe, dir, "tag3.i64");

  printf("n %lld nlist %zu train_n %lld train_s %.6f add_s %.6f size_bytes %ld nprobe %zu "
         "p50_ms %.4f allowed %lld fnprobe %zu fp50_ms %.4f\n",
         (long long)s.n, nlist, (long long)train_n, train_s, add_s, size, probe, p50,
         (long long)n_allowed, fprobe, fp50);
  faiss_IDSelector_free((FaissIDSelector *)sel);
  faiss_Index_free(index);
  free(allowed);
  free(s.x);
  free(s.q);
  free(s.tags);
  return 0;
}
