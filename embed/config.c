/* config.c: parsing of config.json and preprocessor_config.json (json-c via src/json.h). */
#include "embed/config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "src/json.h"

#define CONFIG_MAX_BYTES (1u << 20)

/* Bounds far above any released CLIP (ViT-bigG: width 1664, MLP 8192, 48 layers) that keep
 * every buffer size computation well inside int and size_t. */
#define MAX_HIDDEN 8192
#define MAX_INTERMEDIATE 65536
#define MAX_LAYERS 256
#define MAX_HEADS 256
#define MAX_VOCAB 1000000
#define MAX_CONTEXT 4096
#define MAX_IMAGE 4096
#define MAX_PROJECTION 16384

static int get_int_in(struct json_object *obj, const char *key, const char *what, int lo, int hi,
                      int *out, cdb_error *err) {
  int64_t v;
  int rc = cdb_json_get_int(obj, key, what, &v, err);
  if (rc < 0) return -1;
  if (rc == 1) return 0; /* absent: keep the default */
  if (v < lo || v > hi)
    return cdb_error_set(err, "%s: \"%s\" = %lld is out of range [%d, %d]", what, key, (long long)v,
                         lo, hi);
  *out = (int)v;
  return 0;
}

static int read_tower(struct json_object *obj, const char *what, clip_tower_config *t,
                      cdb_error *err) {
  if (get_int_in(obj, "hidden_size", what, 1, MAX_HIDDEN, &t->hidden, err) ||
      get_int_in(obj, "intermediate_size", what, 1, MAX_INTERMEDIATE, &t->intermediate, err) ||
      get_int_in(obj, "num_attention_heads", what, 1, MAX_HEADS, &t->heads, err) ||
      get_int_in(obj, "num_hidden_layers", what, 1, MAX_LAYERS, &t->layers, err))
    return -1;
  double eps = t->ln_eps;
  if (cdb_json_get_double(obj, "layer_norm_eps", what, &eps, err) < 0) return -1;
  /* 1e-12 is far below any real config (1e-5) and keeps the float value away from 0. */
  if (!(eps >= 1e-12 && eps < 1))
    return cdb_error_set(err, "%s: layer_norm_eps %g out of range [1e-12, 1)", what, eps);
  t->ln_eps = (float)eps;
  const char *act = NULL;
  if (cdb_json_get_string(obj, "hidden_act", what, &act, err) < 0) return -1;
  if (act) {
    if (strcmp(act, "quick_gelu") == 0) t->act = CLIP_ACT_QUICK_GELU;
    else if (strcmp(act, "gelu") == 0) t->act = CLIP_ACT_GELU;
    else
      return cdb_error_set(err, "%s: unsupported hidden_act \"%s\" (quick_gelu or gelu)", what,
                           act);
  }
  if (t->hidden % t->heads != 0)
    return cdb_error_set(err, "%s: hidden_size %d is not a multiple of num_attention_heads %d",
                         what, t->hidden, t->heads);
  return 0;
}

static void set_defaults(clip_config *cfg) {
  cfg->text = (clip_tower_config){512, 2048, 8, 12, 1e-5f, CLIP_ACT_QUICK_GELU};
  cfg->vision = (clip_tower_config){768, 3072, 12, 12, 1e-5f, CLIP_ACT_QUICK_GELU};
  cfg->projection_dim = 512;
  cfg->vocab_size = 49408;
  cfg->context_length = 77;
  cfg->image_size = 224;
  cfg->patch_size = 32;
  cfg->num_channels = 3;
}

static int read_config(struct json_object *root, const char *path, clip_config *cfg,
                       cdb_error *err) {
  char what_text[1100], what_vision[1100];
  snprintf(what_text, sizeof what_text, "%s: text_config", path);
  snprintf(what_vision, sizeof what_vision, "%s: vision_config", path);
  struct json_object *text = NULL, *vision = NULL;
  json_object_object_get_ex(root, "text_config", &text);
  json_object_object_get_ex(root, "vision_config", &vision);
  if ((text && !json_object_is_type(text, json_type_object)) ||
      (vision && !json_object_is_type(vision, json_type_object)))
    return cdb_error_set(err, "%s: text_config and vision_config must be objects", path);
  if (get_int_in(root, "projection_dim", path, 1, MAX_PROJECTION, &cfg->projection_dim, err) ||
      read_tower(text, what_text, &cfg->text, err) ||
      get_int_in(text, "vocab_size", what_text, 1, MAX_VOCAB, &cfg->vocab_size, err) ||
      get_int_in(text, "max_position_embeddings", what_text, 2, MAX_CONTEXT, &cfg->context_length,
                 err) ||
      read_tower(vision, what_vision, &cfg->vision, err) ||
      get_int_in(vision, "image_size", what_vision, 1, MAX_IMAGE, &cfg->image_size, err) ||
      get_int_in(vision, "patch_size", what_vision, 1, MAX_IMAGE, &cfg->patch_size, err) ||
      get_int_in(vision, "num_channels", what_vision, 3, 3, &cfg->num_channels, err))
    return -1;
  if (cfg->image_size % cfg->patch_size != 0)
    return cdb_error_set(err, "%s: image_size %d is not a multiple of patch_size %d", what_vision,
                         cfg->image_size, cfg->patch_size);
  int grid = cfg->image_size / cfg->patch_size;
  if (grid * grid + 1 > MAX_CONTEXT)
    return cdb_error_set(err, "%s: %d patches is too many", what_vision, grid * grid);
  return 0;
}

int clip_config_load(const char *path, clip_config *cfg, cdb_error *err) {
  struct json_object *root = cdb_json_load_file(path, CONFIG_MAX_BYTES, err);
  if (!root) return -1;
  set_defaults(cfg);
  int rc = json_object_is_type(root, json_type_object)
               ? read_config(root, path, cfg, err)
               : cdb_error_set(err, "%s: not a JSON object", path);
  json_object_put(root);
  return rc;
}

/* "size" / "crop_size": an int (old), {"shortest_edge": N}, or {"height": H, "width": W}. */
static int read_size(struct json_object *root, const char *key, const char *path, int *shortest,
                     int *h, int *w, cdb_error *err) {
  struct json_object *v;
  if (!json_object_object_get_ex(root, key, &v) || !v) return 1;
  if (json_object_is_type(v, json_type_int)) {
    int64_t n = json_object_get_int64(v);
    if (n < 1 || n > MAX_IMAGE) return cdb_error_set(err, "%s: \"%s\" out of range", path, key);
    *shortest = *h = *w = (int)n;
    return 0;
  }
  if (!json_object_is_type(v, json_type_object))
    return cdb_error_set(err, "%s: \"%s\" must be an integer or an object", path, key);
  char what[1100];
  snprintf(what, sizeof what, "%s: %s", path, key);
  int se = 0, hh = 0, ww = 0;
  if (get_int_in(v, "shortest_edge", what, 1, MAX_IMAGE, &se, err) ||
      get_int_in(v, "height", what, 1, MAX_IMAGE, &hh, err) ||
      get_int_in(v, "width", what, 1, MAX_IMAGE, &ww, err))
    return -1;
  if (se) {
    *shortest = *h = *w = se;
    return 0;
  }
  if (hh && ww) {
    *h = hh;
    *w = ww;
    *shortest = hh < ww ? hh : ww;
    return 0;
  }
  return cdb_error_set(err, "%s: needs shortest_edge or height and width", what);
}

static int read_triplet(struct json_object *root, const char *key, const char *path, float *out,
                        cdb_error *err) {
  struct json_object *v;
  if (!json_object_object_get_ex(root, key, &v) || !v) return 0; /* keep the CLIP default */
  if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != 3)
    return cdb_error_set(err, "%s: \"%s\" must be an array of 3 numbers", path, key);
  for (int i = 0; i < 3; i++) {
    struct json_object *x = json_object_array_get_idx(v, (size_t)i);
    if (!json_object_is_type(x, json_type_double) && !json_object_is_type(x, json_type_int))
      return cdb_error_set(err, "%s: \"%s\" must be an array of 3 numbers", path, key);
    out[i] = (float)json_object_get_double(x);
    if (!isfinite(out[i])) return cdb_error_set(err, "%s: \"%s\" is not finite", path, key);
  }
  return 0;
}

static int read_preprocess(struct json_object *root, const char *path, int image_size,
                           clip_image_spec *spec, cdb_error *err) {
  static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  memcpy(spec->mean, mean, sizeof mean);
  memcpy(spec->std, std, sizeof std);
  int shortest = image_size, h = image_size, w = image_size;
  int crop_short = image_size, crop_h = image_size, crop_w = image_size;
  if (read_size(root, "size", path, &shortest, &h, &w, err) < 0 ||
      read_size(root, "crop_size", path, &crop_short, &crop_h, &crop_w, err) < 0 ||
      read_triplet(root, "image_mean", path, spec->mean, err) ||
      read_triplet(root, "image_std", path, spec->std, err))
    return -1;
  for (int i = 0; i < 3; i++)
    if (spec->std[i] <= 0) return cdb_error_set(err, "%s: image_std must be positive", path);
  if (crop_h != image_size || crop_w != image_size)
    return cdb_error_set(err, "%s: crop %dx%d does not match the model's image_size %d", path,
                         crop_w, crop_h, image_size);
  if (shortest < image_size)
    return cdb_error_set(err, "%s: resize %d is smaller than the crop %d", path, shortest,
                         image_size);
  spec->resize_shortest = shortest;
  spec->crop_height = crop_h;
  spec->crop_width = crop_w;
  return 0;
}

int clip_preprocess_config_load(const char *path, int image_size, clip_image_spec *spec,
                                cdb_error *err) {
  struct json_object *root = cdb_json_load_file(path, CONFIG_MAX_BYTES, err);
  if (!root) return -1;
  int rc = json_object_is_type(root, json_type_object)
               ? read_preprocess(root, path, image_size, spec, err)
               : cdb_error_set(err, "%s: not a JSON object", path);
  json_object_put(root);
  return rc;
}
