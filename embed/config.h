/* config.h (internal to embed/): the Hugging Face CLIPModel config.json and
 * preprocessor_config.json, read with defaults from transformers' CLIPConfig and bounds
 * checked so that absurd sizes are refused before any allocation. */
#ifndef CLIP_CONFIG_H
#define CLIP_CONFIG_H

#include <stdint.h>

#include "embed/image.h"
#include "src/err.h"

typedef enum clip_act { CLIP_ACT_QUICK_GELU, CLIP_ACT_GELU } clip_act;

typedef struct clip_tower_config {
  int hidden, intermediate, heads, layers;
  float ln_eps;
  clip_act act;
} clip_tower_config;

typedef struct clip_config {
  clip_tower_config text, vision;
  int projection_dim;
  int vocab_size, context_length;           /* text */
  int image_size, patch_size, num_channels; /* vision */
} clip_config;

int clip_config_load(const char *path, clip_config *cfg, cdb_error *err);

/* Fills spec (resize, crop, mean/std) from preprocessor_config.json; the crop must be the
 * vision tower's image_size. max_pixels is left to the caller. */
int clip_preprocess_config_load(const char *path, int image_size, clip_image_spec *spec,
                                cdb_error *err);

#endif
