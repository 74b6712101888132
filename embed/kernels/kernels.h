/* kernels.h (internal to embed/): the encoder's numeric kernels, one table per instruction set.
 *
 * Every variant computes the same thing as the plain C one (tests/embed/test_kernels.c checks
 * each against it on random inputs). The best variant the CPU supports is picked once at run
 * time (__builtin_cpu_supports); CLIPDB_ISA=generic|avx2|avx512 forces one. Weights reach the
 * GEMMs as float32 or half-float panels, or as bf16 (bf16.c) or int8 (int8.c) panels for their
 * own GEMMs; activations between layers stay float32. */
#ifndef CLIP_KERNELS_H
#define CLIP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Packed weights for the compute-bound GEMMs: W [N, K] is stored as ceil(N / 32) panels of
 * [K][32] floats (columns past N zero), so a micro-kernel streams one panel contiguously. The
 * layout is the same for every variant; packing happens once, when a tower is prepared. */
#define CLIP_PANEL 32
size_t clip_packed_floats(int N, int K); /* element count, either element type */
void clip_pack_weights(const float *W, int N, int K, float *dst);
/* The same layout holding IEEE half floats (an F16 checkpoint kept at half the memory and
 * bandwidth; widened to float32 in the micro-kernel, so results equal the F32 path's). */
void clip_pack_weights_f16(const uint16_t *W, int N, int K, uint16_t *dst);
/* Float32 weights rounded to half floats while packing (the text tower's default: it halves the
 * bytes a query streams; see weights.c). Returns 1 when some value became infinite or NaN (out
 * of half range, e.g. from a BF16 checkpoint): the caller then packs float32 instead. */
int clip_pack_weights_f32_to_f16(const float *W, int N, int K, uint16_t *dst);
/* Scratch (floats) one gemm_packed call needs for its packed activation rows. */
size_t clip_gemm_scratch_floats(int K);

/* Where a packed GEMM puts its result and what it applies on the way out: C (+)= A W^T, then
 * + bias[n], then the activation. Fusing the last two into the tile store saves a pass over C
 * (the MLP's widest matrix) per layer. */
typedef enum clip_epi_act { CLIP_EPI_NONE, CLIP_EPI_QUICK_GELU, CLIP_EPI_GELU } clip_epi_act;
typedef struct clip_gemm_out {
  float *C;
  int ldc;
  int accumulate;
  const float *bias; /* [N] or NULL */
  clip_epi_act act;
} clip_gemm_out;

typedef enum clip_isa { CLIP_ISA_GENERIC, CLIP_ISA_AVX2, CLIP_ISA_AVX512, CLIP_ISA_COUNT } clip_isa;

typedef struct clip_kernels {
  const char *name;
  float (*dot)(const float *a, const float *b, int n);
  void (*axpy)(float a, const float *x, float *y, int n); /* y += a * x */
  void (*layernorm)(const float *x, const float *gamma, const float *beta, float *y, int n,
                    float eps);
  void (*softmax)(float *x, int n);             /* in place */
  void (*add)(float *y, const float *x, int n); /* y += x */
  void (*quick_gelu)(float *x, int n);          /* x * sigmoid(1.702 x) */
  void (*gelu)(float *x, int n);                /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
  void (*f16_to_f32)(const uint16_t *src, float *dst, size_t n);
  void (*bf16_to_f32)(const uint16_t *src, float *dst, size_t n);
  /* float32 -> IEEE half, round to nearest even (overflow to infinity), as F16C does. */
  void (*f32_to_f16)(const float *src, uint16_t *dst, size_t n);
  /* C[m, n] (+)= sum_k A[m, k] * W[n, k]: activations times a row-major [out, in] weight,
   * which is how checkpoints store linear layers. Row strides lda, ldw, ldc. */
  void (*gemm_nt)(int M, int N, int K, const float *A, int lda, const float *W, int ldw, float *C,
                  int ldc, int accumulate);
  /* C[m, n] = sum_k A[m, k] * B[k, n], both row-major (attention: scores = Q K^T with K
   * transposed first, and P V); small shapes, N up to a few hundred. */
  void (*gemm_nn)(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                  int ldc);
  /* out->C[M, panel columns p0*32 .. min(p1*32, N)) (+)= A[M, K] W^T with W packed as above,
   * then out's bias and activation on those columns. */
  void (*gemm_packed)(int M, int N, int K, const float *A, int lda, const float *Wp, int p0, int p1,
                      const clip_gemm_out *out, float *scratch);
  void (*gemm_packed_f16)(int M, int N, int K, const float *A, int lda, const uint16_t *Wp, int p0,
                          int p1, const clip_gemm_out *out, float *scratch);
  /* One whole panel: 32 rows of W (row stride K) packed as [K][32], as float32 or rounded to
   * half floats (returns 1 when a value left the half range). NULL: the portable loops. */
  void (*pack_panel)(const float *W, int K, float *dst);
  int (*pack_panel_f16)(const float *W, int K, uint16_t *dst);
} clip_kernels;

/* ---- blocking shared by the SIMD packed GEMMs (avx2.c, avx512.c) ---- */

/* The tile height among heights[0..n) that pads M rows the least; earlier (taller) ones win
 * ties: more accumulators per weight load. */
static inline int clip_tile_rows(int M, const int *heights, int n) {
  int best = heights[0], best_pad = (M + best - 1) / best * best - M;
  for (int i = 1; i < n; i++) {
    int pad = (M + heights[i] - 1) / heights[i] * heights[i] - M;
    if (pad < best_pad) best = heights[i], best_pad = pad;
  }
  return best;
}

/* The K slice of packed weights (kc deep, elements of esize bytes) that follows (panel p, k0) in
 * the loop order: the next slice of the panel within the slab [s0, s0 + ks), else the slab's
 * first slice of the next panel; NULL after the last. */
static inline const char *clip_next_slice(const char *Wp, size_t esize, int K, int p, int p1,
                                          int k0, int kc, int s0, int ks) {
  size_t panel_bytes = (size_t)CLIP_PANEL * K * esize, step = (size_t)CLIP_PANEL * esize;
  if (k0 + kc < s0 + ks) return Wp + p * panel_bytes + (size_t)(k0 + kc) * step;
  if (p + 1 < p1) return Wp + (p + 1) * panel_bytes + (size_t)s0 * step;
  return NULL;
}

/* Row tile t of nt fetches its share of the next slice into L2 while it works: start offset and
 * bytes per step of k, in 16.16 fixed point, so that together the tiles cover the slice and
 * the requests to memory are spread over the whole slice's time. */
static inline uint64_t clip_prefetch_step(size_t esize, int nt) {
  return ((uint64_t)CLIP_PANEL * esize << 16) / (uint64_t)nt;
}

/* Steps k0..K-1 of one 32-row panel (the part the SIMD packers' register blocks leave), as
 * float32 or rounded to half floats; returns 1 when a rounded value overflowed or was NaN. */
int clip_pack_panel_tail(const float *W, int K, int k0, void *dst, int f16);

/* Bias and activation on out->C's rows [0, M), columns [c0, c1), with k's vector kernels (the
 * variants that do not fuse them into the tile store). */
void clip_gemm_epilogue(const clip_kernels *k, const clip_gemm_out *out, int M, int c0, int c1);

/* The plain C gemm_nn (the variants without their own). */
void clip_gemm_nn_c(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                    int ldc);

int clip_isa_supported(clip_isa isa);
/* NULL when the CPU lacks the instruction set. */
const clip_kernels *clip_kernels_for(clip_isa isa);
const clip_kernels *clip_kernels_best(void);

extern const clip_kernels clip_kernels_generic;
extern const clip_kernels clip_kernels_avx2;
extern const clip_kernels clip_kernels_avx512;

/* ---- bf16 GEMM (bf16.c) ----
 * W [N, K] rounded to bfloat16 in panels of [ceil(K/2)][32][2] (two k per 32-bit lane, as
 * vdpbf16ps reads them); activations are rounded to bf16 on the fly into scratch
 * (clip_gemm_bf16_scratch(M, K) words); products are summed in float32. */
size_t clip_packed_bf16_elems(int N, int K);
size_t clip_gemm_bf16_scratch(int M, int K);
void clip_pack_weights_bf16(const float *W, int N, int K, uint16_t *dst);
typedef void (*clip_gemm_bf16_fn)(int M, int N, int K, const float *A, int lda, const uint16_t *Wp,
                                  int p0, int p1, const clip_gemm_out *out, uint32_t *scratch);
/* The plain C reference (the same arithmetic, in the same order); with scratch NULL it rounds
 * A as it reads it and needs no memory. */
extern const clip_gemm_bf16_fn clip_gemm_bf16_ref;
/* The AVX512-BF16 kernel, or NULL when the CPU lacks AVX512-BF16. */
clip_gemm_bf16_fn clip_gemm_bf16_native(void);

/* ---- int8 GEMM (int8.c) ----
 * W [N, K] quantized to int8 per output channel (symmetric, scale max|w| / 127), in panels of
 * [ceil(K/4)][32][4] (four k per 32-bit lane, as vpdpbusd reads them), followed by the
 * channels' float scales and int32 weight sums (clip_packed_int8_bytes(N, K) bytes). Each call
 * quantizes its rows of A to u8 with a per-row scale and zero point into scratch
 * (clip_gemm_int8_scratch(M, K) bytes); products are summed exactly in int32 (K <= 32768), the
 * result dequantized in float32. */
size_t clip_packed_int8_bytes(int N, int K);
size_t clip_gemm_int8_scratch(int M, int K);
void clip_pack_weights_int8(const float *W, int N, int K, void *dst);
/* Only panels [p0, p1) of that layout (with their scales and sums): threads share the packing. */
void clip_pack_weights_int8_panels(const float *W, int N, int K, int p0, int p1, void *dst);
typedef void (*clip_gemm_int8_fn)(int M, int N, int K, const float *A, int lda, const void *Wp,
                                  int p0, int p1, const clip_gemm_out *out, void *scratch);
typedef struct clip_int8_kernel {
  const char *name;
  /* Rows of A into scratch as the GEMM reads them (every variant writes the same bytes). */
  void (*quantize_rows)(int M, int K, const float *A, int lda, void *scratch);
  /* scratch NULL: only the C reference accepts it (it then quantizes as it reads). */
  clip_gemm_int8_fn gemm;
} clip_int8_kernel;
typedef enum clip_int8_variant {
  CLIP_INT8_C,          /* the plain C reference */
  CLIP_INT8_AVX512VNNI, /* zmm vpdpbusd */
  CLIP_INT8_AVXVNNI,    /* ymm vpdpbusd, VEX (AVX2 machines with AVX-VNNI) */
  CLIP_INT8_YMM_EVEX,   /* the same ymm code as AVX512-VNNI's EVEX form (tests it here) */
  CLIP_INT8_COUNT
} clip_int8_variant;
/* NULL when the CPU lacks the variant's instructions. */
const clip_int8_kernel *clip_int8_kernel_for(clip_int8_variant v);
/* The widest the CPU and CLIPDB_ISA allow; never NULL (the C reference at worst). */
const clip_int8_kernel *clip_int8_kernel_best(void);

#endif
