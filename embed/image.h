/* image.h (internal to embed/): libvips image preprocessing to CLIP's input tensor. */
#ifndef CLIP_IMAGE_H
#define CLIP_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "src/err.h"

typedef struct clip_image_spec {
  int resize_shortest;         /* short side is resized to this (224) */
  int crop_height, crop_width; /* centre crop (224 x 224); the network needs a square */
  float mean[3], std[3];       /* per channel, applied after scaling to [0, 1] */
  int64_t max_pixels;          /* decoded width*height above this is refused */
} clip_image_spec;

/* Output: out[3 * crop_height * crop_width], channel-major (C x H x W). Thread-safe. */
int clip_image_preprocess_file(const clip_image_spec *spec, const char *path, float *out,
                               cdb_error *err);
int clip_image_preprocess_buffer(const clip_image_spec *spec, const void *buf, size_t len,
                                 float *out, cdb_error *err);

/* The same from decoded pixels: rgb is w x h HWC RGB (8-bit); resized (Pillow's bicubic, the
 * identity when already at the resized size), cropped and normalised as a decoded image is. */
int clip_image_preprocess_rgb(const clip_image_spec *spec, const uint8_t *rgb, int w, int h,
                              float *out, cdb_error *err);
/* The size w x h is resized to before the crop (short side = resize_shortest); 0 x 0 when the
 * aspect ratio is too extreme. */
void clip_image_resized_dims(const clip_image_spec *spec, int w, int h, int *out_w, int *out_h);

/* Overrides CLIPDB_RESIZE for this process (1 = exact, 0 = fast): for tests comparing the two
 * modes on one input; not while another thread is preprocessing. */
void clip_image_set_exact_resize(int exact);

#endif
