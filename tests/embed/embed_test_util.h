/* embed_test_util.h: helpers shared by the encoder tests: fixture paths, goldens.json,
 * comparisons, and writing modified copies of the tiny checkpoint into a temp dir. */
#ifndef EMBED_TEST_UTIL_H
#define EMBED_TEST_UTIL_H

#include <criterion/criterion.h>
#include <ftw.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "embed/clip.h"

static inline const char *test_data(void) {
  const char *d = getenv("CLIPDB_TEST_DATA");
  return d ? d : "tests/data";
}

static inline char *data_path(const char *rel) {
  char *p = malloc(4096);
  cr_assert(p);
  snprintf(p, 4096, "%s/%s", test_data(), rel);
  return p;
}

static inline clip_model *load_model_at(const char *dir) {
  cdb_error err = {{0}};
  clip_model *m = clip_model_load(dir, NULL, &err);
  cr_assert(m, "load %s: %s", dir, err.msg);
  return m;
}

static inline clip_model *load_tiny(void) {
  char *dir = data_path("clip-tiny-shapes");
  clip_model *m = load_model_at(dir);
  free(dir);
  return m;
}

/* goldens.json, parsed once per test process. */
static inline struct json_object *goldens(void) {
  static struct json_object *g;
  if (!g) {
    char *p = data_path("goldens/goldens.json");
    g = json_object_from_file(p);
    cr_assert(g, "cannot parse %s", p);
    free(p);
  }
  return g;
}

static inline struct json_object *golden_list(const char *key) {
  struct json_object *v;
  cr_assert(json_object_object_get_ex(goldens(), key, &v));
  return v;
}

static inline struct json_object *field(struct json_object *o, const char *key) {
  struct json_object *v;
  cr_assert(json_object_object_get_ex(o, key, &v), "goldens: missing %s", key);
  return v;
}

static inline void read_floats(struct json_object *arr, float *out, size_t n) {
  cr_assert_eq(json_object_array_length(arr), n);
  for (size_t i = 0; i < n; i++)
    out[i] = (float)json_object_get_double(json_object_array_get_idx(arr, i));
}

static inline void normalise(float *v, int n) {
  double s = 0;
  for (int i = 0; i < n; i++) s += (double)v[i] * v[i];
  for (int i = 0; i < n; i++) v[i] = (float)(v[i] / sqrt(s));
}

static inline float max_abs_diff(const float *a, const float *b, int n) {
  float m = 0;
  for (int i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
  return m;
}

static inline float cosine(const float *a, const float *b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return (float)(ab / sqrt(aa * bb));
}

/* All golden images' pixels [n, 3, S, S] and normalised embeddings [n, dim]. */
static inline int golden_images(int side, int dim, float **pixels, float **emb) {
  struct json_object *imgs = golden_list("images");
  int n = (int)json_object_array_length(imgs);
  size_t img = (size_t)3 * side * side;
  *pixels = malloc(sizeof(float) * img * (size_t)n);
  *emb = malloc(sizeof(float) * (size_t)dim * (size_t)n);
  cr_assert(*pixels && *emb);
  for (int i = 0; i < n; i++) {
    struct json_object *o = json_object_array_get_idx(imgs, (size_t)i);
    read_floats(field(o, "pixels"), *pixels + img * (size_t)i, img);
    read_floats(field(o, "embedding"), *emb + (size_t)dim * i, (size_t)dim);
    normalise(*emb + (size_t)dim * i, dim);
  }
  return n;
}

/* All golden texts' ids [n, ctx] and normalised embeddings [n, dim]. */
static inline int golden_texts(int ctx, int dim, int32_t **ids, float **emb) {
  struct json_object *texts = golden_list("texts");
  int n = (int)json_object_array_length(texts);
  *ids = malloc(sizeof(int32_t) * (size_t)ctx * (size_t)n);
  *emb = malloc(sizeof(float) * (size_t)dim * (size_t)n);
  cr_assert(*ids && *emb);
  for (int i = 0; i < n; i++) {
    struct json_object *o = json_object_array_get_idx(texts, (size_t)i);
    struct json_object *jids = field(o, "ids");
    cr_assert_eq((int)json_object_array_length(jids), ctx);
    for (int t = 0; t < ctx; t++)
      (*ids)[(size_t)i * ctx + t] = json_object_get_int(json_object_array_get_idx(jids, (size_t)t));
    read_floats(field(o, "embedding"), *emb + (size_t)dim * i, (size_t)dim);
    normalise(*emb + (size_t)dim * i, dim);
  }
  return n;
}

/* ---- temp dirs ---- */

static inline char *make_temp_dir(void) {
  const char *base = getenv("TMPDIR");
  char *p = malloc(4096);
  cr_assert(p);
  snprintf(p, 4096, "%s/clipdb-embed-XXXXXX", base ? base : "/tmp");
  cr_assert(mkdtemp(p), "mkdtemp");
  return p;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

static inline void remove_tree(char *dir) {
  nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(dir);
}

static inline void write_file(const char *dir, const char *name, const void *data, size_t len) {
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "wb");
  cr_assert(f, "cannot write %s", p);
  cr_assert_eq(fwrite(data, 1, len, f), len);
  fclose(f);
}

static inline char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  cr_assert(f, "cannot read %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  cr_assert(buf);
  cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/* A model dir in a fresh temp dir with the tiny model's small files copied (the tokenizer files
 * are symlinked); model.safetensors is left to the caller unless copy_weights. */
static inline char *tiny_copy(int copy_weights) {
  char *dir = make_temp_dir();
  static const char *const copied[] = {"config.json", "preprocessor_config.json"};
  static const char *const linked[] = {"vocab.json", "merges.txt"};
  for (int i = 0; i < 2; i++) {
    char *src = data_path("clip-tiny-shapes/");
    char full[4096];
    snprintf(full, sizeof full, "%s%s", src, copied[i]);
    size_t len;
    char *buf = read_all(full, &len);
    write_file(dir, copied[i], buf, len);
    free(buf);
    char target[4096], link[4096];
    snprintf(target, sizeof target, "%s%s", src, linked[i]);
    snprintf(link, sizeof link, "%s/%s", dir, linked[i]);
    char *abs = realpath(target, NULL);
    cr_assert(abs && symlink(abs, link) == 0);
    free(abs);
    free(src);
  }
  if (copy_weights) {
    char *src = data_path("clip-tiny-shapes/model.safetensors");
    size_t len;
    char *buf = read_all(src, &len);
    write_file(dir, "model.safetensors", buf, len);
    free(buf);
    free(src);
  }
  return dir;
}

#endif
