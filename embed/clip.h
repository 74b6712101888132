/* clip.h: the CLIP encoder's public API (the only header other folders include from embed/).
 *
 * Loads a Hugging Face CLIPModel directory (config.json, model.safetensors, vocab.json,
 * merges.txt, preprocessor_config.json) and turns texts and images into L2-normalised float32
 * vectors of clip_model_dim() floats. Weights are memory-mapped; each tower is prepared on its
 * first use, so a text query never touches the vision weights.
 *
 * Thread-safety: a loaded model is immutable from the caller's view; any number of threads may
 * embed with one model at once. Functions return 0 on success and -1 with `err` filled. */
#ifndef CLIP_H
#define CLIP_H

#include <stddef.h>
#include <stdint.h>

#include "src/err.h"

typedef struct clip_model clip_model;

typedef struct clip_params {
  int64_t max_image_pixels; /* decoded width*height above this is refused (bomb guard) */
} clip_params;

/* max_image_pixels = 100 megapixels, or CLIPDB_MAX_IMAGE_PIXELS when set. */
clip_params clip_default_params(void);

/* params may be NULL for the defaults. Returns NULL with err filled on failure. */
clip_model *clip_model_load(const char *dir, const clip_params *params, cdb_error *err);
void clip_model_free(clip_model *model);

/* Stops OpenBLAS's worker threads, which its library constructor starts and which then poll
 * (sched_yield) for ~0.1 s, taking a core from a short-lived process's first query or first
 * batch (the encoder runs on its own pool). OpenBLAS restarts them if a later call wants them.
 * Only for a program that owns its threads (the CLI, benchmarks): no other thread may be
 * inside OpenBLAS during the call. A no-op without OpenBLAS. */
void clip_release_blas_threads(void);

/* libvips is started on the first image decode (loading its modules costs 50-120 ms, which a
 * text query need not pay), with its untrusted loaders blocked and its warnings dropped. A
 * program that calls libvips itself starts it the same way first: 0 on success. */
int clip_vips_start(void);
/* Shuts libvips down at exit if it was started (after every thread using it has ended). */
void clip_vips_stop(void);

int clip_model_dim(const clip_model *model); /* projection dim (512 for ViT-B/32) */
/* The vision tower's linear-layer precision, "f32", "bf16" (CLIPDB_PRECISION=bf16 on a CPU with
 * AVX512-BF16) or "int8" (CLIPDB_PRECISION=int8); before the tower is prepared (the first
 * image), the one it would take. */
const char *clip_model_precision(const clip_model *model);
int clip_model_image_size(const clip_model *model);     /* input side in pixels (224) */
int clip_model_context_length(const clip_model *model); /* 77 */
float clip_model_logit_scale(const clip_model *model);  /* stored log-space value */
/* Stable identity, changed by any change to the config or the weights: hex SHA-256 of
 * config.json plus the SHA-256 of model.safetensors (64 chars + NUL). */
const char *clip_model_identity(const clip_model *model);
/* The identity earlier versions computed (config.json plus the safetensors header only, blind to
 * the weights' values), for recognising tables that store it. */
const char *clip_model_legacy_identity(const clip_model *model);

/* Token ids for text: SOT, BPE tokens, EOT, zero padding; exactly context_length ids are
 * written to ids. Returns the count of real tokens (SOT..EOT inclusive), or -1. */
int clip_tokenize(const clip_model *model, const char *text, size_t len, int32_t *ids,
                  cdb_error *err);

/* n texts (NUL-terminated UTF-8) -> out[n * dim]. */
int clip_embed_texts(clip_model *model, const char *const *texts, int n, float *out,
                     cdb_error *err);

/* Preprocessing alone: decode, orient, convert to sRGB, resize, crop, normalise into
 * pixels[3 * size * size] (C x H x W). */
int clip_image_load_file(const clip_model *model, const char *path, float *pixels, cdb_error *err);
int clip_image_load_buffer(const clip_model *model, const void *buf, size_t len, float *pixels,
                           cdb_error *err);
/* A file path, or an http(s) URL fetched within src/fetch.h's default limits. */
int clip_image_load_source(const clip_model *model, const char *path_or_url, float *pixels,
                           cdb_error *err);

/* n preprocessed images (n * 3 * size * size floats) -> out[n * dim]. */
int clip_embed_pixels(clip_model *model, const float *pixels, int n, float *out, cdb_error *err);

/* Convenience: load + embed. A failing image fails the call; the message names it. */
int clip_embed_image_files(clip_model *model, const char *const *paths, int n, float *out,
                           cdb_error *err);
int clip_embed_image_buffers(clip_model *model, const void *const *bufs, const size_t *lens, int n,
                             float *out, cdb_error *err);
/* One image from a file path or http(s) URL (clip_image_load_source) -> out[dim]. */
int clip_embed_image_source(clip_model *model, const char *path_or_url, float *out, cdb_error *err);

/* ---- videos (FFmpeg's libavformat / libavcodec / libswscale, in-process) ---- */

typedef struct clip_video clip_video;

typedef struct clip_video_params {
  double interval;            /* seconds between samples (2) */
  int max_samples;            /* per video; a longer video samples more sparsely (1800) */
  double max_seconds;         /* wall-clock budget per file (600 s) */
  int64_t max_decoded_frames; /* decoded-frame budget per file (2,000,000) */
  int64_t max_pixels;         /* frame width*height above this is refused (as for images) */
} clip_video_params;

/* The defaults above; CLIPDB_VIDEO_MAX_SAMPLES, CLIPDB_VIDEO_MAX_SECONDS,
 * CLIPDB_VIDEO_MAX_FRAMES and CLIPDB_MAX_IMAGE_PIXELS override them. */
clip_video_params clip_video_default_params(void);

/* A sampled frame: t in seconds from the start; rgb is width x height HWC RGB24 at the size
 * images are resized to before the centre crop, valid until the next call. */
typedef struct clip_video_frame {
  double t;
  int width, height;
  const uint8_t *rgb;
} clip_video_frame;

/* Opens a video file for sampling (model gives the input size). NULL with err filled. */
clip_video *clip_video_open(const clip_model *model, const char *path,
                            const clip_video_params *params, cdb_error *err);
/* 1 with *frame filled, 0 at the end, -1 on an error (a file that yields no frame at all is an
 * error). */
int clip_video_next(clip_video *video, clip_video_frame *frame, cdb_error *err);
double clip_video_duration(const clip_video *video); /* seconds, 0 when unknown */
/* The frames' size as decoded (before any resizing). */
void clip_video_source_size(const clip_video *video, int *width, int *height);
void clip_video_close(clip_video *video);

/* A frame -> pixels[3 * size * size], preprocessed exactly as an image of the same pixels. */
int clip_video_frame_pixels(const clip_model *model, const clip_video_frame *frame, float *pixels,
                            cdb_error *err);
/* A frame as PNG bytes (lossless: embedding them gives the frame's embedding); free with g_free. */
int clip_video_frame_png(const clip_video_frame *frame, void **buf, size_t *len, cdb_error *err);

typedef struct clip_video_stats {
  int sampled, embedded, kept;
  int64_t decoded;
  double duration;
} clip_video_stats;

/* Receives each kept frame: its time and embedding (dim floats); -1 (err filled) stops. */
typedef int (*clip_video_sink)(void *ctx, double t, const float *embedding, cdb_error *err);

/* Samples, embeds in batches, and passes on a frame only when its cosine similarity to the last
 * kept frame is below max_similarity (a scene change; the first frame is always kept). */
int clip_video_embed(clip_model *model, const char *path, const clip_video_params *params,
                     float max_similarity, clip_video_sink sink, void *ctx, clip_video_stats *stats,
                     cdb_error *err);

#endif
