/* test_checkpoint.c: other weight types (F32 and BF16 copies of the tiny model, written here
 * from its F16 file) reproduce the goldens, and malformed checkpoints and configs fail with a
 * clear message instead of crashing. */
#include <stdint.h>

#include <cblas.h>
#include <glib.h>

#include "embed/clip_internal.h"
#include "embed/kernels/kernels.h"
#include "embed/safetensors.h"
#include "embed_test_util.h"

/* ---- the tiny model's tensors, in file order ---- */

typedef struct tensor_rec {
  char name[160];
  char dtype[16];
  int64_t shape[8];
  int ndim;
  const unsigned char *data;
  size_t nbytes;
} tensor_rec;

typedef struct checkpoint {
  char *file; /* whole original file */
  size_t len;
  tensor_rec *t;
  int n;
} checkpoint;

static int by_data(const void *a, const void *b) {
  const tensor_rec *x = a, *y = b;
  return x->data < y->data ? -1 : x->data > y->data;
}

static checkpoint read_tiny(void) {
  checkpoint c = {0};
  char *p = data_path("clip-tiny-shapes/model.safetensors");
  c.file = read_all(p, &c.len);
  free(p);
  uint64_t hlen = 0;
  memcpy(&hlen, c.file, 8);
  char *header = strndup(c.file + 8, hlen);
  struct json_object *h = json_tokener_parse(header);
  free(header);
  cr_assert(h);
  c.t = calloc((size_t)json_object_object_length(h), sizeof *c.t);
  json_object_object_foreach(h, key, val) {
    if (strcmp(key, "__metadata__") == 0) continue;
    tensor_rec *r = &c.t[c.n++];
    snprintf(r->name, sizeof r->name, "%s", key);
    snprintf(r->dtype, sizeof r->dtype, "%s", json_object_get_string(field(val, "dtype")));
    struct json_object *shape = field(val, "shape"), *offs = field(val, "data_offsets");
    r->ndim = (int)json_object_array_length(shape);
    for (int i = 0; i < r->ndim; i++)
      r->shape[i] = json_object_get_int64(json_object_array_get_idx(shape, (size_t)i));
    int64_t b = json_object_get_int64(json_object_array_get_idx(offs, 0));
    int64_t e = json_object_get_int64(json_object_array_get_idx(offs, 1));
    r->data = (const unsigned char *)c.file + 8 + hlen + b;
    r->nbytes = (size_t)(e - b);
  }
  json_object_put(h);
  qsort(c.t, (size_t)c.n, sizeof *c.t, by_data);
  return c;
}

/* f32 -> bf16 with round-to-nearest-even (what torch's .to(bfloat16) does). */
static uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

/* Writes the checkpoint with every F16 tensor converted to `dtype` (F16, F32 or BF16); `edit`
 * may alter the header JSON before it is written. */
static void write_checkpoint(checkpoint *c, const char *dir, const char *dtype,
                             void (*edit)(struct json_object *header)) {
  struct json_object *h = json_object_new_object();
  size_t total = 0;
  unsigned char **blobs = calloc((size_t)c->n, sizeof *blobs);
  size_t *sizes = calloc((size_t)c->n, sizeof *sizes);
  for (int i = 0; i < c->n; i++) {
    tensor_rec *r = &c->t[i];
    int convert = strcmp(r->dtype, "F16") == 0 && strcmp(dtype, "F16") != 0;
    size_t count = r->nbytes / 2;
    sizes[i] = convert && strcmp(dtype, "F32") == 0 ? count * 4 : r->nbytes;
    blobs[i] = malloc(sizes[i] ? sizes[i] : 1);
    if (!convert) {
      memcpy(blobs[i], r->data, r->nbytes);
    } else {
      float *f = malloc(sizeof(float) * count);
      clip_kernels_generic.f16_to_f32((const uint16_t *)(const void *)r->data, f, count);
      if (strcmp(dtype, "F32") == 0) {
        memcpy(blobs[i], f, count * 4);
      } else {
        for (size_t k = 0; k < count; k++) {
          uint16_t b = to_bf16(f[k]);
          memcpy(blobs[i] + 2 * k, &b, 2);
        }
      }
      free(f);
    }
    struct json_object *e = json_object_new_object(), *shape = json_object_new_array();
    for (int d = 0; d < r->ndim; d++)
      json_object_array_add(shape, json_object_new_int64(r->shape[d]));
    struct json_object *offs = json_object_new_array();
    json_object_array_add(offs, json_object_new_int64((int64_t)total));
    json_object_array_add(offs, json_object_new_int64((int64_t)(total + sizes[i])));
    json_object_object_add(e, "dtype", json_object_new_string(convert ? dtype : r->dtype));
    json_object_object_add(e, "shape", shape);
    json_object_object_add(e, "data_offsets", offs);
    json_object_object_add(h, r->name, e);
    total += sizes[i];
  }
  if (edit) edit(h);
  const char *js = json_object_to_json_string_ext(h, JSON_C_TO_STRING_PLAIN);
  size_t hlen = strlen(js), padded = (hlen + 7) / 8 * 8;
  size_t out_len = 8 + padded + total;
  unsigned char *out = malloc(out_len);
  uint64_t le = padded;
  memcpy(out, &le, 8);
  memset(out + 8, ' ', padded);
  memcpy(out + 8, js, hlen);
  size_t pos = 8 + padded;
  for (int i = 0; i < c->n; i++) {
    memcpy(out + pos, blobs[i], sizes[i]);
    pos += sizes[i];
    free(blobs[i]);
  }
  write_file(dir, "model.safetensors", out, out_len);
  json_object_put(h);
  free(out);
  free(blobs);
  free(sizes);
}

static void free_checkpoint(checkpoint *c) {
  free(c->file);
  free(c->t);
}

/* ---- other dtypes reproduce the goldens ---- */

static void embed_goldens(clip_model *m, float *img_cos, float *img_diff, float *txt_cos,
                          float *txt_diff) {
  int side = clip_model_image_size(m), dim = clip_model_dim(m), ctx = clip_model_context_length(m);
  float *pixels, *img_want, *txt_want;
  int32_t *ids;
  int ni = golden_images(side, dim, &pixels, &img_want);
  int nt = golden_texts(ctx, dim, &ids, &txt_want);
  float *img = malloc(sizeof(float) * (size_t)ni * dim),
        *txt = malloc(sizeof(float) * (size_t)nt * dim);
  cdb_error err = {{0}};
  cr_assert_eq(clip_embed_pixels(m, pixels, ni, img, &err), 0, "%s", err.msg);
  cr_assert_eq(clip_embed_token_ids(m, ids, nt, txt, &err), 0, "%s", err.msg);
  *img_cos = *txt_cos = 1;
  *img_diff = *txt_diff = 0;
  for (int i = 0; i < ni; i++) {
    *img_cos = fminf(*img_cos, cosine(img_want + (size_t)i * dim, img + (size_t)i * dim, dim));
    *img_diff = fmaxf(*img_diff,
                      max_abs_diff(img_want + (size_t)i * dim, img + (size_t)i * dim, dim));
  }
  for (int i = 0; i < nt; i++) {
    *txt_cos = fminf(*txt_cos, cosine(txt_want + (size_t)i * dim, txt + (size_t)i * dim, dim));
    *txt_diff = fmaxf(*txt_diff,
                      max_abs_diff(txt_want + (size_t)i * dim, txt + (size_t)i * dim, dim));
  }
  free(pixels);
  free(img_want);
  free(txt_want);
  free(ids);
  free(img);
  free(txt);
}

Test(checkpoint, f32_copy_reproduces_goldens) {
  checkpoint c = read_tiny();
  char *dir = tiny_copy(0);
  write_checkpoint(&c, dir, "F32", NULL);
  clip_model *m = load_model_at(dir);
  clip_model *f16 = load_tiny();
  cr_assert_str_neq(clip_model_identity(m), clip_model_identity(f16),
                    "identity must change with the weights header");
  float ic, id, tc, td;
  embed_goldens(m, &ic, &id, &tc, &td);
  cr_log_info("F32 copy: images max-abs %.3g, texts max-abs %.3g", id, td);
  /* exact widening of the F16 weights: the goldens' tolerance (measured 1.8e-7 / 1.6e-7) */
  cr_assert(id <= 2e-6f && td <= 2e-6f, "F32: image diff %g, text diff %g", id, td);
  clip_model_free(m);
  clip_model_free(f16);
  remove_tree(dir);
  free_checkpoint(&c);
}

Test(checkpoint, bf16_copy_close_to_goldens) {
  checkpoint c = read_tiny();
  char *dir = tiny_copy(0);
  write_checkpoint(&c, dir, "BF16", NULL);
  clip_model *m = load_model_at(dir);
  float ic, id, tc, td;
  embed_goldens(m, &ic, &id, &tc, &td);
  cr_log_info("BF16 copy: min cosine images %.5f texts %.5f (max-abs %.3g / %.3g)", ic, tc, id, td);
  /* measured 0.99999 / 0.99998 */
  cr_assert(ic >= 0.9999f && tc >= 0.9999f, "BF16: min cosine image %g text %g", ic, tc);
  clip_model_free(m);
  remove_tree(dir);
  free_checkpoint(&c);
}

/* ---- malformed checkpoints ---- */

static void expect_load_error(const char *dir, const char *needle1, const char *needle2) {
  cdb_error err = {{0}};
  clip_model *m = clip_model_load(dir, NULL, &err);
  cr_assert_null(m, "loaded a malformed checkpoint");
  cr_log_info("error: %s", err.msg);
  cr_assert(strstr(err.msg, needle1), "message \"%s\" lacks \"%s\"", err.msg, needle1);
  if (needle2) cr_assert(strstr(err.msg, needle2), "message \"%s\" lacks \"%s\"", err.msg, needle2);
}

static char *dir_with_bytes(const void *data, size_t len) {
  char *dir = tiny_copy(0);
  write_file(dir, "model.safetensors", data, len);
  return dir;
}

Test(checkpoint, truncated_file) {
  checkpoint c = read_tiny();
  char *dir = dir_with_bytes(c.file, c.len / 2);
  /* The tensor whose data crosses the cut is named. */
  expect_load_error(dir, "model.safetensors", "past the end");
  remove_tree(dir);
  free_checkpoint(&c);
}

Test(checkpoint, header_length_past_eof) {
  unsigned char bytes[64] = {0};
  uint64_t huge = 1ull << 40;
  memcpy(bytes, &huge, 8);
  char *dir = dir_with_bytes(bytes, sizeof bytes);
  expect_load_error(dir, "model.safetensors", "header length");
  remove_tree(dir);
  char *dir2 = dir_with_bytes("abc", 3);
  expect_load_error(dir2, "model.safetensors", "too short");
  remove_tree(dir2);
}

Test(checkpoint, bad_json_header) {
  checkpoint c = read_tiny();
  unsigned char *copy = malloc(c.len);
  memcpy(copy, c.file, c.len);
  memcpy(copy + 8 + 40, "}{,:[", 5);
  char *dir = dir_with_bytes(copy, c.len);
  expect_load_error(dir, "model.safetensors", "invalid JSON");
  remove_tree(dir);
  /* Valid JSON but not an object. */
  unsigned char arr[16] = {8, 0, 0, 0, 0, 0, 0, 0, '[', '1', ']', ' ', ' ', ' ', ' ', ' '};
  dir = dir_with_bytes(arr, sizeof arr);
  expect_load_error(dir, "model.safetensors", "not a JSON object");
  remove_tree(dir);
  free(copy);
  free_checkpoint(&c);
}

static void set_offsets(struct json_object *h, const char *name, int64_t b, int64_t e) {
  struct json_object *t = field(h, name), *offs = json_object_new_array();
  json_object_array_add(offs, json_object_new_int64(b));
  json_object_array_add(offs, json_object_new_int64(e));
  json_object_object_add(t, "data_offsets", offs);
}

static void edit_out_of_bounds(struct json_object *h) {
  set_offsets(h, "text_projection.weight", 8000000, 8000000 + 8192 + 900000);
}

static void edit_overlap(struct json_object *h) {
  /* visual_projection (64x128 F16 = 16384 bytes) moved onto text_projection's bytes. */
  struct json_object *offs = field(field(h, "text_projection.weight"), "data_offsets");
  int64_t b = json_object_get_int64(json_object_array_get_idx(offs, 0));
  set_offsets(h, "visual_projection.weight", b, b + 16384);
}

static void edit_shape(struct json_object *h) {
  struct json_object *shape = json_object_new_array();
  json_object_array_add(shape, json_object_new_int(32));
  json_object_array_add(shape, json_object_new_int(128));
  json_object_object_add(field(h, "text_projection.weight"), "shape", shape);
}

static void edit_dtype(struct json_object *h) {
  json_object_object_add(field(h, "text_projection.weight"), "dtype",
                         json_object_new_string("I16"));
}

static void edit_bytes_vs_shape(struct json_object *h) {
  struct json_object *shape = json_object_new_array();
  json_object_array_add(shape, json_object_new_int(65));
  json_object_array_add(shape, json_object_new_int(64));
  json_object_object_add(field(h, "text_projection.weight"), "shape", shape);
}

static void edit_missing(struct json_object *h) {
  json_object_object_del(h, "vision_model.pre_layrnorm.bias");
}

static void check_edit(void (*edit)(struct json_object *), const char *n1, const char *n2) {
  checkpoint c = read_tiny();
  char *dir = tiny_copy(0);
  write_checkpoint(&c, dir, "F16", edit);
  expect_load_error(dir, n1, n2);
  remove_tree(dir);
  free_checkpoint(&c);
}

Test(checkpoint, offsets_out_of_bounds) {
  check_edit(edit_out_of_bounds, "text_projection.weight", "past the end");
}
Test(checkpoint, overlapping_tensors) {
  check_edit(edit_overlap, "overlap", "visual_projection.weight");
}
Test(checkpoint, wrong_shape_vs_config) {
  check_edit(edit_shape, "text_projection.weight", "shape [32, 128]");
}
Test(checkpoint, unsupported_dtype) {
  check_edit(edit_dtype, "text_projection.weight", "unsupported dtype I16");
}
Test(checkpoint, byte_count_vs_shape) {
  check_edit(edit_bytes_vs_shape, "text_projection.weight", "bytes of data");
}
Test(checkpoint, missing_tensor) {
  check_edit(edit_missing, "missing tensor", "vision_model.pre_layrnorm.bias");
}

/* Every prefix of a valid file and every single-byte corruption of its header is either
 * refused with a message or (for data bytes) accepted; never a crash (run under ASan in CI). */
Test(checkpoint, prefixes_and_corruptions_never_crash) {
  checkpoint c = read_tiny();
  uint64_t hlen;
  memcpy(&hlen, c.file, 8);
  cr_assert(hlen < (1u << 20));
  size_t header_end = 8 + (size_t)(hlen & 0xfffff); /* bounded, for the compiler's sake */
  for (size_t cut = 0; cut < header_end + 64; cut += (cut < 64 ? 1 : 97)) {
    st_file f = {0};
    cdb_error err = {{0}};
    int rc = st_parse((const unsigned char *)c.file, cut, "prefix", &f, &err);
    cr_assert_eq(rc, -1, "a %zu-byte prefix was accepted", cut);
    cr_assert(strlen(err.msg) > 0);
    st_close(&f);
  }
  unsigned char *copy = malloc(header_end);
  for (size_t pos = 0; pos < header_end; pos += 13) {
    memcpy(copy, c.file, header_end);
    copy[pos] ^= (unsigned char)(0x5a + pos);
    st_file f = {0};
    cdb_error err = {{0}};
    if (st_parse(copy, header_end, "corrupt", &f, &err) != 0) cr_assert(strlen(err.msg) > 0);
    st_close(&f);
  }
  free(copy);
  free_checkpoint(&c);
}

/* ---- configs ---- */

static char *dir_with_config(const char *name, const char *json) {
  char *dir = tiny_copy(1);
  write_file(dir, name, json, strlen(json));
  return dir;
}

Test(checkpoint, absurd_config_sizes) {
  static const char *const configs[] = {
      "{\"text_config\": {\"hidden_size\": 1000000000}}",
      "{\"text_config\": {\"hidden_size\": 1e9}}",
      "{\"vision_config\": {\"num_hidden_layers\": -3}}",
      "{\"vision_config\": {\"image_size\": 64, \"patch_size\": 7}}",
      "{\"text_config\": {\"hidden_size\": 64, \"num_attention_heads\": 3}}",
      "{\"projection_dim\": 99999999999}",
      "{\"text_config\": {\"hidden_act\": \"relu\"}}",
      "[1, 2]",
      "{\"text_config\": ",
  };
  for (size_t i = 0; i < sizeof configs / sizeof *configs; i++) {
    char *dir = dir_with_config("config.json", configs[i]);
    expect_load_error(dir, "config.json", NULL);
    remove_tree(dir);
  }
}

/* Real configs that differ from the tiny one's sizes: checked against the weights by name. */
Test(checkpoint, config_disagreeing_with_weights) {
  char *p = data_path("clip-tiny-shapes/config.json");
  size_t len;
  char *cfg = read_all(p, &len);
  char *at = strstr(cfg, "\"intermediate_size\": 256");
  cr_assert(at);
  memcpy(at, "\"intermediate_size\": 512", 24);
  char *dir = dir_with_config("config.json", cfg);
  expect_load_error(dir, "text_model.encoder.layers.0.mlp.fc1.weight", "[256, 64]");
  remove_tree(dir);
  free(cfg);
  free(p);
}

Test(checkpoint, missing_files_suggest_pull) {
  static const char *const files[] = {"config.json", "model.safetensors", "vocab.json",
                                      "merges.txt", "preprocessor_config.json"};
  for (int i = 0; i < 5; i++) {
    char *dir = tiny_copy(1);
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, files[i]);
    cr_assert_eq(unlink(p), 0);
    expect_load_error(dir, files[i], "clipdb model pull");
    remove_tree(dir);
  }
  cdb_error err = {{0}};
  cr_assert_null(clip_model_load("/nonexistent/model", NULL, &err));
  cr_assert(strstr(err.msg, "clipdb model pull"), "%s", err.msg);
}

Test(checkpoint, preprocessor_config_forms) {
  static const char *const good[] = {
      "{\"size\": {\"shortest_edge\": 64}, \"crop_size\": {\"height\": 64, \"width\": 64}}",
      "{\"size\": 72, \"crop_size\": 64, \"image_mean\": [0.5, 0.5, 0.5], \"image_std\": [0.5, 0.5, 0.5]}",
      "{\"size\": {\"height\": 64, \"width\": 64}}",
  };
  for (int i = 0; i < 3; i++) {
    char *dir = dir_with_config("preprocessor_config.json", good[i]);
    clip_model *m = load_model_at(dir);
    const clip_image_spec *s = clip_model_image_spec(m);
    cr_assert_eq(s->crop_height, 64);
    cr_assert_eq(s->crop_width, 64);
    cr_assert_eq(s->resize_shortest, i == 1 ? 72 : 64);
    cr_assert_float_eq(s->mean[0], i == 1 ? 0.5f : 0.48145466f, 1e-7);
    cr_assert_float_eq(s->std[2], i == 1 ? 0.5f : 0.27577711f, 1e-7);
    cr_assert_eq(s->max_pixels, clip_default_params().max_image_pixels);
    clip_model_free(m);
    remove_tree(dir);
  }
  static const char *const bad[] = {
      "{\"crop_size\": 32}",
      "{\"size\": \"big\"}",
      "{\"image_std\": [0.5, 0, 0.5]}",
      "{\"image_mean\": [0.5]}",
  };
  for (int i = 0; i < 4; i++) {
    char *dir = dir_with_config("preprocessor_config.json", bad[i]);
    expect_load_error(dir, "preprocessor_config.json", NULL);
    remove_tree(dir);
  }
}

Test(checkpoint, params_reach_image_spec) {
  clip_params p = {12345};
  char *dir = data_path("clip-tiny-shapes");
  cdb_error err = {{0}};
  clip_model *m = clip_model_load(dir, &p, &err);
  cr_assert(m, "%s", err.msg);
  cr_assert_eq(clip_model_image_spec(m)->max_pixels, 12345);
  clip_model_free(m);
  free(dir);
}

/* ---- OpenBLAS's own threads ---- */

static int thread_count(void) {
  GDir *d = g_dir_open("/proc/self/task", 0, NULL);
  cr_assert_not_null(d);
  int n = 0;
  while (g_dir_read_name(d)) n++;
  g_dir_close(d);
  return n;
}

/* A short-lived process stops the threads OpenBLAS starts (they poll a core for ~0.1 s);
 * OpenBLAS restarts them for a later threaded call (a threaded sgemm, as before the release). */
Test(checkpoint, release_blas_threads) {
  enum { N = 512 };
  float *a = calloc((size_t)N * N, sizeof(float)), *c = calloc((size_t)N * N, sizeof(float));
  openblas_set_num_threads(2);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, a, N, 0.0f, c, N);
  int with_blas = thread_count();
  clip_release_blas_threads();
  cr_expect_lt(thread_count(), with_blas, "OpenBLAS's threads still run");
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, a, N, 1.0f, c, N);
  cr_expect_eq(thread_count(), with_blas, "OpenBLAS did not restart its threads");
  free(a);
  free(c);
}
