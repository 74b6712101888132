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
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23));
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
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
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
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(gamma + i), _mm256_loadu_ps(beta + i)));
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
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
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
  __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
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
    __m256 r = _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf256(_mm256_mul_ps(v, rs2))));
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

static TARGET void gemm_nt256(int M, int N, int K, const float *A, int lda, const float *W,
                              int ldw, float *C, int ldc, int accumulate) {
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

/* ---- packed GEMM: 6 x 16 micro-tile (half a panel), 12 accumulators ---- */
#define MR 6

static TARGET void pack_rows(const float *A, int lda, int rows, int K, float *dst) {
  for (int i = 0; i < MR; i++)
    for (int k = 0; k < K; k++) dst[(size_t)k * MR + i] = i < rows ? A[(size_t)i * lda + k] : 0.0f;
}

static inline __attribute__((always_inline)) TARGET void tile6x16(
    int K, const float *Ap, const void *Bp, int f16, float *C, int ldc, int rows, int cols,
    int accumulate) {
  __m256 c[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm256_setzero_ps();
  for (int k = 0; k < K; k++) {
    __m256 b0, b1;
    if (f16) {
      const uint16_t *h = (const uint16_t *)Bp + (size_t)k * CLIP_PANEL;
      b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
      b1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + 8)));
    } else {
      b0 = _mm256_loadu_ps((const float *)Bp + (size_t)k * CLIP_PANEL);
      b1 = _mm256_loadu_ps((const float *)Bp + (size_t)k * CLIP_PANEL + 8);
    }
    const float *a = Ap + (size_t)k * MR;
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
      __m256 ai = _mm256_broadcast_ss(a + i);
      c[i][0] = _mm256_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm256_fmadd_ps(ai, b1, c[i][1]);
    }
  }
  for (int i = 0; i < rows; i++) {
    float tmp[16];
    _mm256_storeu_ps(tmp, c[i][0]);
    _mm256_storeu_ps(tmp + 8, c[i][1]);
    float *row = C + (size_t)i * ldc;
    for (int j = 0; j < cols; j++) row[j] = accumulate ? row[j] + tmp[j] : tmp[j];
  }
}

static inline __attribute__((always_inline)) TARGET void gemm_packed_any(
    int M, int N, int K, const float *A, int lda, const void *Wp, int f16, int p0, int p1,
    const clip_gemm_out *out, float *scratch) {
  float *C = out->C;
  int ldc = out->ldc, accumulate = out->accumulate;
  size_t esize = f16 ? 2 : 4;
  int tiles = (int)(clip_gemm_scratch_floats(K) / ((size_t)K * MR));
  for (int m0 = 0; m0 < M; m0 += tiles * MR) {
    int mc = M - m0 < tiles * MR ? M - m0 : tiles * MR, nt = (mc + MR - 1) / MR;
    for (int t = 0; t < nt; t++)
      pack_rows(A + (size_t)(m0 + t * MR) * lda, lda, mc - t * MR < MR ? mc - t * MR : MR, K,
                scratch + (size_t)t * MR * K);
    for (int p = p0; p < p1; p++)
      for (int half = 0; half < 2; half++) {
        int c0 = p * CLIP_PANEL + half * 16;
        if (c0 >= N) break;
        int cols = N - c0 < 16 ? N - c0 : 16;
        const char *panel = (const char *)Wp + ((size_t)p * CLIP_PANEL * K + half * 16) * esize;
        for (int t = 0; t < nt; t++)
          tile6x16(K, scratch + (size_t)t * MR * K, panel, f16, C + (size_t)(m0 + t * MR) * ldc + c0,
                   ldc, mc - t * MR < MR ? mc - t * MR : MR, cols, accumulate);
      }
  }
  int c1 = p1 * CLIP_PANEL < N ? p1 * CLIP_PANEL : N;
  if (p0 < p1) clip_gemm_epilogue(&clip_kernels_avx2, out, M, p0 * CLIP_PANEL, c1);
}

static TARGET void gemm_packed256(int M, int N, int K, const float *A, int lda, const float *Wp,
                                  int p0, int p1, const clip_gemm_out *out, float *scratch) {
  gemm_packed_any(M, N, K, A, lda, Wp, 0, p0, p1, out, scratch);
}

static TARGET void gemm_packed_f16_256(int M, int N, int K, const float *A, int lda,
                                       const uint16_t *Wp, int p0, int p1,
                                       const clip_gemm_out *out, float *scratch) {
  gemm_packed_any(M, N, K, A, lda, Wp, 1, p0, p1, out, scratch);
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
    .gemm_nn = clip_gemm_nn_c,
};

#else /* other architectures: never selected (clip_isa_supported says no) */
#include "embed/kernels/kernels.h"
const clip_kernels clip_kernels_avx2 = {.name = "avx2 (not built)"};
#endif
