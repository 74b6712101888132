/* test_scan.c: the own list scan (index/scan.c) against independent references: similarities
 * of SQ8 codes against FAISS's own decoding of the same codes (cdb_index_scan) and raw vectors
 * against brute force, k-NN and range search, lazy predicates asked best first within their
 * budget, and the default nprobe chosen from the data. meson runs it once per instruction set
 * (CLIPDB_ISA=generic, avx2, and the best one), so every kernel meets the same references. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/ivf.h"
#include "testdata.h"

/* Not a multiple of 4, 16 or 32: every kernel runs its tails. */
#define D 102
#define N 6000
#define NQ 8
#define KK 20

/* Every held item, decoded by FAISS (cdb_index_scan). */
typedef struct decoded {
  int64_t n;
  int64_t *ids;
  float *vecs;
} decoded;

static int keep_decoded(void *ctx, size_t n, const int64_t *ids, const float *vecs,
                        cdb_error *err) {
  (void)err;
  decoded *d = ctx;
  memcpy(d->ids + d->n, ids, n * sizeof *ids);
  memcpy(d->vecs + (size_t)d->n * D, vecs, n * D * sizeof *vecs);
  d->n += (int64_t)n;
  return 0;
}

static decoded decode_all(const cdb_index *idx) {
  decoded d = {0, malloc(N * sizeof(int64_t)), malloc((size_t)N * D * sizeof(float))};
  cdb_error err = {{0}};
  cr_assert_eq(cdb_index_scan(idx, keep_decoded, &d, &err), 0, "%s", err.msg);
  cr_assert_eq(d.n, N);
  return d;
}

static cdb_index *trained(const char *type, const float *x) {
  cdb_error err = {{0}};
  cdb_index_params p = cdb_index_default_params();
  p.type = type;
  cdb_index *idx = cdb_index_new(D, &p, &err);
  cr_assert_not_null(idx, "%s", err.msg);
  int64_t *ids = malloc(N * sizeof *ids);
  for (int64_t i = 0; i < N; i++) ids[i] = i * 3 + 1; /* ids are not row numbers */
  cr_assert_eq(cdb_index_add(idx, N, ids, x, &err), 0, "%s", err.msg);
  cr_assert_eq(cdb_index_train(idx, &err), 0, "%s", err.msg);
  free(ids);
  return idx;
}

/* The index's similarities with every list probed and no re-ranking must be the decoded
 * vectors' (the brute-force top KK over them, double sums) within `tol`: float rounding for raw
 * vectors; SQ8 scores also round the query's weights to 14 bits (~1e-5, against ~1e-3 for the
 * codes themselves). */
static void check_scores(const char *type, uint64_t seed, double tol) {
  float *x = td_clustered(N + NQ, D, 40, 0.9, seed);
  cdb_index *idx = trained(type, x);
  decoded dec = decode_all(idx);
  cdb_index_info info;
  cdb_index_get_info(idx, &info);
  cdb_search_opts all = {.nprobe = info.nlist};
  for (int qi = 0; qi < NQ; qi++) {
    const float *q = x + (size_t)(N + qi) * D;
    int64_t truth[KK], got[KK];
    float tsims[KK], gsims[KK];
    int found = 0;
    cdb_error err = {{0}};
    cr_assert_eq(td_brute_topk(dec.vecs, dec.n, D, q, KK, NULL, truth, tsims), KK);
    cr_assert_eq(cdb_index_search(idx, q, KK, &all, got, gsims, &found, &err), 0, "%s", err.msg);
    cr_assert_eq(found, KK);
    for (int i = 0; i < KK; i++) {
      cr_assert_float_eq(gsims[i], tsims[i], tol, "%s query %d rank %d: %f vs %f", type, qi, i,
                         gsims[i], tsims[i]);
      /* the same item unless two similarities tie within rounding */
      int clear = i + 1 < KK && tsims[i] - tsims[i + 1] > 3 * tol &&
                  (i == 0 || tsims[i - 1] - tsims[i] > 3 * tol);
      if (clear)
        cr_assert_eq(got[i], dec.ids[truth[i]], "%s query %d rank %d", type, qi, i);
    }
    /* range search keeps exactly the items at or above a threshold */
    float min_sim = tsims[KK / 2];
    int64_t *rids = NULL;
    float *rsims = NULL;
    int64_t rn = 0;
    cr_assert_eq(cdb_index_range_search(idx, q, min_sim, &all, &rids, &rsims, &rn, &err), 0, "%s",
                 err.msg);
    int64_t above = 0;
    for (int64_t i = 0; i < dec.n; i++) {
      double s = 0;
      for (int j = 0; j < D; j++) s += (double)q[j] * dec.vecs[(size_t)i * D + j];
      above += s >= min_sim + 3 * tol;
    }
    cr_assert(rn >= above && rn <= KK / 2 + 1 + 8, "%s: %lld found, %lld clearly above", type,
              (long long)rn, (long long)above);
    for (int64_t i = 0; i < rn; i++) cr_assert(rsims[i] >= min_sim);
    for (int64_t i = 1; i < rn; i++) cr_assert(rsims[i - 1] >= rsims[i]);
    free(rids);
    free(rsims);
  }
  free(dec.ids);
  free(dec.vecs);
  cdb_index_free(idx);
  free(x);
}

Test(scan, sq8_scores_are_faiss_decoding) { check_scores("IVF32,SQ8", 11, 1e-4); }

Test(scan, flat_scores_are_exact) { check_scores("IVF32,Flat", 12, 2e-5); }

Test(scan, auto_index_is_sq8) {
  float *x = td_clustered(N, D, 40, 0.9, 13);
  cdb_index *idx = trained("auto", x);
  cdb_index_info info;
  cdb_index_get_info(idx, &info);
  cr_assert(strstr(info.factory, ",SQ8"), "%s", info.factory);
  cdb_index_free(idx);
  free(x);
}

typedef struct counting {
  int64_t calls;
  int modulo, keep;
} counting;

static int allow_counting(void *ctx, int64_t id) {
  counting *c = ctx;
  c->calls++;
  return (id / 3) % c->modulo == c->keep;
}

/* A lazy predicate gives the same results as brute force over the allowed rows (all lists
 * probed), asked about candidates best first: about k / selectivity calls, not one per row. */
Test(scan, lazy_predicate_best_first) {
  float *x = td_clustered(N + NQ, D, 40, 0.9, 14);
  cdb_index *idx = trained("IVF32,Flat", x);
  unsigned char *allowed = calloc(N, 1);
  for (int64_t i = 0; i < N; i++) allowed[i] = i % 10 == 3;
  counting c = {0, 10, 3};
  cdb_filter lazy = {NULL, 0, allow_counting, &c, 1000};
  cdb_search_opts opts = {.nprobe = 32, .filter = &lazy};
  for (int qi = 0; qi < NQ; qi++) {
    const float *q = x + (size_t)(N + qi) * D;
    int64_t truth[KK], got[KK];
    float tsims[KK], gsims[KK];
    int found = 0;
    cdb_error err = {{0}};
    td_brute_topk(x, N, D, q, KK, allowed, truth, tsims);
    c.calls = 0;
    cr_assert_eq(cdb_index_search(idx, q, KK, &opts, got, gsims, &found, &err), 0, "%s", err.msg);
    cr_assert_eq(found, KK);
    for (int i = 0; i < KK; i++) cr_assert_eq(got[i], truth[i] * 3 + 1, "query %d rank %d", qi, i);
    cr_assert(c.calls >= KK && c.calls <= 40 * KK, "%lld calls", (long long)c.calls);
  }
  free(allowed);
  cdb_index_free(idx);
  free(x);
}

/* A predicate too selective for its budget stops the search: nothing written, the caller told
 * (CDB_INDEX_FILTER_SPENT) to list the allowed ids instead, and no more calls than the budget. */
Test(scan, lazy_predicate_budget) {
  float *x = td_clustered(N + 1, D, 40, 0.9, 15);
  cdb_index *idx = trained("auto", x);
  counting c = {0, 1000, 7};
  cdb_filter lazy = {NULL, 0, allow_counting, &c, 50};
  cdb_search_opts opts = {.filter = &lazy};
  int64_t got[KK];
  float gsims[KK];
  int found = -1;
  cdb_error err = {{0}};
  int rc = cdb_index_search(idx, x + (size_t)N * D, KK, &opts, got, gsims, &found, &err);
  cr_assert_eq(rc, CDB_INDEX_FILTER_SPENT);
  cr_assert_eq(found, 0);
  cr_assert_eq(c.calls, 50);
  /* the same predicate with no budget finds every allowed row (6 of 6000) */
  lazy.max_allow = 0;
  cr_assert_eq(cdb_index_search(idx, x + (size_t)N * D, KK, &opts, got, gsims, &found, &err), 0,
               "%s", err.msg);
  cr_assert_eq(found, 6);
  cdb_index_free(idx);
  free(x);
}

/* The default nprobe comes from the data: tight clusters need few lists, diffuse ones more;
 * an nprobe the caller set is kept as it is. */
Test(scan, default_nprobe_follows_the_data) {
  float *tight = td_clustered(N, D, 30, 0.2, 16);
  float *diffuse = td_clustered(N, D, 600, 1.5, 17);
  cdb_index *a = trained("IVF64,SQ8", tight), *b = trained("IVF64,SQ8", diffuse);
  cdb_index_info ia, ib;
  cdb_index_get_info(a, &ia);
  cdb_index_get_info(b, &ib);
  cr_log_info("default nprobe: tight %d, diffuse %d of 64", ia.nprobe, ib.nprobe);
  cr_assert(ia.nprobe >= 8 && ia.nprobe < ib.nprobe && ib.nprobe <= 64, "%d %d", ia.nprobe,
            ib.nprobe);
  cdb_error err = {{0}};
  cdb_index_params p = cdb_index_default_params();
  p.type = "IVF64,SQ8";
  p.nprobe = 5;
  cdb_index *c = cdb_index_new(D, &p, &err);
  int64_t *ids = malloc(N * sizeof *ids);
  for (int64_t i = 0; i < N; i++) ids[i] = i;
  cr_assert_eq(cdb_index_add(c, N, ids, diffuse, &err), 0, "%s", err.msg);
  cr_assert_eq(cdb_index_train(c, &err), 0, "%s", err.msg);
  cdb_index_info ic;
  cdb_index_get_info(c, &ic);
  cr_assert_eq(ic.nprobe, 5);
  free(ids);
  cdb_index_free(a);
  cdb_index_free(b);
  cdb_index_free(c);
  free(tight);
  free(diffuse);
}
