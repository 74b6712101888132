/* scan.c: the own IVF list scan (scan.h): the coarse step (the query against every centroid,
 * the nprobe best kept), then each probed list's codes scored in place and the best kept in a
 * bounded heap; a lazy predicate is then asked about them best first (range searches keep every
 * hit above the threshold). */
#include "index/scan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/faiss_ext.h"
#include "index/ipkernel.h"
#include "src/pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define CDB_SCAN_X86 1
#endif

/* ---- kernels: a . b for float32 b, and w . code for uint8 codes ---- */

/* b may be unaligned (lists mapped from a cache file are packed). */
typedef float (*dot_f32_fn)(const float *a, const unsigned char *b, int d);
typedef int32_t (*dot_u8_fn)(const int16_t *w, const uint8_t *code, int d);

static float dot_f32_generic(const float *a, const unsigned char *b, int d) {
  float acc[4] = {0}, chunk[4];
  int i = 0;
  for (; i + 4 <= d; i += 4) {
    memcpy(chunk, b + (size_t)i * sizeof(float), sizeof chunk);
    for (int j = 0; j < 4; j++) acc[j] += a[i + j] * chunk[j];
  }
  for (; i < d; i++) {
    memcpy(chunk, b + (size_t)i * sizeof(float), sizeof(float));
    acc[0] += a[i] * chunk[0];
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

static int32_t dot_u8_generic(const int16_t *w, const uint8_t *code, int d) {
  int32_t acc = 0;
  for (int i = 0; i < d; i++) acc += (int32_t)w[i] * code[i];
  return acc;
}

#ifdef CDB_SCAN_X86
__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static float dot_f32_avx2(const float *a,
                                                               const unsigned char *b, int d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  const float *bf = (const float *)(const void *)b;
  int i = 0;
  for (; i + 16 <= d; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(bf + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(bf + i + 8), s1);
  }
  float s = hsum256(_mm256_add_ps(s0, s1));
  return i < d ? s + dot_f32_generic(a + i, b + (size_t)i * sizeof(float), d - i) : s;
}

__attribute__((target("avx2"))) static int32_t dot_u8_avx2(const int16_t *w, const uint8_t *code,
                                                          int d) {
  __m256i acc = _mm256_setzero_si256();
  int i = 0;
  for (; i + 16 <= d; i += 16) {
    __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(code + i)));
    __m256i wv = _mm256_loadu_si256((const __m256i *)(const void *)(w + i));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(c, wv));
  }
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  int32_t sum = _mm_cvtsi128_si32(s);
  return i < d ? sum + dot_u8_generic(w + i, code + i, d - i) : sum;
}

__attribute__((target("avx512f,fma"))) static float dot_f32_avx512(const float *a,
                                                                    const unsigned char *b, int d) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  const float *bf = (const float *)(const void *)b;
  int i = 0;
  for (; i + 32 <= d; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(bf + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(bf + i + 16), s1);
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  return i < d ? s + dot_f32_generic(a + i, b + (size_t)i * sizeof(float), d - i) : s;
}

__attribute__((target("avx512f,avx512bw"))) static int32_t dot_u8_avx512(const int16_t *w,
                                                                         const uint8_t *code,
                                                                         int d) {
  __m512i acc = _mm512_setzero_si512();
  int i = 0;
  for (; i + 32 <= d; i += 32) {
    __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(const void *)(code + i)));
    __m512i wv = _mm512_loadu_si512((const void *)(w + i));
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(c, wv));
  }
  int32_t sum = _mm512_reduce_add_epi32(acc);
  return i < d ? sum + dot_u8_generic(w + i, code + i, d - i) : sum;
}
#endif

typedef struct kernels {
  dot_f32_fn f32;
  dot_u8_fn u8;
} kernels;

static kernels chosen_kernels(void) {
#ifdef CDB_SCAN_X86
  switch (cdb_ip_isa_chosen()) {
    case CDB_IP_AVX512:
      if (__builtin_cpu_supports("avx512bw")) return (kernels){dot_f32_avx512, dot_u8_avx512};
      return (kernels){dot_f32_avx512, dot_u8_avx2};
    case CDB_IP_AVX2: return (kernels){dot_f32_avx2, dot_u8_avx2};
    default: break;
  }
#endif
  return (kernels){dot_f32_generic, dot_u8_generic};
}

/* ---- heaps of hits ---- */

typedef struct hit {
  float sim;
  int64_t id;
} hit;

/* a ranks below b: lower similarity, or the same and a higher id. */
static int ranks_below(hit a, hit b) { return a.sim < b.sim || (a.sim == b.sim && a.id > b.id); }

/* Restores the heap below i; worst_on_top: a min-heap (root = the worst hit), else a max-heap. */
static void sift_down(hit *h, int64_t n, int64_t i, int worst_on_top) {
  for (;;) {
    int64_t top = i, l = 2 * i + 1, r = l + 1;
    if (l < n && (worst_on_top ? ranks_below(h[l], h[top]) : ranks_below(h[top], h[l]))) top = l;
    if (r < n && (worst_on_top ? ranks_below(h[r], h[top]) : ranks_below(h[top], h[r]))) top = r;
    if (top == i) return;
    hit t = h[i];
    h[i] = h[top];
    h[top] = t;
    i = top;
  }
}

static void sift_up(hit *h, int64_t i) {
  while (i > 0 && ranks_below(h[i], h[(i - 1) / 2])) {
    hit t = h[i];
    h[i] = h[(i - 1) / 2];
    h[(i - 1) / 2] = t;
    i = (i - 1) / 2;
  }
}

/* The k best hits offered, in a min-heap. */
typedef struct top_k {
  hit *h;
  int64_t n, k;
} top_k;

static void top_k_offer(top_k *t, hit x) {
  if (t->n < t->k) {
    t->h[t->n] = x;
    sift_up(t->h, t->n++);
  } else if (t->k > 0 && ranks_below(t->h[0], x)) {
    t->h[0] = x;
    sift_down(t->h, t->n, 0, 1);
  }
}

/* Pops the heap's hits into ids/sims, best first. */
static void top_k_drain(top_k *t, int64_t *ids, float *sims) {
  for (int64_t n = t->n; n > 0; n--) {
    ids[n - 1] = t->h[0].id;
    sims[n - 1] = t->h[0].sim;
    t->h[0] = t->h[n - 1];
    sift_down(t->h, n - 1, 0, 1);
  }
}

/* A growable array of hits. */
typedef struct hits {
  hit *h;
  int64_t n, cap;
} hits;

static int hits_push(hits *a, hit x) {
  if (a->n == a->cap) {
    int64_t cap = a->cap ? a->cap * 2 : 1024;
    hit *p = realloc(a->h, (size_t)cap * sizeof *p);
    if (!p) return -1;
    a->h = p;
    a->cap = cap;
  }
  a->h[a->n++] = x;
  return 0;
}

/* ---- the scan ---- */

typedef struct scan {
  const cdb_index *idx;
  cdb_faiss_ivf_layout layout;
  kernels k;
  const float *q;
  int16_t *w; /* SQ8: q_i vdiff_i / 255 as integers (times 1 / w_scale) */
  float w_scale;
  float base; /* SQ8: sum_i q_i (vmin_i + 0.5 vdiff_i / 255) */
  float *qc;  /* q . centroid, per list */
  int32_t *probe;
  size_t nprobe;
} scan;

int ivf_scan_supported(const cdb_index *idx) {
  cdb_faiss_ivf_layout layout;
  return cdb_faiss_IndexIVF_layout(idx->ivf, &layout) == 0 && layout.kind != CDB_FAISS_CODES_OTHER;
}

static void scan_free(scan *s) {
  free(s->w);
  free(s->qc);
  free(s->probe);
}

/* The nprobe lists with the largest q . centroid (ties: lower list first). */
static int choose_probes(scan *s, size_t nprobe) {
  size_t nlist = s->idx->nlist;
  int d = s->idx->dim;
  top_k t = {malloc(nprobe * sizeof(hit)), 0, (int64_t)nprobe};
  if (!t.h) return -1;
  for (size_t l = 0; l < nlist; l++) {
    s->qc[l] = s->k.f32(s->q, (const unsigned char *)(s->layout.centroids + l * (size_t)d), d);
    top_k_offer(&t, (hit){s->qc[l], (int64_t)l});
  }
  s->nprobe = (size_t)t.n;
  for (int64_t i = 0; i < t.n; i++) s->probe[i] = (int32_t)t.h[i].id;
  free(t.h);
  return 0;
}

/* w_i = q_i vdiff_i / 255 as int16 with one scale, the largest |w_i| at W_MAX: the kernels'
 * int32 lanes each sum at most d / 8 products of 255 x W_MAX, so W_MAX shrinks for d > 4096
 * (14 bits: the rounding is far below the codes' own). */
static void quantize_weights(scan *s, int d) {
  double base = 0, wmax = 0;
  for (int i = 0; i < d; i++) {
    double w = (double)s->q[i] * s->layout.vdiff[i] / 255.0;
    if (fabs(w) > wmax) wmax = fabs(w);
    base += (double)s->q[i] * (s->layout.vmin[i] + 0.5 * s->layout.vdiff[i] / 255.0);
  }
  double limit = fmin(16383.0, floor(2147483647.0 * 8.0 / (255.0 * (d + 16))));
  double scale = wmax > 0 ? limit / wmax : 1.0;
  for (int i = 0; i < d; i++)
    s->w[i] = (int16_t)lrint((double)s->q[i] * s->layout.vdiff[i] / 255.0 * scale);
  s->w_scale = (float)(1.0 / scale);
  s->base = (float)base;
}

static int scan_init(scan *s, const cdb_index *idx, const float *q, size_t nprobe,
                     cdb_error *err) {
  memset(s, 0, sizeof *s);
  s->idx = idx;
  s->q = q;
  s->k = chosen_kernels();
  if (cdb_faiss_IndexIVF_layout(idx->ivf, &s->layout)) return ivf_faiss_fail(err, "search");
  int d = idx->dim;
  if (nprobe > idx->nlist) nprobe = idx->nlist;
  s->qc = malloc(idx->nlist * sizeof *s->qc);
  s->probe = malloc((nprobe ? nprobe : 1) * sizeof *s->probe);
  s->w = s->layout.kind == CDB_FAISS_CODES_SQ8 ? malloc((size_t)d * sizeof *s->w) : NULL;
  if (!s->qc || !s->probe || (s->layout.kind == CDB_FAISS_CODES_SQ8 && !s->w) ||
      choose_probes(s, nprobe) < 0) {
    scan_free(s);
    return cdb_error_set(err, "index: out of memory");
  }
  if (s->w) quantize_weights(s, d);
  return 0;
}

typedef void (*hit_fn)(void *ctx, hit x);

/* Scores every member of the probed lists and hands each to fn. */
static int scan_lists(const scan *s, const ivf_scan_filter *f, hit_fn fn, void *ctx,
                      cdb_error *err) {
  int d = s->idx->dim;
  size_t cs = s->layout.code_size;
  int sq8 = s->layout.kind == CDB_FAISS_CODES_SQ8;
  for (size_t p = 0; p < s->nprobe; p++) {
    size_t l = (size_t)s->probe[p], n;
    const uint8_t *codes;
    const void *ids;
    if (cdb_faiss_IndexIVF_list_view(s->idx->ivf, l, &n, &codes, &ids))
      return ivf_faiss_fail(err, "search");
    float offset = sq8 ? s->base + (s->layout.by_residual ? s->qc[l] : 0.0f) : 0.0f;
    for (size_t j = 0; j < n; j++) {
      int64_t id;
      memcpy(&id, (const unsigned char *)ids + j * sizeof id, sizeof id);
      if (f && f->member && !f->member(f->member_ctx, id)) continue;
      const uint8_t *code = codes + j * cs;
      float sim = sq8 ? offset + s->w_scale * (float)s->k.u8(s->w, code, d)
                      : s->k.f32(s->q, code, d);
      fn(ctx, (hit){sim, id});
    }
    cdb_faiss_IndexIVF_list_release(s->idx->ivf, l, codes, ids);
  }
  return 0;
}

static void offer_to_top(void *ctx, hit x) { top_k_offer(ctx, x); }

typedef struct collector {
  hits all;
  float min_sim;
  int failed;
} collector;

static void collect(void *ctx, hit x) {
  collector *c = ctx;
  if (x.sim >= c->min_sim && !c->failed && hits_push(&c->all, x) < 0) c->failed = 1;
}

/* One call of the lazy predicate (its answer in *allowed): 0, or IVF_SCAN_BUDGET_SPENT when no
 * call is left. */
static int ask_allow(ivf_scan_filter *f, int64_t id, int *allowed) {
  if (f->allow_budget == 0) return IVF_SCAN_BUDGET_SPENT;
  if (f->allow_budget > 0) f->allow_budget--;
  *allowed = f->allow(f->allow_ctx, id) != 0;
  f->asked++;
  f->accepted += *allowed;
  return 0;
}

/* The k best hits that f->allow accepts, asked best first. The candidates are the scan's best
 * `keep` (not all of them: a bounded heap costs little per code); when those run out before k
 * are allowed, the scan runs again keeping 8x more and the asking resumes where it stopped (the
 * ranking is deterministic, so the first candidates are the same ones). */
static int best_allowed(const scan *s, int64_t k, ivf_scan_filter *f, int64_t *ids, float *sims,
                        int64_t *n_found, cdb_error *err) {
  int64_t keep = 8 * k + 256, asked = 0, found = 0;
  int rc = 0;
  for (;;) {
    top_k t = {malloc((size_t)keep * sizeof(hit)), 0, keep};
    int64_t *cids = malloc((size_t)keep * sizeof *cids);
    float *csims = malloc((size_t)keep * sizeof *csims);
    rc = t.h && cids && csims ? scan_lists(s, f, offer_to_top, &t, err)
                              : cdb_error_set(err, "index: out of memory");
    int64_t n = t.n;
    if (rc == 0) top_k_drain(&t, cids, csims);
    for (; rc == 0 && found < k && asked < n; asked++) {
      int allowed;
      rc = ask_allow(f, cids[asked], &allowed);
      if (rc == 0 && allowed) {
        ids[found] = cids[asked];
        sims[found++] = csims[asked];
      }
    }
    free(t.h);
    free(cids);
    free(csims);
    if (rc != 0 || found == k || n < keep) break; /* done, or every candidate asked */
    /* the asks still needed at the selectivity seen so far would overrun the budget */
    if (f->allow_budget >= 0 && (double)(k - found) * (double)f->asked /
                                        (double)(f->accepted > 0 ? f->accepted : 1) >
                                    (double)f->allow_budget) {
      rc = IVF_SCAN_BUDGET_SPENT;
      break;
    }
    keep *= 8;
  }
  *n_found = found;
  return rc;
}

int ivf_scan_knn(const cdb_index *idx, const float *q, size_t nprobe, int64_t k,
                 ivf_scan_filter *f, int64_t *ids, float *sims, int64_t *n_found, cdb_error *err) {
  *n_found = 0;
  scan s;
  if (scan_init(&s, idx, q, nprobe, err) < 0) return -1;
  int rc;
  if (f && f->allow) {
    rc = best_allowed(&s, k, f, ids, sims, n_found, err);
  } else {
    top_k t = {malloc((size_t)(k > 0 ? k : 1) * sizeof(hit)), 0, k};
    rc = t.h ? scan_lists(&s, f, offer_to_top, &t, err) : cdb_error_set(err, "index: out of memory");
    if (rc == 0) {
      top_k_drain(&t, ids, sims);
      *n_found = t.n;
    }
    free(t.h);
  }
  scan_free(&s);
  return rc;
}

static int cmp_hit_best_first(const void *a, const void *b) {
  const hit *x = a, *y = b;
  return ranks_below(*y, *x) ? -1 : ranks_below(*x, *y) ? 1 : 0;
}

/* Keeps the hits f->allow accepts (all of them are asked). */
static int keep_allowed(hits *all, ivf_scan_filter *f) {
  int64_t kept = 0;
  for (int64_t i = 0; i < all->n; i++) {
    int allowed, rc = ask_allow(f, all->h[i].id, &allowed);
    if (rc) return rc;
    if (allowed) all->h[kept++] = all->h[i];
  }
  all->n = kept;
  return 0;
}

int ivf_scan_range(const cdb_index *idx, const float *q, size_t nprobe, float min_sim,
                   ivf_scan_filter *f, int64_t **ids, float **sims, int64_t *n_found,
                   cdb_error *err) {
  *ids = NULL;
  *sims = NULL;
  *n_found = 0;
  scan s;
  if (scan_init(&s, idx, q, nprobe, err) < 0) return -1;
  collector c = {{NULL, 0, 0}, min_sim, 0};
  int rc = scan_lists(&s, f, collect, &c, err);
  if (rc == 0 && c.failed) rc = cdb_error_set(err, "index: out of memory");
  if (rc == 0 && f && f->allow) rc = keep_allowed(&c.all, f);
  if (rc == 0 && c.all.n > 0) {
    qsort(c.all.h, (size_t)c.all.n, sizeof(hit), cmp_hit_best_first);
    *ids = malloc((size_t)c.all.n * sizeof **ids);
    *sims = malloc((size_t)c.all.n * sizeof **sims);
    if (!*ids || !*sims) {
      free(*ids);
      free(*sims);
      *ids = NULL;
      *sims = NULL;
      rc = cdb_error_set(err, "index: out of memory");
    } else {
      for (int64_t i = 0; i < c.all.n; i++) {
        (*ids)[i] = c.all.h[i].id;
        (*sims)[i] = c.all.h[i].sim;
      }
      *n_found = c.all.n;
    }
  }
  free(c.all.h);
  scan_free(&s);
  return rc;
}

/* ---- choosing the default nprobe from the data ---- */

typedef struct calibration {
  const cdb_index *idx;
  const float *queries;
  const int64_t *query_ids;
  int nq, k;
  size_t nprobe;  /* the nprobe being measured; nlist: the truth */
  int64_t *truth; /* nq x k ids of the exhaustive scan */
  int64_t *hits;  /* per query: how many of its truth the nprobe scan found */
  int failed;
} calibration;

static int is_not(void *ctx, int64_t id) { return id != *(const int64_t *)ctx; }

static void calibrate_queries(void *ctx, int ith, int nth) {
  calibration *c = ctx;
  int64_t *ids = malloc((size_t)c->k * sizeof *ids);
  float *sims = malloc((size_t)c->k * sizeof *sims);
  cdb_error err = {{0}};
  for (int qi = ith; qi < c->nq && ids && sims && !c->failed; qi += nth) {
    int64_t self = c->query_ids[qi], n = 0;
    ivf_scan_filter others = {is_not, &self, NULL, NULL, -1, 0, 0};
    int truth = c->nprobe >= c->idx->nlist;
    int64_t *out = truth ? c->truth + (size_t)qi * c->k : ids;
    if (ivf_scan_knn(c->idx, c->queries + (size_t)qi * c->idx->dim, c->nprobe, c->k, &others, out,
                     sims, &n, &err) != 0) {
      c->failed = 1;
      break;
    }
    for (int64_t i = n; truth && i < c->k; i++) out[i] = -1;
    c->hits[qi] = 0;
    for (int64_t i = 0; !truth && i < n; i++)
      for (int j = 0; j < c->k; j++)
        if (ids[i] == c->truth[(size_t)qi * c->k + j]) c->hits[qi]++;
  }
  if (!ids || !sims) c->failed = 1;
  free(ids);
  free(sims);
}

/* Mean recall of the nprobe scan against the truth, or -1 on failure. */
static double measure(calibration *c, size_t nprobe) {
  c->nprobe = nprobe;
  cdb_parallel(calibrate_queries, c, cdb_pool_threads());
  if (c->failed) return -1;
  int64_t found = 0, wanted = 0;
  for (int qi = 0; qi < c->nq; qi++) {
    found += c->hits[qi];
    for (int j = 0; j < c->k; j++) wanted += c->truth[(size_t)qi * c->k + j] >= 0;
  }
  return wanted ? (double)found / (double)wanted : 1.0;
}

int ivf_scan_calibrate_nprobe(const cdb_index *idx, const float *queries,
                              const int64_t *query_ids, int nq, double target, int min_nprobe) {
  size_t nlist = idx->nlist, nprobe = min_nprobe < 1 ? 1 : (size_t)min_nprobe;
  if (nq < 1 || !ivf_scan_supported(idx) || nprobe >= nlist) return -1;
  calibration c = {idx, queries, query_ids, nq, 10, nlist, NULL, NULL, 0};
  c.truth = malloc((size_t)nq * c.k * sizeof *c.truth);
  c.hits = calloc((size_t)nq, sizeof *c.hits);
  int chosen = -1;
  if (c.truth && c.hits && measure(&c, nlist) >= 0) {
    for (;; nprobe = nprobe + (nprobe + 3) / 4) {
      if (nprobe >= nlist) {
        chosen = (int)nlist;
        break;
      }
      double r = measure(&c, nprobe);
      if (r < 0) break;
      if (r >= target) {
        chosen = (int)nprobe;
        break;
      }
    }
  }
  free(c.truth);
  free(c.hits);
  return chosen;
}
