/* int8.c: the int8 GEMM (weights quantized once per output channel, activations per row at run
 * time, products summed exactly in int32, as vpdpbusd does), its plain C reference and the
 * AVX512-VNNI (zmm) and AVX-VNNI (ymm, VEX) kernels. Dequantization, the bias and the
 * activation are float32 (the shared epilogue).
 *
 * Weights: q = clamp(rint(w * 127 / amax), -127, 127), scale amax / 127 per output channel n,
 * and wsum[n] = sum_k q. Activations: row m's range [lo, hi] (widened to hold 0) maps to u8:
 * q = clamp(rint(a * inv) + z, 0, 255) with inv = 255 / (hi - lo), z = rint(-lo * inv), scale
 * (hi - lo) / 255. Then C[m, n] = (float)(sum_k qa qw - z wsum[n]) * (sa[m] * sw[n]): the
 * zero point's share is exact integer arithmetic, so u8 activations lose no range to a sign. */
#include <math.h>
#include <string.h>

#include "embed/kernels/kernels.h"

#define K_GROUP 4 /* k per 32-bit lane: vpdpbusd sums four u8 x s8 products */

static int k_groups(int K) { return (K + K_GROUP - 1) / K_GROUP; }
static int panels_of(int N) { return (N + CLIP_PANEL - 1) / CLIP_PANEL; }
static size_t panel_bytes(int K) { return (size_t)CLIP_PANEL * K_GROUP * k_groups(K); }

size_t clip_packed_int8_bytes(int N, int K) {
  return (size_t)panels_of(N) * (panel_bytes(K) + CLIP_PANEL * (sizeof(float) + sizeof(int32_t)));
}

/* The per-channel scales and weight sums follow the panels (both padded to whole panels). */
static const float *weight_scales(const void *Wp, int N, int K) {
  return (const float *)((const char *)Wp + (size_t)panels_of(N) * panel_bytes(K));
}
static const int32_t *weight_sums(const void *Wp, int N, int K) {
  return (const int32_t *)(weight_scales(Wp, N, K) + (size_t)panels_of(N) * CLIP_PANEL);
}

void clip_pack_weights_int8_panels(const float *W, int N, int K, int p0, int p1, void *dst) {
  int K4 = k_groups(K), Np = panels_of(N) * CLIP_PANEL;
  int8_t *q = dst;
  float *scale = (float *)(q + (size_t)panels_of(N) * panel_bytes(K));
  int32_t *sum = (int32_t *)(scale + Np);
  for (int n = p0 * CLIP_PANEL; n < p1 * CLIP_PANEL; n++) {
    const float *w = W + (size_t)n * K;
    float amax = 0.0f;
    for (int k = 0; n < N && k < K; k++) amax = fabsf(w[k]) > amax ? fabsf(w[k]) : amax;
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int8_t *col = q + (size_t)(n / CLIP_PANEL) * panel_bytes(K) + (n % CLIP_PANEL) * K_GROUP;
    int32_t s = 0;
    for (int k = 0; k < K4 * K_GROUP; k++) {
      float v = n < N && k < K ? rintf(w[k] * inv) : 0.0f;
      int8_t qv = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v);
      col[(size_t)(k / K_GROUP) * CLIP_PANEL * K_GROUP + k % K_GROUP] = qv;
      s += qv;
    }
    scale[n] = amax / 127.0f;
    sum[n] = s;
  }
}

void clip_pack_weights_int8(const float *W, int N, int K, void *dst) {
  clip_pack_weights_int8_panels(W, N, K, 0, panels_of(N), dst);
}

size_t clip_gemm_int8_scratch(int M, int K) {
  return (size_t)M * ((size_t)k_groups(K) * K_GROUP + sizeof(float) + sizeof(int32_t));
}

/* Scratch holds the rows' u8 values [M][K4 * 4], then their scales and zero points. */
typedef struct act_rows {
  uint8_t *q;
  float *scale;
  int32_t *zero;
  int stride;
} act_rows;

static act_rows act_rows_in(void *scratch, int M, int K) {
  act_rows r;
  r.stride = k_groups(K) * K_GROUP;
  r.q = scratch;
  r.scale = (float *)(r.q + (size_t)M * r.stride);
  r.zero = (int32_t *)(r.scale + M);
  return r;
}

/* A row's quantization from its range; every variant uses this, so all agree bit for bit. */
static void row_params(float lo, float hi, float *scale, float *inv, int32_t *zero) {
  lo = lo < 0.0f ? lo : 0.0f;
  hi = hi > 0.0f ? hi : 0.0f;
  *inv = hi > lo ? 255.0f / (hi - lo) : 0.0f;
  *scale = (hi - lo) / 255.0f;
  *zero = (int32_t)rintf(-lo * *inv);
}

static uint8_t quantize_value(float a, float inv, int32_t zero) {
  float v = rintf(a * inv) + (float)zero;
  return (uint8_t)(v < 0.0f ? 0 : v > 255.0f ? 255 : (int)v);
}

/* A row's quantization, from its values. */
static void row_params_c(const float *a, int K, float *scale, float *inv, int32_t *zero) {
  float lo = 0.0f, hi = 0.0f;
  for (int k = 0; k < K; k++) {
    lo = a[k] < lo ? a[k] : lo;
    hi = a[k] > hi ? a[k] : hi;
  }
  row_params(lo, hi, scale, inv, zero);
}

static void quantize_row_c(const float *a, int K, int stride, uint8_t *q, float *scale,
                           int32_t *zero) {
  float inv;
  row_params_c(a, K, scale, &inv, zero);
  for (int k = 0; k < K; k++) q[k] = quantize_value(a[k], inv, *zero);
  for (int k = K; k < stride; k++) q[k] = (uint8_t)*zero; /* meets zero weights */
}

static void quantize_rows_c(int M, int K, const float *A, int lda, void *scratch) {
  act_rows r = act_rows_in(scratch, M, K);
  for (int m = 0; m < M; m++)
    quantize_row_c(A + (size_t)m * lda, K, r.stride, r.q + (size_t)m * r.stride, &r.scale[m],
                   &r.zero[m]);
}

static void store_tile(const clip_gemm_out *out, int m, int c0, int cols, const float *tile) {
  float *c = out->C + (size_t)m * out->ldc + c0;
  for (int j = 0; j < cols; j++) c[j] = out->accumulate ? c[j] + tile[j] : tile[j];
}

static void finish(const clip_gemm_out *out, int M, int N, int p0, int p1) {
  int c1 = p1 * CLIP_PANEL < N ? p1 * CLIP_PANEL : N;
  clip_gemm_epilogue(clip_kernels_best(), out, M, p0 * CLIP_PANEL, c1);
}

static void gemm_int8_c(int M, int N, int K, const float *A, int lda, const void *Wp, int p0,
                        int p1, const clip_gemm_out *out, void *scratch) {
  int K4 = k_groups(K);
  const float *sw = weight_scales(Wp, N, K);
  const int32_t *ws = weight_sums(Wp, N, K);
  act_rows rows, *r = NULL;
  if (scratch) {
    quantize_rows_c(M, K, A, lda, scratch);
    rows = act_rows_in(scratch, M, K);
    r = &rows;
  }
  for (int m = 0; m < M; m++) {
    enum { CHUNK = 512 }; /* without scratch a row is quantized in pieces, once per panel */
    const float *a = A + (size_t)m * lda;
    const uint8_t *q = r ? r->q + (size_t)m * r->stride : NULL;
    float sa = r ? r->scale[m] : 0.0f, inv = 0.0f;
    int32_t z = r ? r->zero[m] : 0;
    if (!r) row_params_c(a, K, &sa, &inv, &z);
    for (int p = p0; p < p1; p++) {
      const int8_t *panel = (const int8_t *)Wp + (size_t)p * panel_bytes(K);
      int c0 = p * CLIP_PANEL, cols = N - c0 < CLIP_PANEL ? N - c0 : CLIP_PANEL;
      float tile[CLIP_PANEL];
      int32_t acc[CLIP_PANEL];
      uint8_t buf[CHUNK];
      for (int j = 0; j < CLIP_PANEL; j++) acc[j] = -z * ws[c0 + j];
      for (int k0 = 0; k0 < K4 * K_GROUP; k0 += CHUNK) {
        int kn = K4 * K_GROUP - k0 < CHUNK ? K4 * K_GROUP - k0 : CHUNK;
        const uint8_t *qa = q ? q + k0 : buf;
        for (int k = 0; !q && k < kn; k++)
          buf[k] = k0 + k < K ? quantize_value(a[k0 + k], inv, z) : (uint8_t)z;
        for (int g = 0; g < kn / K_GROUP; g++)
          for (int j = 0; j < CLIP_PANEL; j++) {
            const int8_t *w = panel + ((size_t)(k0 / K_GROUP + g) * CLIP_PANEL + j) * K_GROUP;
            for (int i = 0; i < K_GROUP; i++) acc[j] += (int32_t)qa[g * K_GROUP + i] * w[i];
          }
      }
      for (int j = 0; j < CLIP_PANEL; j++) tile[j] = (float)acc[j] * (sa * sw[c0 + j]);
      store_tile(out, m, c0, cols, tile);
    }
  }
  finish(out, M, N, p0, p1);
}

static const clip_int8_kernel int8_c = {"c", quantize_rows_c, gemm_int8_c};

#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 11)
#include <cpuid.h>
#include <immintrin.h>

/* ---- AVX-512 (VNNI) ---- */
#define TARGET512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

static TARGET512 void quantize_rows_512(int M, int K, const float *A, int lda, void *scratch) {
  act_rows r = act_rows_in(scratch, M, K);
  for (int m = 0; m < M; m++) {
    const float *a = A + (size_t)m * lda;
    uint8_t *q = r.q + (size_t)m * r.stride;
    __m512 lo = _mm512_setzero_ps(), hi = lo;
    int k = 0;
    for (; k + 16 <= K; k += 16) {
      __m512 v = _mm512_loadu_ps(a + k);
      lo = _mm512_min_ps(lo, v);
      hi = _mm512_max_ps(hi, v);
    }
    float l = _mm512_reduce_min_ps(lo), h = _mm512_reduce_max_ps(hi), inv;
    for (; k < K; k++) {
      l = a[k] < l ? a[k] : l;
      h = a[k] > h ? a[k] : h;
    }
    row_params(l, h, &r.scale[m], &inv, &r.zero[m]);
    __m512 vinv = _mm512_set1_ps(inv), vz = _mm512_set1_ps((float)r.zero[m]);
    __m512 v0 = _mm512_setzero_ps(), v255 = _mm512_set1_ps(255.0f);
    for (k = 0; k + 16 <= K; k += 16) {
      __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(a + k), vinv),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, vz), v0), v255);
      _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
    for (; k < K; k++) q[k] = quantize_value(a[k], inv, r.zero[m]);
    for (; k < r.stride; k++) q[k] = (uint8_t)r.zero[m];
  }
}

static uint32_t load_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* 12 rows by one 32-column panel, with named accumulators: GCC keeps these in registers (an array
 * of vectors indexed in loops is spilled to the stack at every step). A last tile of fewer rows
 * repeats its last row in the spare accumulators (read only, never stored). */
/* acc += the u8 x s8 products of a and w, four per lane. As inline assembly: GCC 12 copies the
 * accumulator around _mm512_dpbusd_epi32 and spills a 24-accumulator tile to the stack. */
#define DPBUSD_ZMM(acc, a, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w))
#define ROW_OF(i) (m0 + ((i) < rows ? (i) : rows - 1))
#define ACC_INIT(i)                                           \
  const uint8_t *q##i = r->q + (size_t)ROW_OF(i) * r->stride; \
  __m512i nz##i = _mm512_set1_epi32(-r->zero[ROW_OF(i)]);     \
  __m512i c##i##a = _mm512_mullo_epi32(nz##i, ws0), c##i##b = _mm512_mullo_epi32(nz##i, ws1);
#define ACC_STEP(i)                                                   \
  {                                                                   \
    __m512i a = _mm512_set1_epi32((int)load_u32(q##i + g * K_GROUP)); \
    DPBUSD_ZMM(c##i##a, a, w0);                                       \
    DPBUSD_ZMM(c##i##b, a, w1);                                       \
  }
#define ACC_STORE(i)                                                                              \
  {                                                                                               \
    __m512 sa = _mm512_set1_ps(r->scale[ROW_OF(i)]);                                              \
    _mm512_storeu_ps(tile[i], _mm512_mul_ps(_mm512_cvtepi32_ps(c##i##a), _mm512_mul_ps(sa, s0))); \
    _mm512_storeu_ps(tile[i] + 16,                                                                \
                     _mm512_mul_ps(_mm512_cvtepi32_ps(c##i##b), _mm512_mul_ps(sa, s1)));          \
  }
#define ACC_12(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)

static TARGET512 __attribute__((noinline)) void tile_512(int rows, const act_rows *r, int m0,
                                                         const int8_t *panel, int K4,
                                                         const float *sw, const int32_t *ws,
                                                         float (*tile)[CLIP_PANEL]) {
  __m512i ws0 = _mm512_loadu_si512(ws), ws1 = _mm512_loadu_si512(ws + 16);
  ACC_12(ACC_INIT)
  for (int g = 0; g < K4; g++) {
    __m512i w0 = _mm512_loadu_si512(panel + (size_t)g * 128);
    __m512i w1 = _mm512_loadu_si512(panel + (size_t)g * 128 + 64);
    ACC_12(ACC_STEP)
  }
  __m512 s0 = _mm512_loadu_ps(sw), s1 = _mm512_loadu_ps(sw + 16);
  ACC_12(ACC_STORE)
}

static TARGET512 void gemm_int8_512(int M, int N, int K, const float *A, int lda, const void *Wp,
                                    int p0, int p1, const clip_gemm_out *out, void *scratch) {
  int K4 = k_groups(K);
  quantize_rows_512(M, K, A, lda, scratch);
  act_rows r = act_rows_in(scratch, M, K);
  const float *sw = weight_scales(Wp, N, K);
  const int32_t *ws = weight_sums(Wp, N, K);
  float tile[12][CLIP_PANEL];
  for (int p = p0; p < p1; p++) {
    const int8_t *panel = (const int8_t *)Wp + (size_t)p * panel_bytes(K);
    int c0 = p * CLIP_PANEL, cols = N - c0 < CLIP_PANEL ? N - c0 : CLIP_PANEL;
    for (int m0 = 0; m0 < M; m0 += 12) {
      int rows = M - m0 < 12 ? M - m0 : 12;
      tile_512(rows, &r, m0, panel, K4, sw + c0, ws + c0, tile);
      for (int i = 0; i < rows; i++) store_tile(out, m0 + i, c0, cols, tile[i]);
    }
  }
  finish(out, M, N, p0, p1);
}

static const clip_int8_kernel int8_512 = {"avx512vnni", quantize_rows_512, gemm_int8_512};

/* ---- 256-bit: AVX-VNNI (VEX) on AVX2 machines; the same code with AVX512-VNNI's EVEX form ---- */

/* The ymm kernel, compiled once per encoding; DPBUSD(acc, a, w) adds the products of a and the
 * 32 bytes at w. 3 rows x 32 columns: 12 named accumulators plus the broadcast fill the 16
 * registers VEX can name, so the weights are read as memory operands. A last tile of fewer rows
 * repeats its last row (read only, never stored). */
#define YROW(i) (m0 + ((i) < rows ? (i) : rows - 1))
#define YMM_KERNEL(NAME, TGT, DPBUSD)                                                              \
  static                                                                                           \
      __attribute__((noinline, target(TGT))) void NAME##_tile(int rows, const act_rows *r, int m0, \
                                                              const int8_t *panel, int K4,         \
                                                              const float *sw, const int32_t *ws,  \
                                                              float(*tile)[CLIP_PANEL]) {          \
    const uint8_t *q0 = r->q + (size_t)YROW(0) * r->stride;                                        \
    const uint8_t *q1 = r->q + (size_t)YROW(1) * r->stride;                                        \
    const uint8_t *q2 = r->q + (size_t)YROW(2) * r->stride;                                        \
    __m256i s0 = _mm256_loadu_si256((const __m256i *)ws);                                          \
    __m256i s1 = _mm256_loadu_si256((const __m256i *)(ws + 8));                                    \
    __m256i s2 = _mm256_loadu_si256((const __m256i *)(ws + 16));                                   \
    __m256i s3 = _mm256_loadu_si256((const __m256i *)(ws + 24));                                   \
    __m256i z0 = _mm256_set1_epi32(-r->zero[YROW(0)]);                                             \
    __m256i c00 = _mm256_mullo_epi32(z0, s0), c01 = _mm256_mullo_epi32(z0, s1);                    \
    __m256i c02 = _mm256_mullo_epi32(z0, s2), c03 = _mm256_mullo_epi32(z0, s3);                    \
    __m256i z1 = _mm256_set1_epi32(-r->zero[YROW(1)]);                                             \
    __m256i c10 = _mm256_mullo_epi32(z1, s0), c11 = _mm256_mullo_epi32(z1, s1);                    \
    __m256i c12 = _mm256_mullo_epi32(z1, s2), c13 = _mm256_mullo_epi32(z1, s3);                    \
    __m256i z2 = _mm256_set1_epi32(-r->zero[YROW(2)]);                                             \
    __m256i c20 = _mm256_mullo_epi32(z2, s0), c21 = _mm256_mullo_epi32(z2, s1);                    \
    __m256i c22 = _mm256_mullo_epi32(z2, s2), c23 = _mm256_mullo_epi32(z2, s3);                    \
    for (int g = 0; g < K4; g++) {                                                                 \
      const int8_t *w = panel + (size_t)g * 128;                                                   \
      __m256i a;                                                                                   \
      a = _mm256_set1_epi32((int)load_u32(q0 + g * K_GROUP));                                      \
      DPBUSD(c00, a, w);                                                                           \
      DPBUSD(c01, a, w + 32);                                                                      \
      DPBUSD(c02, a, w + 64);                                                                      \
      DPBUSD(c03, a, w + 96);                                                                      \
      a = _mm256_set1_epi32((int)load_u32(q1 + g * K_GROUP));                                      \
      DPBUSD(c10, a, w);                                                                           \
      DPBUSD(c11, a, w + 32);                                                                      \
      DPBUSD(c12, a, w + 64);                                                                      \
      DPBUSD(c13, a, w + 96);                                                                      \
      a = _mm256_set1_epi32((int)load_u32(q2 + g * K_GROUP));                                      \
      DPBUSD(c20, a, w);                                                                           \
      DPBUSD(c21, a, w + 32);                                                                      \
      DPBUSD(c22, a, w + 64);                                                                      \
      DPBUSD(c23, a, w + 96);                                                                      \
    }                                                                                              \
    __m256 f0 = _mm256_loadu_ps(sw), f1 = _mm256_loadu_ps(sw + 8);                                 \
    __m256 f2 = _mm256_loadu_ps(sw + 16), f3 = _mm256_loadu_ps(sw + 24);                           \
    __m256 a0 = _mm256_set1_ps(r->scale[YROW(0)]);                                                 \
    _mm256_storeu_ps(tile[0] + 0, _mm256_mul_ps(_mm256_cvtepi32_ps(c00), _mm256_mul_ps(a0, f0)));  \
    _mm256_storeu_ps(tile[0] + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(c01), _mm256_mul_ps(a0, f1)));  \
    _mm256_storeu_ps(tile[0] + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(c02), _mm256_mul_ps(a0, f2))); \
    _mm256_storeu_ps(tile[0] + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(c03), _mm256_mul_ps(a0, f3))); \
    __m256 a1 = _mm256_set1_ps(r->scale[YROW(1)]);                                                 \
    _mm256_storeu_ps(tile[1] + 0, _mm256_mul_ps(_mm256_cvtepi32_ps(c10), _mm256_mul_ps(a1, f0)));  \
    _mm256_storeu_ps(tile[1] + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(c11), _mm256_mul_ps(a1, f1)));  \
    _mm256_storeu_ps(tile[1] + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(c12), _mm256_mul_ps(a1, f2))); \
    _mm256_storeu_ps(tile[1] + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(c13), _mm256_mul_ps(a1, f3))); \
    __m256 a2 = _mm256_set1_ps(r->scale[YROW(2)]);                                                 \
    _mm256_storeu_ps(tile[2] + 0, _mm256_mul_ps(_mm256_cvtepi32_ps(c20), _mm256_mul_ps(a2, f0)));  \
    _mm256_storeu_ps(tile[2] + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(c21), _mm256_mul_ps(a2, f1)));  \
    _mm256_storeu_ps(tile[2] + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(c22), _mm256_mul_ps(a2, f2))); \
    _mm256_storeu_ps(tile[2] + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(c23), _mm256_mul_ps(a2, f3))); \
  }                                                                                                \
  static __attribute__((target(TGT))) void NAME(int M, int N, int K, const float *A, int lda,      \
                                                const void *Wp, int p0, int p1,                    \
                                                const clip_gemm_out *out, void *scratch) {         \
    int K4 = k_groups(K);                                                                          \
    quantize_rows_256(M, K, A, lda, scratch);                                                      \
    act_rows r = act_rows_in(scratch, M, K);                                                       \
    const float *sw = weight_scales(Wp, N, K);                                                     \
    const int32_t *ws = weight_sums(Wp, N, K);                                                     \
    float tile[3][CLIP_PANEL];                                                                     \
    for (int p = p0; p < p1; p++) {                                                                \
      const int8_t *panel = (const int8_t *)Wp + (size_t)p * panel_bytes(K);                       \
      int c0 = p * CLIP_PANEL, cols = N - c0 < CLIP_PANEL ? N - c0 : CLIP_PANEL;                   \
      for (int m0 = 0; m0 < M; m0 += 3) {                                                          \
        int rows = M - m0 < 3 ? M - m0 : 3;                                                        \
        NAME##_tile(rows, &r, m0, panel, K4, sw + c0, ws + c0, tile);                              \
        for (int i = 0; i < rows; i++) store_tile(out, m0 + i, c0, cols, tile[i]);                 \
      }                                                                                            \
    }                                                                                              \
    finish(out, M, N, p0, p1);                                                                     \
  }

/* AVX2 quantization (both ymm kernels use it; AVX-VNNI machines have AVX2). */
static __attribute__((target("avx2"))) void quantize_rows_256(int M, int K, const float *A, int lda,
                                                              void *scratch) {
  act_rows r = act_rows_in(scratch, M, K);
  for (int m = 0; m < M; m++) {
    const float *a = A + (size_t)m * lda;
    uint8_t *q = r.q + (size_t)m * r.stride;
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
      __m256 v = _mm256_loadu_ps(a + k);
      lo = _mm256_min_ps(lo, v);
      hi = _mm256_max_ps(hi, v);
    }
    float lv[8], hv[8], l = 0.0f, h = 0.0f, inv;
    _mm256_storeu_ps(lv, lo);
    _mm256_storeu_ps(hv, hi);
    for (int i = 0; i < 8; i++) {
      l = lv[i] < l ? lv[i] : l;
      h = hv[i] > h ? hv[i] : h;
    }
    for (; k < K; k++) {
      l = a[k] < l ? a[k] : l;
      h = a[k] > h ? a[k] : h;
    }
    row_params(l, h, &r.scale[m], &inv, &r.zero[m]);
    __m256 vinv = _mm256_set1_ps(inv), vz = _mm256_set1_ps((float)r.zero[m]);
    __m256 v0 = _mm256_setzero_ps(), v255 = _mm256_set1_ps(255.0f);
    for (k = 0; k + 8 <= K; k += 8) {
      __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(a + k), vinv),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, vz), v0), v255);
      __m256i i32 = _mm256_cvtps_epi32(v);
      __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
      __m128i u8 = _mm_packus_epi16(i16, i16);
      _mm_storel_epi64((__m128i *)(q + k), u8);
    }
    for (; k < K; k++) q[k] = quantize_value(a[k], inv, r.zero[m]);
    for (; k < r.stride; k++) q[k] = (uint8_t)r.zero[m];
  }
}

/* Inline assembly, as for the zmm tile; "x" keeps VEX to the registers it can encode. */
#define DPBUSD_VEX(acc, a, w) \
  __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "m"(*(const __m256i_u *)(w)))
#define DPBUSD_EVEX(acc, a, w) \
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "m"(*(const __m256i_u *)(w)))
YMM_KERNEL(gemm_int8_avxvnni, "avx2,fma,avxvnni", DPBUSD_VEX)
YMM_KERNEL(gemm_int8_256_evex, "avx2,fma,avx512f,avx512vl,avx512vnni", DPBUSD_EVEX)

static const clip_int8_kernel int8_avxvnni = {"avxvnni", quantize_rows_256, gemm_int8_avxvnni};
static const clip_int8_kernel int8_256_evex = {"ymm-avx512vnni", quantize_rows_256,
                                               gemm_int8_256_evex};

static int cpu_avx512vnni(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

/* AVX-VNNI is CPUID.(EAX=7,ECX=1):EAX bit 4, asked directly: clang 14's __builtin_cpu_supports
 * does not know it. */
static int cpu_avxvnni(void) {
  unsigned a, b, c, d;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __get_cpuid_count(7, 1, &a, &b, &c, &d) &&
         (a & (1u << 4));
}

const clip_int8_kernel *clip_int8_kernel_for(clip_int8_variant v) {
  switch (v) {
    case CLIP_INT8_C: return &int8_c;
    case CLIP_INT8_AVX512VNNI: return cpu_avx512vnni() ? &int8_512 : NULL;
    case CLIP_INT8_AVXVNNI: return cpu_avxvnni() ? &int8_avxvnni : NULL;
    case CLIP_INT8_YMM_EVEX: return cpu_avx512vnni() ? &int8_256_evex : NULL;
    default: return NULL;
  }
}
#else
const clip_int8_kernel *clip_int8_kernel_for(clip_int8_variant v) {
  return v == CLIP_INT8_C ? &int8_c : NULL;
}
#endif

/* The kernel set decides the width: CLIPDB_ISA=avx2 takes the AVX-VNNI kernel where the CPU has
 * it, else (as generic does) the C reference. The EVEX ymm form only lets tests run the ymm code
 * on AVX-512 machines without AVX-VNNI.
 * An AMX (TDPBUSD) tile kernel would be tried first here, where the OS exposes AMX. */
const clip_int8_kernel *clip_int8_kernel_best(void) {
  const clip_kernels *k = clip_kernels_best();
  const clip_int8_kernel *best = NULL;
  if (k == &clip_kernels_avx512) best = clip_int8_kernel_for(CLIP_INT8_AVX512VNNI);
  if (!best && k != &clip_kernels_generic) best = clip_int8_kernel_for(CLIP_INT8_AVXVNNI);
  return best ? best : &int8_c;
}
