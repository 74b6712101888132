/* avx2.c: AVX2 + FMA kernels (8 floats per register); tails fall back to scalar code. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "embed/kernels/kernels.h"

#define TARGET __attribute__((target("avx2,fma,f16c")))

static inline TARGET float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline TARGET float hmax256(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* Cephes-style expf, as in avx512.c; 2^n is built in the exponent bits. */
static inline TARGET __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  /* n in [-126, 128): split 2^n = 2^(n/2) * 2^(n - n/2) so both halves are normal floats. */
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i h = _mm256_srai_epi32(ni, 1);
  __m256 s1 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23));
  __m256 s2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), _mm256_set1_epi32(127)), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

static TARGET float dot256(const float *a, const float *b, int n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8)
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

static TARGET void axpy256(float a, const float *x, float *y, int n) {
  __m256 va = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

static TARGET void add256(float *y, const float *x, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += x[i];
}

static TARGET void layernorm256(const float *x, const float *gamma, const float *beta, float *y,
                                int n, float eps) {
  __m256 s = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + i));
  float sum = hsum256(s);
  for (; i < n; i++) sum += x[i];
  float mean = sum / (float)n;
  __m256 vm = _mm256_set1_ps(mean), v = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
    v = _mm256_fmadd_ps(d, d, v);
  }
  float var = hsum256(v);
  for (; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
  float rstd = 1.0f / sqrtf(var / (float)n + eps);
  __m256 vr = _mm256_set1_ps(rstd);
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vr);
    _mm256_storeu_ps(y + i,
                     _mm256_fmadd_ps(d, _mm256_loadu_ps(gamma + i), _mm256_loadu_ps(beta + i)));
  }
  for (; i < n; i++) y[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
}

static TARGET void softmax256(float *x, int n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  float max = hmax256(m);
  for (; i < n; i++) max = x[i] > max ? x[i] : max;
  __m256 vmax = _mm256_set1_ps(max), s = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
    s = _mm256_add_ps(s, e);
    _mm256_storeu_ps(x + i, e);
  }
  float sum = hsum256(s);
  for (; i < n; i++) sum += (x[i] = expf(x[i] - max));
  __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  for (; i < n; i++) x[i] *= 1.0f / sum;
}

static TARGET void quick_gelu256(float *x, int n) {
  const __m256 one = _mm256_set1_ps(1.0f), c = _mm256_set1_ps(-1.702f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, exp256(_mm256_mul_ps(v, c)))));
  }
  for (; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

/* erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7). */
static inline TARGET __m256 erf256(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 a = _mm256_andnot_ps(sign, x);
  __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                           _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
  __m256 r = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f));
  return _mm256_or_ps(r, _mm256_and_ps(sign, x));
}

static TARGET void gelu256(float *x, int n) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 rs2 = _mm256_set1_ps(0.70710678118654752f);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 r = _mm256_mul_ps(_mm256_mul_ps(half, v),
                             _mm256_add_ps(one, erf256(_mm256_mul_ps(v, rs2))));
    _mm256_storeu_ps(x + i, r);
  }
  for (; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

static TARGET void f16_to_f32_256(const uint16_t *src, float *dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  if (i < n) {
    uint16_t h[8] = {0};
    float f[8];
    memcpy(h, src + i, (n - i) * sizeof *h);
    _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
    memcpy(dst + i, f, (n - i) * sizeof *f);
  }
}

static TARGET void f32_to_f16_256(const float *src, uint16_t *dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  if (i < n) {
    float f[8] = {0};
    uint16_t h[8];
    memcpy(f, src + i, (n - i) * sizeof *f);
    _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(_mm256_loadu_ps(f), _MM_FROUND_TO_NEAREST_INT));
    memcpy(dst + i, h, (n - i) * sizeof *h);
  }
}

static TARGET void bf16_to_f32_256(const uint16_t *src, float *dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < n; i++) {
    uint32_t bits = (uint32_t)src[i] << 16;
    memcpy(&dst[i], &bits, 4);
  }
}

/* 2 activation rows x 4 weight rows, 8 accumulators (16 ymm registers in all). */
static inline TARGET void block2x4(int K, const float *A, int lda, const float *W, int ldw,
                                   float *C, int ldc, int accumulate) {
  __m256 acc[2][4];
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 a0 = _mm256_loadu_ps(A + k), a1 = _mm256_loadu_ps(A + lda + k);
    for (int j = 0; j < 4; j++) {
      __m256 w = _mm256_loadu_ps(W + (size_t)j * ldw + k);
      acc[0][j] = _mm256_fmadd_ps(a0, w, acc[0][j]);
      acc[1][j] = _mm256_fmadd_ps(a1, w, acc[1][j]);
    }
  }
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 4; j++) {
      float s = hsum256(acc[i][j]);
      for (int kk = k; kk < K; kk++) s += A[(size_t)i * lda + kk] * W[(size_t)j * ldw + kk];
      float *c = C + (size_t)i * ldc + j;
      *c = accumulate ? *c + s : s;
    }
}

#define GEMM_ROW_CHUNK 64

static TARGET void gemm_nt256(int M, int N, int K, const float *A, int lda, const float *W, int ldw,
                              float *C, int ldc, int accumulate) {
  for (int m0 = 0; m0 < M; m0 += GEMM_ROW_CHUNK) {
    int m1 = m0 + GEMM_ROW_CHUNK < M ? m0 + GEMM_ROW_CHUNK : M;
    for (int n = 0; n < N; n += 4) {
      int nb = N - n < 4 ? N - n : 4;
      int m = m0;
      if (nb == 4)
        for (; m + 2 <= m1; m += 2)
          block2x4(K, A + (size_t)m * lda, lda, W + (size_t)n * ldw, ldw, C + (size_t)m * ldc + n,
                   ldc, accumulate);
      for (; m < m1; m++)
        for (int j = n; j < n + nb; j++) {
          float s = dot256(A + (size_t)m * lda, W + (size_t)j * ldw, K);
          float *c = C + (size_t)m * ldc + j;
          *c = accumulate ? *c + s : s;
        }
    }
  }
}

/* In place: afterwards r[k] holds element k of every input row (8 x 8 floats). */
static inline TARGET void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 8; g += 4) { /* u[g + e], each 128-bit lane: element e (of 4) of 4 rows */
    u[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
    u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
    u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
    u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
  }
  for (int e = 0; e < 4; e++) {
    r[e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x20);
    r[4 + e] = _mm256_permute2f128_ps(u[e], u[4 + e], 0x31);
  }
}

/* One panel of 32 rows (row stride K) as [K][32]: 8 x 8 blocks transposed in registers, the
 * K % 8 tail by the shared scalar loop; with f16 rounded to half floats (returns 1 when a value
 * overflowed or was NaN). Packing the text tower is most of a model's first text query. */
static inline __attribute__((always_inline)) TARGET int pack_panel_any(const float *W, int K,
                                                                       void *dst, int f16) {
  int bad = 0;
  const __m256 half_limit = _mm256_set1_ps(65520.0f),
               abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  int k0 = 0;
  for (; k0 + 8 <= K; k0 += 8)
    for (int g = 0; g < 4; g++) {
      __m256 r[8];
      for (int i = 0; i < 8; i++) {
        r[i] = _mm256_loadu_ps(W + (size_t)(g * 8 + i) * K + k0);
        if (f16)
          bad |= _mm256_movemask_ps(
              _mm256_cmp_ps(_mm256_and_ps(r[i], abs_mask), half_limit, _CMP_NLT_UQ));
      }
      transpose8(r);
      for (int k = 0; k < 8; k++) {
        size_t at = (size_t)(k0 + k) * CLIP_PANEL + g * 8;
        if (f16)
          _mm_storeu_si128((__m128i *)((uint16_t *)dst + at),
                           _mm256_cvtps_ph(r[k], _MM_FROUND_TO_NEAREST_INT));
        else _mm256_storeu_ps((float *)dst + at, r[k]);
      }
    }
  return (bad != 0) | clip_pack_panel_tail(W, K, k0, dst, f16);
}

static TARGET void pack_panel256(const float *W, int K, float *dst) {
  pack_panel_any(W, K, dst, 0);
}

static TARGET int pack_panel_f16_256(const float *W, int K, uint16_t *dst) {
  return pack_panel_any(W, K, dst, 1);
}

/* Lanes [0, n) of 8 set, as a maskload/maskstore mask. */
static inline TARGET __m256i lanes256(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* C = A B for small row-major B (attention): 4 rows x 24 columns of C in 12 registers, B rows
 * loaded once per 4 rows of A. */
static TARGET void gemm_nn256(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                              float *C, int ldc) {
  for (int n0 = 0; n0 < N; n0 += 24) {
    __m256i mk[3];
    for (int v = 0; v < 3; v++) mk[v] = lanes256(N - n0 - 8 * v);
    for (int m0 = 0; m0 < M; m0 += 4) {
      int rows = M - m0 < 4 ? M - m0 : 4;
      const float *a[4];
      for (int i = 0; i < 4; i++) a[i] = A + (size_t)(m0 + (i < rows ? i : rows - 1)) * lda;
      __m256 acc[4][3];
      for (int i = 0; i < 4; i++)
        for (int v = 0; v < 3; v++) acc[i][v] = _mm256_setzero_ps();
      for (int k = 0; k < K; k++) {
        const float *b = B + (size_t)k * ldb + n0;
        __m256 bv[3];
        for (int v = 0; v < 3; v++) bv[v] = _mm256_maskload_ps(b + 8 * v, mk[v]);
        for (int i = 0; i < 4; i++) {
          __m256 ai = _mm256_broadcast_ss(a[i] + k);
          for (int v = 0; v < 3; v++) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
        }
      }
      for (int i = 0; i < rows; i++)
        for (int v = 0; v < 3; v++)
          _mm256_maskstore_ps(C + (size_t)(m0 + i) * ldc + n0 + 8 * v, mk[v], acc[i][v]);
    }
  }
}

/* ---- packed GEMM: mr x 16 micro-tile (half a panel), up to 12 accumulators, weights read
 * from an L1-sized slice of the panel; the same loops as avx512.c, sized for 16 registers and
 * 32 KB of L1 data cache. ---- */
#define MR 6
#define KC 128    /* K slice: a whole panel's slice is 16 KB of float32 */
#define KSLAB 768 /* K slab of packed rows kept in L2 */
#define PF_DIST 1024

/* rows of A (the rest zero) as [K][mr], for broadcasts from one stream: blocks of 8 steps of k
 * transposed in registers, each stored mr lanes wide. */
static TARGET void pack_rows(const float *A, int lda, int rows, int K, int mr, float *dst) {
  __m256i lanes = lanes256(mr);
  for (int k0 = 0; k0 < K; k0 += 8) {
    __m256i kmask = lanes256(K - k0);
    __m256 r[8];
    for (int i = 0; i < 8; i++)
      r[i] = i < rows ? _mm256_maskload_ps(A + (size_t)i * lda + k0, kmask) : _mm256_setzero_ps();
    transpose8(r);
    int kn = K - k0 < 8 ? K - k0 : 8;
    for (int k = 0; k < kn; k++) _mm256_maskstore_ps(dst + (size_t)(k0 + k) * mr, lanes, r[k]);
  }
}

/* How one tile call streams: the slice itself from L2 (the first tile), and this tile's share
 * of the next slice into L2 (byte offset and bytes per k in 16.16, as in avx512.c). */
typedef struct tile_plan {
  const char *b_stream, *l2_next;
  uint64_t pf_at, pf_step;
} tile_plan;

/* One mr x 16 tile over kc steps of k; B is one half of a float32 panel slice (row stride
 * CLIP_PANEL). m0, m1: the valid columns of its two registers, as maskload/maskstore
 * lanes. */
static inline __attribute__((always_inline)) TARGET void tile_x16(
    int kc, const float *Ap, const float *B, const int mr, float *C, int ldc, int rows, __m256i m0,
    __m256i m1, int accumulate, const tile_plan *plan, const int pf_stream, const int pf_next) {
  __m256 c[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < mr; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
  uint64_t pf_at = plan->pf_at;
  for (int k = 0; k < kc; k++) {
    if (pf_stream) _mm_prefetch(plan->b_stream + (size_t)k * CLIP_PANEL * 4 + PF_DIST, _MM_HINT_T0);
    if (pf_next) {
      _mm_prefetch(plan->l2_next + (pf_at >> 16), _MM_HINT_T1);
      pf_at += plan->pf_step;
    }
    __m256 b0 = _mm256_loadu_ps(B + (size_t)k * CLIP_PANEL);
    __m256 b1 = _mm256_loadu_ps(B + (size_t)k * CLIP_PANEL + 8);
    const float *a = Ap + (size_t)k * mr;
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
      __m256 ai = _mm256_broadcast_ss(a + i);
      c[i][0] = _mm256_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(ai, b1, c[i][1]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < mr; i++) {
    if (i >= rows) break;
    float *row = C + (size_t)i * ldc;
    if (accumulate) {
      c[i][0] = _mm256_add_ps(c[i][0], _mm256_maskload_ps(row, m0));
      c[i][1] = _mm256_add_ps(c[i][1], _mm256_maskload_ps(row + 8, m1));
    }
    _mm256_maskstore_ps(row, m0, c[i][0]);
    _mm256_maskstore_ps(row + 8, m1, c[i][1]);
  }
}

/* Loops, outside in: row chunks whose packed slab (rows x KSLAB) stays in L2; K slabs; weight
 * panels; KC slices (half floats widened once into an L1 buffer); row tiles; panel halves. */
static inline __attribute__((always_inline)) TARGET void gemm_packed_any(
    int M, int N, int K, const float *A, int lda, const void *Wp, int f16, const int mr, int p0,
    int p1, const clip_gemm_out *out, float *scratch) {
  size_t esize = f16 ? 2 : 4;
  float wide[KC * CLIP_PANEL] __attribute__((aligned(32)));
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
        __m256i mask[4];
        for (int v = 0; v < 4; v++) mask[v] = lanes256(cols - 8 * v);
        const char *panel = (const char *)Wp + (size_t)p * CLIP_PANEL * K * esize;
        for (int k0 = s0; k0 < s0 + ks; k0 += KC) {
          int kc = s0 + ks - k0 < KC ? s0 + ks - k0 : KC;
          const char *slice = panel + (size_t)k0 * CLIP_PANEL * esize;
          const char *next = clip_next_slice(Wp, esize, K, p, p1, k0, KC, s0, ks);
          if (!next) next = slice; /* nothing left to fetch: re-touching this one is harmless */
          const float *B = (const float *)slice;
          if (f16) {
            for (int k = 0; k < kc * CLIP_PANEL; k += 8)
              _mm256_store_ps(wide + k, _mm256_cvtph_ps(_mm_loadu_si128(
                                            (const __m128i *)((const uint16_t *)slice + k))));
            B = wide;
          }
          uint64_t pf_step = clip_prefetch_step(esize, nt);
          for (int t = 0; t < nt; t++) {
            const float *At = scratch + (size_t)t * mr * ks + (size_t)(k0 - s0) * mr;
            float *Ct = out->C + (size_t)(m0 + t * mr) * out->ldc + p * CLIP_PANEL;
            int rows = mc - t * mr < mr ? mc - t * mr : mr, acc = out->accumulate || k0 > 0;
            tile_plan plan = {slice, next, (uint64_t)t * kc * pf_step, pf_step};
            if (t == 0 && !f16)
              tile_x16(kc, At, B, mr, Ct, out->ldc, rows, mask[0], mask[1], acc, &plan, 1, 1);
            else tile_x16(kc, At, B, mr, Ct, out->ldc, rows, mask[0], mask[1], acc, &plan, 0, 1);
            if (cols > 16) /* the second half: the first one did the prefetching */
              tile_x16(kc, At, B + 16, mr, Ct + 16, out->ldc, rows, mask[2], mask[3], acc, &plan, 0,
                       0);
            /* Bias and activation while the tile is in L1 (kept out of the tile's loop: with
             * 16 registers its constants would push accumulators to the stack). */
            if (k0 + kc == K) {
              clip_gemm_out tile = *out;
              tile.C = out->C + (size_t)(m0 + t * mr) * out->ldc;
              clip_gemm_epilogue(&clip_kernels_avx2, &tile, rows, p * CLIP_PANEL,
                                 p * CLIP_PANEL + cols);
            }
          }
        }
      }
    }
  }
}

/* Tile height padding the fewest rows among 6, 5, 4 (50 rows = 10 x 5; 7 = 2 x 4). */
static int choose_mr(int M) {
  static const int heights[] = {MR, 5, 4};
  return clip_tile_rows(M, heights, 3);
}

#define DISPATCH_MR(f16)                                                                 \
  switch (choose_mr(M)) {                                                                \
    case 4: gemm_packed_any(M, N, K, A, lda, Wp, f16, 4, p0, p1, out, scratch); break;   \
    case 5: gemm_packed_any(M, N, K, A, lda, Wp, f16, 5, p0, p1, out, scratch); break;   \
    default: gemm_packed_any(M, N, K, A, lda, Wp, f16, MR, p0, p1, out, scratch); break; \
  }

static TARGET void gemm_packed256(int M, int N, int K, const float *A, int lda, const float *Wp,
                                  int p0, int p1, const clip_gemm_out *out, float *scratch) {
  DISPATCH_MR(0)
}

static TARGET void gemm_packed_f16_256(int M, int N, int K, const float *A, int lda,
                                       const uint16_t *Wp, int p0, int p1, const clip_gemm_out *out,
                                       float *scratch) {
  DISPATCH_MR(1)
}

const clip_kernels clip_kernels_avx2 = {
    .name = "avx2",
    .dot = dot256,
    .axpy = axpy256,
    .layernorm = layernorm256,
    .softmax = softmax256,
    .add = add256,
    .quick_gelu = quick_gelu256,
    .gelu = gelu256,
    .f16_to_f32 = f16_to_f32_256,
    .bf16_to_f32 = bf16_to_f32_256,
    .f32_to_f16 = f32_to_f16_256,
    .gemm_nt = gemm_nt256,
    .gemm_packed = gemm_packed256,
    .gemm_packed_f16 = gemm_packed_f16_256,
    .gemm_nn = gemm_nn256,
    .pack_panel = pack_panel256,
    .pack_panel_f16 = pack_panel_f16_256,
};

#else /* other architectures: never selected (clip_isa_supported says no) */
#include "embed/kernels/kernels.h"
const clip_kernels clip_kernels_avx2 = {.name = "avx2 (not built)"};
#endif
