/* kernels.c: run-time choice of the kernel table. */
#include "embed/kernels/kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
/* F16C (CPUID.1:ECX bit 29), asked directly: clang's __builtin_cpu_supports lacks "f16c". */
static int has_f16c(void) {
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

int clip_isa_supported(clip_isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case CLIP_ISA_GENERIC: return 1;
    case CLIP_ISA_AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case CLIP_ISA_AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma") && has_f16c();
    default: return 0;
  }
}
#else
int clip_isa_supported(clip_isa isa) { return isa == CLIP_ISA_GENERIC; }
#endif

const clip_kernels *clip_kernels_for(clip_isa isa) {
  if (!clip_isa_supported(isa)) return NULL;
  static const clip_kernels *const tables[CLIP_ISA_COUNT] = {&clip_kernels_generic,
                                                             &clip_kernels_avx2,
                                                             &clip_kernels_avx512};
  return tables[isa];
}

static const clip_kernels *best;

static void choose(void) {
  const char *force = getenv("CLIPDB_ISA");
  if (force) {
    static const char *const names[CLIP_ISA_COUNT] = {"generic", "avx2", "avx512"};
    for (int i = 0; i < CLIP_ISA_COUNT; i++)
      if (strcmp(force, names[i]) == 0 && (best = clip_kernels_for((clip_isa)i))) return;
  }
  for (int i = CLIP_ISA_COUNT - 1; i >= 0 && !best; i--) best = clip_kernels_for((clip_isa)i);
}

const clip_kernels *clip_kernels_best(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, choose);
  return best;
}

void clip_gemm_epilogue(const clip_kernels *k, const clip_gemm_out *out, int M, int c0, int c1) {
  if (!out->bias && out->act == CLIP_EPI_NONE) return;
  for (int m = 0; m < M; m++) {
    float *row = out->C + (size_t)m * out->ldc + c0;
    if (out->bias) k->add(row, out->bias + c0, c1 - c0);
    if (out->act == CLIP_EPI_QUICK_GELU) k->quick_gelu(row, c1 - c0);
    if (out->act == CLIP_EPI_GELU) k->gelu(row, c1 - c0);
  }
}

int clip_pack_panel_tail(const float *W, int K, int k0, void *dst, int f16) {
  int bad = 0;
  for (int k = k0; k < K; k++)
    for (int j = 0; j < CLIP_PANEL; j++) {
      float v = W[(size_t)j * K + k];
      size_t at = (size_t)k * CLIP_PANEL + j;
      if (f16) {
        clip_kernels_generic.f32_to_f16(&v, (uint16_t *)dst + at, 1);
        bad |= !(fabsf(v) < 65520.0f); /* rounds to infinity from here on */
      } else {
        ((float *)dst)[at] = v;
      }
    }
  return bad;
}

size_t clip_packed_floats(int N, int K) {
  return (size_t)((N + CLIP_PANEL - 1) / CLIP_PANEL) * CLIP_PANEL * (size_t)K;
}

void clip_pack_weights(const float *W, int N, int K, float *dst) {
  const clip_kernels *kern = clip_kernels_best();
  /* k outer: each packed row of 32 is written whole; the 32 source rows are read in step. */
  for (int p = 0; p * CLIP_PANEL < N; p++) {
    float *panel = dst + (size_t)p * CLIP_PANEL * K;
    const float *w = W + (size_t)p * CLIP_PANEL * K;
    int cols = N - p * CLIP_PANEL < CLIP_PANEL ? N - p * CLIP_PANEL : CLIP_PANEL;
    if (cols == CLIP_PANEL && kern->pack_panel) {
      kern->pack_panel(w, K, panel);
      continue;
    }
    for (int k = 0; k < K; k++) {
      float *d = panel + (size_t)k * CLIP_PANEL;
      for (int j = 0; j < cols; j++) d[j] = w[(size_t)j * K + k];
      for (int j = cols; j < CLIP_PANEL; j++) d[j] = 0.0f;
    }
  }
}

void clip_pack_weights_f16(const uint16_t *W, int N, int K, uint16_t *dst) {
  for (int p = 0; p * CLIP_PANEL < N; p++) {
    uint16_t *panel = dst + (size_t)p * CLIP_PANEL * K;
    const uint16_t *w = W + (size_t)p * CLIP_PANEL * K;
    int cols = N - p * CLIP_PANEL < CLIP_PANEL ? N - p * CLIP_PANEL : CLIP_PANEL;
    for (int k = 0; k < K; k++) {
      uint16_t *d = panel + (size_t)k * CLIP_PANEL;
      for (int j = 0; j < cols; j++) d[j] = w[(size_t)j * K + k];
      for (int j = cols; j < CLIP_PANEL; j++) d[j] = 0;
    }
  }
}

int clip_pack_weights_f32_to_f16(const float *W, int N, int K, uint16_t *dst) {
  /* Slices of 32 rows x KB columns are rounded into a small buffer, then transposed. */
  enum { KB = 256 };
  uint16_t buf[CLIP_PANEL][KB];
  const clip_kernels *kern = clip_kernels_best();
  int not_finite = 0;
  for (int p = 0; p * CLIP_PANEL < N; p++) {
    uint16_t *panel = dst + (size_t)p * CLIP_PANEL * K;
    const float *w = W + (size_t)p * CLIP_PANEL * K;
    int cols = N - p * CLIP_PANEL < CLIP_PANEL ? N - p * CLIP_PANEL : CLIP_PANEL;
    if (cols == CLIP_PANEL && kern->pack_panel_f16) {
      not_finite |= kern->pack_panel_f16(w, K, panel);
      continue;
    }
    for (int k0 = 0; k0 < K; k0 += KB) {
      int kb = K - k0 < KB ? K - k0 : KB;
      for (int j = 0; j < cols; j++) kern->f32_to_f16(w + (size_t)j * K + k0, buf[j], (size_t)kb);
      for (int k = 0; k < kb; k++) {
        uint16_t *d = panel + (size_t)(k0 + k) * CLIP_PANEL;
        for (int j = 0; j < cols; j++) {
          d[j] = buf[j][k];
          not_finite |= (d[j] & 0x7c00) == 0x7c00;
        }
        for (int j = cols; j < CLIP_PANEL; j++) d[j] = 0;
      }
    }
  }
  return not_finite;
}

/* About 1 MB of packed activation rows stays in L2 while the weight panels stream past. */
#ifndef CLIP_GEMM_SCRATCH_MIN
#define CLIP_GEMM_SCRATCH_MIN 262144
#endif
size_t clip_gemm_scratch_floats(int K) {
  size_t min = (size_t)16 * (size_t)K;
  return min > CLIP_GEMM_SCRATCH_MIN ? min : CLIP_GEMM_SCRATCH_MIN;
}
