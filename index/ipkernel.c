/* ipkernel.c: nearest centroid by inner product (ipkernel.h), blocked like a GEMM.
 *
 * A 4 x 4 micro-kernel computes the dot products of 4 vectors with 4 centroids in one pass over
 * the dimensions (each loaded value feeds 4 FMAs); rows are taken in blocks of ROW_BLOCK and
 * centroids in blocks of CENTROID_BLOCK so both stay in cache while the running best is kept
 * per row. The SIMD variants are compiled with target attributes in this one file and chosen
 * at run time. */
#include "index/ipkernel.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CDB_IP_X86 1
#endif

#define ROW_BLOCK 64
#define CENTROID_BLOCK 128

/* out[r * 4 + q] = <x[r], c[q]> for r, q in 0..3. */
typedef void (*dot4x4_fn)(const float *const *x, const float *const *c, int d, float *out);

static void dot4x4_generic(const float *const *x, const float *const *c, int d, float *out) {
  float acc[16] = {0};
  for (int t = 0; t < d; t++)
    for (int r = 0; r < 4; r++)
      for (int q = 0; q < 4; q++) acc[r * 4 + q] += x[r][t] * c[q][t];
  memcpy(out, acc, sizeof acc);
}

#ifdef CDB_IP_X86
__attribute__((target("avx512f,fma"))) static void dot4x4_avx512(const float *const *x,
                                                                 const float *const *c, int d,
                                                                 float *out) {
  __m512 a[16];
  for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
  int t = 0;
  for (; t + 16 <= d; t += 16) {
    __m512 c0 = _mm512_loadu_ps(c[0] + t), c1 = _mm512_loadu_ps(c[1] + t);
    __m512 c2 = _mm512_loadu_ps(c[2] + t), c3 = _mm512_loadu_ps(c[3] + t);
    for (int r = 0; r < 4; r++) {
      __m512 v = _mm512_loadu_ps(x[r] + t);
      a[r * 4 + 0] = _mm512_fmadd_ps(v, c0, a[r * 4 + 0]);
      a[r * 4 + 1] = _mm512_fmadd_ps(v, c1, a[r * 4 + 1]);
      a[r * 4 + 2] = _mm512_fmadd_ps(v, c2, a[r * 4 + 2]);
      a[r * 4 + 3] = _mm512_fmadd_ps(v, c3, a[r * 4 + 3]);
    }
  }
  if (t < d) {
    __mmask16 m = (__mmask16)((1u << (d - t)) - 1);
    __m512 c0 = _mm512_maskz_loadu_ps(m, c[0] + t), c1 = _mm512_maskz_loadu_ps(m, c[1] + t);
    __m512 c2 = _mm512_maskz_loadu_ps(m, c[2] + t), c3 = _mm512_maskz_loadu_ps(m, c[3] + t);
    for (int r = 0; r < 4; r++) {
      __m512 v = _mm512_maskz_loadu_ps(m, x[r] + t);
      a[r * 4 + 0] = _mm512_fmadd_ps(v, c0, a[r * 4 + 0]);
      a[r * 4 + 1] = _mm512_fmadd_ps(v, c1, a[r * 4 + 1]);
      a[r * 4 + 2] = _mm512_fmadd_ps(v, c2, a[r * 4 + 2]);
      a[r * 4 + 3] = _mm512_fmadd_ps(v, c3, a[r * 4 + 3]);
    }
  }
  for (int i = 0; i < 16; i++) out[i] = _mm512_reduce_add_ps(a[i]);
}

__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* 4 rows x 2 centroids: 8 accumulators fit AVX2's 16 registers with room for the loads. */
__attribute__((target("avx2,fma"))) static void dot4x2_avx2(const float *const *x,
                                                            const float *c0p, const float *c1p,
                                                            int d, float *out, int q0) {
  __m256 a[8];
  for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
  int t = 0;
  for (; t + 8 <= d; t += 8) {
    __m256 c0 = _mm256_loadu_ps(c0p + t), c1 = _mm256_loadu_ps(c1p + t);
    for (int r = 0; r < 4; r++) {
      __m256 v = _mm256_loadu_ps(x[r] + t);
      a[r * 2 + 0] = _mm256_fmadd_ps(v, c0, a[r * 2 + 0]);
      a[r * 2 + 1] = _mm256_fmadd_ps(v, c1, a[r * 2 + 1]);
    }
  }
  for (int r = 0; r < 4; r++) {
    float s0 = hsum256(a[r * 2 + 0]), s1 = hsum256(a[r * 2 + 1]);
    for (int u = t; u < d; u++) {
      s0 += x[r][u] * c0p[u];
      s1 += x[r][u] * c1p[u];
    }
    out[r * 4 + q0] = s0;
    out[r * 4 + q0 + 1] = s1;
  }
}

__attribute__((target("avx2,fma"))) static void dot4x4_avx2(const float *const *x,
                                                            const float *const *c, int d,
                                                            float *out) {
  dot4x2_avx2(x, c[0], c[1], d, out, 0);
  dot4x2_avx2(x, c[2], c[3], d, out, 2);
}
#endif

/* One block of rows against every centroid, keeping the running best per row. */
static void argmax_rows(const float *x, int64_t n, const float *c, int k, int d, int32_t *arg,
                        float *best, dot4x4_fn dot) {
  for (int64_t i = 0; i < n; i++) {
    best[i] = -INFINITY;
    arg[i] = 0;
  }
  for (int j0 = 0; j0 < k; j0 += CENTROID_BLOCK) {
    int j1 = j0 + CENTROID_BLOCK < k ? j0 + CENTROID_BLOCK : k;
    for (int64_t i = 0; i < n; i += 4) {
      const float *xr[4];
      for (int r = 0; r < 4; r++) xr[r] = x + (size_t)(i + r < n ? i + r : n - 1) * (size_t)d;
      for (int j = j0; j < j1; j += 4) {
        const float *cr[4];
        for (int q = 0; q < 4; q++) cr[q] = c + (size_t)(j + q < j1 ? j + q : j1 - 1) * (size_t)d;
        float out[16];
        dot(xr, cr, d, out);
        for (int r = 0; r < 4 && i + r < n; r++)
          for (int q = 0; q < 4 && j + q < j1; q++)
            if (out[r * 4 + q] > best[i + r]) {
              best[i + r] = out[r * 4 + q];
              arg[i + r] = j + q;
            }
      }
    }
  }
}

static void argmax_with(const float *x, int64_t n, const float *c, int k, int d, int32_t *arg,
                        float *best, dot4x4_fn dot) {
  for (int64_t i0 = 0; i0 < n; i0 += ROW_BLOCK) {
    int64_t m = n - i0 < ROW_BLOCK ? n - i0 : ROW_BLOCK;
    argmax_rows(x + (size_t)i0 * (size_t)d, m, c, k, d, arg + i0, best + i0, dot);
  }
}

static void argmax_generic(const float *x, int64_t n, const float *c, int k, int d, int32_t *arg,
                           float *best) {
  argmax_with(x, n, c, k, d, arg, best, dot4x4_generic);
}

#ifdef CDB_IP_X86
static void argmax_avx2(const float *x, int64_t n, const float *c, int k, int d, int32_t *arg,
                        float *best) {
  argmax_with(x, n, c, k, d, arg, best, dot4x4_avx2);
}

static void argmax_avx512(const float *x, int64_t n, const float *c, int k, int d, int32_t *arg,
                          float *best) {
  argmax_with(x, n, c, k, d, arg, best, dot4x4_avx512);
}

int cdb_ip_isa_supported(cdb_ip_isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case CDB_IP_GENERIC: return 1;
    case CDB_IP_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CDB_IP_AVX512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    default: return 0;
  }
}

cdb_ip_argmax_fn cdb_ip_argmax_for(cdb_ip_isa isa) {
  if (!cdb_ip_isa_supported(isa)) return NULL;
  static const cdb_ip_argmax_fn fns[CDB_IP_ISA_COUNT] = {argmax_generic, argmax_avx2,
                                                         argmax_avx512};
  return fns[isa];
}
#else
int cdb_ip_isa_supported(cdb_ip_isa isa) { return isa == CDB_IP_GENERIC; }
cdb_ip_argmax_fn cdb_ip_argmax_for(cdb_ip_isa isa) {
  return isa == CDB_IP_GENERIC ? argmax_generic : NULL;
}
#endif

static cdb_ip_argmax_fn chosen;

static void choose(void) {
  const char *force = getenv("CLIPDB_ISA");
  if (force) {
    static const char *const names[CDB_IP_ISA_COUNT] = {"generic", "avx2", "avx512"};
    for (int i = 0; i < CDB_IP_ISA_COUNT; i++)
      if (strcmp(force, names[i]) == 0 && (chosen = cdb_ip_argmax_for((cdb_ip_isa)i))) return;
  }
  for (int i = CDB_IP_ISA_COUNT - 1; i >= 0 && !chosen; i--)
    chosen = cdb_ip_argmax_for((cdb_ip_isa)i);
}

cdb_ip_argmax_fn cdb_ip_argmax_best(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, choose);
  return chosen;
}
