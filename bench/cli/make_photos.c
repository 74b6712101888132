/* make_photos.c: writes N synthetic camera-like JPEGs (1 to 12 megapixels, smooth gradients plus
 * sensor-like noise, an EXIF DateTimeOriginal) for the `clipdb index` benchmark.
 *   bench-cli-make-photos OUT_DIR [N=48] [SEED=1] */
#include <stdio.h>
#include <stdlib.h>
#include <vips/vips.h>

/* 4:3 frames from 1 MP (1152x864) to 12 MP (4000x3000). */
static const int SIZES[][2] = {{1152, 864}, {2048, 1536}, {2592, 1944}, {3264, 2448}, {4000, 3000}};

static int make_one(const char *dir, int i, unsigned seed) {
  int w = SIZES[(i + seed) % 5][0], h = SIZES[(i + seed) % 5][1];
  VipsImage *base = vips_image_new(),
            **t = (VipsImage **)vips_object_local_array(VIPS_OBJECT(base), 8);
  double tint[3] = {40.0 + (i * 37) % 120, 60.0 + (i * 53) % 120, 50.0 + (i * 71) % 120};
  double one[3] = {1, 1, 1};
  /* a diagonal gradient, coloured per photo, plus Gaussian noise (so JPEG sizes are realistic) */
  if (vips_xyz(&t[0], w, h, NULL) || vips_extract_band(t[0], &t[1], 0, "n", 1, NULL) ||
      vips_linear1(t[1], &t[2], 100.0 / w, 0, NULL) ||
      vips_bandjoin_const(t[2], &t[3], (double[]){0, 0}, 2, NULL) ||
      vips_linear(t[3], &t[4], one, tint, 3, NULL) ||
      vips_gaussnoise(&t[5], w, h, "sigma", 12.0, "mean", 0.0, NULL) ||
      vips_add(t[4], t[5], &t[6], NULL) ||
      vips_cast(t[6], &t[7], VIPS_FORMAT_UCHAR, "shift", FALSE, NULL)) {
    g_object_unref(base);
    return -1;
  }
  VipsImage *out = vips_image_copy_memory(t[7]);
  if (!out) {
    g_object_unref(base);
    return -1;
  }
  out->Type = VIPS_INTERPRETATION_sRGB;
  char date[32], path[4096];
  snprintf(date, sizeof date, "20%02d:%02d:%02d 12:00:00", 10 + i % 14, 1 + i % 12, 1 + i % 28);
  vips_image_set_string(out, "exif-ifd2-DateTimeOriginal", date);
  snprintf(path, sizeof path, "%s/photo-%04d.jpg", dir, i);
  int rc = vips_jpegsave(out, path, "Q", 90, NULL);
  g_object_unref(out);
  g_object_unref(base);
  return rc;
}

int main(int argc, char **argv) {
  if (VIPS_INIT(argv[0]) || argc < 2) {
    fprintf(stderr, "usage: %s OUT_DIR [N] [SEED]\n", argv[0]);
    return 2;
  }
  int n = argc > 2 ? atoi(argv[2]) : 48;
  unsigned seed = argc > 3 ? (unsigned)atoi(argv[3]) : 1;
  for (int i = 0; i < n; i++) {
    if (make_one(argv[1], i, seed) != 0) {
      fprintf(stderr, "make_photos: %s\n", vips_error_buffer());
      return 1;
    }
  }
  vips_shutdown();
  return 0;
}
