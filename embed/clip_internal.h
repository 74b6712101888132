/* clip_internal.h (internal to embed/ and its tests): entry points below the public API. */
#ifndef CLIP_INTERNAL_H
#define CLIP_INTERNAL_H

#include <stdint.h>

#include "embed/clip.h"
#include "embed/config.h"
#include "embed/image.h"

/* n rows of exactly context_length token ids (as clip_tokenize writes them) -> out[n * dim],
 * L2-normalised. Lets tests feed reference ids without the tokenizer. */
int clip_embed_token_ids(clip_model *model, const int32_t *ids, int n, float *out, cdb_error *err);

const clip_config *clip_model_config(const clip_model *model);
const clip_image_spec *clip_model_image_spec(const clip_model *model);

/* clip_video_open with an image spec instead of a model (the fuzz target has no model). */
clip_video *clip_video_open_spec(const clip_image_spec *spec, const char *path,
                                 const clip_video_params *params, cdb_error *err);

/* 1 once the tower's weights are prepared (tests check that text queries leave vision alone). */
int clip_model_text_ready(const clip_model *model);
int clip_model_vision_ready(const clip_model *model);

#endif
