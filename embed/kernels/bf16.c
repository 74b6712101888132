/* bf16.c: the bf16 GEMM (weights and activations rounded to bfloat16, products summed in float32
 * in pairs of k, as AVX512-BF16's vdpbf16ps does), its plain C reference and the AVX512-BF16
 * kernel. Layer norm, softmax, GELU and the bias stay float32 (the shared epilogue). */
#include <string.h>

#include "embed/kernels/kernels.h"

/* Round to nearest even, as vcvtne2ps2bf16 does (NaN is not produced by the encoder). */
static uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

size_t clip_packed_bf16_elems(int N, int K) {
  return (size_t)((N + CLIP_PANEL - 1) / CLIP_PANEL) * CLIP_PANEL * (size_t)((K + 1) / 2) * 2;
}

size_t clip_gemm_bf16_scratch(int M, int K) { return (size_t)M * (size_t)((K + 1) / 2); }

void clip_pack_weights_bf16(const float *W, int N, int K, uint16_t *dst) {
  int K2 = (K + 1) / 2;
  for (int p = 0; p * CLIP_PANEL < N; p++) {
    uint16_t *panel = dst + (size_t)p * CLIP_PANEL * K2 * 2;
    for (int k = 0; k < 2 * K2; k++)
      for (int j = 0; j < CLIP_PANEL; j++) {
        int n = p * CLIP_PANEL + j;
        float v = n < N && k < K ? W[(size_t)n * K + k] : 0.0f;
        panel[((size_t)(k / 2) * CLIP_PANEL + j) * 2 + (k & 1)] = f32_to_bf16(v);
      }
  }
}

/* Row m's bf16 pair k2, rounded from A now (the reference without scratch memory). */
static uint32_t row_pair_bf16(const float *A, int lda, int K, int m, int k2) {
  const float *a = A + (size_t)m * lda + 2 * k2;
  uint32_t lo = f32_to_bf16(a[0]), hi = 2 * k2 + 1 < K ? f32_to_bf16(a[1]) : 0;
  return lo | hi << 16;
}

/* Rows of A rounded to bf16, two k per 32-bit word (K padded with a zero). */
static void pack_rows_bf16(int M, int K, const float *A, int lda, uint32_t *dst) {
  int K2 = (K + 1) / 2;
  for (int m = 0; m < M; m++)
    for (int k2 = 0; k2 < K2; k2++) dst[(size_t)m * K2 + k2] = row_pair_bf16(A, lda, K, m, k2);
}

static void store_tile(const clip_gemm_out *out, int m, int c0, int cols, const float *acc) {
  float *c = out->C + (size_t)m * out->ldc + c0;
  for (int j = 0; j < cols; j++) c[j] = out->accumulate ? c[j] + acc[j] : acc[j];
}

static void gemm_bf16_c(int M, int N, int K, const float *A, int lda, const uint16_t *Wp, int p0,
                        int p1, const clip_gemm_out *out, uint32_t *scratch) {
  int K2 = (K + 1) / 2;
  if (scratch) pack_rows_bf16(M, K, A, lda, scratch);
  for (int p = p0; p < p1; p++) {
    const uint16_t *panel = Wp + (size_t)p * CLIP_PANEL * K2 * 2;
    int c0 = p * CLIP_PANEL, cols = N - c0 < CLIP_PANEL ? N - c0 : CLIP_PANEL;
    for (int m = 0; m < M; m++) {
      float acc[CLIP_PANEL] = {0};
      for (int k2 = 0; k2 < K2; k2++) {
        uint32_t a = scratch ? scratch[(size_t)m * K2 + k2] : row_pair_bf16(A, lda, K, m, k2);
        for (int j = 0; j < CLIP_PANEL; j++) {
          const uint16_t *w = panel + ((size_t)k2 * CLIP_PANEL + j) * 2;
          /* vdpbf16ps: the odd pair's product first, then the even one's (both exact). */
          acc[j] += bf16_to_f32((uint16_t)(a >> 16)) * bf16_to_f32(w[1]);
          acc[j] += bf16_to_f32((uint16_t)a) * bf16_to_f32(w[0]);
        }
      }
      store_tile(out, m, c0, cols, acc);
    }
  }
  int c1 = p1 * CLIP_PANEL < N ? p1 * CLIP_PANEL : N;
  clip_gemm_epilogue(clip_kernels_best(), out, M, p0 * CLIP_PANEL, c1);
}

#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 10)
#include <immintrin.h>
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* Four rows by one 32-column panel per step: 8 accumulators, each weight load used 4 times. */
static TARGET void gemm_bf16_512(int M, int N, int K, const float *A, int lda, const uint16_t *Wp,
                                 int p0, int p1, const clip_gemm_out *out, uint32_t *scratch) {
  int K2 = (K + 1) / 2;
  pack_rows_bf16(M, K, A, lda, scratch);
  for (int p = p0; p < p1; p++) {
    const uint16_t *panel = Wp + (size_t)p * CLIP_PANEL * K2 * 2;
    int c0 = p * CLIP_PANEL, cols = N - c0 < CLIP_PANEL ? N - c0 : CLIP_PANEL;
    for (int m0 = 0; m0 < M; m0 += 4) {
      int rows = M - m0 < 4 ? M - m0 : 4;
      __m512 acc[4][2];
      for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int k2 = 0; k2 < K2; k2++) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(panel + (size_t)k2 * 64);
        __m512bh w1 = (__m512bh)_mm512_loadu_si512(panel + (size_t)k2 * 64 + 32);
        for (int r = 0; r < rows; r++) {
          __m512bh a = (__m512bh)_mm512_set1_epi32((int)scratch[(size_t)(m0 + r) * K2 + k2]);
          acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, w0);
          acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, w1);
        }
      }
      for (int r = 0; r < rows; r++) {
        float tile[CLIP_PANEL];
        _mm512_storeu_ps(tile, acc[r][0]);
        _mm512_storeu_ps(tile + 16, acc[r][1]);
        store_tile(out, m0 + r, c0, cols, tile);
      }
    }
  }
  int c1 = p1 * CLIP_PANEL < N ? p1 * CLIP_PANEL : N;
  clip_gemm_epilogue(clip_kernels_best(), out, M, p0 * CLIP_PANEL, c1);
}

static int has_avx512bf16(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
#else
#define gemm_bf16_512 gemm_bf16_c
static int has_avx512bf16(void) { return 0; }
#endif

const clip_gemm_bf16_fn clip_gemm_bf16_ref = gemm_bf16_c;

clip_gemm_bf16_fn clip_gemm_bf16_native(void) { return has_avx512bf16() ? gemm_bf16_512 : NULL; }
