/* test_image.c: image preprocessing against the reference's pixels and embeddings in
 * goldens.json, the bad-file fixtures, EXIF orientation, alpha/grey/palette/16-bit/CMYK
 * inputs (variants written with libvips in the test), and file vs buffer equality. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vips/vips.h>

#include "embed/clip.h"
#include "embed/image.h"
#include "src/json.h"

#define SIZE 64
#define NPIX (3 * SIZE * SIZE)

/* preprocessor_config.json of clip-tiny-shapes (the CLIP mean/std). */
static const clip_image_spec spec = {SIZE,
                                     SIZE,
                                     SIZE,
                                     {0.48145466f, 0.4578275f, 0.40821073f},
                                     {0.26862954f, 0.26130258f, 0.27577711f},
                                     100000000};

static char *data_path(const char *rel) {
  const char *d = getenv("CLIPDB_TEST_DATA");
  return g_strdup_printf("%s/%s", d ? d : "tests/data", rel);
}

static char *demo_path(const char *name) {
  const char *d = getenv("CLIPDB_TEST_DATA");
  return g_strdup_printf("%s/../../examples/shapes/%s", d ? d : "tests/data", name);
}

static void init_vips(void) { cr_assert_eq(VIPS_INIT("test_image"), 0); }

static float *preprocess_file(const char *path) {
  float *px = malloc(sizeof(float) * NPIX);
  cdb_error err = {{0}};
  cr_assert_eq(clip_image_preprocess_file(&spec, path, px, &err), 0, "%s: %s", path, err.msg);
  return px;
}

static float *preprocess_buffer(const void *buf, size_t len, const char *what) {
  float *px = malloc(sizeof(float) * NPIX);
  cdb_error err = {{0}};
  cr_assert_eq(clip_image_preprocess_buffer(&spec, buf, len, px, &err), 0, "%s: %s", what, err.msg);
  return px;
}

/* Differences in 8-bit levels (the normalised difference times std * 255). */
typedef struct diff {
  double mean, max;
} diff;

static diff compare(const float *a, const float *b) {
  diff d = {0, 0};
  for (int i = 0; i < NPIX; i++) {
    double v = fabs((double)a[i] - b[i]) * spec.std[i / (SIZE * SIZE)] * 255.0;
    d.mean += v;
    if (v > d.max) d.max = v;
  }
  d.mean /= NPIX;
  return d;
}

/* The 8-bit level of channel c at (x, y). */
static int level(const float *px, int c, int x, int y) {
  float v = px[c * SIZE * SIZE + y * SIZE + x];
  return (int)lround((v * spec.std[c] + spec.mean[c]) * 255.0);
}

static struct json_object *golden_images(struct json_object **root) {
  char *path = data_path("goldens/goldens.json");
  cdb_error err = {{0}};
  *root = cdb_json_load_file(path, 64u << 20, &err);
  cr_assert_not_null(*root, "%s", err.msg);
  g_free(path);
  struct json_object *images;
  cr_assert(json_object_object_get_ex(*root, "images", &images));
  cr_assert_geq(json_object_array_length(images), 16);
  return images;
}

static const char *json_str(struct json_object *o, const char *key) {
  struct json_object *v;
  cr_assert(json_object_object_get_ex(o, key, &v), "no %s", key);
  return json_object_get_string(v);
}

static float *json_floats(struct json_object *o, const char *key, size_t n) {
  struct json_object *v;
  cr_assert(json_object_object_get_ex(o, key, &v), "no %s", key);
  cr_assert_eq(json_object_array_length(v), n);
  float *f = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++)
    f[i] = (float)json_object_get_double(json_object_array_get_idx(v, i));
  return f;
}

static int json_int(struct json_object *o, const char *key) {
  struct json_object *v;
  cr_assert(json_object_object_get_ex(o, key, &v), "no %s", key);
  return json_object_get_int(v);
}

/* Images up to 4 MP are resized with Pillow's exact algorithm; only JPEGs with a short side
 * of at least 4x the target are shrunk on load (by libjpeg's DCT scaling), which costs a
 * fraction of a level. Bounds measured: those four goldens have mean 0.068-0.096 and max
 * 2.0-8.0 levels; all others are bit-exact. */
Test(image, golden_pixels) {
  struct json_object *root, *images = golden_images(&root);
  for (size_t i = 0; i < json_object_array_length(images); i++) {
    struct json_object *item = json_object_array_get_idx(images, i);
    const char *file = json_str(item, "file");
    int w = json_int(item, "width"), h = json_int(item, "height");
    char *rel = g_strdup_printf("goldens/%s", file), *path = data_path(rel);
    float *want = json_floats(item, "pixels", NPIX), *got = preprocess_file(path);
    diff d = compare(got, want);
    cr_log_info("%-40s %4dx%-4d mean %.3f max %.1f levels", file, w, h, d.mean, d.max);
    bool shrunk_on_load = g_str_has_suffix(file, ".jpg") && (w < h ? w : h) >= 4 * SIZE;
    if (shrunk_on_load) {
      cr_expect_leq(d.mean, 0.15, "%s: mean difference %.3f levels", file, d.mean);
      cr_expect_leq(d.max, 10.0, "%s: max difference %.1f levels", file, d.max);
    } else {
      /* exact up to the goldens' 7 printed digits (below 1e-4 of a level) */
      cr_expect_leq(d.max, 1e-3, "%s: should match Pillow exactly, max %.3g levels", file, d.max);
    }
    free(want);
    free(got);
    g_free(rel);
    g_free(path);
  }
  json_object_put(root);
}

static double cosine(const float *a, const float *b, int n) {
  double dot = 0, na = 0, nb = 0;
  for (int i = 0; i < n; i++) {
    dot += (double)a[i] * b[i];
    na += (double)a[i] * a[i];
    nb += (double)b[i] * b[i];
  }
  return dot / sqrt(na * nb);
}

/* Largest element difference between a and b after normalising both. */
static double max_abs_unit_diff(const float *a, const float *b, int n) {
  double na = 0, nb = 0, worst = 0;
  for (int i = 0; i < n; i++) {
    na += (double)a[i] * a[i];
    nb += (double)b[i] * b[i];
  }
  for (int i = 0; i < n; i++) worst = fmax(worst, fabs(a[i] / sqrt(na) - b[i] / sqrt(nb)));
  return worst;
}

/* End to end with the tiny model: our preprocessing + encoder vs the reference embedding. */
Test(image, golden_embeddings) {
  char *dir = data_path("clip-tiny-shapes");
  cdb_error err = {{0}};
  clip_model *model = clip_model_load(dir, NULL, &err);
  cr_assert_not_null(model, "%s", err.msg);
  int dim = clip_model_dim(model);
  struct json_object *root, *images = golden_images(&root);
  for (size_t i = 0; i < json_object_array_length(images); i++) {
    struct json_object *item = json_object_array_get_idx(images, i);
    const char *file = json_str(item, "file");
    char *rel = g_strdup_printf("goldens/%s", file), *path = data_path(rel);
    float *px = preprocess_file(path), *want = json_floats(item, "embedding", (size_t)dim);
    float *got = malloc(sizeof(float) * (size_t)dim);
    cr_assert_eq(clip_embed_pixels(model, px, 1, got, &err), 0, "%s", err.msg);
    double cos = cosine(got, want, dim);
    cr_log_info("%-40s cosine %.6f", file, cos);
    int w = json_int(item, "width"), h = json_int(item, "height");
    const char *resize = getenv("CLIPDB_RESIZE");
    bool exact = resize && strcmp(resize, "exact") == 0;
    if (!exact && g_str_has_suffix(file, ".jpg")) {
      /* the default mode's DCT shrink-on-load: measured worst cosine 0.99989 (a 10x margin) */
      cr_expect_geq(cos, 0.999, "%s: cosine %.6f to the reference embedding", file, cos);
    } else if (g_str_has_suffix(file, ".jpg") && (w < h ? w : h) >= 4 * SIZE) {
      /* shrunk on load: a few levels off (golden_pixels); measured worst cosine 0.99999 */
      cr_expect_geq(cos, 0.9999, "%s: cosine %.6f to the reference embedding", file, cos);
    } else { /* pixel-exact: the encoder's tolerance on normalised embeddings */
      double worst = max_abs_unit_diff(got, want, dim);
      cr_expect_leq(worst, 2e-6, "%s: max-abs diff %.3g to the reference embedding", file, worst);
    }
    free(px);
    free(want);
    free(got);
    g_free(rel);
    g_free(path);
  }
  json_object_put(root);
  clip_model_free(model);
  g_free(dir);
}

static void expect_error(const char *path, const char *needle1, const char *needle2) {
  float px[NPIX];
  cdb_error err = {{0}};
  cr_assert_eq(clip_image_preprocess_file(&spec, path, px, &err), -1, "%s accepted", path);
  cr_expect(strstr(err.msg, path), "message does not name the file: %s", err.msg);
  cr_expect(strstr(err.msg, needle1) && strstr(err.msg, needle2),
            "%s: message \"%s\" lacks \"%s\"/\"%s\"", path, err.msg, needle1, needle2);
  gchar *buf = NULL;
  gsize len = 0;
  cr_assert(g_file_get_contents(path, &buf, &len, NULL));
  cdb_error berr = {{0}};
  cr_assert_eq(clip_image_preprocess_buffer(&spec, buf, len, px, &berr), -1);
  cr_expect(strstr(berr.msg, "image buffer") && strstr(berr.msg, needle1), "buffer message \"%s\"",
            berr.msg);
  g_free(buf);
}

/* Bad files: clear errors naming the input, nothing printed by libvips. */
Test(image, bad_files, .init = cr_redirect_stderr) {
  static const char *const cases[][3] = {
      {"bad/truncated.jpg", "cannot decode", "Premature end"},
      {"bad/not-an-image.jpg", "not an image", ""},
      {"bad/empty.png", "empty", ""},
      {"bad/bomb-100000x100000.png", "100000x100000 pixels, more than the 100000000 allowed",
       "CLIPDB_MAX_IMAGE_PIXELS"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    char *path = data_path(cases[i][0]);
    expect_error(path, cases[i][1], cases[i][2]);
    g_free(path);
  }
  float px[NPIX];
  cdb_error err = {{0}};
  cr_expect_eq(clip_image_preprocess_file(&spec, "/nonexistent/x.png", px, &err), -1);
  cr_expect(strstr(err.msg, "/nonexistent/x.png"), "%s", err.msg);
  cr_expect_eq(clip_image_preprocess_buffer(&spec, "", 0, px, &err), -1);
  fflush(stderr);
  cr_expect_stderr_eq_str("", "libvips wrote to stderr");
}

/* The pixel limit is checked on the header: exactly at the limit passes, one below fails. */
Test(image, pixel_limit) {
  char *path = data_path("goldens/images/05_white_circle_on_black.jpg"); /* 1024x768 */
  clip_image_spec s = spec;
  float px[NPIX];
  cdb_error err = {{0}};
  s.max_pixels = 1024 * 768;
  cr_assert_eq(clip_image_preprocess_file(&s, path, px, &err), 0, "%s", err.msg);
  s.max_pixels = 1024 * 768 - 1;
  cr_assert_eq(clip_image_preprocess_file(&s, path, px, &err), -1);
  cr_assert(strstr(err.msg, "1024x768"), "%s", err.msg);
  g_free(path);
}

Test(image, invalid_spec) {
  char *path = data_path("goldens/images/04_red_square_on_blue.png"); /* 640x480 -> 85x64 */
  clip_image_spec s = spec;
  float px[NPIX];
  cdb_error err = {{0}};
  s.crop_height = SIZE + 1;
  cr_assert_eq(clip_image_preprocess_file(&s, path, px, &err), -1);
  cr_assert(strstr(err.msg, "larger than the resized"), "%s", err.msg);
  s = spec;
  s.resize_shortest = 0;
  cr_assert_eq(clip_image_preprocess_file(&s, path, px, &err), -1);
  g_free(path);
}

static int count_green(const float *px, int y) {
  int n = 0;
  for (int x = 0; x < SIZE; x++)
    if (level(px, 1, x, y) > 120 && level(px, 0, x, y) < 110 && level(px, 2, x, y) < 110) n++;
  return n;
}

/* The demo photo is stored sideways with EXIF orientation 6. The result must equal
 * preprocessing an upright copy made by libvips, and the triangle must point up (it widens
 * downwards), which the raw, unrotated pixels do not. */
Test(image, exif_orientation, .init = init_vips) {
  char *path = demo_path("exif-rotated-green-triangle-on-white.jpg");
  VipsImage *raw = vips_image_new_from_file(path, NULL), *upright = NULL, *unrotated = NULL;
  cr_assert_not_null(raw, "%s", vips_error_buffer());
  cr_assert_eq(vips_image_get_orientation(raw), 6);
  cr_assert_eq(vips_autorot(raw, &upright, NULL), 0);
  cr_assert_eq(vips_copy(raw, &unrotated, NULL), 0);
  vips_image_remove(unrotated, VIPS_META_ORIENTATION);
  void *up_buf, *raw_buf;
  size_t up_len, raw_len;
  cr_assert_eq(vips_image_write_to_buffer(upright, ".png", &up_buf, &up_len, NULL), 0);
  cr_assert_eq(vips_image_write_to_buffer(unrotated, ".png", &raw_buf, &raw_len, NULL), 0);

  float *got = preprocess_file(path), *want = preprocess_buffer(up_buf, up_len, "upright");
  float *sideways = preprocess_buffer(raw_buf, raw_len, "sideways");
  /* The JPEG path is shrunk 2x on load (600x400 vs target 64), the PNG copy is not: measured
   * mean 0.04, max 2 levels. */
  diff d = compare(got, want);
  cr_log_info("EXIF-rotated vs upright copy: mean %.3f max %.1f levels", d.mean, d.max);
  cr_expect(d.mean <= 0.3 && d.max <= 8.0,
            "EXIF-rotated result differs from the upright copy (mean %.2f, max %.2f)", d.mean,
            d.max);
  cr_expect_gt(compare(got, sideways).mean, 5.0, "orientation was not applied");

  int top = -1, bottom = -1;
  for (int y = 0; y < SIZE; y++)
    if (count_green(got, y) > 0) {
      if (top < 0) top = y;
      bottom = y;
    }
  cr_assert(top >= 0 && bottom - top > 10, "no triangle found");
  int upper = count_green(got, top + (bottom - top) / 4);
  int lower = count_green(got, top + 3 * (bottom - top) / 4);
  cr_expect_gt(lower, 2 * upper, "triangle is not upright: widths %d (upper) %d (lower)", upper,
               lower);
  free(got);
  free(want);
  free(sideways);
  g_free(up_buf);
  g_free(raw_buf);
  g_object_unref(raw);
  g_object_unref(upright);
  g_object_unref(unrotated);
  g_free(path);
}

/* Grey+alpha PNG: alpha dropped (as Pillow's convert("RGB")), grey replicated: white circle
 * on black. Palette GIF: yellow star on blue. */
Test(image, grey_alpha_and_palette) {
  char *grey = demo_path("grey-alpha-white-circle-on-black.png");
  float *px = preprocess_file(grey);
  for (int i = 0; i < SIZE * SIZE; i++) {
    int x = i % SIZE, y = i / SIZE;
    cr_assert(level(px, 0, x, y) == level(px, 1, x, y) && level(px, 1, x, y) == level(px, 2, x, y),
              "grey image is not grey at %d,%d", x, y);
  }
  cr_expect_gt(level(px, 0, SIZE / 2, SIZE / 2), 200, "centre should be white");
  cr_expect_lt(level(px, 0, 1, 1), 60, "corner should be black");
  free(px);
  g_free(grey);

  char *gif = demo_path("palette-yellow-star-on-blue.gif");
  px = preprocess_file(gif);
  int yellow = 0, blue = 0;
  for (int y = 0; y < SIZE; y++)
    for (int x = 0; x < SIZE; x++) {
      int r = level(px, 0, x, y), g = level(px, 1, x, y), b = level(px, 2, x, y);
      yellow += r > 180 && g > 180 && b < 100;
      blue += b > 150 && r < 100 && g < 100;
    }
  cr_expect(yellow > SIZE * SIZE / 10 && blue > SIZE * SIZE * 4 / 10,
            "expected a yellow star on blue: %d yellow, %d blue pixels", yellow, blue);
  free(px);
  g_free(gif);
}

/* The same pixels through other formats and layouts give the same tensor. */
Test(image, formats_and_layouts, .init = init_vips) {
  char *path = data_path("goldens/images/04_red_square_on_blue.png"); /* 640x480 RGB */
  float *ref = preprocess_file(path);
  VipsImage *rgb = vips_image_new_from_file(path, NULL);
  cr_assert_not_null(rgb);
  VipsImage *alpha0 = NULL, *rgba = NULL, *wide = NULL, *rgb16 = NULL, *cmyk = NULL;
  /* RGBA with alpha 0 everywhere: Pillow drops alpha, so the RGB is used as it is. */
  cr_assert_eq(vips_black(&alpha0, rgb->Xsize, rgb->Ysize, NULL), 0);
  VipsImage *zero = NULL;
  cr_assert_eq(vips_cast_uchar(alpha0, &zero, NULL), 0);
  cr_assert_eq(vips_bandjoin2(rgb, zero, &rgba, NULL), 0);
  /* 16 bits per channel: v * 257 maps back to v exactly. */
  cr_assert_eq(vips_cast_ushort(rgb, &wide, NULL), 0);
  cr_assert_eq(vips_linear1(wide, &rgb16, 257.0, 0.0, "uchar", FALSE, NULL), 0);
  VipsImage *rgb16s = NULL, *rgb16u = NULL;
  cr_assert_eq(vips_cast_ushort(rgb16, &rgb16s, NULL), 0);
  cr_assert_eq(vips_copy(rgb16s, &rgb16u, "interpretation", VIPS_INTERPRETATION_RGB16, NULL), 0);
  static const struct {
    const char *fmt;
    int which;
    double max_diff;
  } cases[] = {
      {".tif", 0, 0.01}, {".webp", 0, 0.01}, {".png", 1, 0.01},
      {".png", 2, 0.01}, {".tif", 2, 0.01},  {".jpg", 3, 8.0}, /* lossy JPEG */
      {".avif", 0, 6.0},                                       /* HEIF container, lossy */
  };
  cr_assert_eq(vips_colourspace(rgb, &cmyk, VIPS_INTERPRETATION_CMYK, NULL), 0, "%s",
               vips_error_buffer());
  /* CMYK is colour-managed (embedded or libvips's default profile), which changes colours
   * outside the CMYK gamut: the expected tensor is that of libvips's own conversion back. */
  VipsImage *cmyk_srgb = NULL;
  cr_assert_eq(vips_colourspace(cmyk, &cmyk_srgb, VIPS_INTERPRETATION_sRGB, NULL), 0);
  void *cbuf;
  size_t clen;
  cr_assert_eq(vips_image_write_to_buffer(cmyk_srgb, ".png", &cbuf, &clen, NULL), 0);
  float *cmyk_ref = preprocess_buffer(cbuf, clen, "CMYK converted by libvips");
  g_free(cbuf);
  g_object_unref(cmyk_srgb);
  VipsImage *variants[] = {rgb, rgba, rgb16u, cmyk};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    void *buf = NULL;
    size_t len = 0;
    int rc = strcmp(cases[i].fmt, ".webp") == 0
                 ? vips_image_write_to_buffer(variants[cases[i].which], ".webp", &buf, &len,
                                              "lossless", TRUE, NULL)
             : strcmp(cases[i].fmt, ".avif") == 0
                 ? vips_image_write_to_buffer(variants[cases[i].which], ".avif", &buf, &len, "Q",
                                              90, "speed", 8, NULL)
                 : vips_image_write_to_buffer(variants[cases[i].which], cases[i].fmt, &buf, &len,
                                              NULL);
    cr_assert_eq(rc, 0, "writing variant %zu: %s", i, vips_error_buffer());
    float *got = preprocess_buffer(buf, len, cases[i].fmt);
    diff d = compare(got, cases[i].which == 3 ? cmyk_ref : ref);
    cr_log_info("variant %zu (%s, layout %d): mean %.3f max %.1f levels", i, cases[i].fmt,
                cases[i].which, d.mean, d.max);
    cr_expect_leq(d.max, cases[i].max_diff, "variant %zu (%s, layout %d): max %.2f levels", i,
                  cases[i].fmt, cases[i].which, d.max);
    if (cases[i].which == 3) cr_expect_leq(d.mean, 0.5, "CMYK mean %.2f levels", d.mean);
    free(got);
    g_free(buf);
  }
  g_object_unref(alpha0);
  g_object_unref(zero);
  g_object_unref(rgba);
  g_object_unref(wide);
  g_object_unref(rgb16);
  g_object_unref(rgb16s);
  g_object_unref(rgb16u);
  g_object_unref(cmyk);
  g_object_unref(rgb);
  free(ref);
  free(cmyk_ref);
  g_free(path);
}

/* File and buffer entry points agree exactly, for each demo format. */
Test(image, file_equals_buffer) {
  static const char *const names[] = {"000-orange-circle-on-purple.jpg",
                                      "001-black-circle-on-red.png",
                                      "003-black-cross-on-white.webp",
                                      "palette-yellow-star-on-blue.gif",
                                      "exif-rotated-green-triangle-on-white.jpg"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    char *path = demo_path(names[i]);
    gchar *buf;
    gsize len;
    cr_assert(g_file_get_contents(path, &buf, &len, NULL), "%s", path);
    float *a = preprocess_file(path), *b = preprocess_buffer(buf, len, names[i]);
    cr_expect_arr_eq(a, b, sizeof(float) * NPIX, "%s: file and buffer differ", names[i]);
    free(a);
    free(b);
    g_free(buf);
    g_free(path);
  }
}

/* Images above 4 MP stream through libvips's reduce, and big JPEGs are shrunk on load: a
 * golden enlarged 3x (nearest neighbour, so the content is unchanged) must still come out
 * close to the reference pixels of the original. Measured: PNG (libvips reduce) mean 0.11,
 * max 3; JPEG (Q95, shrunk 4x on load, then exact) mean 0.05, max 2 levels. */
Test(image, large_images, .init = init_vips) {
  char *path = data_path("goldens/images/05_white_circle_on_black.jpg");
  struct json_object *root, *images = golden_images(&root);
  float *want = json_floats(json_object_array_get_idx(images, 5), "pixels", NPIX);
  cr_assert_str_eq(json_str(json_object_array_get_idx(images, 5), "file"),
                   "images/05_white_circle_on_black.jpg");
  VipsImage *small = vips_image_new_from_file(path, NULL), *big = NULL;
  cr_assert_eq(vips_zoom(small, &big, 3, 3, NULL), 0); /* 3072x2304 = 7 MP */
  static const char *const fmts[] = {".png", ".jpg"};
  for (int i = 0; i < 2; i++) {
    void *buf;
    size_t len;
    int rc = i == 0 ? vips_image_write_to_buffer(big, ".png", &buf, &len, "compression", 1, NULL)
                    : vips_image_write_to_buffer(big, ".jpg", &buf, &len, "Q", 95, NULL);
    cr_assert_eq(rc, 0);
    float *got = preprocess_buffer(buf, len, fmts[i]);
    diff d = compare(got, want);
    cr_log_info("3x enlarged %s: mean %.3f max %.1f levels", fmts[i], d.mean, d.max);
    cr_expect(d.mean <= 0.3 && d.max <= 10.0, "%s: mean %.3f max %.1f levels", fmts[i], d.mean,
              d.max);
    free(got);
    g_free(buf);
  }
  free(want);
  json_object_put(root);
  g_object_unref(small);
  g_object_unref(big);
  g_free(path);
}

static gpointer preprocess_all(gpointer arg) {
  float *out = arg;
  static const char *const names[] = {"images/04_red_square_on_blue.png",
                                      "images/05_white_circle_on_black.jpg",
                                      "images/06_white_triangle_on_purple.png"};
  for (int round = 0; round < 5; round++)
    for (int i = 0; i < 3; i++) {
      char *rel = g_strdup_printf("goldens/%s", names[i]), *path = data_path(rel);
      float px[NPIX];
      int rc = clip_image_preprocess_file(&spec, path, px, NULL);
      g_free(rel);
      g_free(path);
      if (rc != 0) return NULL;
      if (round == 0) memcpy(out + i * NPIX, px, sizeof px);
      else if (memcmp(out + i * NPIX, px, sizeof px) != 0) return NULL;
    }
  return out;
}

Test(image, concurrent) {
  float *results = malloc(sizeof(float) * 4 * 3 * NPIX);
  GThread *threads[4];
  for (int i = 0; i < 4; i++)
    threads[i] = g_thread_new("pre", preprocess_all, results + (size_t)i * 3 * NPIX);
  for (int i = 0; i < 4; i++) cr_assert_not_null(g_thread_join(threads[i]), "thread %d", i);
  for (int i = 1; i < 4; i++)
    cr_assert_arr_eq(results + (size_t)i * 3 * NPIX, results, sizeof(float) * 3 * NPIX);
  free(results);
}

/* The tiny model's embedding of preprocessed pixels. */
static float *embed_pixels(clip_model *model, const float *px) {
  float *v = malloc(sizeof(float) * (size_t)clip_model_dim(model));
  cdb_error err = {{0}};
  cr_assert_eq(clip_embed_pixels(model, px, 1, v, &err), 0, "%s", err.msg);
  return v;
}

/* WebPs are shrunk on load in the default mode (libwebp's rescaler, then the exact resize) and
 * decoded whole in exact mode. A lossless WebP of a golden PNG holds the PNG's pixels: exact
 * mode must give the reference pixels, the default mode other pixels (it shrank) whose
 * embedding stays close to the reference one; a lossy demo WebP must embed close to its own
 * exact-mode pixels. Measured cosines: 0.999998 (golden, 640x480 shrunk 4x for 64 px; mean
 * 0.07, max 3 levels off) and 0.999996 (demo 1600x1200, shrunk 8x); bounds 10x below. */
Test(image, webp_shrink_on_load, .init = init_vips) {
  char *png = data_path("goldens/images/04_red_square_on_blue.png");
  char *demo = demo_path("051-orange-circle-on-white.webp"), *dir = data_path("clip-tiny-shapes");
  struct json_object *root, *images = golden_images(&root),
                            *item = json_object_array_get_idx(images, 4);
  cr_assert_str_eq(json_str(item, "file"), "images/04_red_square_on_blue.png");
  float *want_px = json_floats(item, "pixels", NPIX), *want = NULL;
  cdb_error err = {{0}};
  clip_model *model = clip_model_load(dir, NULL, &err);
  cr_assert_not_null(model, "%s", err.msg);
  int dim = clip_model_dim(model);
  want = json_floats(item, "embedding", (size_t)dim);
  VipsImage *img = vips_image_new_from_file(png, NULL);
  cr_assert_not_null(img);
  void *webp;
  size_t webp_len;
  cr_assert_eq(vips_webpsave_buffer(img, &webp, &webp_len, "lossless", TRUE, NULL), 0);
  gchar *lossy;
  gsize lossy_len;
  cr_assert(g_file_get_contents(demo, &lossy, &lossy_len, NULL));

  clip_image_set_exact_resize(1);
  float *exact_px = preprocess_buffer(webp, webp_len, "lossless webp, exact");
  float *demo_exact_px = preprocess_buffer(lossy, lossy_len, "demo webp, exact");
  clip_image_set_exact_resize(0);
  float *fast_px = preprocess_buffer(webp, webp_len, "lossless webp, fast");
  float *demo_fast_px = preprocess_buffer(lossy, lossy_len, "demo webp, fast");

  diff exact_d = compare(exact_px, want_px), fast_d = compare(fast_px, want_px);
  cr_log_info("lossless webp: exact mean %.3f max %.1f, fast mean %.3f max %.1f levels",
              exact_d.mean, exact_d.max, fast_d.mean, fast_d.max);
  cr_expect_leq(exact_d.max, 0.01, "exact mode: %.2f levels off the reference", exact_d.max);
  cr_expect_geq(fast_d.max, 1.0, "default mode gave the exact pixels: not shrunk on load");
  float *fast = embed_pixels(model, fast_px), *demo_exact = embed_pixels(model, demo_exact_px);
  float *demo_fast = embed_pixels(model, demo_fast_px);
  double cos = cosine(fast, want, dim), demo_cos = cosine(demo_fast, demo_exact, dim);
  cr_log_info("cosine: golden %.6f, demo %.6f", cos, demo_cos);
  cr_expect_geq(cos, 0.99998, "lossless webp shrunk on load: cosine %.6f to the reference", cos);
  cr_expect_geq(compare(demo_fast_px, demo_exact_px).max, 1.0, "demo webp not shrunk on load");
  cr_expect_geq(demo_cos, 0.99996, "demo webp: cosine %.6f to its exact-mode embedding", demo_cos);

  const char *mode = getenv("CLIPDB_RESIZE");
  clip_image_set_exact_resize(mode && strcmp(mode, "exact") == 0);
  float *floats[] = {exact_px,   fast_px,   demo_exact_px, demo_fast_px, fast,
                     demo_exact, demo_fast, want,          want_px};
  for (size_t i = 0; i < sizeof floats / sizeof *floats; i++) free(floats[i]);
  g_free(webp);
  g_free(lossy);
  g_object_unref(img);
  clip_model_free(model);
  json_object_put(root);
  g_free(png);
  g_free(demo);
  g_free(dir);
}
