/* bench_encoder.c: speed of the CLIP encoder on a ViT-B/32-sized checkpoint (random weights from
 * make_checkpoint.py): model load + first text query, text latency (short and 77-token; with the
 * default half-float text weights and with CLIPDB_WEIGHTS=f32, plus the cosine between the two),
 * images/s from pixels (batch 1 and 32) and from JPEG files (1-12 MP, generated with libvips),
 * peak RSS.
 *
 * usage: bench-embed [--model DIR] [--threads N] [--gemm auto|blas|own] [--reps N]
 *                    [--text-only 1]
 *   default model: bench/data/clip-vit-b-32-random (run from the repository root). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <vips/vips.h>

#include "embed/clip.h"
#include "embed/transformer.h"
#include "src/pool.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Process CPU seconds (user + system): steadier than wall time on a shared machine. */
static double cpu_now(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, const cdb_error *err) {
  fprintf(stderr, "bench-embed: %s: %s\n", what, err->msg);
  exit(1);
}

/* Median seconds of one text query over reps. */
static double text_latency(clip_model *m, const char *text, int reps, int *tokens) {
  double *t = malloc(sizeof(double) * (size_t)reps);
  float out[4096];
  int32_t ids[4096];
  cdb_error err = {{0}};
  *tokens = clip_tokenize(m, text, strlen(text), ids, &err);
  for (int i = 0; i < reps; i++) {
    double t0 = now();
    if (clip_embed_texts(m, &text, 1, out, &err) != 0) die("text", &err);
    t[i] = now() - t0;
  }
  double med = median(t, reps);
  free(t);
  return med;
}

/* Texts per second for batches of n copies of text (median over reps). */
static double texts_per_s(clip_model *m, const char *text, int n, int reps) {
  const char **texts = malloc(sizeof(char *) * (size_t)n);
  float *out = malloc(sizeof(float) * (size_t)n * (size_t)clip_model_dim(m));
  double *t = malloc(sizeof(double) * (size_t)reps);
  cdb_error err = {{0}};
  for (int i = 0; i < n; i++) texts[i] = text;
  for (int i = 0; i < reps; i++) {
    double t0 = now();
    if (clip_embed_texts(m, texts, n, out, &err) != 0) die("texts", &err);
    t[i] = now() - t0;
  }
  double med = median(t, reps);
  free(texts);
  free(out);
  free(t);
  return n / med;
}

static double images_per_s(clip_model *m, const float *pixels, int batch, int reps) {
  float *out = malloc(sizeof(float) * (size_t)batch * (size_t)clip_model_dim(m));
  double *t = malloc(sizeof(double) * (size_t)reps);
  cdb_error err = {{0}};
  for (int i = 0; i < reps; i++) {
    double t0 = now();
    if (clip_embed_pixels(m, pixels, batch, out, &err) != 0) die("pixels", &err);
    t[i] = now() - t0;
  }
  double med = median(t, reps);
  free(out);
  free(t);
  return batch / med;
}

/* Noise JPEGs are the slow case for decoding (nothing compresses). */
static void make_jpeg(const char *path, int w, int h) {
  struct stat st;
  if (stat(path, &st) == 0) return;
  VipsImage *bands[3], *rgb, *u8;
  for (int b = 0; b < 3; b++)
    if (vips_gaussnoise(&bands[b], w, h, "mean", 128.0, "sigma", 30.0, NULL)) vips_error_exit(NULL);
  if (vips_bandjoin(bands, &rgb, 3, NULL) || vips_cast_uchar(rgb, &u8, NULL) ||
      vips_jpegsave(u8, path, "Q", 85, NULL))
    vips_error_exit(NULL);
  for (int b = 0; b < 3; b++) g_object_unref(bands[b]);
  g_object_unref(rgb);
  g_object_unref(u8);
}

/* FLOPs of one ViT-B/32 image: GEMMs plus attention, 2 per multiply-add. */
static double vision_gflop(void) {
  double D = 768, I = 3072, T = 50, P = 49, L = 12;
  double macs = P * 3 * 32 * 32 * D + L * (T * 4 * D * D + T * 2 * D * I + 2 * T * T * D) + D * 512;
  return 2 * macs / 1e9;
}

int main(int argc, char **argv) {
  const char *dir = "bench/data/clip-vit-b-32-random", *gemm = "auto";
  int threads = 0, reps = 10, text_only = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--model") == 0) dir = argv[i + 1];
    else if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--gemm") == 0) gemm = argv[i + 1];
    else if (strcmp(argv[i], "--reps") == 0) reps = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--text-only") == 0) text_only = atoi(argv[i + 1]);
  }
  if (VIPS_INIT(argv[0])) vips_error_exit(NULL);
  if (threads > 0) cdb_pool_set_threads(threads);
  clip_set_gemm_mode(strcmp(gemm, "blas") == 0  ? CLIP_GEMM_BLAS
                     : strcmp(gemm, "own") == 0 ? CLIP_GEMM_OWN
                                                : CLIP_GEMM_AUTO);
  printf("model %s, %d threads, gemm %s\n", dir, cdb_pool_threads(), gemm);

  cdb_error err = {{0}};
  const char *short_q = "a photo of a dog";
  double t0 = now();
  clip_model *m = clip_model_load(dir, NULL, &err);
  if (!m) die("load", &err);
  double t_load = now() - t0;
  float out[512];
  if (clip_embed_texts(m, &short_q, 1, out, &err) != 0) die("first text", &err);
  double t_first = now() - t0;
  /* The tokenizer's share, on a second instance (its load overlaps tower preparation above). */
  clip_model *m2 = clip_model_load(dir, NULL, &err);
  int32_t first_ids[4096];
  double t1 = now();
  if (!m2 || clip_tokenize(m2, short_q, strlen(short_q), first_ids, &err) < 0)
    die("tokenize", &err);
  double t_tok = now() - t1;
  clip_model_free(m2);
  printf("load %.1f ms, load + first text query %.1f ms (tokenizer load alone %.1f ms)\n",
         t_load * 1e3, t_first * 1e3, t_tok * 1e3);

  int ntok_s, ntok_l;
  char long_q[2048] = "";
  for (int i = 0; i < 100; i++) strcat(long_q, "red ");
  double t_short = text_latency(m, short_q, reps * 5, &ntok_s);
  double t_long = text_latency(m, long_q, reps * 2, &ntok_l);
  printf("text: %d tokens %.2f ms, %d tokens %.2f ms (median)\n", ntok_s, t_short * 1e3, ntok_l,
         t_long * 1e3);
  printf("text batch 32 (%d tokens): %.1f texts/s\n", ntok_l, texts_per_s(m, long_q, 32, reps));

  /* The same queries with float32 text weights (CLIPDB_WEIGHTS=f32, read when a tower is
   * prepared): speed, and how far the default half-float text weights move the embeddings. */
  const char *user_weights = getenv("CLIPDB_WEIGHTS");
  char *saved = user_weights ? strdup(user_weights) : NULL;
  setenv("CLIPDB_WEIGHTS", "f32", 1);
  clip_model *m32 = clip_model_load(dir, NULL, &err);
  if (!m32) die("load", &err);
  double t_short32 = text_latency(m32, short_q, reps * 5, &ntok_s);
  double t_long32 = text_latency(m32, long_q, reps * 2, &ntok_l);
  const char *both[2] = {short_q, long_q};
  float e16[2 * 4096], e32[2 * 4096];
  if (clip_embed_texts(m, both, 2, e16, &err) != 0 ||
      clip_embed_texts(m32, both, 2, e32, &err) != 0)
    die("text", &err);
  if (saved) setenv("CLIPDB_WEIGHTS", saved, 1);
  else unsetenv("CLIPDB_WEIGHTS");
  free(saved);
  clip_model_free(m32);
  int dim = clip_model_dim(m);
  double cos_min = 1;
  for (int q = 0; q < 2; q++) {
    double dot = 0;
    for (int d = 0; d < dim; d++) dot += (double)e16[q * dim + d] * e32[q * dim + d];
    cos_min = dot < cos_min ? dot : cos_min;
  }
  printf("text with float32 weights: %d tokens %.2f ms, %d tokens %.2f ms; "
         "cosine(half, float32 weights) >= %.8f\n",
         ntok_s, t_short32 * 1e3, ntok_l, t_long32 * 1e3, cos_min);

  if (text_only) {
    clip_model_free(m);
    return 0;
  }
  int side = clip_model_image_size(m);
  size_t img = (size_t)3 * side * side;
  float *pixels = malloc(sizeof(float) * img * 32);
  for (size_t i = 0; i < img * 32; i++)
    pixels[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  t0 = now();
  if (clip_embed_pixels(m, pixels, 1, out, &err) != 0) die("first image", &err);
  printf("first image (prepares the vision tower) %.1f ms; vision precision %s\n",
         (now() - t0) * 1e3, clip_model_precision(m));
  double c0 = cpu_now();
  double b1 = images_per_s(m, pixels, 1, reps * 2);
  double c1 = cpu_now();
  double b32 = images_per_s(m, pixels, 32, reps > 3 ? 3 : reps);
  double c2 = cpu_now();
  printf("images from pixels: batch 1 %.1f img/s, batch 32 %.1f img/s (%.0f GFLOP/s)\n", b1, b32,
         b32 * vision_gflop());
  printf("  CPU time per image: batch 1 %.1f ms, batch 32 %.1f ms\n", (c1 - c0) * 1e3 / (reps * 2),
         (c2 - c1) * 1e3 / (32 * (reps > 3 ? 3 : reps)));

  static const struct { int w, h; } sizes[] = {{1152, 864}, {2304, 1728}, {4000, 3000}};
  char paths[3][256];
  const char *files[12];
  mkdir("bench/data", 0755);
  mkdir("bench/data/jpeg", 0755);
  for (int i = 0; i < 3; i++) {
    snprintf(paths[i], sizeof paths[i], "bench/data/jpeg/noise-%dx%d.jpg", sizes[i].w, sizes[i].h);
    make_jpeg(paths[i], sizes[i].w, sizes[i].h);
  }
  for (int i = 0; i < 12; i++) files[i] = paths[i % 3];
  float *emb = malloc(sizeof(float) * 12 * (size_t)clip_model_dim(m));
  t0 = now();
  float *px = malloc(sizeof(float) * img);
  if (clip_embed_image_files(m, files, 12, emb, &err) != 0) {
    printf("images from JPEG files: skipped (%s)\n", err.msg);
    goto rss;
  }
  double t_jpeg = now() - t0;
  for (int i = 0; i < 3; i++) {
    t0 = now();
    if (clip_image_load_file(m, paths[i], px, &err) != 0) die("decode", &err);
    printf("decode+preprocess %.1f MP JPEG: %.1f ms\n", sizes[i].w * sizes[i].h / 1e6,
           (now() - t0) * 1e3);
  }
  printf("images from JPEG files (1, 4, 12 MP mix, batch 12): %.1f img/s\n", 12 / t_jpeg);

rss:;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("peak RSS %.0f MB\n", ru.ru_maxrss / 1024.0);
  free(pixels);
  free(emb);
  free(px);
  clip_model_free(m);
  return 0;
}
