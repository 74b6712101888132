/* ipkernel.c: nearest centroid by inner product (ipkernel.h), blocked like a GEMM.
 *
 * The plain C kernel computes 4 x 4 dot products per pass over the dimensions; the SIMD ones
 * are GEMM micro-kernels over packed centroid panels (see pack_panels). The running best is
 * kept per row. The SIMD variants are compiled with target attributes in this one file and
 * chosen at run time; at 16k x 1024 x 512 one core of this AVX-512 machine does ~30 GFLOPS
 * (OpenBLAS's sgemm 30-50 under the same load). */
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
#define DIM_BLOCK 128

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
/* The SIMD kernels work like a GEMM micro-kernel: centroids packed in panels of P (P values of
 * one dimension side by side), each x value broadcast against a panel row, so an R x P block of
 * dot products accumulates in registers with no horizontal sums. */
static float *pack_panels(const float *c, int k, int d, int P) {
  int np = (k + P - 1) / P;
  float *p = aligned_alloc(64, (size_t)np * (size_t)P * (size_t)d * sizeof *p);
  if (!p) return NULL;
  for (int b = 0; b < np; b++)
    for (int t = 0; t < d; t++)
      for (int j = 0; j < P; j++) {
        int cj = b * P + j;
        p[((size_t)b * d + t) * P + j] = cj < k ? c[(size_t)cj * d + t] : 0.0f;
      }
  return p;
}

/* Folds an R x P block of dots (rows i.., centroids j0..) into the running best. */
static void keep_best(const float *out, int R, int P, int64_t i, int64_t n, int j0, int k,
                      int32_t *arg, float *best) {
  for (int r = 0; r < R && i + r < n; r++)
    for (int q = 0; q < P && j0 + q < k; q++)
      if (out[r * P + q] > best[i + r]) {
        best[i + r] = out[r * P + q];
        arg[i + r] = j0 + q;
      }
}

#define R512 8
#define P512 32
__attribute__((target("avx512f,fma"))) static void block_avx512(const float *const *x,
                                                                const float *panel, int t0,
                                                                int t1, float *out) {
  __m512 a[R512][2];
  for (int r = 0; r < R512; r++) {
    a[r][0] = _mm512_loadu_ps(out + r * P512);
    a[r][1] = _mm512_loadu_ps(out + r * P512 + 16);
  }
  for (int t = t0; t < t1; t++) {
    __m512 c0 = _mm512_load_ps(panel + (size_t)t * P512);
    __m512 c1 = _mm512_load_ps(panel + (size_t)t * P512 + 16);
    for (int r = 0; r < R512; r++) {
      __m512 v = _mm512_set1_ps(x[r][t]);
      a[r][0] = _mm512_fmadd_ps(v, c0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(v, c1, a[r][1]);
    }
  }
  for (int r = 0; r < R512; r++) {
    _mm512_storeu_ps(out + r * P512, a[r][0]);
    _mm512_storeu_ps(out + r * P512 + 16, a[r][1]);
  }
}

#define R256 4
#define P256 16
__attribute__((target("avx2,fma"))) static void block_avx2(const float *const *x,
                                                           const float *panel, int t0, int t1,
                                                           float *out) {
  __m256 a[R256][2];
  for (int r = 0; r < R256; r++) {
    a[r][0] = _mm256_loadu_ps(out + r * P256);
    a[r][1] = _mm256_loadu_ps(out + r * P256 + 8);
  }
  for (int t = t0; t < t1; t++) {
    __m256 c0 = _mm256_load_ps(panel + (size_t)t * P256);
    __m256 c1 = _mm256_load_ps(panel + (size_t)t * P256 + 8);
    for (int r = 0; r < R256; r++) {
      __m256 v = _mm256_broadcast_ss(x[r] + t);
      a[r][0] = _mm256_fmadd_ps(v, c0, a[r][0]);
      a[r][1] = _mm256_fmadd_ps(v, c1, a[r][1]);
    }
  }
  for (int r = 0; r < R256; r++) {
    _mm256_storeu_ps(out + r * P256, a[r][0]);
    _mm256_storeu_ps(out + r * P256 + 8, a[r][1]);
  }
}

/* out (R x P) += the dots of x[r][t0..t1) with the panel's dimensions t0..t1. */
typedef void (*block_fn)(const float *const *x, const float *panel, int t0, int t1, float *out);

/* Rows in blocks of ROW_BLOCK against every panel; falls back to the generic kernel when the
 * panels cannot be allocated. Returns 0, or -1 when it did nothing. */
static int argmax_panels(const float *x, int64_t n, const float *c, int k, int d, int32_t *arg,
                         float *best, int R, int P, block_fn block) {
  float *panels = pack_panels(c, k, d, P);
  if (!panels) return -1;
  int np = (k + P - 1) / P;
  float *out = malloc((size_t)ROW_BLOCK * (size_t)P * sizeof *out);
  if (!out) {
    free(panels);
    return -1;
  }
  for (int64_t i = 0; i < n; i++) {
    best[i] = -INFINITY;
    arg[i] = 0;
  }
  for (int64_t i0 = 0; i0 < n; i0 += ROW_BLOCK) {
    int64_t i1 = i0 + ROW_BLOCK < n ? i0 + ROW_BLOCK : n;
    for (int b = 0; b < np; b++) {
      memset(out, 0, (size_t)ROW_BLOCK * (size_t)P * sizeof *out);
      /* A DIM_BLOCK slice of the panel stays in L1 while every row group of the block uses it. */
      for (int t0 = 0; t0 < d; t0 += DIM_BLOCK) {
        int t1 = t0 + DIM_BLOCK < d ? t0 + DIM_BLOCK : d;
        for (int64_t i = i0; i < i1; i += R) {
          const float *xr[R512];
          for (int r = 0; r < R; r++) xr[r] = x + (size_t)(i + r < n ? i + r : n - 1) * (size_t)d;
          block(xr, panels + (size_t)b * P * d, t0, t1, out + (i - i0) * P);
        }
      }
      for (int64_t i = i0; i < i1; i += R)
        keep_best(out + (i - i0) * P, R, P, i, i1, b * P, k, arg, best);
    }
  }
  free(out);
  free(panels);
  return 0;
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
  if (argmax_panels(x, n, c, k, d, arg, best, R256, P256, block_avx2) < 0)
    argmax_generic(x, n, c, k, d, arg, best);
}

static void argmax_avx512(const float *x, int64_t n, const float *c, int k, int d, int32_t *arg,
                          float *best) {
  if (argmax_panels(x, n, c, k, d, arg, best, R512, P512, block_avx512) < 0)
    argmax_generic(x, n, c, k, d, arg, best);
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
static cdb_ip_isa chosen_isa;

static void choose(void) {
  const char *force = getenv("CLIPDB_ISA");
  if (force) {
    static const char *const names[CDB_IP_ISA_COUNT] = {"generic", "avx2", "avx512"};
    for (int i = 0; i < CDB_IP_ISA_COUNT; i++)
      if (strcmp(force, names[i]) == 0 && (chosen = cdb_ip_argmax_for((cdb_ip_isa)i))) {
        chosen_isa = (cdb_ip_isa)i;
        return;
      }
  }
  for (int i = CDB_IP_ISA_COUNT - 1; i >= 0 && !chosen; i--)
    if ((chosen = cdb_ip_argmax_for((cdb_ip_isa)i))) chosen_isa = (cdb_ip_isa)i;
}

cdb_ip_argmax_fn cdb_ip_argmax_best(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, choose);
  return chosen;
}

cdb_ip_isa cdb_ip_isa_chosen(void) {
  cdb_ip_argmax_best();
  return chosen_isa;
}
