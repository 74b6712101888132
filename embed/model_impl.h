/* model_impl.h (internal to embed/): the loaded model's state, shared by model.c (the public
 * API) and weights.c (tensor checks and tower preparation). */
#ifndef CLIP_MODEL_IMPL_H
#define CLIP_MODEL_IMPL_H

#include <pthread.h>

#include "embed/clip.h"
#include "embed/config.h"
#include "embed/image.h"
#include "embed/safetensors.h"
#include "embed/tokenizer.h"
#include "embed/transformer.h"

/* A tower's float32 weights: pointers into the mapping (aligned F32) or converted copies. */
typedef struct clip_tower {
  pthread_mutex_t mu;
  int ready;
  float **owned;
  int n_owned, cap_owned;
  clip_layer_weights *layers;
  st_tensor tok_emb_f32; /* text only: a converted copy when the mapped one is misaligned */
  unsigned char *arena;  /* packed weights, one mapping backed by huge pages where possible */
  size_t arena_size, arena_used;
  int round_f16; /* pack float32 weights as half floats (see weights.c) */
  int precision; /* clip_precision of the packed linear layers (see weights.c) */
} clip_tower;

struct clip_model {
  char *dir;
  clip_config cfg;
  clip_params params;
  clip_image_spec spec;
  st_file st;
  float logit_scale;
  char identity[65];
  char legacy_identity[65];
  pthread_mutex_t tok_mu;
  clip_tokenizer *tok;
  clip_tower text, vision;
  clip_text_weights text_w;
  clip_vision_weights vision_w;
};

/* Every tensor both towers need, checked for presence, dtype and shape against the config
 * (no tensor data is read). */
int clip_check_tensors(const clip_model *m, cdb_error *err);

/* Prepare a tower on first use (thread-safe; a failure leaves it unprepared for a retry). */
int clip_ensure_text(clip_model *m, cdb_error *err);
int clip_ensure_vision(clip_model *m, cdb_error *err);
/* The linear layers' precision; f32 is zero, so a tower left unset is float32. */
typedef enum clip_precision {
  CLIP_PRECISION_F32,
  CLIP_PRECISION_BF16,
  CLIP_PRECISION_INT8
} clip_precision;
/* The precision a vision tower prepared now would take (CLIPDB_PRECISION, the CPU). */
int clip_vision_precision_planned(void);
int clip_tower_ready(const clip_tower *tw);
void clip_tower_release(clip_tower *tw);

/* A scalar tensor (logit_scale) as float. */
float clip_read_scalar(const st_tensor *t);

#endif
