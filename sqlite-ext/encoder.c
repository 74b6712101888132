/* encoder.c: the extension's side of the encoder: the process-wide model registry, per-connection
 * model names, and embedding SQL values (texts; images as bytes, paths or URLs).
 *
 * A model directory is loaded once per process (keyed by its real path) and shared by every
 * connection and table that uses it; the last release frees it. Each connection keeps a small
 * list mapping the names it has used (or registered with clip_model) to retained models. */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/internal.h"
#include "src/model_path.h"

typedef struct registry_entry {
  char *dir;
  clip_model *model;
  int refs;
  struct registry_entry *next;
} registry_entry;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static registry_entry *registry;

clip_model *cdbx_registry_acquire(const char *dir, cdb_error *err) {
  char real[PATH_MAX];
  if (!realpath(dir, real)) {
    cdb_error_set(err, "model directory \"%s\" does not exist", dir);
    return NULL;
  }
  pthread_mutex_lock(&registry_lock);
  registry_entry *e = registry;
  while (e && strcmp(e->dir, real) != 0) e = e->next;
  clip_model *model = NULL;
  if (e) {
    e->refs++;
    model = e->model;
  } else {
    /* Loading under the lock makes a second connection wait for the first load, not repeat it. */
    model = clip_model_load(real, NULL, err);
    e = model ? calloc(1, sizeof *e) : NULL;
    if (e && !(e->dir = strdup(real))) {
      free(e);
      e = NULL;
    }
    if (model && !e) {
      clip_model_free(model);
      model = NULL;
      cdb_error_set(err, "out of memory");
    }
    if (e) {
      e->model = model;
      e->refs = 1;
      e->next = registry;
      registry = e;
    }
  }
  pthread_mutex_unlock(&registry_lock);
  return model;
}

void cdbx_registry_retain(clip_model *model) {
  pthread_mutex_lock(&registry_lock);
  for (registry_entry *e = registry; e; e = e->next) {
    if (e->model == model) e->refs++;
  }
  pthread_mutex_unlock(&registry_lock);
}

void cdbx_registry_release(clip_model *model) {
  if (!model) return;
  pthread_mutex_lock(&registry_lock);
  for (registry_entry **pe = &registry; *pe; pe = &(*pe)->next) {
    registry_entry *e = *pe;
    if (e->model != model) continue;
    if (--e->refs == 0) {
      *pe = e->next;
      clip_model_free(e->model);
      free(e->dir);
      free(e);
    }
    break;
  }
  pthread_mutex_unlock(&registry_lock);
}

static cdbx_model_entry *find_entry(cdbx_conn *conn, const char *name) {
  for (cdbx_model_entry *e = conn->models; e; e = e->next) {
    if (strcmp(e->name, name) == 0) return e;
  }
  return NULL;
}

static cdbx_model_entry *add_entry(cdbx_conn *conn, const char *name, cdb_error *err) {
  cdbx_model_entry *e = calloc(1, sizeof *e);
  if (!e || !(e->name = strdup(name))) {
    free(e);
    cdb_error_set(err, "out of memory");
    return NULL;
  }
  e->next = conn->models;
  conn->models = e;
  return e;
}

clip_model *cdbx_conn_model(cdbx_conn *conn, const char *name, cdb_error *err) {
  if (!name) name = "";
  cdbx_model_entry *e = name[0] ? NULL : find_entry(conn, "default");
  if (!e || !e->registered) e = find_entry(conn, name);
  if (e && e->model) return e->model;
  if (!e && !(e = add_entry(conn, name, err))) return NULL;
  if (!e->dir) {
    /* Resolved at each attempt until it works: the user may pull the model in between. */
    e->dir = cdb_model_resolve(name[0] ? name : NULL, err);
    if (!e->dir) return NULL;
  }
  e->model = cdbx_registry_acquire(e->dir, err);
  if (!e->model && !e->registered) {
    free(e->dir);
    e->dir = NULL;
  }
  return e->model;
}

int cdbx_conn_register_model(cdbx_conn *conn, const char *name, const char *path, clip_model **out,
                             cdb_error *err) {
  char *dir = cdb_model_resolve(path, err); /* a folder, or a hub name in the model cache */
  if (!dir) return -1;
  clip_model *model = cdbx_registry_acquire(dir, err);
  cdbx_model_entry *e = model ? find_entry(conn, name) : NULL;
  if (model && !e && !(e = add_entry(conn, name, err))) {
    cdbx_registry_release(model);
    model = NULL;
  }
  if (!model) {
    free(dir);
    return -1;
  }
  cdbx_registry_release(e->model); /* tables retain their own reference */
  free(e->dir);
  e->dir = dir;
  e->model = model;
  e->registered = 1;
  *out = model;
  return 0;
}

void cdbx_conn_free_models(cdbx_conn *conn) {
  cdbx_model_entry *e = conn->models;
  while (e) {
    cdbx_model_entry *next = e->next;
    cdbx_registry_release(e->model);
    free(e->name);
    free(e->dir);
    free(e);
    e = next;
  }
  conn->models = NULL;
}

int cdbx_check_embeddings(const clip_model *model, const float *v, int rows, cdb_error *err) {
  size_t n = (size_t)rows * (size_t)clip_model_dim(model);
  if (cdb_vec_first_nonfinite(v, n) < n) {
    return cdb_error_set(err, "the model produced a non-finite embedding (NaN or infinity); "
                              "its weights may be damaged");
  }
  return 0;
}

int cdbx_embed_text(clip_model *model, const char *text, int len, float *out, cdb_error *err) {
  if (!text || len <= 0) return cdb_error_set(err, "text is empty");
  if ((int)strlen(text) != len) return cdb_error_set(err, "text contains a NUL character");
  const char *texts[1] = {text};
  int rc = clip_embed_texts(model, texts, 1, out, err);
  return rc == 0 ? cdbx_check_embeddings(model, out, 1, err) : rc;
}

static int load_buffer(clip_model *model, const void *data, size_t len, float *pixels,
                       cdb_error *err) {
  if (len == 0) return cdb_error_set(err, "image is an empty BLOB");
  return clip_image_load_buffer(model, data, len, pixels, err);
}

int cdbx_image_value_pixels(clip_model *model, sqlite3_value *value, float *pixels,
                            cdb_error *err) {
  switch (sqlite3_value_type(value)) {
    case SQLITE_BLOB:
      return load_buffer(model, sqlite3_value_blob(value), (size_t)sqlite3_value_bytes(value),
                         pixels, err);
    case SQLITE_TEXT: {
      const char *src = (const char *)sqlite3_value_text(value);
      int len = sqlite3_value_bytes(value);
      if (!src || len == 0) return cdb_error_set(err, "image path is an empty string");
      if ((int)strlen(src) != len) return cdb_error_set(err, "image path contains a NUL character");
      return clip_image_load_source(model, src, pixels, err);
    }
    case SQLITE_NULL: return cdb_error_set(err, "image is NULL");
    default:
      return cdb_error_set(err, "image must be a BLOB of image bytes or a TEXT path or URL, not a "
                                "number");
  }
}

size_t cdbx_image_floats(const clip_model *model) {
  size_t side = (size_t)clip_model_image_size(model);
  return 3 * side * side;
}

int cdbx_embed_image_value(clip_model *model, sqlite3_value *value, float *out, cdb_error *err) {
  float *pixels = malloc(sizeof(float) * cdbx_image_floats(model));
  if (!pixels) return cdb_error_set(err, "out of memory");
  int rc = cdbx_image_value_pixels(model, value, pixels, err);
  if (rc == 0) rc = clip_embed_pixels(model, pixels, 1, out, err);
  if (rc == 0) rc = cdbx_check_embeddings(model, out, 1, err);
  free(pixels);
  return rc;
}
