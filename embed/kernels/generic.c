/* generic.c: the plain C kernels; the reference every SIMD variant is tested against. */
#include <math.h>
#include <string.h>

#include "embed/kernels/kernels.h"

static float dot_c(const float *a, const float *b, int n) {
  float s = 0;
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static void axpy_c(float a, const float *x, float *y, int n) {
  for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void layernorm_c(const float *x, const float *gamma, const float *beta, float *y, int n,
                        float eps) {
  float mean = 0, var = 0;
  for (int i = 0; i < n; i++) mean += x[i];
  mean /= (float)n;
  for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
  float rstd = 1.0f / sqrtf(var / (float)n + eps);
  for (int i = 0; i < n; i++) y[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
}

static void softmax_c(float *x, int n) {
  float max = x[0], sum = 0;
  for (int i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
  for (int i = 0; i < n; i++) sum += (x[i] = expf(x[i] - max));
  float inv = 1.0f / sum;
  for (int i = 0; i < n; i++) x[i] *= inv;
}

static void add_c(float *y, const float *x, int n) {
  for (int i = 0; i < n; i++) y[i] += x[i];
}

static void quick_gelu_c(float *x, int n) {
  for (int i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

static void gelu_c(float *x, int n) {
  for (int i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

/* IEEE binary16 -> binary32, subnormals, infinities and NaN included. */
static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else { /* subnormal: value = mant * 2^-24 */
    float f = (float)mant * 5.9604644775390625e-8f;
    memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float out;
  memcpy(&out, &bits, 4);
  return out;
}

/* binary32 -> binary16, round to nearest even; NaN stays NaN (quiet, payload truncated). */
static uint16_t float_to_half(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((abs >> 13) & 0x3ff));
  if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds past 65504 */
  uint32_t h, rem, half;
  if (abs >= 0x38800000u) { /* normal half */
    h = (abs - 0x38000000u) >> 13;
    rem = abs & 0x1fff;
    half = 0x1000;
  } else if (abs >= 0x33000000u) { /* subnormal half: units of 2^-24 */
    uint32_t m = (abs & 0x7fffff) | 0x800000, shift = 126 - (abs >> 23);
    h = m >> shift;
    rem = m & ((1u << shift) - 1);
    half = 1u << (shift - 1);
  } else {
    return sign;
  }
  if (rem > half || (rem == half && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

static void f32_to_f16_c(const float *src, uint16_t *dst, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
}

static void f16_to_f32_c(const uint16_t *src, float *dst, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

static void bf16_to_f32_c(const uint16_t *src, float *dst, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t bits = (uint32_t)src[i] << 16;
    memcpy(&dst[i], &bits, 4);
  }
}

static void gemm_nt_c(int M, int N, int K, const float *A, int lda, const float *W, int ldw,
                      float *C, int ldc, int accumulate) {
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      float s = dot_c(A + (size_t)m * lda, W + (size_t)n * ldw, K);
      float *c = C + (size_t)m * ldc + n;
      *c = accumulate ? *c + s : s;
    }
}

void clip_gemm_nn_c(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                    int ldc) {
  for (int m = 0; m < M; m++) {
    float *c = C + (size_t)m * ldc;
    for (int n = 0; n < N; n++) c[n] = 0.0f;
    for (int k = 0; k < K; k++) {
      float a = A[(size_t)m * lda + k];
      const float *b = B + (size_t)k * ldb;
      for (int n = 0; n < N; n++) c[n] += a * b[n];
    }
  }
}

static void gemm_packed_any(int M, int N, int K, const float *A, int lda, const void *Wp, int f16,
                            int p0, int p1, const clip_gemm_out *out) {
  float *C = out->C;
  int ldc = out->ldc, accumulate = out->accumulate;
  for (int p = p0; p < p1; p++) {
    size_t base = (size_t)p * CLIP_PANEL * K;
    int cols = N - p * CLIP_PANEL < CLIP_PANEL ? N - p * CLIP_PANEL : CLIP_PANEL;
    for (int m = 0; m < M; m++)
      for (int j = 0; j < cols; j++) {
        float s = 0;
        for (int k = 0; k < K; k++) {
          size_t at = base + (size_t)k * CLIP_PANEL + j;
          float w = f16 ? half_to_float(((const uint16_t *)Wp)[at]) : ((const float *)Wp)[at];
          s += A[(size_t)m * lda + k] * w;
        }
        float *c = C + (size_t)m * ldc + p * CLIP_PANEL + j;
        *c = accumulate ? *c + s : s;
      }
  }
  int c1 = p1 * CLIP_PANEL < N ? p1 * CLIP_PANEL : N;
  if (p0 < p1) clip_gemm_epilogue(&clip_kernels_generic, out, M, p0 * CLIP_PANEL, c1);
}

static void gemm_packed_c(int M, int N, int K, const float *A, int lda, const float *Wp, int p0,
                          int p1, const clip_gemm_out *out, float *scratch) {
  (void)scratch;
  gemm_packed_any(M, N, K, A, lda, Wp, 0, p0, p1, out);
}

static void gemm_packed_f16_c(int M, int N, int K, const float *A, int lda, const uint16_t *Wp,
                              int p0, int p1, const clip_gemm_out *out, float *scratch) {
  (void)scratch;
  gemm_packed_any(M, N, K, A, lda, Wp, 1, p0, p1, out);
}

const clip_kernels clip_kernels_generic = {
    .name = "generic",
    .dot = dot_c,
    .axpy = axpy_c,
    .layernorm = layernorm_c,
    .softmax = softmax_c,
    .add = add_c,
    .quick_gelu = quick_gelu_c,
    .gelu = gelu_c,
    .f16_to_f32 = f16_to_f32_c,
    .bf16_to_f32 = bf16_to_f32_c,
    .f32_to_f16 = f32_to_f16_c,
    .gemm_nt = gemm_nt_c,
    .gemm_packed = gemm_packed_c,
    .gemm_packed_f16 = gemm_packed_f16_c,
    .gemm_nn = clip_gemm_nn_c,
};
