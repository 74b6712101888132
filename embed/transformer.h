/* transformer.h (internal to embed/): the forward pass of CLIP's two towers on float32 weights.
 *
 * Activations are row-major [tokens, width]; a batch is packed as consecutive sequences, so many
 * images (or texts of different lengths) share each GEMM. Work is split over the process pool
 * (src/pool.h). GEMMs go to OpenBLAS (single-threaded per pool thread) or to the own SIMD
 * kernels in kernels/, chosen per shape (see clip_gemm_mode). */
#ifndef CLIP_TRANSFORMER_H
#define CLIP_TRANSFORMER_H

#include <stdint.h>

#include "embed/config.h"
#include "embed/safetensors.h"
#include "src/err.h"

/* Linear weights come row-major [out, in] (as stored) or packed (kernels.h, CLIP_PANEL), as
 * float32 or, from an F16 checkpoint, as half floats; a layer uses packed ones when set. */
typedef struct clip_packed {
  const void *data; /* NULL: not packed */
  int f16;
  int bf16; /* bf16 panels for the bf16 GEMM (kernels.h) */
  int int8; /* int8 panels, scales and sums for the int8 GEMM (kernels.h) */
} clip_packed;

typedef struct clip_layer_weights {
  const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
  const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b; /* [width, width] */
  const float *fc1_w, *fc1_b;                                 /* [intermediate, width] */
  const float *fc2_w, *fc2_b;                                 /* [width, intermediate] */
  clip_packed qkv_p; /* [3 * width, width]: q, k, v stacked */
  const float *qkv_b;
  clip_packed o_p, fc1_p, fc2_p;
} clip_layer_weights;

typedef struct clip_vision_weights {
  const float *class_emb; /* [width] */
  const float *patch_w;   /* [width, channels * patch * patch] (conv without bias) */
  const float *pos_emb;   /* [patches + 1, width] */
  const float *pre_ln_w, *pre_ln_b, *post_ln_w, *post_ln_b;
  const float *proj; /* [projection, width], no bias */
  clip_packed patch_p, proj_p;
  clip_layer_weights *layers;
} clip_vision_weights;

typedef struct clip_text_weights {
  const st_tensor *tok_emb; /* [vocab, width], any float dtype: rows converted on lookup */
  const float *pos_emb;     /* [context, width] */
  const float *final_ln_w, *final_ln_b;
  const float *proj; /* [projection, width], no bias */
  clip_layer_weights *layers;
} clip_text_weights;

/* Which GEMM runs. AUTO/OWN: packed weights and the own micro-kernels for the vision tower, the
 * own dot-product kernels for the (bandwidth-bound, few-row) text tower. BLAS: OpenBLAS sgemm
 * everywhere, one thread per pool task (a tower prepared in this mode keeps row-major weights).
 * CLIPDB_GEMM=blas|own|auto sets it before the first use (benchmarks). */
typedef enum clip_gemm_mode { CLIP_GEMM_AUTO, CLIP_GEMM_BLAS, CLIP_GEMM_OWN } clip_gemm_mode;
void clip_set_gemm_mode(clip_gemm_mode mode);
clip_gemm_mode clip_get_gemm_mode(void);

/* n images of pixels[n, channels, size, size] -> out[n, projection] (not normalised). */
int clip_vision_forward(const clip_config *cfg, const clip_vision_weights *w, const float *pixels,
                        int n, float *out, cdb_error *err);

/* n rows of context_length ids -> out[n, projection] (not normalised). Each text runs only up to
 * its first <|endoftext|> (causal attention makes later positions irrelevant) and is pooled
 * there. */
int clip_text_forward(const clip_config *cfg, const clip_text_weights *w, const int32_t *ids, int n,
                      float *out, cdb_error *err);

/* Tests: make every per-thread scratch allocation fail (1) or not (0), as out of memory does. */
void clip_transformer_fail_scratch(int fail);

#endif
