/* bench_preprocess.c: timings of the CLIP tokenizer (load, typical queries, 1 MB inputs) and
 * of image preprocessing at the real model size (224), including a 12-megapixel JPEG with and
 * without shrink-on-load. Run from the repository root:
 *   bench-preprocess [tests/data/clip-tiny-shapes] [IMAGE...]
 * Reports the best of several runs (the machine may be shared). With IMAGE files, only those are
 * timed: decode + preprocess to 224x224 in the default (shrink-on-load) and the exact mode, one
 * thread, libvips concurrency 1 as in `clipdb index`: the first call and the best of 7. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vips/vips.h>

#include "embed/image.h"
#include "embed/tokenizer.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* CPU time of this thread: less disturbed than wall time on a shared machine. */
static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void bench_tokenizer(const char *dir) {
  char vocab[4096], merges[4096];
  snprintf(vocab, sizeof vocab, "%s/vocab.json", dir);
  snprintf(merges, sizeof merges, "%s/merges.txt", dir);
  cdb_error err = {{0}};
  clip_tokenizer *tok = NULL;
  double best = 1e9, best_cpu = 1e9;
  for (int i = 0; i < 10; i++) {
    double t = now(), c = cpu_now();
    clip_tokenizer *t2 = clip_tokenizer_load(vocab, merges, 0, &err);
    t = now() - t;
    c = cpu_now() - c;
    if (c < best_cpu) best_cpu = c;
    if (!t2) {
      fprintf(stderr, "%s\n", err.msg);
      exit(1);
    }
    if (t < best) best = t;
    clip_tokenizer_free(tok);
    tok = t2;
  }
  printf("tokenizer load (vocab.json + merges.txt): %.1f ms wall, %.1f ms CPU (best of 10)\n",
         best * 1e3, best_cpu * 1e3);

  static const char *const queries[] = {"a photo of a cat",
                                        "a small yellow star on a black background",
                                        "Ünïcödé Straße, naïve café — “quoted”",
                                        "&amp; &lt;b&gt; html &quot;entities&quot;"};
  int32_t ids[77];
  for (size_t q = 0; q < sizeof queries / sizeof *queries; q++) {
    best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
      double t = now();
      for (int i = 0; i < 20000; i++)
        clip_tokenizer_encode(tok, queries[q], strlen(queries[q]), ids, 77, NULL);
      t = (now() - t) / 20000;
      if (t < best) best = t;
    }
    printf("encode %-45s %.2f us\n", queries[q], best * 1e6);
  }
  size_t len = 1 << 20;
  char *big = malloc(len);
  static const char *const fills[] = {"a photo of a red star ", "a", "\xc3\xa9&amp;\xe2\x80\x9c"};
  static const char *const names[] = {"1 MB of words", "1 MB single word",
                                      "1 MB non-ASCII, no spaces"};
  for (int f = 0; f < 3; f++) {
    size_t fl = strlen(fills[f]), n = len - len % fl;
    for (size_t i = 0; i < n; i++) big[i] = fills[f][i % fl];
    best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
      double t = now();
      clip_tokenizer_encode(tok, big, n, ids, 77, NULL);
      t = now() - t;
      if (t < best) best = t;
    }
    printf("encode %-45s %.2f ms\n", names[f], best * 1e3);
  }
  free(big);
  clip_tokenizer_free(tok);
}

static const clip_image_spec spec224 = {224,
                                        224,
                                        224,
                                        {0.48145466f, 0.4578275f, 0.40821073f},
                                        {0.26862954f, 0.26130258f, 0.27577711f},
                                        100000000};

static double time_buffer(const void *buf, size_t len, int reps) {
  float *out = malloc(sizeof(float) * 3 * 224 * 224);
  double best = 1e9;
  for (int i = 0; i < reps; i++) {
    cdb_error err = {{0}};
    double t = now();
    if (clip_image_preprocess_buffer(&spec224, buf, len, out, &err) != 0) {
      fprintf(stderr, "%s\n", err.msg);
      exit(1);
    }
    t = now() - t;
    if (t < best) best = t;
  }
  free(out);
  return best;
}

/* The same steps without shrink-on-load: full decode, libvips cubic reduce, crop. */
static double time_full_decode(const void *buf, size_t len, int reps) {
  double best = 1e9;
  for (int i = 0; i < reps; i++) {
    double t = now();
    VipsImage *in = vips_image_new_from_buffer(buf, len, "", "access", VIPS_ACCESS_SEQUENTIAL,
                                               NULL);
    VipsImage *small = NULL, *crop = NULL;
    double scale = 224.0 / (in->Xsize < in->Ysize ? in->Xsize : in->Ysize);
    if (!in || vips_resize(in, &small, scale, "kernel", VIPS_KERNEL_CUBIC, "gap", 0.0, NULL) ||
        vips_extract_area(small, &crop, (small->Xsize - 224) / 2, (small->Ysize - 224) / 2, 224,
                          224, NULL)) {
      fprintf(stderr, "%s\n", vips_error_buffer());
      exit(1);
    }
    size_t size;
    void *mem = vips_image_write_to_memory(crop, &size);
    t = now() - t;
    g_free(mem);
    g_object_unref(crop);
    g_object_unref(small);
    g_object_unref(in);
    if (t < best) best = t;
  }
  return best;
}

static void bench_images(void) {
  VipsImage *src = vips_image_new_from_file("examples/shapes/000-orange-circle-on-purple.jpg",
                                            NULL);
  VipsImage *big = NULL, *noise = NULL, *noisy = NULL;
  if (!src) {
    fprintf(stderr, "run from the repository root: %s\n", vips_error_buffer());
    exit(1);
  }
  double s = 4000.0 / src->Xsize;
  /* 4000x3000 with some grain, so the JPEG is photo-sized (about 12 MP). */
  if (vips_resize(src, &big, s, "vscale", 3000.0 / src->Ysize, NULL) ||
      vips_gaussnoise(&noise, 4000, 3000, "sigma", 6.0, NULL) ||
      vips_add(big, noise, &noisy, NULL)) {
    fprintf(stderr, "%s\n", vips_error_buffer());
    exit(1);
  }
  VipsImage *u8 = NULL;
  vips_cast_uchar(noisy, &u8, NULL);
  void *jpg;
  size_t jpg_len;
  if (vips_image_write_to_buffer(u8, ".jpg", &jpg, &jpg_len, "Q", 90, NULL)) exit(1);
  printf(
      "12 MP JPEG (4000x3000, %.1f MB) -> 224x224: shrink-on-load %.1f ms, full decode %.1f ms\n",
      jpg_len / 1e6, time_buffer(jpg, jpg_len, 5) * 1e3, time_full_decode(jpg, jpg_len, 3) * 1e3);
  static const char *const files[] = {"tests/data/goldens/images/05_white_circle_on_black.jpg",
                                      "tests/data/goldens/images/04_red_square_on_blue.png",
                                      "examples/shapes/003-black-cross-on-white.webp"};
  for (int i = 0; i < 3; i++) {
    gchar *buf;
    gsize len;
    if (!g_file_get_contents(files[i], &buf, &len, NULL)) exit(1);
    printf("%-55s -> 224x224: %.2f ms\n", files[i], time_buffer(buf, len, 10) * 1e3);
    g_free(buf);
  }
  g_free(jpg);
  g_object_unref(u8);
  g_object_unref(noisy);
  g_object_unref(noise);
  g_object_unref(big);
  g_object_unref(src);
}

/* Wall ms of decode + preprocess of buf: the first call (*first) and the best of reps. */
static double time_modes(const void *buf, size_t len, int exact, double *first) {
  clip_image_set_exact_resize(exact);
  float *out = malloc(sizeof(float) * 3 * 224 * 224);
  double best = 1e9;
  for (int i = 0; i < 7; i++) {
    cdb_error err = {{0}};
    double t = now();
    if (clip_image_preprocess_buffer(&spec224, buf, len, out, &err) != 0) {
      fprintf(stderr, "%s\n", err.msg);
      exit(1);
    }
    t = (now() - t) * 1e3;
    if (i == 0) *first = t;
    if (t < best) best = t;
  }
  free(out);
  return best;
}

static void bench_files(char **files, int n) {
  vips_concurrency_set(1);
  printf("decode + preprocess to 224x224, wall ms (first call / best of 7):\n");
  for (int i = 0; i < n; i++) {
    gchar *buf;
    gsize len;
    if (!g_file_get_contents(files[i], &buf, &len, NULL)) {
      fprintf(stderr, "cannot read %s\n", files[i]);
      exit(1);
    }
    VipsImage *hdr = vips_image_new_from_buffer(buf, len, "", NULL);
    double first_fast, first_exact, fast = time_modes(buf, len, 0, &first_fast);
    double exact = time_modes(buf, len, 1, &first_exact);
    printf("  %-44s %5dx%-5d %6.1f KB  default %5.1f / %5.1f  exact %5.1f / %5.1f\n", files[i],
           hdr ? hdr->Xsize : 0, hdr ? hdr->Ysize : 0, len / 1e3, first_fast, fast, first_exact,
           exact);
    if (hdr) g_object_unref(hdr);
    g_free(buf);
  }
}

int main(int argc, char **argv) {
  if (VIPS_INIT(argv[0])) return 1;
  if (argc > 2) {
    bench_files(argv + 2, argc - 2);
    return 0;
  }
  bench_tokenizer(argc > 1 ? argv[1] : "tests/data/clip-tiny-shapes");
  bench_images();
  return 0;
}
