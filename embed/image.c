/* image.c: decodes an image with libvips and turns it into CLIP's input tensor, matching the
 * reference preprocessing (Pillow decode, convert("RGB"), bicubic resize of the short side to
 * `resize_shortest` with the long side int(size * long / short), centre crop at
 * int(round((h - crop) / 2)), /255, mean/std), plus what the reference lacks: EXIF
 * orientation and a pixel limit checked on the header before decoding.
 *
 * Two resize modes, chosen by CLIPDB_RESIZE (read once per process):
 * - fast (the default): JPEGs are shrunk on load by libjpeg's DCT scaling, WebPs by libwebp's
 *   area-averaging rescaler, to the smallest scale (1/2, 1/4, 1/8) that keeps the short side
 *   >= the target (a 12 MP photo decodes at 1/8 for 224), then resized exactly as below;
 *   embeddings stay within cosine 0.999 of the reference (bench/embed/fidelity.py).
 * - exact: no shrink-on-load, Pillow's resize at every size: the reference pixels.
 *
 * Colour: grey, 16-bit, CMYK (colour-managed: embedded or libvips's default profile) and the
 * rest become 8-bit sRGB; alpha is dropped, not composited, as Pillow's convert("RGB") does.
 * Resizing: Pillow's own algorithm (bit-exact) for images up to 4 MP after shrink-on-load,
 * for every enlargement, and for every image in exact mode; larger images in fast mode stream
 * through libvips's cubic reduce.
 *
 * Files are read into memory and decoded from the buffer, so both entry points share one
 * path (and a file name containing "[...]" is never parsed as libvips load options). */
#include "embed/image.h"

#include <glib.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <vips/vips.h>

#include "src/file.h"

/* Files larger than this are refused before reading (compressed size). */
#define MAX_IMAGE_FILE_BYTES ((size_t)1 << 30)

/* ---- libvips, initialised once ---- */

static pthread_once_t vips_once = PTHREAD_ONCE_INIT;
static bool vips_ready;
static bool exact_resize; /* CLIPDB_RESIZE=exact */

/* libvips reports decoder warnings through g_log; bad input is reported through our errors,
 * so its warnings (and only its: the "VIPS" domain) are dropped instead of reaching stderr. */
static void drop_log(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer data) {
  (void)domain, (void)level, (void)msg, (void)data;
}

static void init_vips(void) {
  const char *mode = getenv("CLIPDB_RESIZE");
  exact_resize = mode && strcmp(mode, "exact") == 0;
  if (VIPS_INIT("clipdb") != 0) return;
  /* Every image is decoded once: caching operations would only hold memory. */
  vips_cache_set_max(0);
  /* Images come from users: refuse the loaders libvips marks as not hardened against hostile
   * input (ImageMagick, MATLAB, FITS, ...). JPEG, PNG, WebP, TIFF, GIF, HEIF/AVIF, SVG stay. */
  vips_block_untrusted_set(TRUE);
  g_log_set_handler("VIPS", G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE, drop_log, NULL);
  vips_ready = true;
}

int clip_vips_start(void) {
  pthread_once(&vips_once, init_vips);
  return vips_ready ? 0 : -1;
}

void clip_vips_stop(void) {
  if (vips_ready) vips_shutdown();
}

void clip_image_set_exact_resize(int exact) {
  pthread_once(&vips_once, init_vips);
  exact_resize = exact != 0;
}

/* Copies libvips's error message (the last line, the most specific) into err. The buffer
 * is process-wide, so under concurrent failures a message may come from another thread. */
static int vips_fail(cdb_error *err, const char *what, const char *action) {
  char *all = vips_error_buffer_copy();
  g_strstrip(all);
  char *last = strrchr(all, '\n');
  const char *msg = last ? last + 1 : all;
  int rc = cdb_error_set(err, "image: %s: %s%s%s", what, action, *msg ? ": " : "", msg);
  g_free(all);
  return rc;
}

/* ---- geometry, as the reference computes it ---- */

/* Short side -> size, long side -> int(size * long / short) (exact in integers). False when
 * the long side would not fit libvips's coordinates (an absurd aspect ratio). */
static bool resized_dims(int w, int h, int size, int *out_w, int *out_h) {
  int64_t long_side = w <= h ? (int64_t)size * h / w : (int64_t)size * w / h;
  if (long_side > VIPS_MAX_COORD) return false;
  *out_w = w <= h ? size : (int)long_side;
  *out_h = w <= h ? (int)long_side : size;
  return true;
}

/* int(round(d / 2)) with Python's round-half-to-even. */
static int centre_offset(int d) {
  int half = d / 2;
  return (d % 2 != 0 && half % 2 != 0) ? half + 1 : half;
}

/* Loaders that can shrink while decoding (fast mode only). */
typedef enum shrink_kind { SHRINK_NONE, SHRINK_JPEG, SHRINK_WEBP } shrink_kind;

static shrink_kind shrink_kind_of(const char *loader) {
  if (exact_resize || !loader) return SHRINK_NONE;
  if (strstr(loader, "Jpeg")) return SHRINK_JPEG;
  if (strstr(loader, "Webp")) return SHRINK_WEBP;
  return SHRINK_NONE;
}

/* Shrink-on-load factor: the largest of 2, 4, 8 that keeps the short side at least the target
 * (the short side is >= target * factor; libjpeg rounds the scaled size up and libwebp to the
 * nearest, so neither loader leaves less than the resize needs). */
static int shrink_factor(int w, int h, int target) {
  int short_side = w < h ? w : h, shrink = 1;
  while (shrink < 8 && short_side / (shrink * 2) >= target) shrink *= 2;
  return shrink;
}

/* ---- Pillow's bicubic resampling ----
 * Images up to PIL_MAX_PIXELS (after shrink-on-load), every image that must be enlarged and
 * every image in exact mode are resized here exactly as Pillow does it (separable Catmull-Rom
 * convolution, support scaled when shrinking, horizontal pass first, 22-bit fixed-point weights,
 * 8-bit intermediate), which reproduces the reference bit for bit. libvips's reduce is within a
 * fraction of a level when shrinking but its upsizing interpolates and differs visibly on
 * tiny images. Larger images stream through libvips instead of being held in memory.
 * Only the output pixels inside the crop are computed. */

#define PIL_MAX_PIXELS ((int64_t)4 << 20)

#define PIL_PRECISION_BITS (32 - 8 - 2)

static double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

typedef struct pil_coeffs {
  int ksize;
  int *bounds; /* per output index: first input index, tap count */
  int32_t *k;  /* ksize weights per output index */
} pil_coeffs;

/* Coefficients for output indices [first, first + n) of an in_size -> out_size resize. */
static bool pil_coeffs_init(pil_coeffs *c, int in_size, int out_size, int first, int n) {
  double scale = (double)in_size / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 2.0 * filterscale;
  c->ksize = (int)ceil(support) * 2 + 1;
  c->bounds = malloc(sizeof(int) * 2 * (size_t)n);
  c->k = malloc(sizeof(int32_t) * (size_t)c->ksize * (size_t)n);
  double *w = malloc(sizeof(double) * (size_t)c->ksize);
  if (!c->bounds || !c->k || !w) {
    free(w);
    return false;
  }
  for (int i = 0; i < n; i++) {
    double center = (first + i + 0.5) * scale, sum = 0.0;
    int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
    if (lo < 0) lo = 0;
    if (hi > in_size) hi = in_size;
    int taps = hi - lo;
    for (int x = 0; x < taps; x++) sum += w[x] = bicubic((x + lo - center + 0.5) / filterscale);
    int32_t *k = c->k + (size_t)i * c->ksize;
    for (int x = 0; x < c->ksize; x++) {
      double v = x < taps && sum != 0.0 ? w[x] / sum : 0.0;
      k[x] = (int32_t)(v < 0 ? -0.5 + v * (1 << PIL_PRECISION_BITS)
                             : 0.5 + v * (1 << PIL_PRECISION_BITS));
    }
    c->bounds[2 * i] = lo;
    c->bounds[2 * i + 1] = taps;
  }
  free(w);
  return true;
}

static void pil_coeffs_free(pil_coeffs *c) {
  free(c->bounds);
  free(c->k);
}

/* Pillow accumulates in 32 bits: |sum| <= 255 * 1.25 * 2^22 (the kernel's absolute sum) fits. */
static uint8_t pil_clip8(int32_t v) {
  v >>= PIL_PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* One row of the horizontal pass: cw RGB outputs from the input row src. */
static void pil_row_h(const uint8_t *src, const pil_coeffs *hc, int cw, uint8_t *dst) {
  for (int x = 0; x < cw; x++) {
    const int32_t *k = hc->k + (size_t)x * hc->ksize;
    const uint8_t *p = src + (size_t)hc->bounds[2 * x] * 3;
    int taps = hc->bounds[2 * x + 1];
    int32_t r = 1 << (PIL_PRECISION_BITS - 1), g = r, b = r;
    for (int t = 0; t < taps; t++, p += 3) {
      r += p[0] * k[t];
      g += p[1] * k[t];
      b += p[2] * k[t];
    }
    dst[3 * x] = pil_clip8(r);
    dst[3 * x + 1] = pil_clip8(g);
    dst[3 * x + 2] = pil_clip8(b);
  }
}

/* One row of the vertical pass, tap by tap over the whole row (vectorises). */
static void pil_row_v(const uint8_t *rows, size_t stride, const int32_t *k, int taps, int n,
                      int32_t *acc, uint8_t *dst) {
  for (int x = 0; x < n; x++) acc[x] = 1 << (PIL_PRECISION_BITS - 1);
  for (int t = 0; t < taps; t++) {
    const uint8_t *row = rows + (size_t)t * stride;
    int32_t kt = k[t];
    for (int x = 0; x < n; x++) acc[x] += row[x] * kt;
  }
  for (int x = 0; x < n; x++) dst[x] = pil_clip8(acc[x]);
}

/* in: in_w x in_h RGB; out: the cw x ch window at (left, top) of the out_w x out_h resize. */
static bool pil_resize_crop(const uint8_t *in, int in_w, int in_h, int out_w, int out_h, int left,
                            int top, int cw, int ch, uint8_t *out) {
  pil_coeffs hc = {0}, vc = {0};
  uint8_t *tmp = NULL;
  int32_t *acc = NULL;
  bool ok = pil_coeffs_init(&hc, in_w, out_w, left, cw) &&
            pil_coeffs_init(&vc, in_h, out_h, top, ch);
  int row0 = ok ? vc.bounds[0] : 0;
  int rows = ok ? vc.bounds[2 * (ch - 1)] + vc.bounds[2 * (ch - 1) + 1] - row0 : 0;
  if (ok) ok = (tmp = malloc((size_t)rows * cw * 3)) && (acc = malloc(sizeof *acc * cw * 3));
  for (int y = 0; ok && y < rows; y++)
    pil_row_h(in + (size_t)(row0 + y) * in_w * 3, &hc, cw, tmp + (size_t)y * cw * 3);
  for (int y = 0; ok && y < ch; y++)
    pil_row_v(tmp + (size_t)(vc.bounds[2 * y] - row0) * cw * 3, (size_t)cw * 3,
              vc.k + (size_t)y * vc.ksize, vc.bounds[2 * y + 1], cw * 3, acc,
              out + (size_t)y * cw * 3);
  free(acc);
  free(tmp);
  pil_coeffs_free(&hc);
  pil_coeffs_free(&vc);
  return ok;
}

/* ---- the pipeline ---- */

typedef struct source {
  const void *buf;
  size_t len;
  const char *what; /* the file name, or "image buffer" */
} source;

/* Whether a loader (a type name) may run: libvips's untrusted loaders (ImageMagick, OpenJPEG,
 * netpbm, ...) are blocked at start (vips_block_untrusted_set), since clipdb decodes files nobody
 * vetted. */
static bool loader_trusted(const char *loader) {
  GType type = loader ? g_type_from_name(loader) : 0;
  if (!type) return false;
  VipsOperationClass *op = g_type_class_ref(type);
  bool ok = !(op->flags & (VIPS_OPERATION_UNTRUSTED | VIPS_OPERATION_BLOCKED));
  g_type_class_unref(op);
  return ok;
}

/* Checks that a trusted libvips loader reads src; else says the format is not supported. */
static int check_loader(const source *src, cdb_error *err) {
  const char *loader = vips_foreign_find_load_buffer(src->buf, src->len);
  vips_error_clear();
  if (loader_trusted(loader)) return 0;
  if (loader)
    return cdb_error_set(err,
                         "image: %s: format not supported (libvips reads it only with a decoder "
                         "it does not trust for unvetted files, as for BMP, PPM or JPEG 2000)",
                         src->what);
  return cdb_error_set(err, "image: %s: not an image in a format libvips can read", src->what);
}

/* Decodes with shrink-on-load by `shrink` (1 = whole): libjpeg's DCT scaling for JPEG,
 * libwebp's area-averaging rescaler (to width / shrink, rounded) for WebP. */
static VipsImage *load(const source *src, VipsAccess access, shrink_kind kind, int shrink,
                       cdb_error *err) {
  VipsImage *img = NULL;
  if (shrink > 1 && kind == SHRINK_JPEG)
    img = vips_image_new_from_buffer(src->buf, src->len, "", "access", access, "fail_on",
                                     VIPS_FAIL_ON_ERROR, "shrink", shrink, NULL);
  else if (shrink > 1 && kind == SHRINK_WEBP)
    img = vips_image_new_from_buffer(src->buf, src->len, "", "access", access, "fail_on",
                                     VIPS_FAIL_ON_ERROR, "scale", 1.0 / shrink, NULL);
  else
    img = vips_image_new_from_buffer(src->buf, src->len, "", "access", access, "fail_on",
                                     VIPS_FAIL_ON_ERROR, NULL);
  if (!img) vips_fail(err, src->what, "cannot decode");
  return img;
}

/* Replaces *img by *out, the result of the operation that returned rc (on failure *img is
 * left for the caller to release). */
static int step(VipsImage **img, VipsImage **out, int rc, const source *src, const char *action,
                cdb_error *err) {
  if (rc != 0) return vips_fail(err, src->what, action);
  g_object_unref(*img);
  *img = *out;
  return 0;
}

/* Like Pillow's convert("RGB"): 8-bit sRGB, alpha dropped (not composited). */
static int to_srgb8(VipsImage **img, const source *src, cdb_error *err) {
  VipsImage *out = NULL;
  VipsInterpretation kind = vips_image_guess_interpretation(*img);
  if ((kind != VIPS_INTERPRETATION_sRGB || (*img)->BandFmt != VIPS_FORMAT_UCHAR) &&
      step(img, &out, vips_colourspace(*img, &out, VIPS_INTERPRETATION_sRGB, NULL), src,
           "cannot convert to sRGB", err) < 0)
    return -1;
  if ((*img)->Bands < 3) { /* grey (+ alpha) that colourspace left alone: replicate grey */
    if (step(img, &out, vips_extract_band(*img, &out, 0, NULL), src, "cannot convert grey", err) <
        0)
      return -1;
    VipsImage *grey[3] = {*img, *img, *img};
    if (step(img, &out, vips_bandjoin(grey, &out, 3, NULL), src, "cannot convert grey", err) < 0)
      return -1;
  }
  if ((*img)->Bands > 3 && step(img, &out, vips_extract_band(*img, &out, 0, "n", 3, NULL), src,
                                "cannot drop alpha", err) < 0)
    return -1;
  if ((*img)->BandFmt != VIPS_FORMAT_UCHAR &&
      step(img, &out, vips_cast_uchar(*img, &out, NULL), src, "cannot convert to 8 bits", err) < 0)
    return -1;
  return 0;
}

/* Header checks, then decode with orientation applied: returns the upright image and its
 * size before any shrink-on-load. */
static VipsImage *open_upright(const clip_image_spec *spec, const source *src, int *orig_w,
                               int *orig_h, cdb_error *err) {
  VipsImage *hdr = load(src, VIPS_ACCESS_SEQUENTIAL, SHRINK_NONE, 1, err);
  if (!hdr) return NULL;
  int w = vips_image_get_width(hdr), h = vips_image_get_height(hdr);
  int orientation = vips_image_get_orientation(hdr);
  if (spec->max_pixels > 0 && (int64_t)w * h > spec->max_pixels) {
    cdb_error_set(err,
                  "image: %s: image is %dx%d pixels, more than the %lld allowed; raise "
                  "CLIPDB_MAX_IMAGE_PIXELS",
                  src->what, w, h, (long long)spec->max_pixels);
    g_object_unref(hdr);
    return NULL;
  }
  shrink_kind kind = shrink_kind_of(vips_foreign_find_load_buffer(src->buf, src->len));
  int shrink = kind != SHRINK_NONE ? shrink_factor(w, h, spec->resize_shortest) : 1;
  bool rotate = orientation >= 2 && orientation <= 8;
  VipsImage *img = hdr;
  if (shrink > 1 || rotate) {
    /* Rotation needs random access; shrink is a load option. */
    g_object_unref(hdr);
    img = load(src, rotate ? VIPS_ACCESS_RANDOM : VIPS_ACCESS_SEQUENTIAL, kind, shrink, err);
    if (!img) return NULL;
  }
  VipsImage *out = NULL;
  if (rotate &&
      step(&img, &out, vips_autorot(img, &out, NULL), src, "cannot apply orientation", err) < 0) {
    g_object_unref(img);
    return NULL;
  }
  bool swapped = orientation >= 5 && orientation <= 8;
  *orig_w = swapped ? h : w;
  *orig_h = swapped ? w : h;
  return img;
}

/* Decodes and resizes *img so that the crop window comes out as HWC RGB bytes in pix. */
static int resize_and_crop(const clip_image_spec *spec, VipsImage **img, int orig_w, int orig_h,
                           const source *src, uint8_t *pix, cdb_error *err) {
  int rw, rh;
  if (!resized_dims(orig_w, orig_h, spec->resize_shortest, &rw, &rh))
    return cdb_error_set(err, "image: %s: %dx%d has too extreme an aspect ratio", src->what, orig_w,
                         orig_h);
  int cw = spec->crop_width, ch = spec->crop_height;
  if (cw > rw || ch > rh)
    return cdb_error_set(err, "image: %s: crop %dx%d is larger than the resized %dx%d image",
                         src->what, cw, ch, rw, rh);
  int left = centre_offset(rw - cw), top = centre_offset(rh - ch);
  int in_w = (*img)->Xsize, in_h = (*img)->Ysize;
  VipsImage *out = NULL;
  if (exact_resize || rw > in_w || rh > in_h || (int64_t)in_w * in_h <= PIL_MAX_PIXELS) {
    size_t size;
    uint8_t *all = vips_image_write_to_memory(*img, &size);
    if (!all) return vips_fail(err, src->what, "cannot decode");
    bool ok = pil_resize_crop(all, in_w, in_h, rw, rh, left, top, cw, ch, pix);
    g_free(all);
    return ok ? 0 : cdb_error_set(err, "image: %s: out of memory", src->what);
  }
  if (in_w != rw || in_h != rh) {
    /* gap 0: one exact cubic (Catmull-Rom, as Pillow's bicubic) reduction, antialiased like
     * Pillow's; libvips rounds the output size, and these scales land on it exactly. */
    double hscale = (double)rw / in_w, vscale = (double)rh / in_h;
    if (step(img, &out,
             vips_resize(*img, &out, hscale, "vscale", vscale, "kernel", VIPS_KERNEL_CUBIC, "gap",
                         0.0, NULL),
             src, "cannot resize", err) < 0)
      return -1;
    if ((*img)->Xsize != rw || (*img)->Ysize != rh)
      return cdb_error_set(err, "image: %s: resize gave %dx%d, expected %dx%d", src->what,
                           (*img)->Xsize, (*img)->Ysize, rw, rh);
  }
  if (step(img, &out, vips_extract_area(*img, &out, left, top, cw, ch, NULL), src, "cannot crop",
           err) < 0)
    return -1;
  size_t size;
  uint8_t *mem = vips_image_write_to_memory(*img, &size);
  if (!mem) return vips_fail(err, src->what, "cannot decode");
  int rc = size == (size_t)cw * ch * 3
               ? 0
               : cdb_error_set(err, "image: %s: unexpected decoded size %zu", src->what, size);
  if (rc == 0) memcpy(pix, mem, size);
  g_free(mem);
  return rc;
}

/* HWC uint8 -> CHW float, scaled to [0, 1] and normalised. */
static void to_tensor(const clip_image_spec *spec, const uint8_t *pix, float *out) {
  size_t plane = (size_t)spec->crop_width * spec->crop_height;
  for (int c = 0; c < 3; c++) {
    float scale = 1.0f / (255.0f * spec->std[c]), shift = spec->mean[c] / spec->std[c];
    float *dst = out + c * plane;
    for (size_t i = 0; i < plane; i++) dst[i] = (float)pix[i * 3 + c] * scale - shift;
  }
}

static int preprocess(const clip_image_spec *spec, const source *src, float *out, cdb_error *err) {
  if (spec->resize_shortest <= 0 || spec->crop_width <= 0 || spec->crop_height <= 0)
    return cdb_error_set(err, "image: invalid preprocessing sizes");
  if (src->len == 0) return cdb_error_set(err, "image: %s: empty (0 bytes)", src->what);
  pthread_once(&vips_once, init_vips);
  if (!vips_ready) return cdb_error_set(err, "image: libvips failed to initialise");
  if (check_loader(src, err) != 0) return -1;
  int orig_w, orig_h;
  VipsImage *img = open_upright(spec, src, &orig_w, &orig_h, err);
  if (!img) return -1;
  uint8_t *pix = malloc((size_t)spec->crop_width * spec->crop_height * 3);
  int rc = pix ? to_srgb8(&img, src, err) : cdb_error_set(err, "image: out of memory");
  if (rc == 0) rc = resize_and_crop(spec, &img, orig_w, orig_h, src, pix, err);
  if (rc == 0) to_tensor(spec, pix, out);
  free(pix);
  g_object_unref(img);
  return rc;
}

int clip_image_preprocess_rgb(const clip_image_spec *spec, const uint8_t *rgb, int w, int h,
                              float *out, cdb_error *err) {
  int rw, rh;
  if (w <= 0 || h <= 0 || !resized_dims(w, h, spec->resize_shortest, &rw, &rh))
    return cdb_error_set(err, "image: %dx%d pixels cannot be resized", w, h);
  int cw = spec->crop_width, ch = spec->crop_height;
  if (cw > rw || ch > rh)
    return cdb_error_set(err, "image: crop %dx%d is larger than the resized %dx%d image", cw, ch,
                         rw, rh);
  uint8_t *pix = malloc((size_t)cw * ch * 3);
  bool ok = pix && pil_resize_crop(rgb, w, h, rw, rh, centre_offset(rw - cw),
                                   centre_offset(rh - ch), cw, ch, pix);
  if (ok) to_tensor(spec, pix, out);
  free(pix);
  return ok ? 0 : cdb_error_set(err, "image: out of memory");
}

void clip_image_resized_dims(const clip_image_spec *spec, int w, int h, int *out_w, int *out_h) {
  if (w <= 0 || h <= 0 || !resized_dims(w, h, spec->resize_shortest, out_w, out_h))
    *out_w = *out_h = 0;
}

int clip_image_preprocess_buffer(const clip_image_spec *spec, const void *buf, size_t len,
                                 float *out, cdb_error *err) {
  source src = {.buf = buf, .len = len, .what = "image buffer"};
  return preprocess(spec, &src, out, err);
}

int clip_image_preprocess_file(const clip_image_spec *spec, const char *path, float *out,
                               cdb_error *err) {
  size_t len;
  char *buf = cdb_file_read(path, MAX_IMAGE_FILE_BYTES, &len, err);
  if (!buf) return cdb_error_prefix(err, "image");
  source src = {.buf = buf, .len = len, .what = path};
  int rc = preprocess(spec, &src, out, err);
  free(buf);
  return rc;
}
