/* test_kernels.c: every SIMD kernel variant the CPU supports against the plain C reference on
 * random inputs (in the spirit of ggml's test-backend-ops). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed/kernels/kernels.h"

static unsigned rng_state = 12345;

static float frand(float scale) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return scale * ((float)(rng_state >> 8) / (float)(1u << 24) * 2.0f - 1.0f);
}

static float *random_vec(int n, float scale) {
  float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
  cr_assert(v);
  for (int i = 0; i < n; i++) v[i] = frand(scale);
  return v;
}

/* Relative closeness with an absolute floor, as both sides round differently. */
static void assert_close(const float *want, const float *got, int n, float tol, const char *what,
                         const char *isa, int len) {
  for (int i = 0; i < n; i++) {
    float d = fabsf(want[i] - got[i]), lim = tol * (1.0f + fabsf(want[i]));
    cr_assert(d <= lim, "%s/%s n=%d: element %d: want %.9g got %.9g", what, isa, len, i, want[i],
              got[i]);
  }
}

/* Lengths that hit the unrolled body, the vector tail and the scalar tail of each variant. */
static const int lengths[] = {1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 77, 100, 511, 768};
#define N_LENGTHS ((int)(sizeof lengths / sizeof lengths[0]))

typedef void (*check_fn)(const clip_kernels *ref, const clip_kernels *k, int n);

static void for_each_variant(check_fn fn) {
  const clip_kernels *ref = &clip_kernels_generic;
  int tested = 0;
  for (int isa = CLIP_ISA_AVX2; isa < CLIP_ISA_COUNT; isa++) {
    const clip_kernels *k = clip_kernels_for((clip_isa)isa);
    if (!k) continue;
    tested++;
    for (int i = 0; i < N_LENGTHS; i++) fn(ref, k, lengths[i]);
  }
  if (!tested) cr_log_warn("no SIMD variant supported here; only the reference ran");
}

static void check_dot(const clip_kernels *ref, const clip_kernels *k, int n) {
  float *a = random_vec(n, 1), *b = random_vec(n, 1);
  float want = ref->dot(a, b, n), got = k->dot(a, b, n);
  assert_close(&want, &got, 1, 1e-5f * sqrtf((float)n), "dot", k->name, n);
  free(a);
  free(b);
}

static void check_axpy_add(const clip_kernels *ref, const clip_kernels *k, int n) {
  float *x = random_vec(n, 1), *y1 = random_vec(n, 1), *y2 = malloc(sizeof(float) * (size_t)n);
  memcpy(y2, y1, sizeof(float) * (size_t)n);
  ref->axpy(0.37f, x, y1, n);
  k->axpy(0.37f, x, y2, n);
  assert_close(y1, y2, n, 1e-6f, "axpy", k->name, n);
  ref->add(y1, x, n);
  k->add(y2, x, n);
  assert_close(y1, y2, n, 1e-6f, "add", k->name, n);
  free(x);
  free(y1);
  free(y2);
}

static void check_layernorm(const clip_kernels *ref, const clip_kernels *k, int n) {
  float *x = random_vec(n, 3), *g = random_vec(n, 1), *b = random_vec(n, 1);
  float *y1 = random_vec(n, 1), *y2 = random_vec(n, 1);
  for (int i = 0; i < n; i++) x[i] += 5.0f; /* a mean far from 0, as residual streams have */
  ref->layernorm(x, g, b, y1, n, 1e-5f);
  k->layernorm(x, g, b, y2, n, 1e-5f);
  assert_close(y1, y2, n, 2e-5f, "layernorm", k->name, n);
  free(x);
  free(g);
  free(b);
  free(y1);
  free(y2);
}

static void check_softmax(const clip_kernels *ref, const clip_kernels *k, int n) {
  float *x1 = random_vec(n, 20), *x2 = malloc(sizeof(float) * (size_t)n);
  memcpy(x2, x1, sizeof(float) * (size_t)n);
  ref->softmax(x1, n);
  k->softmax(x2, n);
  assert_close(x1, x2, n, 1e-6f, "softmax", k->name, n);
  float sum = 0;
  for (int i = 0; i < n; i++) sum += x2[i];
  cr_assert_float_eq(sum, 1.0f, 1e-5f, "softmax/%s sums to %g", k->name, sum);
  free(x1);
  free(x2);
}

static void check_activations(const clip_kernels *ref, const clip_kernels *k, int n) {
  float *x1 = random_vec(n, 12), *x2 = malloc(sizeof(float) * (size_t)n);
  float *x3 = malloc(sizeof(float) * (size_t)n), *x4 = malloc(sizeof(float) * (size_t)n);
  x1[0] = -100.0f; /* saturated exp */
  memcpy(x2, x1, sizeof(float) * (size_t)n);
  memcpy(x3, x1, sizeof(float) * (size_t)n);
  memcpy(x4, x1, sizeof(float) * (size_t)n);
  ref->quick_gelu(x1, n);
  k->quick_gelu(x2, n);
  assert_close(x1, x2, n, 2e-6f, "quick_gelu", k->name, n);
  ref->gelu(x3, n);
  k->gelu(x4, n);
  assert_close(x3, x4, n, 1e-6f, "gelu", k->name, n);
  free(x1);
  free(x2);
  free(x3);
  free(x4);
}

static void check_conversions(const clip_kernels *ref, const clip_kernels *k, int n) {
  uint16_t *h = malloc(sizeof(uint16_t) * (size_t)n);
  float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
  for (int i = 0; i < n; i++) {
    rng_state = rng_state * 1664525u + 1013904223u;
    h[i] = (uint16_t)(rng_state >> 16);
  }
  /* Special values: zero, subnormal, infinity. NaN is skipped (compared bitwise elsewhere). */
  h[0] = 0x0001;
  for (int i = 0; i < n; i++)
    if ((h[i] & 0x7c00) == 0x7c00) h[i] = 0x7c00; /* f16 NaN -> inf */
  ref->f16_to_f32(h, a, (size_t)n);
  k->f16_to_f32(h, b, (size_t)n);
  cr_assert(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "f16_to_f32/%s n=%d differs", k->name, n);
  ref->bf16_to_f32(h, a, (size_t)n);
  k->bf16_to_f32(h, b, (size_t)n);
  cr_assert(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "bf16_to_f32/%s n=%d differs", k->name,
            n);
  free(h);
  free(a);
  free(b);
}

static void check_gemm(const clip_kernels *ref, const clip_kernels *k, int n) {
  int M = n % 13 + 1 + (n > 100 ? 70 : 0), N = n % 9 + 5, K = n; /* odd edges and 64+ rows */
  float *A = random_vec(M * K, 1), *W = random_vec(N * K, 1);
  float *C1 = random_vec(M * N, 1), *C2 = malloc(sizeof(float) * (size_t)(M * N));
  for (int acc = 0; acc <= 1; acc++) {
    memcpy(C2, C1, sizeof(float) * (size_t)(M * N));
    ref->gemm_nt(M, N, K, A, K, W, K, C1, N, acc);
    k->gemm_nt(M, N, K, A, K, W, K, C2, N, acc);
    assert_close(C1, C2, M * N, 1e-5f * sqrtf((float)K), acc ? "gemm_nt+=" : "gemm_nt", k->name, n);
  }
  free(A);
  free(W);
  free(C1);
  free(C2);
}

/* The epilogues a packed GEMM is checked with: accumulate or not, bias, activation. */
static const struct {
  int accumulate, bias;
  clip_epi_act act;
} epilogues[] = {{0, 0, CLIP_EPI_NONE}, {1, 0, CLIP_EPI_NONE}, {0, 1, CLIP_EPI_QUICK_GELU},
                 {1, 1, CLIP_EPI_NONE}, {0, 1, CLIP_EPI_GELU}, {0, 0, CLIP_EPI_QUICK_GELU}};
#define N_EPILOGUES ((int)(sizeof epilogues / sizeof epilogues[0]))

/* The reference for columns [c0, N): gemm_nt, then bias and activation with ref's kernels. */
static void reference_packed(const clip_kernels *ref, int M, int N, int K, const float *A,
                             const float *W, int c0, const clip_gemm_out *out) {
  ref->gemm_nt(M, N - c0, K, A, K, W + (size_t)c0 * K, K, out->C + c0, out->ldc, out->accumulate);
  for (int m = 0; m < M; m++) {
    float *row = out->C + (size_t)m * out->ldc + c0;
    if (out->bias) ref->add(row, out->bias + c0, N - c0);
    if (out->act == CLIP_EPI_QUICK_GELU) ref->quick_gelu(row, N - c0);
    if (out->act == CLIP_EPI_GELU) ref->gelu(row, N - c0);
  }
}

/* Packed GEMM on a sub-range of panels, with each epilogue, must equal the reference on those
 * columns only. */
static void check_packed_shape(const clip_kernels *ref, const clip_kernels *k, int M, int N, int K,
                               int every_p0) {
  float *A = random_vec(M * K, 1), *W = random_vec(N * K, 1), *bias = random_vec(N, 1);
  float *Wp = malloc(sizeof(float) * clip_packed_floats(N, K));
  float *scratch = malloc(sizeof(float) * clip_gemm_scratch_floats(K));
  float *C1 = random_vec(M * N, 1), *C2 = malloc(sizeof(float) * (size_t)(M * N));
  clip_pack_weights(W, N, K, Wp);
  int panels = (N + CLIP_PANEL - 1) / CLIP_PANEL;
  for (int e = 0; e < N_EPILOGUES; e++)
    for (int p0 = 0; p0 < (every_p0 ? panels : 1); p0++) {
      memcpy(C2, C1, sizeof(float) * (size_t)(M * N));
      clip_gemm_out want = {C1, N, epilogues[e].accumulate, epilogues[e].bias ? bias : NULL,
                            epilogues[e].act};
      clip_gemm_out got = want;
      got.C = C2;
      k->gemm_packed(M, N, K, A, K, Wp, p0, panels, &got, scratch);
      reference_packed(ref, M, N, K, A, W, p0 * CLIP_PANEL, &want);
      assert_close(C1, C2, M * N, 1e-5f * sqrtf((float)K), "gemm_packed", k->name, K);
    }
  free(A);
  free(W);
  free(bias);
  free(Wp);
  free(scratch);
  free(C1);
  free(C2);
}

static void check_gemm_packed(const clip_kernels *ref, const clip_kernels *k, int n) {
  check_packed_shape(ref, k, n % 29 + 1 + (n > 100 ? 60 : 0), n % 50 + 40, n, 1);
}

/* Half-float panels: the same products with weights widened in the kernel. */
static void check_gemm_packed_f16(const clip_kernels *ref, const clip_kernels *k, int n) {
  int M = n % 23 + 1 + (n > 100 ? 40 : 0), N = n % 45 + 33, K = n;
  float *A = random_vec(M * K, 1), *W = malloc(sizeof(float) * (size_t)(N * K));
  uint16_t *Wh = malloc(sizeof(uint16_t) * (size_t)(N * K));
  uint16_t *Wp = malloc(sizeof(uint16_t) * clip_packed_floats(N, K));
  float *scratch = malloc(sizeof(float) * clip_gemm_scratch_floats(K));
  float *C1 = random_vec(M * N, 1), *C2 = malloc(sizeof(float) * (size_t)(M * N));
  for (int i = 0; i < N * K; i++) {
    rng_state = rng_state * 1664525u + 1013904223u;
    /* sign, exponent 10..17 (values 2^-5 .. 4), random mantissa */
    Wh[i] = (uint16_t)(((rng_state >> 31) << 15) | ((10 + (rng_state >> 12) % 8) << 10) |
                       ((rng_state >> 2) & 0x3ff));
  }
  clip_kernels_generic.f16_to_f32(Wh, W, (size_t)(N * K));
  clip_pack_weights_f16(Wh, N, K, Wp);
  int panels = (N + CLIP_PANEL - 1) / CLIP_PANEL;
  for (int acc = 0; acc <= 1; acc++) {
    memcpy(C2, C1, sizeof(float) * (size_t)(M * N));
    clip_gemm_out out = {C2, N, acc, NULL, CLIP_EPI_NONE};
    k->gemm_packed_f16(M, N, K, A, K, Wp, 0, panels, &out, scratch);
    ref->gemm_nt(M, N, K, A, K, W, K, C1, N, acc);
    assert_close(C1, C2, M * N, 1e-5f * sqrtf((float)K) * 4, "gemm_packed_f16", k->name, n);
  }
  free(A);
  free(W);
  free(Wh);
  free(Wp);
  free(scratch);
  free(C1);
  free(C2);
}

Test(kernels, gemm_packed_f16) {
  check_gemm_packed_f16(&clip_kernels_generic, &clip_kernels_generic, 40);
  for_each_variant(check_gemm_packed_f16);
}

/* A value rounded to bfloat16 (nearest even), computed here independently of bf16.c. */
static float round_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  memcpy(&f, &u, 4);
  return f;
}

/* The bf16 GEMM fn on panels [p0, N) with each epilogue equals gemm_nt of the bf16-rounded A
 * and W, then bias and activation. with_scratch 0: fn gets no scratch memory. */
static void check_bf16_shape(clip_gemm_bf16_fn fn, const char *name, int M, int N, int K,
                             int with_scratch) {
  const clip_kernels *ref = &clip_kernels_generic;
  float *A = random_vec(M * K, 1), *W = random_vec(N * K, 1), *bias = random_vec(N, 1);
  float *Ar = malloc(sizeof(float) * (size_t)(M * K));
  float *Wr = malloc(sizeof(float) * (size_t)(N * K));
  uint16_t *Wp = malloc(sizeof(uint16_t) * clip_packed_bf16_elems(N, K));
  uint32_t *scratch = malloc(sizeof(uint32_t) * clip_gemm_bf16_scratch(M, K));
  float *C1 = random_vec(M * N, 1), *C2 = malloc(sizeof(float) * (size_t)(M * N));
  for (int i = 0; i < M * K; i++) Ar[i] = round_bf16(A[i]);
  for (int i = 0; i < N * K; i++) Wr[i] = round_bf16(W[i]);
  clip_pack_weights_bf16(W, N, K, Wp);
  int panels = (N + CLIP_PANEL - 1) / CLIP_PANEL;
  for (int e = 0; e < N_EPILOGUES; e++)
    for (int p0 = 0; p0 < panels; p0++) {
      memcpy(C2, C1, sizeof(float) * (size_t)(M * N));
      clip_gemm_out want = {C1, N, epilogues[e].accumulate, epilogues[e].bias ? bias : NULL,
                            epilogues[e].act};
      clip_gemm_out got = want;
      got.C = C2;
      fn(M, N, K, A, K, Wp, p0, panels, &got, with_scratch ? scratch : NULL);
      reference_packed(ref, M, N, K, Ar, Wr, p0 * CLIP_PANEL, &want);
      assert_close(C1, C2, M * N, 1e-5f * sqrtf((float)K), "gemm_bf16", name, K);
    }
  free(A);
  free(W);
  free(Ar);
  free(Wr);
  free(bias);
  free(Wp);
  free(scratch);
  free(C1);
  free(C2);
}

Test(kernels, gemm_bf16_reference) {
  for (int i = 0; i < N_LENGTHS; i++) {
    int n = lengths[i];
    check_bf16_shape(clip_gemm_bf16_ref, "c", n % 13 + 1, n % 50 + 20, n, 1);
  }
}

Test(kernels, gemm_bf16_reference_without_scratch) {
  for (int i = 0; i < N_LENGTHS; i++) {
    int n = lengths[i];
    check_bf16_shape(clip_gemm_bf16_ref, "c-no-scratch", n % 13 + 1, n % 50 + 20, n, 0);
  }
}

Test(kernels, gemm_bf16_native) {
  clip_gemm_bf16_fn fn = clip_gemm_bf16_native();
  if (!fn) cr_skip_test("no AVX512-BF16 here; only the reference ran");
  for (int i = 0; i < N_LENGTHS; i++) {
    int n = lengths[i];
    check_bf16_shape(fn, "avx512bf16", n % 13 + 1, n % 50 + 20, n, 1);
  }
}

/* int8 quantization computed here independently of int8.c (the formulas of kernels.h): the
 * dequantized weights [N, K] per output channel, the dequantized rows of A per row. */
static float *dequantized_weights(const float *W, int N, int K) {
  float *d = malloc(sizeof(float) * (size_t)(N * K));
  for (int n = 0; n < N; n++) {
    float amax = 0.0f;
    for (int k = 0; k < K; k++) amax = fmaxf(amax, fabsf(W[n * K + k]));
    for (int k = 0; k < K; k++) {
      float q = amax > 0.0f ? rintf(W[n * K + k] * (127.0f / amax)) : 0.0f;
      d[n * K + k] = q * (amax / 127.0f);
    }
  }
  return d;
}

static float *dequantized_rows(const float *A, int M, int K) {
  float *d = malloc(sizeof(float) * (size_t)(M * K));
  for (int m = 0; m < M; m++) {
    float lo = 0.0f, hi = 0.0f;
    for (int k = 0; k < K; k++) lo = fminf(lo, A[m * K + k]), hi = fmaxf(hi, A[m * K + k]);
    float inv = hi > lo ? 255.0f / (hi - lo) : 0.0f, z = rintf(-lo * inv);
    for (int k = 0; k < K; k++) {
      float q = fminf(fmaxf(rintf(A[m * K + k] * inv) + z, 0.0f), 255.0f);
      d[m * K + k] = (q - z) * ((hi - lo) / 255.0f);
    }
  }
  return d;
}

/* The int8 GEMM kern on panels [p0, N) with each epilogue equals gemm_nt of the dequantized A
 * and W, then bias and activation. with_scratch 0: kern gets no scratch memory. */
static void check_int8_shape(const clip_int8_kernel *kern, int M, int N, int K, int with_scratch) {
  const clip_kernels *ref = &clip_kernels_generic;
  float *A = random_vec(M * K, 2), *W = random_vec(N * K, 0.1f), *bias = random_vec(N, 1);
  for (int i = 0; i < M * K; i += 7) A[i] = fabsf(A[i]) * 3; /* skewed rows, as after GELU */
  float *Ad = dequantized_rows(A, M, K), *Wd = dequantized_weights(W, N, K);
  void *Wp = malloc(clip_packed_int8_bytes(N, K));
  void *scratch = malloc(clip_gemm_int8_scratch(M, K));
  float *C1 = random_vec(M * N, 1), *C2 = malloc(sizeof(float) * (size_t)(M * N));
  clip_pack_weights_int8(W, N, K, Wp);
  int panels = (N + CLIP_PANEL - 1) / CLIP_PANEL;
  for (int e = 0; e < N_EPILOGUES; e++)
    for (int p0 = 0; p0 < panels; p0++) {
      memcpy(C2, C1, sizeof(float) * (size_t)(M * N));
      clip_gemm_out want = {C1, N, epilogues[e].accumulate, epilogues[e].bias ? bias : NULL,
                            epilogues[e].act};
      clip_gemm_out got = want;
      got.C = C2;
      kern->gemm(M, N, K, A, K, Wp, p0, panels, &got, with_scratch ? scratch : NULL);
      reference_packed(ref, M, N, K, Ad, Wd, p0 * CLIP_PANEL, &want);
      assert_close(C1, C2, M * N, 2e-5f * sqrtf((float)K), "gemm_int8", kern->name, K);
    }
  free(A);
  free(W);
  free(Ad);
  free(Wd);
  free(bias);
  free(Wp);
  free(scratch);
  free(C1);
  free(C2);
}

/* Row counts that hit each variant's full tiles (12 rows, 3 rows) and their remainders. */
static const int int8_rows[] = {1, 2, 3, 5, 12, 13, 25, 40};
#define N_INT8_ROWS ((int)(sizeof int8_rows / sizeof int8_rows[0]))

static void check_int8_variant(clip_int8_variant v, int with_scratch) {
  const clip_int8_kernel *kern = clip_int8_kernel_for(v);
  if (!kern) cr_skip_test("the CPU lacks this int8 variant's instructions");
  for (int i = 0; i < N_LENGTHS; i++) {
    int n = lengths[i];
    check_int8_shape(kern, int8_rows[i % N_INT8_ROWS], n % 50 + 20, n, with_scratch);
  }
}

Test(kernels, gemm_int8_reference) { check_int8_variant(CLIP_INT8_C, 1); }
Test(kernels, gemm_int8_reference_without_scratch) { check_int8_variant(CLIP_INT8_C, 0); }
Test(kernels, gemm_int8_avx512vnni) { check_int8_variant(CLIP_INT8_AVX512VNNI, 1); }
Test(kernels, gemm_int8_avxvnni) { check_int8_variant(CLIP_INT8_AVXVNNI, 1); }
Test(kernels, gemm_int8_ymm_evex) { check_int8_variant(CLIP_INT8_YMM_EVEX, 1); }

/* Every variant writes the C reference's bytes for the quantized rows (scales, zero points and
 * the padding included), so they differ only in how they sum exact integer products. */
Test(kernels, int8_quantize_rows_equal_reference) {
  const clip_int8_kernel *ref = clip_int8_kernel_for(CLIP_INT8_C);
  for (int v = CLIP_INT8_C + 1; v < CLIP_INT8_COUNT; v++) {
    const clip_int8_kernel *kern = clip_int8_kernel_for((clip_int8_variant)v);
    if (!kern) continue;
    for (int i = 0; i < N_LENGTHS; i++) {
      int M = 5, K = lengths[i];
      float *A = random_vec(M * K, 4);
      A[0] = 0.0f;
      if (K > 2) A[K + 1] = 1e-3f; /* a row of one tiny value */
      size_t bytes = clip_gemm_int8_scratch(M, K);
      unsigned char *s1 = malloc(bytes), *s2 = malloc(bytes);
      memset(s1, 0xa5, bytes);
      memset(s2, 0x5a, bytes);
      ref->quantize_rows(M, K, A, K, s1);
      kern->quantize_rows(M, K, A, K, s2);
      cr_assert(memcmp(s1, s2, bytes) == 0, "quantize_rows/%s K=%d differs", kern->name, K);
      free(A);
      free(s1);
      free(s2);
    }
  }
}

/* Extreme rows: all zero (scale 0), all negative, all positive, one huge value. */
Test(kernels, gemm_int8_extreme_rows) {
  int M = 4, N = 40, K = 37;
  for (int v = 0; v < CLIP_INT8_COUNT; v++) {
    const clip_int8_kernel *kern = clip_int8_kernel_for((clip_int8_variant)v);
    if (!kern) continue;
    float *A = random_vec(M * K, 1), *W = random_vec(N * K, 1);
    for (int k = 0; k < K; k++) {
      A[k] = 0.0f;
      A[K + k] = -fabsf(A[K + k]) - 0.5f;
      A[2 * K + k] = fabsf(A[2 * K + k]) + 0.5f;
    }
    A[3 * K + 5] = 1e4f;
    float *Ad = dequantized_rows(A, M, K), *Wd = dequantized_weights(W, N, K);
    void *Wp = malloc(clip_packed_int8_bytes(N, K)),
         *scratch = malloc(clip_gemm_int8_scratch(M, K));
    float C1[4 * 40], C2[4 * 40];
    clip_pack_weights_int8(W, N, K, Wp);
    clip_gemm_out out = {C2, N, 0, NULL, CLIP_EPI_NONE};
    kern->gemm(M, N, K, A, K, Wp, 0, 2, &out, scratch);
    clip_kernels_generic.gemm_nt(M, N, K, Ad, K, Wd, K, C1, N, 0);
    assert_close(C1, C2, M * N, 2e-5f * sqrtf((float)K), "gemm_int8 extremes", kern->name, K);
    for (int j = 0; j < N; j++)
      cr_assert(C2[j] == 0.0f, "%s: a zero row gave %g", kern->name, C2[j]);
    free(A);
    free(W);
    free(Ad);
    free(Wd);
    free(Wp);
    free(scratch);
  }
}

Test(kernels, gemm_packed) {
  check_gemm_packed(&clip_kernels_generic, &clip_kernels_generic, 33);
  for_each_variant(check_gemm_packed);
}

/* Several row chunks and K slabs (the loops and prefetch plan of the large image GEMMs). */
Test(kernels, gemm_packed_large) {
  for (int isa = CLIP_ISA_AVX2; isa < CLIP_ISA_COUNT; isa++) {
    const clip_kernels *k = clip_kernels_for((clip_isa)isa);
    if (k) check_packed_shape(&clip_kernels_generic, k, 400, 70, 1000, 0);
  }
}

/* Whole-panel packers against the definition: dst[k][j] = W[j][k] (rounded for half floats). */
static void check_pack_panel(const clip_kernels *ref, const clip_kernels *k, int n) {
  if (!k->pack_panel && !k->pack_panel_f16) return;
  int K = n;
  float *W = random_vec(CLIP_PANEL * K, 100);
  float *got = malloc(sizeof(float) * (size_t)(CLIP_PANEL * K));
  uint16_t *got16 = malloc(sizeof(uint16_t) * (size_t)(CLIP_PANEL * K)), want16;
  if (k->pack_panel) {
    k->pack_panel(W, K, got);
    for (int kk = 0; kk < K; kk++)
      for (int j = 0; j < CLIP_PANEL; j++)
        cr_assert(got[kk * CLIP_PANEL + j] == W[j * K + kk], "pack_panel/%s K=%d at k=%d j=%d",
                  k->name, K, kk, j);
  }
  if (k->pack_panel_f16) {
    cr_assert_eq(k->pack_panel_f16(W, K, got16), 0, "pack_panel_f16/%s K=%d: false overflow",
                 k->name, K);
    for (int kk = 0; kk < K; kk++)
      for (int j = 0; j < CLIP_PANEL; j++) {
        ref->f32_to_f16(&W[j * K + kk], &want16, 1);
        cr_assert_eq(got16[kk * CLIP_PANEL + j], want16, "pack_panel_f16/%s K=%d at k=%d j=%d",
                     k->name, K, kk, j);
      }
    /* out of half range, first in a 16 x 16 block, then in the scalar tail */
    W[5 * K + K / 2] = 70000.0f;
    cr_assert_eq(k->pack_panel_f16(W, K, got16), 1, "pack_panel_f16/%s K=%d: overflow missed",
                 k->name, K);
    W[5 * K + K / 2] = 1.0f;
    W[31 * K + K - 1] = NAN;
    cr_assert_eq(k->pack_panel_f16(W, K, got16), 1, "pack_panel_f16/%s K=%d: NaN missed", k->name,
                 K);
  }
  free(W);
  free(got);
  free(got16);
}

/* 1 when /proc/cpuinfo's first "flags" line lists every flag in `need` (NULL-terminated). */
static int cpu_has_flags(const char *const *need) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  cr_assert_not_null(f, "cannot read /proc/cpuinfo");
  static char line[16384];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) found = strncmp(line, "flags", 5) == 0;
  fclose(f);
  cr_assert(found, "no flags line in /proc/cpuinfo");
  for (; *need; need++) {
    size_t len = strlen(*need);
    const char *p = line;
    while ((p = strstr(p, *need)) && !((p[-1] == ' ' || p[-1] == '\t') &&
                                       (p[len] == ' ' || p[len] == '\n' || p[len] == '\0')))
      p += len;
    if (!p) return 0;
  }
  return 1;
}

/* The variants the CPU can run, read from the kernel's flags independently of the dispatcher's
 * __builtin_cpu_supports: each must be available, or every SIMD test above passes having run
 * only the reference. Prints the variants tested (CI shows the line). */
Test(kernels, every_variant_the_cpu_supports_is_tested) {
  static const char *const avx2[] = {"avx2", "fma", "f16c", NULL};
  static const char *const avx512[] = {"avx512f", "avx512bw", "avx512vl", "avx512dq",
                                       "fma",     "f16c",     NULL};
  static const char *const *const needs[CLIP_ISA_COUNT] = {NULL, avx2, avx512};
  char tested[64] = "generic";
  for (int isa = CLIP_ISA_AVX2; isa < CLIP_ISA_COUNT; isa++) {
    const clip_kernels *k = clip_kernels_for((clip_isa)isa);
    int cpu_has = cpu_has_flags(needs[isa]);
    cr_assert_eq(k != NULL, cpu_has, "variant %d: the CPU %s it but the dispatcher %s it", isa,
                 cpu_has ? "has" : "lacks", k ? "offers" : "does not offer");
    if (k) {
      strcat(tested, " ");
      strcat(tested, k->name);
    }
  }
  printf("kernels: SIMD variants tested: %s\n", tested);
  fflush(stdout);
}

Test(kernels, pack_panel) { for_each_variant(check_pack_panel); }
Test(kernels, dot) { for_each_variant(check_dot); }
Test(kernels, axpy_and_add) { for_each_variant(check_axpy_add); }
Test(kernels, layernorm) { for_each_variant(check_layernorm); }
Test(kernels, softmax) { for_each_variant(check_softmax); }
Test(kernels, activations) { for_each_variant(check_activations); }
Test(kernels, half_conversions) { for_each_variant(check_conversions); }
Test(kernels, gemm_nt) { for_each_variant(check_gemm); }

/* C = A B with row-major B, strided operands (the attention's layout), against a double sum. */
static void check_gemm_nn(const clip_kernels *ref, const clip_kernels *k, int n) {
  (void)ref;
  int M = n % 11 + 1 + (n > 60 ? 40 : 0), N = n % 70 + 1, K = n % 65 + 1;
  int lda = K + 3, ldb = N + 5, ldc = N + 2;
  float *A = random_vec(M * lda, 1), *B = random_vec(K * ldb, 1);
  float *C = random_vec(M * ldc, 1), *keep = malloc(sizeof(float) * (size_t)(M * ldc));
  memcpy(keep, C, sizeof(float) * (size_t)(M * ldc));
  k->gemm_nn(M, N, K, A, lda, B, ldb, C, ldc);
  for (int m = 0; m < M; m++)
    for (int j = 0; j < ldc; j++) {
      float got = C[m * ldc + j];
      if (j >= N) {
        cr_assert(got == keep[m * ldc + j], "gemm_nn/%s wrote past column %d", k->name, N);
        continue;
      }
      double want = 0;
      for (int q = 0; q < K; q++) want += (double)A[m * lda + q] * B[q * ldb + j];
      float w = (float)want;
      assert_close(&w, &got, 1, 1e-5f * sqrtf((float)K), "gemm_nn", k->name, n);
    }
  free(A);
  free(B);
  free(C);
  free(keep);
}

Test(kernels, gemm_nn) {
  check_gemm_nn(NULL, &clip_kernels_generic, 77);
  for_each_variant(check_gemm_nn);
}

/* float32 -> half: every variant bit-equal to the reference on values around the half range
 * (normal, subnormal, overflowing, ties), NaN excluded. */
static void check_to_half(const clip_kernels *ref, const clip_kernels *k, int n) {
  float *f = malloc(sizeof(float) * (size_t)n);
  uint16_t *a = malloc(sizeof(uint16_t) * (size_t)n), *b = malloc(sizeof(uint16_t) * (size_t)n);
  for (int i = 0; i < n; i++) {
    rng_state = rng_state * 1664525u + 1013904223u;
    /* exponents 95..145 (2^-32 .. 2^18); every 4th value a tie (low 13 mantissa bits 0x1000) */
    uint32_t bits = ((rng_state >> 31) << 31) | ((95 + (rng_state >> 8) % 51) << 23) |
                    ((rng_state * 2654435761u) & 0x7fffff);
    if (i % 4 == 1) bits = (bits & ~0x1fffu) | 0x1000u;
    memcpy(&f[i], &bits, 4);
  }
  ref->f32_to_f16(f, a, (size_t)n);
  k->f32_to_f16(f, b, (size_t)n);
  for (int i = 0; i < n; i++)
    cr_assert(a[i] == b[i], "f32_to_f16/%s n=%d: %.9g -> want %04x got %04x", k->name, n, f[i],
              a[i], b[i]);
  free(f);
  free(a);
  free(b);
}

Test(kernels, float_to_half) {
  for_each_variant(check_to_half);
  /* The reference: every non-NaN half survives half -> float -> half, and known roundings. */
  const clip_kernels *r = &clip_kernels_generic;
  for (uint32_t h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
    uint16_t in = (uint16_t)h, out;
    float f;
    r->f16_to_f32(&in, &f, 1);
    r->f32_to_f16(&f, &out, 1);
    cr_assert(out == in, "half %04x -> %.9g -> %04x", in, f, out);
  }
  float x[6] = {65520.0f,           65519.0f,      1.0f + 1.0f / 2048,
                1.0f + 3.0f / 2048, 2.9802322e-8f, 4.4703484e-8f};
  uint16_t want[6] = {0x7c00, 0x7bff, 0x3c00, 0x3c02, 0x0000, 0x0001}, got[6];
  r->f32_to_f16(x, got, 6);
  for (int i = 0; i < 6; i++) cr_assert(got[i] == want[i], "%.9g -> %04x", x[i], got[i]);
}

/* Rounding while packing equals rounding first, then packing the halves. */
Test(kernels, pack_f32_to_f16) {
  int N = 45, K = 300;
  float *W = random_vec(N * K, 3);
  uint16_t *h = malloc(sizeof(uint16_t) * (size_t)(N * K));
  uint16_t *p1 = malloc(sizeof(uint16_t) * clip_packed_floats(N, K));
  uint16_t *p2 = malloc(sizeof(uint16_t) * clip_packed_floats(N, K));
  clip_kernels_generic.f32_to_f16(W, h, (size_t)(N * K));
  clip_pack_weights_f16(h, N, K, p1);
  cr_assert_eq(clip_pack_weights_f32_to_f16(W, N, K, p2), 0, "in-range weights reported out");
  cr_assert(memcmp(p1, p2, sizeof(uint16_t) * clip_packed_floats(N, K)) == 0);
  /* A value past the half range (65504) is reported, so the caller keeps float32. */
  W[N * K - 5] = 1e6f;
  cr_assert_eq(clip_pack_weights_f32_to_f16(W, N, K, p2), 1);
  W[N * K - 5] = 65519.0f; /* rounds to 65504: still fine */
  cr_assert_eq(clip_pack_weights_f32_to_f16(W, N, K, p2), 0);
  free(W);
  free(h);
  free(p1);
  free(p2);
}

Test(kernels, reference_gelu_and_half_values) {
  /* Anchors for the reference itself, from the definitions. */
  const clip_kernels *r = &clip_kernels_generic;
  float x[3] = {1.0f, -1.0f, 0.0f};
  r->gelu(x, 3);
  cr_assert_float_eq(x[0], 0.8413447f, 1e-6f);
  cr_assert_float_eq(x[1], -0.1586553f, 1e-6f);
  float q[1] = {1.0f};
  r->quick_gelu(q, 1);
  cr_assert_float_eq(q[0], 1.0f / (1.0f + expf(-1.702f)), 1e-7f);
  uint16_t h[4] = {0x3c00, 0xc000, 0x0001, 0x7bff};
  float f[4];
  r->f16_to_f32(h, f, 4);
  cr_assert(f[0] == 1.0f && f[1] == -2.0f && f[2] == 5.9604645e-8f && f[3] == 65504.0f);
  uint16_t b[1] = {0x3f80};
  r->bf16_to_f32(b, f, 1);
  cr_assert(f[0] == 1.0f);
}

Test(kernels, best_is_supported) {
  const clip_kernels *best = clip_kernels_best();
  cr_assert(best);
  cr_log_info("kernels: %s", best->name);
}
