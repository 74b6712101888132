/* functions.c: the clip_* scalar SQL functions (embedding, vector arithmetic, zero-shot
 * classification, model registration), registered from one table. */
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/clipdb.h"
#include "sqlite-ext/internal.h"
#include "sqlite-ext/table.h"
#include "src/json.h"

#define DIRECT (SQLITE_UTF8 | SQLITE_DIRECTONLY)
#define PURE (SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS)

static void result_cdb_error(sqlite3_context *ctx, const char *fn, const cdb_error *err) {
  char *msg = sqlite3_mprintf("%s: %s", fn, err->msg);
  sqlite3_result_error(ctx, msg ? msg : fn, -1);
  sqlite3_free(msg);
}

/* The shortest decimal that reads back as the same float32 (as Python's repr does for doubles):
 * embeddings and scores are float32 quantities, so more digits are noise. */
static void format_float(char *buf, size_t size, float x) {
  if (x == 0 && signbit(x)) { /* "-0" would read back as the integer 0 */
    snprintf(buf, size, "-0.0");
    return;
  }
  for (int digits = 6; digits < 9; digits++) {
    snprintf(buf, size, "%.*g", digits, (double)x);
    if (strtof(buf, NULL) == x) return;
  }
  snprintf(buf, size, "%.9g", (double)x);
}

static json_object *json_float(float x) {
  char buf[32];
  format_float(buf, sizeof buf, x);
  return json_object_new_double_s((double)x, buf);
}

static void result_vector(sqlite3_context *ctx, float *v, int n) {
  sqlite3_result_blob(ctx, v, n * (int)sizeof(float), free);
}

/* Hands v to SQLite when the operation that computed it succeeded (rc == 0), else reports err;
 * v is consumed either way. */
static void finish_vector(sqlite3_context *ctx, const char *fn, float *v, int n, int rc,
                          cdb_error *err) {
  if (rc == 0) {
    result_vector(ctx, v, n);
  } else {
    free(v);
    result_cdb_error(ctx, fn, err);
  }
}

/* The optional model argument: NULL/absent = default; anything else must be TEXT. */
static clip_model *model_arg(sqlite3_context *ctx, const char *fn, int argc, sqlite3_value **argv,
                             int idx) {
  cdb_error err = {{0}};
  const char *name = NULL;
  if (idx < argc && sqlite3_value_type(argv[idx]) != SQLITE_NULL) {
    if (sqlite3_value_type(argv[idx]) != SQLITE_TEXT) {
      char *msg = sqlite3_mprintf("%s: the model argument must be TEXT (a name or a path)", fn);
      sqlite3_result_error(ctx, msg, -1);
      sqlite3_free(msg);
      return NULL;
    }
    name = (const char *)sqlite3_value_text(argv[idx]);
  }
  clip_model *model = cdbx_conn_model(sqlite3_user_data(ctx), name, &err);
  if (!model) result_cdb_error(ctx, fn, &err);
  return model;
}

static void fn_embed_text(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  if (sqlite3_value_type(argv[0]) != SQLITE_TEXT) {
    sqlite3_result_error(ctx, "clip_embed_text: the text argument must be TEXT", -1);
    return;
  }
  clip_model *model = model_arg(ctx, "clip_embed_text", argc, argv, 1);
  if (!model) return;
  int dim = clip_model_dim(model);
  float *v = malloc(sizeof(float) * (size_t)dim);
  if (!v) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  cdb_error err = {{0}};
  int rc = cdbx_embed_text(model, (const char *)sqlite3_value_text(argv[0]),
                           sqlite3_value_bytes(argv[0]), v, &err);
  finish_vector(ctx, "clip_embed_text", v, dim, rc, &err);
}

static void fn_embed_image(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  clip_model *model = model_arg(ctx, "clip_embed_image", argc, argv, 1);
  if (!model) return;
  int dim = clip_model_dim(model);
  float *v = malloc(sizeof(float) * (size_t)dim);
  if (!v) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  cdb_error err = {{0}};
  int rc = cdbx_embed_image_value(model, argv[0], v, &err);
  finish_vector(ctx, "clip_embed_image", v, dim, rc, &err);
}

/* Reads argument idx as a vector, reporting errors as "fn: argument N ...". */
static float *vec_arg(sqlite3_context *ctx, const char *fn, sqlite3_value **argv, int idx, int *n) {
  cdb_error err = {{0}};
  char what[32];
  snprintf(what, sizeof what, "argument %d", idx + 1);
  float *v = cdbx_vec_from_value(argv[idx], what, n, &err);
  if (!v) result_cdb_error(ctx, fn, &err);
  return v;
}

static int same_dims(sqlite3_context *ctx, const char *fn, int na, int nb) {
  if (na == nb) return 1;
  char *msg = sqlite3_mprintf("%s: vectors differ in size (%d and %d floats)", fn, na, nb);
  sqlite3_result_error(ctx, msg, -1);
  sqlite3_free(msg);
  return 0;
}

static void fn_similarity(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  int na = 0, nb = 0;
  float *a = vec_arg(ctx, "clip_similarity", argv, 0, &na);
  float *b = a ? vec_arg(ctx, "clip_similarity", argv, 1, &nb) : NULL;
  if (b && same_dims(ctx, "clip_similarity", na, nb)) {
    double na2 = cdb_vec_dot(a, a, na), nb2 = cdb_vec_dot(b, b, nb);
    if (na2 > 0 && nb2 > 0) {
      sqlite3_result_double(ctx, cdb_vec_dot(a, b, na) / (sqrt(na2) * sqrt(nb2)));
    } else {
      sqlite3_result_error(ctx, "clip_similarity: a zero vector has no direction", -1);
    }
  }
  free(a);
  free(b);
}

static void vec_binary(sqlite3_context *ctx, sqlite3_value **argv, const char *fn, float sign) {
  int na = 0, nb = 0;
  float *a = vec_arg(ctx, fn, argv, 0, &na);
  float *b = a ? vec_arg(ctx, fn, argv, 1, &nb) : NULL;
  if (b && same_dims(ctx, fn, na, nb)) {
    for (int i = 0; i < na; i++) a[i] += sign * b[i];
    cdb_error err = {{0}};
    finish_vector(ctx, fn, a, na, cdbx_vec_check_finite(a, na, "result", &err), &err);
    a = NULL;
  }
  free(a);
  free(b);
}

static void fn_vec_add(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  vec_binary(ctx, argv, "clip_vec_add", 1.0f);
}

static void fn_vec_sub(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  vec_binary(ctx, argv, "clip_vec_sub", -1.0f);
}

static void fn_vec_scale(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  int t = sqlite3_value_type(argv[1]);
  double s = sqlite3_value_double(argv[1]);
  if ((t != SQLITE_INTEGER && t != SQLITE_FLOAT) || !isfinite(s)) {
    sqlite3_result_error(ctx, "clip_vec_scale: the factor must be a finite number", -1);
    return;
  }
  int n = 0;
  float *a = vec_arg(ctx, "clip_vec_scale", argv, 0, &n);
  if (!a) return;
  for (int i = 0; i < n; i++) a[i] = (float)(a[i] * s);
  cdb_error err = {{0}};
  finish_vector(ctx, "clip_vec_scale", a, n, cdbx_vec_check_finite(a, n, "result", &err), &err);
}

static void fn_vec_normalize(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  int n = 0;
  float *a = vec_arg(ctx, "clip_vec_normalize", argv, 0, &n);
  if (!a) return;
  cdb_error err = {{0}};
  finish_vector(ctx, "clip_vec_normalize", a, n, cdbx_vec_normalize(a, n, "argument 1", &err),
                &err);
}

static void fn_vec_to_json(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  int n = 0;
  float *a = vec_arg(ctx, "clip_vec_to_json", argv, 0, &n);
  if (!a) return;
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendchar(s, 1, '[');
  for (int i = 0; i < n; i++) {
    char num[32];
    format_float(num, sizeof num, a[i]);
    if (i) sqlite3_str_appendchar(s, 1, ',');
    sqlite3_str_appendall(s, num);
  }
  sqlite3_str_appendchar(s, 1, ']');
  free(a);
  int len = sqlite3_str_length(s);
  char *text = cdbx_str_finish(s);
  if (!text) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  sqlite3_result_text(ctx, text, len, sqlite3_free);
}

static void fn_vec_from_json(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  if (sqlite3_value_type(argv[0]) != SQLITE_TEXT) {
    sqlite3_result_error(ctx, "clip_vec_from_json: the argument must be a JSON array TEXT", -1);
    return;
  }
  cdb_error err = {{0}};
  json_object *arr = cdb_json_parse((const char *)sqlite3_value_text(argv[0]),
                                    (size_t)sqlite3_value_bytes(argv[0]), "argument 1", &err);
  if (!arr) {
    result_cdb_error(ctx, "clip_vec_from_json", &err);
    return;
  }
  size_t n = json_object_is_type(arr, json_type_array) ? json_object_array_length(arr) : 0;
  float *v = n > 0 && n <= CDB_INDEX_MAX_DIM ? malloc(n * sizeof(float)) : NULL;
  for (size_t i = 0; v && i < n; i++) {
    json_object *x = json_object_array_get_idx(arr, i);
    double d = json_object_get_double(x);
    if ((!json_object_is_type(x, json_type_double) && !json_object_is_type(x, json_type_int)) ||
        !isfinite((float)d)) {
      free(v);
      v = NULL;
    } else {
      v[i] = (float)d;
    }
  }
  json_object_put(arr);
  if (!v) {
    sqlite3_result_error(ctx,
                         "clip_vec_from_json: expected a non-empty JSON array of finite "
                         "numbers",
                         -1);
    return;
  }
  result_vector(ctx, v, (int)n);
}

/* ---- zero-shot classification ---- */

typedef struct label_score {
  const char *label;
  double score;
} label_score;

static int by_score_desc(const void *a, const void *b) {
  double x = ((const label_score *)a)->score, y = ((const label_score *)b)->score;
  return (x < y) - (x > y);
}

/* "a photo of a {}." with label substituted for each "{}". */
static char *fill_template(const char *tmpl, const char *label) {
  sqlite3_str *s = sqlite3_str_new(NULL);
  for (const char *p = tmpl; *p;) {
    const char *hole = strstr(p, "{}");
    if (!hole) {
      sqlite3_str_appendall(s, p);
      break;
    }
    sqlite3_str_append(s, p, (int)(hole - p));
    sqlite3_str_appendall(s, label);
    p = hole + 2;
  }
  return cdbx_str_finish(s);
}

/* The image argument as a normalised vector: an embedding BLOB of the model's size, or an image. */
static int classify_image_vector(clip_model *model, sqlite3_value *v, float *out, cdb_error *err) {
  int dim = clip_model_dim(model);
  if (cdbx_value_is_vector(v, dim)) {
    memcpy(out, sqlite3_value_blob(v), sizeof(float) * (size_t)dim);
    if (cdbx_vec_check_finite(out, dim, "image embedding", err) != 0) return -1;
    return cdbx_vec_normalize(out, dim, "image embedding", err);
  }
  return cdbx_embed_image_value(model, v, out, err);
}

/* Per-label text vectors: every template filled with the label, each embedding normalised,
 * averaged, renormalised (CLIP's prompt ensembling). */
static int label_vectors(clip_model *model, const char *const *labels, int n_labels,
                         const char *const *templates, int n_templates, float *out,
                         cdb_error *err) {
  int dim = clip_model_dim(model);
  int n = n_labels * n_templates;
  char **prompts = calloc((size_t)n, sizeof *prompts);
  float *emb = malloc(sizeof(float) * (size_t)n * (size_t)dim);
  int rc = prompts && emb ? 0 : cdb_error_set(err, "out of memory");
  for (int i = 0; rc == 0 && i < n; i++) {
    prompts[i] = fill_template(templates[i % n_templates], labels[i / n_templates]);
    if (!prompts[i]) rc = cdb_error_set(err, "out of memory");
  }
  if (rc == 0) rc = clip_embed_texts(model, (const char *const *)prompts, n, emb, err);
  if (rc == 0) rc = cdbx_check_embeddings(model, emb, n, err);
  for (int l = 0; rc == 0 && l < n_labels; l++) {
    float *acc = out + (size_t)l * dim;
    memset(acc, 0, sizeof(float) * (size_t)dim);
    for (int t = 0; rc == 0 && t < n_templates; t++) {
      float *e = emb + ((size_t)l * n_templates + t) * dim;
      rc = cdbx_vec_normalize(e, dim, "prompt embedding", err);
      for (int j = 0; rc == 0 && j < dim; j++) acc[j] += e[j];
    }
    if (rc == 0) rc = cdbx_vec_normalize(acc, dim, "label embedding", err);
  }
  for (int i = 0; prompts && i < n; i++) sqlite3_free(prompts[i]);
  free(prompts);
  free(emb);
  return rc;
}

static char *scores_json(label_score *scores, int n) {
  qsort(scores, (size_t)n, sizeof *scores, by_score_desc);
  json_object *arr = json_object_new_array();
  for (int i = 0; i < n; i++) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "label", json_object_new_string(scores[i].label));
    json_object_object_add(o, "probability", json_float((float)scores[i].score));
    json_object_object_add(o, "score", json_float((float)scores[i].score)); /* the older name */
    json_object_array_add(arr, o);
  }
  char *text = strdup(
      json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put(arr);
  return text;
}

static int classify(clip_model *model, sqlite3_value *image, const char *const *labels,
                    int n_labels, const char *const *templates, int n_templates, char **json,
                    cdb_error *err) {
  int dim = clip_model_dim(model);
  float *img = malloc(sizeof(float) * (size_t)dim);
  float *lab = malloc(sizeof(float) * (size_t)dim * (size_t)n_labels);
  label_score *scores = calloc((size_t)n_labels, sizeof *scores);
  int rc = img && lab && scores ? 0 : cdb_error_set(err, "out of memory");
  if (rc == 0) rc = classify_image_vector(model, image, img, err);
  if (rc == 0) rc = label_vectors(model, labels, n_labels, templates, n_templates, lab, err);
  if (rc == 0) {
    double scale = exp((double)clip_model_logit_scale(model)), max = -INFINITY, sum = 0;
    for (int l = 0; l < n_labels; l++) {
      scores[l].label = labels[l];
      scores[l].score = scale * cdb_vec_dot(img, lab + (size_t)l * dim, dim);
      if (scores[l].score > max) max = scores[l].score;
    }
    for (int l = 0; l < n_labels; l++) sum += (scores[l].score = exp(scores[l].score - max));
    for (int l = 0; l < n_labels; l++) scores[l].score /= sum;
    *json = scores_json(scores, n_labels);
    if (!*json) rc = cdb_error_set(err, "out of memory");
  }
  free(img);
  free(lab);
  free(scores);
  return rc;
}

/* Labels are argv[first..argc-1]: non-empty TEXT each. */
static const char **label_args(sqlite3_context *ctx, const char *fn, int argc, sqlite3_value **argv,
                               int first) {
  const char **labels = calloc((size_t)(argc - first), sizeof *labels);
  if (!labels) {
    sqlite3_result_error_nomem(ctx);
    return NULL;
  }
  for (int i = first; i < argc; i++) {
    if (sqlite3_value_type(argv[i]) != SQLITE_TEXT || sqlite3_value_bytes(argv[i]) == 0) {
      char *msg = sqlite3_mprintf("%s: label %d must be non-empty TEXT", fn, i - first + 1);
      sqlite3_result_error(ctx, msg, -1);
      sqlite3_free(msg);
      free(labels);
      return NULL;
    }
    labels[i - first] = (const char *)sqlite3_value_text(argv[i]);
  }
  return labels;
}

/* The labels of a call and the model they name: argv[first..] as labels with the default model,
 * or a single JSON object {"labels": [...], "model": NAME} (model optional). */
typedef struct classify_args {
  const char **labels;
  int n_labels;
  const char *model;
  json_object *options; /* owns the strings of the JSON form */
} classify_args;

static json_object *options_object(sqlite3_value *v) {
  const char *text = (const char *)sqlite3_value_text(v);
  if (sqlite3_value_type(v) != SQLITE_TEXT || !text) return NULL;
  while (*text == ' ' || *text == '\t' || *text == '\n') text++;
  if (*text != '{') return NULL;
  json_object *o = json_tokener_parse(text);
  if (o && json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, "labels", NULL))
    return o;
  if (o) json_object_put(o);
  return NULL;
}

/* Fills args from the JSON form; returns an error message (static) or NULL. */
static const char *options_labels(json_object *o, classify_args *args) {
  json_object_object_foreach(o, key, val) {
    if (strcmp(key, "model") == 0) {
      if (!json_object_is_type(val, json_type_string) || !json_object_get_string_len(val))
        return "\"model\" must be a non-empty string";
      args->model = json_object_get_string(val);
    } else if (strcmp(key, "labels") != 0) {
      return "the labels object takes only the keys \"labels\" and \"model\"";
    }
  }
  json_object *arr = json_object_object_get(o, "labels");
  size_t n = json_object_is_type(arr, json_type_array) ? json_object_array_length(arr) : 0;
  if (n == 0 || n > 100000) return "\"labels\" must be a non-empty array of non-empty strings";
  args->labels = calloc(n, sizeof *args->labels);
  if (!args->labels) return "out of memory";
  for (size_t i = 0; i < n; i++) {
    json_object *l = json_object_array_get_idx(arr, i);
    if (!json_object_is_type(l, json_type_string) || !json_object_get_string_len(l))
      return "\"labels\" must be a non-empty array of non-empty strings";
    args->labels[i] = json_object_get_string(l);
  }
  args->n_labels = (int)n;
  return NULL;
}

static int get_classify_args(sqlite3_context *ctx, const char *fn, int argc, sqlite3_value **argv,
                             int first, classify_args *args) {
  if (argc == first + 1 && (args->options = options_object(argv[first]))) {
    const char *problem = options_labels(args->options, args);
    if (!problem) return 0;
    char *msg = sqlite3_mprintf("%s: %s", fn, problem);
    sqlite3_result_error(ctx, msg, -1);
    sqlite3_free(msg);
    return -1;
  }
  args->labels = label_args(ctx, fn, argc, argv, first);
  args->n_labels = argc - first;
  return args->labels ? 0 : -1;
}

static void run_classify(sqlite3_context *ctx, const char *fn, int argc, sqlite3_value **argv,
                         int first_label, const char *const *templates, int n_templates) {
  if (argc <= first_label) {
    char *msg = sqlite3_mprintf("%s: give at least one label", fn);
    sqlite3_result_error(ctx, msg, -1);
    sqlite3_free(msg);
    return;
  }
  classify_args args = {0};
  cdb_error err = {{0}};
  clip_model *model = NULL;
  char *json = NULL;
  if (get_classify_args(ctx, fn, argc, argv, first_label, &args) != 0) goto done;
  model = cdbx_conn_model(sqlite3_user_data(ctx), args.model, &err);
  if (!model ||
      classify(model, argv[0], args.labels, args.n_labels, templates, n_templates, &json, &err)) {
    result_cdb_error(ctx, fn, &err);
  } else {
    sqlite3_result_text(ctx, json, -1, free);
  }
done:
  free(args.labels);
  if (args.options) json_object_put(args.options);
}

static void fn_classify(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  static const char *const templates[] = {CLIPDB_CLASSIFY_TEMPLATE};
  run_classify(ctx, "clip_classify", argc, argv, 1, templates, 1);
}

static void fn_classify_templates(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  const char *fn = "clip_classify_templates";
  cdb_error err = {{0}};
  json_object *arr = NULL;
  if (argc >= 2 && sqlite3_value_type(argv[1]) == SQLITE_TEXT) {
    arr = cdb_json_parse((const char *)sqlite3_value_text(argv[1]),
                         (size_t)sqlite3_value_bytes(argv[1]), "templates", &err);
  }
  size_t n = arr && json_object_is_type(arr, json_type_array) ? json_object_array_length(arr) : 0;
  const char **templates = n ? calloc(n, sizeof *templates) : NULL;
  for (size_t i = 0; templates && i < n; i++) {
    json_object *t = json_object_array_get_idx(arr, i);
    templates[i] = json_object_is_type(t, json_type_string) ? json_object_get_string(t) : NULL;
    if (!templates[i] || !strstr(templates[i], "{}")) {
      free(templates);
      templates = NULL;
    }
  }
  if (!templates) {
    sqlite3_result_error(ctx,
                         "clip_classify_templates: argument 2 must be a JSON array of "
                         "strings that each contain {} (e.g. '[\"a photo of a {}.\"]')",
                         -1);
  } else {
    run_classify(ctx, fn, argc, argv, 2, templates, (int)n);
  }
  free(templates);
  if (arr) json_object_put(arr);
}

static void fn_model(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  if (sqlite3_value_type(argv[0]) != SQLITE_TEXT || sqlite3_value_bytes(argv[0]) == 0 ||
      sqlite3_value_type(argv[1]) != SQLITE_TEXT || sqlite3_value_bytes(argv[1]) == 0) {
    sqlite3_result_error(ctx, "clip_model: expected (name TEXT, path TEXT), both non-empty", -1);
    return;
  }
  const char *name = (const char *)sqlite3_value_text(argv[0]);
  const char *path = (const char *)sqlite3_value_text(argv[1]);
  cdb_error err = {{0}};
  clip_model *model = NULL;
  if (cdbx_conn_register_model(sqlite3_user_data(ctx), name, path, &model, &err) != 0) {
    result_cdb_error(ctx, "clip_model", &err);
    return;
  }
  json_object *o = json_object_new_object();
  json_object_object_add(o, "name", json_object_new_string(name));
  json_object_object_add(o, "path", json_object_new_string(path));
  json_object_object_add(o, "dims", json_object_new_int(clip_model_dim(model)));
  json_object_object_add(o, "identity", json_object_new_string(clip_model_identity(model)));
  json_object_object_add(o, "precision", json_object_new_string(clip_model_precision(model)));
  int flags = JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE;
  sqlite3_result_text(ctx, json_object_to_json_string_ext(o, flags), -1, SQLITE_TRANSIENT);
  json_object_put(o);
}

static void fn_version(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  (void)argv;
  sqlite3_result_text(ctx, "clipdb " CLIPDB_VERSION, -1, SQLITE_STATIC);
}

/* clip_index_info(table) -> JSON of the live index: what `clipdb info` and users inspect. */
static void fn_index_info(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  if (sqlite3_value_type(argv[0]) != SQLITE_TEXT) {
    sqlite3_result_error(ctx, "clip_index_info: the argument must be a table name (TEXT)", -1);
    return;
  }
  const char *name = (const char *)sqlite3_value_text(argv[0]);
  sqlite3 *db = sqlite3_context_db_handle(ctx);
  cdbx_table *t = cdbx_conn_open_table(db, sqlite3_user_data(ctx), name);
  if (!t) {
    char *msg = sqlite3_mprintf("clip_index_info: no clip table named \"%s\"", name);
    sqlite3_result_error(ctx, msg, -1);
    sqlite3_free(msg);
    return;
  }
  cdb_index_info info;
  if (cdbx_table_index_info(t, &info) != SQLITE_OK) {
    /* The table's own message says why (a damaged snapshot, a model that cannot load, ...). */
    char *msg = sqlite3_mprintf("clip_index_info: %s", t->base.zErrMsg
                                                           ? t->base.zErrMsg
                                                           : "the index could not be loaded");
    sqlite3_free(t->base.zErrMsg);
    t->base.zErrMsg = NULL;
    sqlite3_result_error(ctx, msg ? msg : "clip_index_info: out of memory", -1);
    sqlite3_free(msg);
    return;
  }
  json_object *o = json_object_new_object();
  json_object_object_add(o, "kind", json_object_new_string(info.kind));
  json_object_object_add(o, "factory", json_object_new_string(info.factory));
  json_object_object_add(o, "nlist", json_object_new_int(info.nlist));
  json_object_object_add(o, "nprobe", json_object_new_int(info.nprobe));
  json_object_object_add(o, "count", json_object_new_int64(info.count));
  json_object_object_add(o, "trained_at_count", json_object_new_int64(info.trained_at_count));
  json_object_object_add(o, "mapped", json_object_new_boolean(info.mapped));
  json_object_object_add(o, "embed_batches", json_object_new_int64(t->queue.embed_batches));
  json_object_object_add(o, "embedded_rows", json_object_new_int64(t->queue.embedded_rows));
  /* The table's record of its model: the name as created, and the identity of the model its
   * vectors come from (both null for a dims= table). */
  json_object_object_add(o, "model", t->model_name ? json_object_new_string(t->model_name) : NULL);
  json_object_object_add(o, "model_identity",
                         t->model_identity ? json_object_new_string(t->model_identity) : NULL);
  char *precision = NULL;
  if (cdbx_store_read_precision(t, &precision) != SQLITE_OK) {
    json_object_put(o);
    sqlite3_result_error(ctx, "clip_index_info: cannot read the table's precision", -1);
    return;
  }
  json_object_object_add(o, "precision", precision ? json_object_new_string(precision) : NULL);
  sqlite3_free(precision);
  int flags = JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE;
  sqlite3_result_text(ctx, json_object_to_json_string_ext(o, flags), -1, SQLITE_TRANSIENT);
  json_object_put(o);
}

static const struct {
  const char *name;
  int nargs;
  int flags;
  void (*fn)(sqlite3_context *, int, sqlite3_value **);
} functions[] = {
    /* The default model may change between calls (clip_model), so not DETERMINISTIC; a model
     * argument can name any directory, so the 2-argument forms are direct-only. */
    {"clip_embed_text", 1, SQLITE_UTF8, fn_embed_text},
    {"clip_embed_text", 2, DIRECT, fn_embed_text},
    {"clip_embed_image", 1, DIRECT, fn_embed_image},
    {"clip_embed_image", 2, DIRECT, fn_embed_image},
    {"clip_similarity", 2, PURE, fn_similarity},
    {"clip_vec_add", 2, PURE, fn_vec_add},
    {"clip_vec_sub", 2, PURE, fn_vec_sub},
    {"clip_vec_scale", 2, PURE, fn_vec_scale},
    {"clip_vec_normalize", 1, PURE, fn_vec_normalize},
    {"clip_vec_to_json", 1, PURE, fn_vec_to_json},
    {"clip_vec_from_json", 1, PURE, fn_vec_from_json},
    {"clip_classify", -1, DIRECT, fn_classify},
    {"clip_classify_templates", -1, DIRECT, fn_classify_templates},
    {"clip_model", 2, DIRECT, fn_model},
    {"clip_version", 0, PURE, fn_version},
    {"clip_index_info", 1, SQLITE_UTF8, fn_index_info},
};

int cdbx_register_functions(sqlite3 *db, cdbx_conn *conn) {
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    int rc = sqlite3_create_function_v2(db, functions[i].name, functions[i].nargs,
                                        functions[i].flags, conn, functions[i].fn, NULL, NULL,
                                        NULL);
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}
