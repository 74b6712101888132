/* avx512.c: AVX-512F kernels (16 floats per register), compiled for that target only through
 * function attributes so the rest of the build needs no -march. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>

#include "embed/kernels/kernels.h"

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

static inline TARGET __mmask16 tail_mask(int left) {
  if (left <= 0) return 0;
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

/* Cephes-style expf: range reduction by ln 2, degree-6 polynomial, ~1 ulp. */
static inline TARGET __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

static TARGET float dot512(const float *a, const float *b, int n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static TARGET void axpy512(float a, const float *x, float *y, int n) {
  __m512 va = _mm512_set1_ps(a);
  for (int i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i),
                               _mm512_maskz_loadu_ps(k, y + i));
    _mm512_mask_storeu_ps(y + i, k, r);
  }
}

static TARGET void add512(float *y, const float *x, int n) {
  for (int i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 r = _mm512_add_ps(_mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i));
    _mm512_mask_storeu_ps(y + i, k, r);
  }
}

static TARGET void layernorm512(const float *x, const float *gamma, const float *beta, float *y,
                                int n, float eps) {
  __m512 s = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16)
    s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
  __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(s) / (float)n);
  __m512 v = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + i), mean);
    v = _mm512_fmadd_ps(d, d, v);
  }
  __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(v) / (float)n + eps));
  for (int i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mean), rstd);
    __m512 r = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(k, gamma + i),
                               _mm512_maskz_loadu_ps(k, beta + i));
    _mm512_mask_storeu_ps(y + i, k, r);
  }
}

static TARGET void softmax512(float *x, int n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int i = 0; i < n; i += 16)
    m = _mm512_mask_max_ps(m, tail_mask(n - i), m, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
  __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
  __m512 s = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), max));
    e = _mm512_maskz_mov_ps(k, e);
    s = _mm512_add_ps(s, e);
    _mm512_mask_storeu_ps(x + i, k, e);
  }
  __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(s));
  for (int i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
  }
}

static TARGET void quick_gelu512(float *x, int n) {
  const __m512 one = _mm512_set1_ps(1.0f), c = _mm512_set1_ps(-1.702f);
  for (int i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    __m512 r = _mm512_div_ps(v, _mm512_add_ps(one, exp512(_mm512_mul_ps(v, c))));
    _mm512_mask_storeu_ps(x + i, k, r);
  }
}

/* erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), odd symmetry for x < 0. */
static inline TARGET __m512 erf512(__m512 x) {
  __m512 a = _mm512_abs_ps(x);
  __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                           _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  __m512 e = exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a));
  __m512 r = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0f));
  __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_sub_ps(r, neg, _mm512_setzero_ps(), r);
}

static TARGET void gelu512(float *x, int n) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 rs2 = _mm512_set1_ps(0.70710678118654752f);
  for (int i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    __m512 r = _mm512_mul_ps(_mm512_mul_ps(half, v),
                             _mm512_add_ps(one, erf512(_mm512_mul_ps(v, rs2))));
    _mm512_mask_storeu_ps(x + i, k, r);
  }
}

static TARGET void f16_to_f32_512(const uint16_t *src, float *dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
  if (i < n) {
    __mmask16 k = tail_mask((int)(n - i));
    __m256i h = _mm256_maskz_loadu_epi16(k, src + i);
    _mm512_mask_storeu_ps(dst + i, k, _mm512_cvtph_ps(h));
  }
}

static TARGET void f32_to_f16_512(const float *src, uint16_t *dst, size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask((int)(n - i > 16 ? 16 : n - i));
    __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_mask_storeu_epi16(dst + i, k, h);
  }
}

static TARGET void bf16_to_f32_512(const uint16_t *src, float *dst, size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask((int)(n - i > 16 ? 16 : n - i));
    __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, src + i));
    _mm512_mask_storeu_ps(dst + i, k, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
}

/* In place: afterwards r[k] holds element k of every input row (a 16 x 16 float transpose:
 * pairs of rows interleaved, then pairs of pairs, then 128-bit lanes gathered). */
static inline TARGET void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  /* u[4g + e], lane L: element 4L + e of rows 4g .. 4g+3 */
  for (int g = 0; g < 4; g++) {
    __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int e = 0; e < 4; e++) {
    __m512 x0 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x44),
           x1 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xEE);
    __m512 y0 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x44);
    __m512 y1 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xEE);
    r[e] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    r[4 + e] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
    r[8 + e] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    r[12 + e] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
  }
}

/* One panel of 32 rows: 16 x 16 blocks transposed in registers; the K % 16 tail by the shared
 * scalar loop. With f16 the rows are rounded to half floats; returns 1 when one overflowed (or
 * was NaN). */
static inline __attribute__((always_inline)) TARGET int pack_panel_any(const float *W, int K,
                                                                       void *dst, int f16) {
  __mmask16 bad = 0;
  const __m512 half_limit = _mm512_set1_ps(65520.0f); /* rounds to infinity from here on */
  int k0 = 0;
  for (; k0 + 16 <= K; k0 += 16)
    for (int g = 0; g < 2; g++) {
      __m512 r[16];
      for (int i = 0; i < 16; i++) {
        r[i] = _mm512_loadu_ps(W + (size_t)(g * 16 + i) * K + k0);
        if (f16) bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(r[i]), half_limit, _CMP_NLT_UQ);
      }
      transpose16(r);
      for (int k = 0; k < 16; k++) {
        size_t at = (size_t)(k0 + k) * CLIP_PANEL + g * 16;
        if (f16)
          _mm256_storeu_si256((__m256i *)((uint16_t *)dst + at),
                              _mm512_cvtps_ph(r[k], _MM_FROUND_TO_NEAREST_INT));
        else _mm512_storeu_ps((float *)dst + at, r[k]);
      }
    }
  return (bad != 0) | clip_pack_panel_tail(W, K, k0, dst, f16);
}

static TARGET void pack_panel512(const float *W, int K, float *dst) {
  pack_panel_any(W, K, dst, 0);
}

static TARGET int pack_panel_f16_512(const float *W, int K, uint16_t *dst) {
  return pack_panel_any(W, K, dst, 1);
}

/* 4 activation rows x 4 weight rows of dot products, 16 accumulators over K. */
static inline TARGET void block4x4(int K, const float *A, int lda, const float *W, int ldw,
                                   float *C, int ldc, int accumulate) {
  __m512 acc[4][4];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
  for (int k = 0; k < K; k += 16) {
    __mmask16 m = tail_mask(K - k);
    __m512 w[4], a;
    for (int j = 0; j < 4; j++) w[j] = _mm512_maskz_loadu_ps(m, W + (size_t)j * ldw + k);
    for (int i = 0; i < 4; i++) {
      a = _mm512_maskz_loadu_ps(m, A + (size_t)i * lda + k);
      for (int j = 0; j < 4; j++) acc[i][j] = _mm512_fmadd_ps(a, w[j], acc[i][j]);
    }
  }
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) {
      float s = _mm512_reduce_add_ps(acc[i][j]);
      float *c = C + (size_t)i * ldc + j;
      *c = accumulate ? *c + s : s;
    }
}

/* Rows of A stay hot in L2 while 4 weight rows at a time stream past them. */
#define GEMM_ROW_CHUNK 64

static TARGET void gemm_nt512(int M, int N, int K, const float *A, int lda, const float *W, int ldw,
                              float *C, int ldc, int accumulate) {
  for (int m0 = 0; m0 < M; m0 += GEMM_ROW_CHUNK) {
    int m1 = m0 + GEMM_ROW_CHUNK < M ? m0 + GEMM_ROW_CHUNK : M;
    for (int n = 0; n < N; n += 4) {
      const float *w = W + (size_t)n * ldw;
      if (n + 4 > N) {
        for (int m = m0; m < m1; m++)
          for (int j = n; j < N; j++) {
            float s = dot512(A + (size_t)m * lda, W + (size_t)j * ldw, K);
            float *c = C + (size_t)m * ldc + j;
            *c = accumulate ? *c + s : s;
          }
        continue;
      }
      int m = m0;
      for (; m + 4 <= m1; m += 4)
        block4x4(K, A + (size_t)m * lda, lda, w, ldw, C + (size_t)m * ldc + n, ldc, accumulate);
      for (; m < m1; m++)
        for (int j = 0; j < 4; j++) {
          float s = dot512(A + (size_t)m * lda, w + (size_t)j * ldw, K);
          float *c = C + (size_t)m * ldc + n + j;
          *c = accumulate ? *c + s : s;
        }
    }
  }
}

/* C = A B for small row-major B: 4 rows x 64 columns of C in 16 registers, B rows loaded once
 * per 4 rows of A. */
static TARGET void gemm_nn512(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                              float *C, int ldc) {
  for (int n0 = 0; n0 < N; n0 += 64) {
    __mmask16 mk[4];
    for (int v = 0; v < 4; v++) mk[v] = tail_mask(N - n0 - 16 * v);
    for (int m0 = 0; m0 < M; m0 += 4) {
      int rows = M - m0 < 4 ? M - m0 : 4;
      const float *a[4];
      for (int i = 0; i < 4; i++) a[i] = A + (size_t)(m0 + (i < rows ? i : rows - 1)) * lda;
      __m512 acc[4][4];
      for (int i = 0; i < 4; i++)
        for (int v = 0; v < 4; v++) acc[i][v] = _mm512_setzero_ps();
      for (int k = 0; k < K; k++) {
        const float *b = B + (size_t)k * ldb + n0;
        __m512 bv[4];
        for (int v = 0; v < 4; v++) bv[v] = _mm512_maskz_loadu_ps(mk[v], b + 16 * v);
        for (int i = 0; i < 4; i++) {
          __m512 ai = _mm512_set1_ps(a[i][k]);
          for (int v = 0; v < 4; v++) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
        }
      }
      for (int i = 0; i < rows; i++)
        for (int v = 0; v < 4; v++)
          _mm512_mask_storeu_ps(C + (size_t)(m0 + i) * ldc + n0 + 16 * v, mk[v], acc[i][v]);
    }
  }
}

/* ---- packed GEMM: mr x 32 micro-tile, weights streamed from a panel. mr = 14 (28
 * accumulators) for many rows; a short text (4-7 tokens) gets a lower tile instead of
 * multiplying zero rows. ---- */
#define MR 14
/* K slice per micro-kernel call (panel slice 32 KB) and K slab of packed rows; -D overrides
 * are for tuning runs (128-256 measured equal on an idle core). */
#ifndef KC
#define KC 256
#endif
#ifndef PF_DIST
#define PF_DIST 2048
#endif
#ifndef KSLAB
#define KSLAB 768
#endif

/* rows of A (the rest zero) as [K][mr], so the micro-kernel broadcasts from one stream: blocks
 * of 16 steps of k are transposed in registers and stored mr lanes at a time (each store's
 * unused lanes are overwritten by the next). A text's rows are packed by every thread, once
 * per GEMM, so this runs often. */
static TARGET void pack_rows(const float *A, int lda, int rows, int K, int mr, float *dst) {
  __mmask16 lanes = tail_mask(mr);
  for (int k0 = 0; k0 < K; k0 += 16) {
    __mmask16 kmask = tail_mask(K - k0);
    __m512 r[16];
    for (int i = 0; i < 16; i++)
      r[i] = i < rows ? _mm512_maskz_loadu_ps(kmask, A + (size_t)i * lda + k0)
                      : _mm512_setzero_ps();
    transpose16(r);
    int kn = K - k0 < 16 ? K - k0 : 16;
    for (int k = 0; k < kn; k++) _mm512_mask_storeu_ps(dst + (size_t)(k0 + k) * mr, lanes, r[k]);
  }
}

/* A tile reads its activations ~10 steps of k ahead (one row tile streams from L2). */
#ifndef A_PF_DIST
#define A_PF_DIST 640
#endif

static inline TARGET __m512 activate512(__m512 v, clip_epi_act act) {
  if (act == CLIP_EPI_QUICK_GELU)
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f),
                                          exp512(_mm512_mul_ps(v, _mm512_set1_ps(-1.702f)))));
  if (act == CLIP_EPI_GELU)
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v),
                         _mm512_add_ps(_mm512_set1_ps(1.0f),
                                       erf512(_mm512_mul_ps(v, _mm512_set1_ps(
                                                                   0.70710678118654752f)))));
  return v;
}

/* How one call of tile_x32 streams and finishes: which weight bytes to prefetch, and the bias
 * (already at the tile's first column) and activation of the last K slice. */
typedef struct tile_plan {
  const char *b_stream;    /* this slice, when not yet in L1 (the first row tile; pf_stream) */
  const char *l2_next;     /* the slice after this one, fetched into L2 meanwhile (pf_next) */
  uint64_t pf_at, pf_step; /* this tile's share of it: byte offset and bytes per k, 16.16 */
  int pf_two;              /* more than a line per k (one tile, float32): two prefetches */
  const float *bias;       /* NULL: none, or not the last slice */
  clip_epi_act act;        /* CLIP_EPI_NONE unless the last slice */
} tile_plan;

/* One mr x 32 tile over kc steps of k; weights F32 or F16. With keep_wide the widened half
 * floats are also stored to wide, for the row tiles after this one. f16, mr and the switches are
 * constants after inlining, so each caller gets its own branch-free loop. */
static inline __attribute__((always_inline)) TARGET void tile_x32(
    int K, const float *Ap, const void *Bp, int f16, const int mr, float *C, int ldc, int rows,
    __mmask16 mask0, __mmask16 mask1, int accumulate, const tile_plan *plan, const int pf_stream,
    const int pf_next, const int keep_wide, float *wide) {
  const size_t step = (size_t)CLIP_PANEL * (f16 ? 2 : 4); /* weight bytes per step of k */
  uint64_t pf_at = plan->pf_at;
  __m512 c[MR][2];
#pragma GCC unroll 14
  for (int i = 0; i < mr; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
  /* The output rows this tile adds to are read at the end; start fetching them now. */
  if (accumulate)
    for (int i = 0; i < rows; i++) {
      _mm_prefetch((const char *)(C + (size_t)i * ldc), _MM_HINT_T0);
      _mm_prefetch((const char *)(C + (size_t)i * ldc + 16), _MM_HINT_T0);
    }
  for (int k = 0; k < K; k++) {
    __m512 b0, b1;
    _mm_prefetch((const char *)(Ap + (size_t)k * mr) + A_PF_DIST, _MM_HINT_T0);
    /* The weights are one sequential stream; for a few rows the kernel waits on memory, and
     * the hardware prefetcher alone keeps too few lines in flight. */
    if (pf_stream) {
      _mm_prefetch(plan->b_stream + (size_t)k * step + PF_DIST, _MM_HINT_T0);
      if (!f16) _mm_prefetch(plan->b_stream + (size_t)k * step + PF_DIST + 64, _MM_HINT_T0);
    }
    /* And the next slice into L2 while the row tiles work on this one (measured: +20% for a
     * 7-token text, +5-15% for 50-77 rows, +3% for 1600 rows), each tile fetching its share so
     * that the requests to memory are spread over the whole slice's time. */
    if (pf_next) {
      const char *line = plan->l2_next + (pf_at >> 16);
      _mm_prefetch(line, _MM_HINT_T1);
      if (plan->pf_two) _mm_prefetch(line + 64, _MM_HINT_T1);
      pf_at += plan->pf_step;
    }
    if (f16) {
      const uint16_t *h = (const uint16_t *)Bp + (size_t)k * CLIP_PANEL;
      b0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
      b1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + 16)));
      if (keep_wide) {
        _mm512_store_ps(wide + (size_t)k * CLIP_PANEL, b0);
        _mm512_store_ps(wide + (size_t)k * CLIP_PANEL + 16, b1);
      }
    } else {
      b0 = _mm512_loadu_ps((const float *)Bp + (size_t)k * CLIP_PANEL);
      b1 = _mm512_loadu_ps((const float *)Bp + (size_t)k * CLIP_PANEL + 16);
    }
    const float *a = Ap + (size_t)k * mr;
#pragma GCC unroll 14
    for (int i = 0; i < mr; i++) {
      __m512 ai = _mm512_set1_ps(a[i]);
      c[i][0] = _mm512_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(ai, b1, c[i][1]);
    }
  }
  __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
  if (plan->bias) {
    bias0 = _mm512_maskz_loadu_ps(mask0, plan->bias);
    bias1 = _mm512_maskz_loadu_ps(mask1, plan->bias + 16);
  }
#pragma GCC unroll 14
  for (int i = 0; i < mr; i++) {
    if (i >= rows) break;
    float *row = C + (size_t)i * ldc;
    if (accumulate) {
      c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(mask0, row));
      c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(mask1, row + 16));
    }
    if (plan->bias || plan->act != CLIP_EPI_NONE) {
      c[i][0] = activate512(_mm512_add_ps(c[i][0], bias0), plan->act);
      c[i][1] = activate512(_mm512_add_ps(c[i][1], bias1), plan->act);
    }
    _mm512_mask_storeu_ps(row, mask0, c[i][0]);
    _mm512_mask_storeu_ps(row + 16, mask1, c[i][1]);
  }
}

/* Loops, outside in: chunks of rows whose packed slab of A (rows x KSLAB) stays in L2; slabs of
 * K; weight panels; L1-sized slices of K; 14-row tiles. A long K (the MLP's second layer) is
 * cut into slabs so that chunks stay tall and each weight panel is fetched fewer times. */
static inline __attribute__((always_inline)) TARGET void gemm_packed_any(
    int M, int N, int K, const float *A, int lda, const void *Wp, int f16, const int mr, int p0,
    int p1, const clip_gemm_out *out, float *scratch) {
  size_t esize = f16 ? 2 : 4;
  float wide[KC * CLIP_PANEL] __attribute__((aligned(64))); /* used for half floats only */
  int kslab = K < KSLAB ? K : KSLAB;
  int tiles = (int)(clip_gemm_scratch_floats(K) / ((size_t)kslab * mr));
  for (int m0 = 0; m0 < M; m0 += tiles * mr) {
    int mc = M - m0 < tiles * mr ? M - m0 : tiles * mr, nt = (mc + mr - 1) / mr;
    for (int s0 = 0; s0 < K; s0 += kslab) {
      int ks = K - s0 < kslab ? K - s0 : kslab;
      for (int t = 0; t < nt; t++)
        pack_rows(A + (size_t)(m0 + t * mr) * lda + s0, lda, mc - t * mr < mr ? mc - t * mr : mr,
                  ks, mr, scratch + (size_t)t * mr * ks);
      for (int p = p0; p < p1; p++) {
        int cols = N - p * CLIP_PANEL < CLIP_PANEL ? N - p * CLIP_PANEL : CLIP_PANEL;
        __mmask16 mask0 = tail_mask(cols), mask1 = tail_mask(cols - 16 > 0 ? cols - 16 : 0);
        const char *panel = (const char *)Wp + (size_t)p * CLIP_PANEL * K * esize;
        for (int k0 = s0; k0 < s0 + ks; k0 += KC) {
          int kc = s0 + ks - k0 < KC ? s0 + ks - k0 : KC, last = k0 + kc == K;
          const char *slice = panel + (size_t)k0 * CLIP_PANEL * esize;
          const char *next = clip_next_slice(Wp, esize, K, p, p1, k0, KC, s0, ks);
          /* Half floats shared by several tiles are widened once, by the first tile, into an
           * L1-sized buffer that the others read. */
          int widen = f16 && nt > 1;
          uint64_t pf_step = clip_prefetch_step(esize, nt);
          for (int t = 0; t < nt; t++) {
            const float *At = scratch + (size_t)t * mr * ks + (size_t)(k0 - s0) * mr;
            float *Ct = out->C + (size_t)(m0 + t * mr) * out->ldc + p * CLIP_PANEL;
            int rows = mc - t * mr < mr ? mc - t * mr : mr, acc = out->accumulate || k0 > 0;
            /* After the last slice there is nothing to fetch: re-touching this one is harmless. */
            tile_plan plan = {slice,
                              next ? next : slice,
                              (uint64_t)t * kc * pf_step,
                              pf_step,
                              !f16 && nt == 1,
                              last && out->bias ? out->bias + p * CLIP_PANEL : NULL,
                              last ? out->act : CLIP_EPI_NONE};
            if (t == 0 && widen)
              tile_x32(kc, At, slice, 1, mr, Ct, out->ldc, rows, mask0, mask1, acc, &plan, 1, 1, 1,
                       wide);
            else if (t == 0)
              tile_x32(kc, At, slice, f16, mr, Ct, out->ldc, rows, mask0, mask1, acc, &plan, 1, 1,
                       0, NULL);
            else if (widen)
              tile_x32(kc, At, wide, 0, mr, Ct, out->ldc, rows, mask0, mask1, acc, &plan, 0, 1, 0,
                       NULL);
            else
              tile_x32(kc, At, slice, f16, mr, Ct, out->ldc, rows, mask0, mask1, acc, &plan, 0, 1,
                       0, NULL);
          }
        }
      }
    }
  }
}

/* Tile height: the one padding the fewest rows, among 10, 7, 4 for at most 10 rows (short
 * texts) and 14, 11, 10 for up to 8 tiles (77 tokens = 7 x 11, one image's 50 = 5 x 10); else
 * 14. Taller tiles win ties (more accumulators per weight load). */
static int choose_mr(int M) {
  static const int small[] = {10, 7, 4}, mid[] = {MR, 11, 10};
  if (M > 8 * MR) return MR;
  return clip_tile_rows(M, M <= 10 ? small : mid, 3);
}

/* One copy of the loops per tile height and weight type (constants after inlining). */
#define DISPATCH_MR(f16)                                                                 \
  switch (choose_mr(M)) {                                                                \
    case 4: gemm_packed_any(M, N, K, A, lda, Wp, f16, 4, p0, p1, out, scratch); break;   \
    case 7: gemm_packed_any(M, N, K, A, lda, Wp, f16, 7, p0, p1, out, scratch); break;   \
    case 10: gemm_packed_any(M, N, K, A, lda, Wp, f16, 10, p0, p1, out, scratch); break; \
    case 11: gemm_packed_any(M, N, K, A, lda, Wp, f16, 11, p0, p1, out, scratch); break; \
    default: gemm_packed_any(M, N, K, A, lda, Wp, f16, MR, p0, p1, out, scratch); break; \
  }

static TARGET void gemm_packed512(int M, int N, int K, const float *A, int lda, const float *Wp,
                                  int p0, int p1, const clip_gemm_out *out, float *scratch) {
  DISPATCH_MR(0)
}

static TARGET void gemm_packed_f16_512(int M, int N, int K, const float *A, int lda,
                                       const uint16_t *Wp, int p0, int p1, const clip_gemm_out *out,
                                       float *scratch) {
  DISPATCH_MR(1)
}

const clip_kernels clip_kernels_avx512 = {
    .name = "avx512",
    .dot = dot512,
    .axpy = axpy512,
    .layernorm = layernorm512,
    .softmax = softmax512,
    .add = add512,
    .quick_gelu = quick_gelu512,
    .gelu = gelu512,
    .f16_to_f32 = f16_to_f32_512,
    .bf16_to_f32 = bf16_to_f32_512,
    .f32_to_f16 = f32_to_f16_512,
    .gemm_nt = gemm_nt512,
    .gemm_packed = gemm_packed512,
    .gemm_packed_f16 = gemm_packed_f16_512,
    .gemm_nn = gemm_nn512,
    .pack_panel = pack_panel512,
    .pack_panel_f16 = pack_panel_f16_512,
};

#else /* other architectures: never selected (clip_isa_supported says no) */
#include "embed/kernels/kernels.h"
const clip_kernels clip_kernels_avx512 = {.name = "avx512 (not built)"};
#endif
