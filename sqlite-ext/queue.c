/* queue.c: row writes and the embedding queue behind them. An INSERT or UPDATE validates its
 * row and writes T_rows at once; its image or text waits, preprocessed, in the table's pending
 * queue until a flush embeds each kind in one encoder call and stores the vectors (T_vectors, the
 * change log and the index cache). Also the table's model (loaded on first need, identity
 * checked) and the re-embedding of rows that lost their vector (for 'rebuild').
 * Owns: cdbx_table.queue.
 * Calls down into cache.c (the change log, the cache) and store.c (statements on T_rows and
 * T_vectors); called by vtab.c and commands.c. */
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/table.h"
/* ---- the table's model ----
 * The table stores the identity of the model its vectors come from (clip_model_identity); the
 * model now under the table's model name must have it. A table written before identities
 * covered the weights stores the legacy form: it is accepted when it matches and rewritten by
 * the next commit. 'rebuild' under a model with another identity embeds every row again. */

static const char *shown_model_name(const cdbx_table *t) {
  return t->model_name[0] ? t->model_name : "(the default model)";
}

static int identity_error(cdbx_table *t, clip_model *m) {
  const char *shown = shown_model_name(t);
  return cdbx_table_error(
      t,
      "clip: %s: its vectors were embedded by model %s with identity %s, but %s now loads a "
      "different model, with identity %s (other weights or configuration: the two models' "
      "vectors cannot be compared). Either embed every row again from its stored image or text with "
      "the new model: INSERT INTO %s(%s) VALUES('rebuild'); or use the original model: "
      "SELECT clip_model(name, path) with its directory",
      t->name, shown, t->model_identity ? t->model_identity : "(none)", shown,
      clip_model_identity(m), t->name, t->name);
}

static int dims_error(cdbx_table *t, clip_model *m) {
  return cdbx_table_error(t,
                          "clip: %s has %d dimensions but its model %s now loads a model of "
                          "%d (identity %s); use the original model, or create a new table",
                          t->name, t->dims, shown_model_name(t), clip_model_dim(m),
                          clip_model_identity(m));
}

/* The model now under the table's model name, unchecked; NULL with the table's error set. */
static clip_model *named_model(cdbx_table *t) {
  if (!t->model_name) {
    cdbx_table_error(t,
                     "clip: %s holds precomputed vectors only (created with dims=, no model): "
                     "write the embedding column, and query with an embedding BLOB",
                     t->name);
    return NULL;
  }
  cdb_error err = {{0}};
  clip_model *m = cdbx_conn_model(t->conn, t->model_name, &err);
  if (!m) {
    cdbx_table_error(t,
                     "clip: %s uses model %s: %s; register it with SELECT clip_model(name, "
                     "path)",
                     t->name, shown_model_name(t), err.msg);
  }
  return m;
}

static void take_model(cdbx_table *t, clip_model *m) {
  cdbx_registry_retain(m);
  t->queue.model = m;
}

static int set_identity_pending(cdbx_table *t, clip_model *m) {
  sqlite3_free(t->queue.identity_pending);
  t->queue.identity_pending = sqlite3_mprintf("%s", clip_model_identity(m));
  return t->queue.identity_pending ? SQLITE_OK : SQLITE_NOMEM;
}

/* The model this table embeds with, loaded on first need and checked against the table. */
clip_model *cdbx_table_model(cdbx_table *t) {
  if (t->queue.model) return t->queue.model;
  clip_model *m = named_model(t);
  if (!m || cdbx_store_read_model_identity(t) != SQLITE_OK) return NULL;
  const char *stored = t->model_identity ? t->model_identity : "";
  if (clip_model_dim(m) != t->dims) {
    dims_error(t, m);
    return NULL;
  }
  if (strcmp(stored, clip_model_legacy_identity(m)) == 0) {
    if (set_identity_pending(t, m) != SQLITE_OK) return NULL;
  } else if (strcmp(stored, clip_model_identity(m)) != 0) {
    identity_error(t, m);
    return NULL;
  }
  take_model(t, m);
  return m;
}

int cdbx_table_model_sync(cdbx_table *t) {
  if (!t->queue.identity_pending) return SQLITE_OK;
  return cdbx_store_set_model_identity(t, t->queue.identity_pending);
}

void cdbx_table_model_commit(cdbx_table *t) {
  t->queue.model_adopted = 0;
  if (!t->queue.identity_pending) return;
  sqlite3_free(t->model_identity);
  t->model_identity = t->queue.identity_pending;
  t->queue.identity_pending = NULL;
}

void cdbx_table_model_rollback(cdbx_table *t) {
  if (!t->queue.model_adopted) return;
  cdbx_registry_release(t->queue.model);
  t->queue.model = NULL;
  t->queue.model_adopted = 0;
}

/* ---- writes: the pending queue ----
 * An INSERT (or an UPDATE that re-embeds) validates and preprocesses its image or text at once,
 * so every user error belongs to its statement and changes nothing, writes the row, and queues
 * the preprocessed input; the encoder then runs once per batch. Flushes happen when a queue is
 * full, before anything reads vectors (KNN, the embedding column, commands, clip_index_info),
 * at xSync (a commit persists every vector), xSavepoint and xRename. */

/* Batch sizes: the encoder streams its weights once per call, so a batch costs little more than
 * one row. A queued ViT-B/32 image holds 3x224x224 floats (602 KB): at most ~19 MB queued. */
#define PENDING_IMAGES 32
#define PENDING_TEXTS 64

int cdbx_pending_has(const cdbx_table *t, int64_t rowid) {
  const pending_rows *p = &t->queue.pending;
  for (int i = 0; i < p->n_images; i++)
    if (p->image_ids[i] == rowid) return 1;
  for (int i = 0; i < p->n_texts; i++)
    if (p->text_ids[i] == rowid) return 1;
  return 0;
}

static void pending_drop_images(cdbx_table *t, int from, int count) {
  pending_rows *p = &t->queue.pending;
  size_t img = cdbx_image_floats(t->queue.model);
  int rest = p->n_images - from - count;
  memmove(p->image_ids + from, p->image_ids + from + count, sizeof(int64_t) * (size_t)rest);
  memmove(p->pixels + img * (size_t)from, p->pixels + img * (size_t)(from + count),
          sizeof(float) * img * (size_t)rest);
  p->n_images -= count;
}

static void pending_drop_texts(cdbx_table *t, int from, int count) {
  pending_rows *p = &t->queue.pending;
  for (int i = from; i < from + count; i++) free(p->texts[i]);
  int rest = p->n_texts - from - count;
  memmove(p->text_ids + from, p->text_ids + from + count, sizeof(int64_t) * (size_t)rest);
  memmove(p->texts + from, p->texts + from + count, sizeof(char *) * (size_t)rest);
  p->n_texts -= count;
}

/* Forgets rowid's queued input (its row is being deleted). */
static void pending_drop(cdbx_table *t, int64_t rowid) {
  pending_rows *p = &t->queue.pending;
  for (int i = 0; i < p->n_images; i++) {
    if (p->image_ids[i] == rowid) {
      pending_drop_images(t, i, 1);
      return;
    }
  }
  for (int i = 0; i < p->n_texts; i++) {
    if (p->text_ids[i] == rowid) {
      pending_drop_texts(t, i, 1);
      return;
    }
  }
}

/* Discards the queue without embedding (its rows were rolled back). */
void cdbx_pending_clear(cdbx_table *t) {
  pending_rows *p = &t->queue.pending;
  if (p->n_texts) pending_drop_texts(t, 0, p->n_texts);
  p->n_images = 0;
}

void cdbx_pending_free(cdbx_table *t) {
  cdbx_pending_clear(t);
  pending_rows *p = &t->queue.pending;
  free(p->image_ids);
  free(p->pixels);
  free(p->text_ids);
  free(p->texts);
  memset(p, 0, sizeof *p);
}

static int put_vector(cdbx_table *t, int64_t rowid, const float *vec);

/* Writes the vectors of the first n queued rows of one kind; *written counts those stored. */
static int put_vectors(cdbx_table *t, const int64_t *ids, int n, const float *vecs, int *written) {
  for (*written = 0; *written < n; (*written)++) {
    int rc = put_vector(t, ids[*written], vecs + (size_t)*written * (size_t)t->dims);
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

static int flush_error(cdbx_table *t, int n, const char *what, const cdb_error *err) {
  return cdbx_fail(t, "embedding %d queued %s: %s", n, what, err->msg);
}

/* After one encoder call over n queued rows of a kind (`failed` when it failed): checks its
 * output and stores the vectors; *written counts those stored. */
static int store_embedded(cdbx_table *t, int failed, const int64_t *ids, int n, const float *out,
                          const char *what, cdb_error *err, int *written) {
  *written = 0;
  if (failed || cdbx_check_embeddings(t->queue.model, out, n, err) != 0) {
    return flush_error(t, n, what, err);
  }
  t->queue.embed_batches++;
  t->queue.embedded_rows += n;
  return put_vectors(t, ids, n, out, written);
}

int cdbx_pending_flush(cdbx_table *t) {
  pending_rows *p = &t->queue.pending;
  if (p->n_images == 0 && p->n_texts == 0) return SQLITE_OK;
  int most = p->n_images > p->n_texts ? p->n_images : p->n_texts;
  float *out = malloc(sizeof(float) * (size_t)t->dims * (size_t)most);
  if (!out) return SQLITE_NOMEM;
  cdb_error err = {{0}};
  int rc = SQLITE_OK, written = 0;
  /* The vector and change-log writes are internal: the user's last_insert_rowid is kept. */
  sqlite3_int64 last = sqlite3_last_insert_rowid(t->db);
  if (p->n_images > 0) {
    int failed = clip_embed_pixels(t->queue.model, p->pixels, p->n_images, out, &err) != 0;
    rc = store_embedded(t, failed, p->image_ids, p->n_images, out, "images", &err, &written);
    pending_drop_images(t, 0, written);
    if (rc == SQLITE_OK) rc = cdbx_store_note_precision(t, clip_model_precision(t->queue.model));
  }
  if (rc == SQLITE_OK && p->n_texts > 0) {
    int failed = clip_embed_texts(t->queue.model, (const char *const *)p->texts, p->n_texts, out,
                                  &err) != 0;
    rc = store_embedded(t, failed, p->text_ids, p->n_texts, out, "texts", &err, &written);
    pending_drop_texts(t, 0, written);
  }
  free(out);
  sqlite3_set_last_insert_rowid(t->db, last);
  return rc;
}

/* Room for one more entry of a kind: a full queue is flushed first (before the row writes). */
static int pending_reserve(cdbx_table *t, int image) {
  pending_rows *p = &t->queue.pending;
  if (image ? p->n_images >= PENDING_IMAGES : p->n_texts >= PENDING_TEXTS) {
    int rc = cdbx_pending_flush(t);
    if (rc != SQLITE_OK) return rc;
  }
  if (image && p->n_images == p->cap_images) {
    int cap = p->cap_images ? p->cap_images * 2 : 1;
    if (cap > PENDING_IMAGES) cap = PENDING_IMAGES;
    int64_t *ids = realloc(p->image_ids, sizeof *ids * (size_t)cap);
    if (ids) p->image_ids = ids;
    float *px = realloc(p->pixels, sizeof(float) * cdbx_image_floats(t->queue.model) * (size_t)cap);
    if (px) p->pixels = px;
    if (!ids || !px) return SQLITE_NOMEM;
    p->cap_images = cap;
  } else if (!image && p->n_texts == p->cap_texts) {
    int cap = p->cap_texts ? p->cap_texts * 2 : 4;
    if (cap > PENDING_TEXTS) cap = PENDING_TEXTS;
    int64_t *ids = realloc(p->text_ids, sizeof *ids * (size_t)cap);
    if (ids) p->text_ids = ids;
    char **texts = realloc(p->texts, sizeof *texts * (size_t)cap);
    if (texts) p->texts = texts;
    if (!ids || !texts) return SQLITE_NOMEM;
    p->cap_texts = cap;
  }
  return SQLITE_OK;
}

/* Where a written row's vector comes from: given (vec), or queued (an image preprocessed into
 * the queue's next free slot, or a checked copy of the text), committed once the row is written.
 * Nothing may flush the queue between row_source() and source_commit(). */
typedef struct row_source {
  enum { SRC_VECTOR, SRC_IMAGE, SRC_TEXT } kind;
  float *vec;
  char *text;
} row_source;

static void source_free(row_source *src) {
  free(src->vec);
  free(src->text);
  src->vec = NULL;
  src->text = NULL;
}

static int source_vector(cdbx_table *t, sqlite3_value *embedding, row_source *src) {
  cdb_error err = {{0}};
  if (!cdbx_value_is_vector(embedding, t->dims)) {
    return cdbx_fail(t,
                     "embedding must be a BLOB of %d float32 values (%d "
                     "bytes), got %s of %d bytes",
                     t->dims, t->dims * 4,
                     sqlite3_value_type(embedding) == SQLITE_BLOB ? "a BLOB" : "a non-BLOB",
                     sqlite3_value_bytes(embedding));
  }
  src->kind = SRC_VECTOR;
  src->vec = malloc(sizeof(float) * (size_t)t->dims);
  if (!src->vec) return SQLITE_NOMEM;
  memcpy(src->vec, sqlite3_value_blob(embedding), sizeof(float) * (size_t)t->dims);
  if (cdbx_vec_check_finite(src->vec, t->dims, "embedding", &err) == 0 &&
      cdbx_vec_normalize(src->vec, t->dims, "embedding", &err) == 0) {
    return SQLITE_OK;
  }
  return cdbx_fail(t, "%s", err.msg);
}

/* Checks the text the way the encoder will see it (tokenizing catches invalid UTF-8). */
static int source_text(cdbx_table *t, clip_model *m, sqlite3_value *text, row_source *src) {
  cdb_error err = {{0}};
  const char *s = (const char *)sqlite3_value_text(text);
  int len = sqlite3_value_bytes(text);
  int rc = 0;
  if (sqlite3_value_type(text) != SQLITE_TEXT) rc = cdb_error_set(&err, "text must be TEXT");
  else if (!s || len <= 0) rc = cdb_error_set(&err, "text is empty");
  else if ((int)strlen(s) != len) rc = cdb_error_set(&err, "text contains a NUL character");
  if (rc == 0) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)clip_model_context_length(m));
    rc = ids ? clip_tokenize(m, s, (size_t)len, ids, &err) : cdb_error_set(&err, "out of memory");
    free(ids);
  }
  if (rc < 0) return cdbx_fail(t, "%s", err.msg);
  src->kind = SRC_TEXT;
  src->text = malloc((size_t)len + 1);
  if (!src->text) return SQLITE_NOMEM;
  memcpy(src->text, s, (size_t)len + 1);
  return pending_reserve(t, 0);
}

static int source_image(cdbx_table *t, clip_model *m, sqlite3_value *image, row_source *src) {
  if (!t->image_paths && sqlite3_value_type(image) != SQLITE_BLOB) {
    return cdbx_fail(t, "image must be image bytes (a BLOB): the table was created with "
                        "image_paths=off");
  }
  int rc = pending_reserve(t, 1);
  if (rc != SQLITE_OK) return rc;
  pending_rows *p = &t->queue.pending;
  cdb_error err = {{0}};
  float *slot = p->pixels + cdbx_image_floats(m) * (size_t)p->n_images;
  if (cdbx_image_value_pixels(m, image, slot, &err) != 0) {
    return cdbx_fail(t, "%s", err.msg);
  }
  src->kind = SRC_IMAGE;
  return SQLITE_OK;
}

/* The source of a written row's vector: the embedding column, else the image, else the text. */
static int row_source_of(cdbx_table *t, sqlite3_value *image, sqlite3_value *text,
                         sqlite3_value *embedding, row_source *src) {
  if (embedding && sqlite3_value_type(embedding) != SQLITE_NULL) {
    return source_vector(t, embedding, src);
  }
  int has_image = image && sqlite3_value_type(image) != SQLITE_NULL;
  int has_text = text && sqlite3_value_type(text) != SQLITE_NULL;
  if (!has_image && !has_text) {
    return cdbx_fail(t, "a row needs an image, a text or an embedding");
  }
  clip_model *m = cdbx_table_model(t);
  if (!m) return SQLITE_ERROR;
  return has_image ? source_image(t, m, image, src) : source_text(t, m, text, src);
}

/* The row is written: store its vector now, or queue its input (the queue takes the text). */
static int source_commit(cdbx_table *t, int64_t rowid, row_source *src) {
  pending_rows *p = &t->queue.pending;
  switch (src->kind) {
    case SRC_VECTOR: return put_vector(t, rowid, src->vec);
    case SRC_IMAGE: p->image_ids[p->n_images++] = rowid; return SQLITE_OK;
    case SRC_TEXT:
      p->text_ids[p->n_texts] = rowid;
      p->texts[p->n_texts++] = src->text;
      src->text = NULL;
      return SQLITE_OK;
  }
  return SQLITE_ERROR;
}

static int check_row_types(cdbx_table *t, sqlite3_value *image, sqlite3_value *text) {
  int it = sqlite3_value_type(image), tt = sqlite3_value_type(text);
  if (!sqlite3_value_nochange(image) && (it == SQLITE_INTEGER || it == SQLITE_FLOAT)) {
    return cdbx_fail(t, "image must be a BLOB of image bytes or a TEXT path or URL");
  }
  if (!sqlite3_value_nochange(text) && tt != SQLITE_NULL && tt != SQLITE_TEXT) {
    return cdbx_fail(t, "text must be TEXT");
  }
  return SQLITE_OK;
}

static int row_exists(cdbx_table *t, int64_t rowid, int *exists) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_ROW_EXISTS);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_int64(st, 1, rowid);
  int rc = sqlite3_step(st);
  *exists = rc == SQLITE_ROW;
  sqlite3_reset(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int step_write(cdbx_table *t, sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_DONE) return SQLITE_OK;
  cdbx_fail(t, "%s", sqlite3_errmsg(t->db));
  return rc == SQLITE_ROW ? SQLITE_ERROR : sqlite3_errcode(t->db);
}

static int put_vector(cdbx_table *t, int64_t rowid, const float *vec) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_PUT_VECTOR);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_int64(st, 1, rowid);
  sqlite3_bind_blob(st, 2, vec, t->dims * 4, SQLITE_STATIC);
  int rc = step_write(t, st);
  if (rc == SQLITE_OK) rc = cdbx_log_change(t, rowid, 1);
  if (rc == SQLITE_OK) rc = cdbx_cache_put(t, rowid, vec);
  return rc;
}

static int delete_row(cdbx_table *t, int64_t rowid) {
  pending_drop(t, rowid);
  int rc = cdbx_touch(t, rowid);
  sqlite3_stmt *st = rc == SQLITE_OK ? cdbx_stmt(t, ST_DELETE_ROW) : NULL;
  if (!st) return rc == SQLITE_OK ? SQLITE_ERROR : rc;
  sqlite3_bind_int64(st, 1, rowid);
  rc = step_write(t, st);
  if (rc == SQLITE_OK && sqlite3_changes(t->db) == 0) return SQLITE_OK;
  st = rc == SQLITE_OK ? cdbx_stmt(t, ST_DELETE_VECTOR) : NULL;
  if (!st) return rc == SQLITE_OK ? SQLITE_ERROR : rc;
  sqlite3_bind_int64(st, 1, rowid);
  rc = step_write(t, st);
  if (rc == SQLITE_OK) rc = cdbx_log_change(t, rowid, 2);
  if (rc == SQLITE_OK) rc = cdbx_cache_remove(t, rowid);
  return rc;
}

static int rowid_arg(cdbx_table *t, sqlite3_value *v, int64_t *out) {
  if (sqlite3_value_type(v) != SQLITE_INTEGER) {
    return cdbx_fail(t, "rowid must be an integer");
  }
  *out = sqlite3_value_int64(v);
  return SQLITE_OK;
}

/* DELETE of the row whose rowid is the SQL value v. */
int cdbx_row_delete(cdbx_table *t, sqlite3_value *v) {
  int64_t rowid = 0;
  int rc = rowid_arg(t, v, &rowid);
  return rc == SQLITE_OK ? delete_row(t, rowid) : rc;
}

/* An existing rowid: REPLACE deletes the old row, other conflict modes fail the write. */
static int resolve_conflict(cdbx_table *t, int64_t rowid) {
  int exists = 0;
  int rc = row_exists(t, rowid, &exists);
  if (rc != SQLITE_OK || !exists) return rc;
  if (sqlite3_vtab_on_conflict(t->db) == SQLITE_REPLACE) return delete_row(t, rowid);
  cdbx_table_error(t, "UNIQUE constraint failed: %s.rowid", t->name);
  return SQLITE_CONSTRAINT;
}

static void bind_user_columns(cdbx_table *t, sqlite3_stmt *st, sqlite3_value **cols, int first) {
  for (int i = 0; i < t->n_user; i++) sqlite3_bind_value(st, first + i, cols[COL_USER0 + i]);
}

int cdbx_row_insert(cdbx_table *t, sqlite3_value *rowid_v, sqlite3_value **cols,
                    sqlite3_int64 *out_rowid) {
  int64_t rowid = 0;
  int rc = SQLITE_OK;
  int has_rowid = sqlite3_value_type(rowid_v) != SQLITE_NULL;
  if (has_rowid) rc = rowid_arg(t, rowid_v, &rowid);
  /* REPLACE of a queued row: flushed first, since deleting it from the queue below would move
   * the slot that row_source_of() is about to fill. */
  if (rc == SQLITE_OK && has_rowid && cdbx_pending_has(t, rowid)) rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) rc = check_row_types(t, cols[COL_IMAGE], cols[COL_TEXT]);
  /* Check and preprocess before writing anything, so a bad image changes nothing. */
  row_source src = {0};
  if (rc == SQLITE_OK)
    rc = row_source_of(t, cols[COL_IMAGE], cols[COL_TEXT], cols[COL_EMBEDDING], &src);
  if (rc == SQLITE_OK && has_rowid) rc = resolve_conflict(t, rowid);
  sqlite3_stmt *st = rc == SQLITE_OK ? cdbx_stmt(t, ST_INSERT_ROW) : NULL;
  if (rc == SQLITE_OK && !st) rc = SQLITE_ERROR;
  if (rc == SQLITE_OK) {
    if (has_rowid) sqlite3_bind_int64(st, 1, rowid);
    sqlite3_bind_value(st, 2, cols[COL_IMAGE]);
    sqlite3_bind_value(st, 3, cols[COL_TEXT]);
    bind_user_columns(t, st, cols, 4);
    rc = step_write(t, st);
  }
  if (rc == SQLITE_OK) {
    rowid = sqlite3_last_insert_rowid(t->db);
    rc = cdbx_touch(t, rowid);
  }
  if (rc == SQLITE_OK) rc = source_commit(t, rowid, &src);
  if (rc == SQLITE_OK) *out_rowid = rowid;
  source_free(&src);
  return rc;
}

/* One row's vector again, from its stored image or text: checked and preprocessed, then queued
 * like an INSERT's when `queue` is set. Without it nothing is written (an image lands in the
 * queue's free slot but stays uncounted): a dry run. */
static int reembed_row(cdbx_table *t, int64_t rowid, int queue) {
  sqlite3_value *image = NULL, *text = NULL;
  row_source src = {0};
  int rc = cdbx_store_row_source(t, rowid, &image, &text);
  if (rc == SQLITE_OK) rc = row_source_of(t, image, text, NULL, &src);
  if (rc == SQLITE_OK && queue) rc = cdbx_touch(t, rowid);
  if (rc == SQLITE_OK && queue) rc = source_commit(t, rowid, &src);
  if (rc != SQLITE_OK && t->base.zErrMsg) {
    char *why = sqlite3_mprintf("%s", t->base.zErrMsg);
    const char *state = t->queue.model_adopted ? "needs a vector from the new model but"
                                               : "has no vector and";
    cdbx_fail(t,
              "rebuild: row %lld %s cannot be embedded again (%s); fix or delete the row, "
              "then rebuild",
              (long long)rowid, state, why ? why : "out of memory");
    sqlite3_free(why);
  }
  source_free(&src);
  sqlite3_value_free(image);
  sqlite3_value_free(text);
  return rc;
}

/* Every row is checked before any is queued, so a row that cannot be embedded (its file gone)
 * fails the command before it writes anything. */
int cdbx_reembed_missing(cdbx_table *t) {
  id_list ids = {0};
  int rc = cdbx_store_rows_without_vector(t, &ids);
  for (int64_t i = 0; rc == SQLITE_OK && i < ids.n; i++) rc = reembed_row(t, ids.ids[i], 0);
  for (int64_t i = 0; rc == SQLITE_OK && i < ids.n; i++) rc = reembed_row(t, ids.ids[i], 1);
  if (rc == SQLITE_OK) rc = cdbx_pending_flush(t);
  free(ids.ids);
  return rc;
}

/* For 'rebuild' when the model under the table's name has another identity than the one its
 * vectors come from: that model is adopted and every row embedded again from its stored image or
 * text (all checked first, so one that cannot be fails the command before anything is written).
 * *adopted is set when it happened; nothing is done when the model matches or cannot load. */
int cdbx_reembed_for_new_model(cdbx_table *t, int *adopted) {
  *adopted = 0;
  if (!t->model_name || t->queue.model) return SQLITE_OK;
  cdb_error err = {{0}};
  clip_model *m = cdbx_conn_model(t->conn, t->model_name, &err);
  if (!m) return SQLITE_OK; /* no model to move to: rows that need one say so */
  if (cdbx_store_read_model_identity(t) != SQLITE_OK) return SQLITE_ERROR;
  const char *stored = t->model_identity ? t->model_identity : "";
  if (strcmp(stored, clip_model_identity(m)) == 0 ||
      strcmp(stored, clip_model_legacy_identity(m)) == 0)
    return SQLITE_OK;
  if (clip_model_dim(m) != t->dims) return dims_error(t, m);
  take_model(t, m);
  t->queue.model_adopted = 1;
  *adopted = 1;
  id_list ids = {0};
  int rc = cdbx_store_all_row_ids(t, &ids);
  for (int64_t i = 0; rc == SQLITE_OK && i < ids.n; i++) rc = reembed_row(t, ids.ids[i], 0);
  for (int64_t i = 0; rc == SQLITE_OK && i < ids.n; i++) rc = reembed_row(t, ids.ids[i], 1);
  if (rc == SQLITE_OK) rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) rc = cdbx_store_set_model_identity(t, clip_model_identity(m));
  if (rc == SQLITE_OK) rc = cdbx_store_read_model_identity(t);
  free(ids.ids);
  if (rc != SQLITE_OK) {
    cdbx_pending_clear(t);
    cdbx_table_model_rollback(t);
  }
  return rc;
}

static int move_row(cdbx_table *t, int64_t from, int64_t to) {
  int rc = resolve_conflict(t, to);
  if (rc == SQLITE_OK) rc = cdbx_touch(t, from);
  if (rc == SQLITE_OK) rc = cdbx_touch(t, to);
  for (int which = ST_MOVE_ROW; rc == SQLITE_OK && which <= ST_MOVE_VECTOR; which++) {
    sqlite3_stmt *st = cdbx_stmt(t, which);
    if (!st) return SQLITE_ERROR;
    sqlite3_bind_int64(st, 1, from);
    sqlite3_bind_int64(st, 2, to);
    rc = step_write(t, st);
  }
  float *vec = malloc(sizeof(float) * (size_t)t->dims);
  if (!vec) return SQLITE_NOMEM;
  sqlite3_stmt *st = rc == SQLITE_OK ? cdbx_stmt(t, ST_GET_VECTOR) : NULL;
  if (st) {
    sqlite3_bind_int64(st, 1, to);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) == t->dims * 4) {
      memcpy(vec, sqlite3_column_blob(st, 0), sizeof(float) * (size_t)t->dims);
    } else {
      rc = cdbx_fail(t, "row %lld has no vector", (long long)to);
    }
    sqlite3_reset(st);
  }
  if (rc == SQLITE_OK) rc = cdbx_log_change(t, from, 2);
  if (rc == SQLITE_OK) rc = cdbx_log_change(t, to, 1);
  if (rc == SQLITE_OK) rc = cdbx_cache_remove(t, from);
  if (rc == SQLITE_OK) rc = cdbx_cache_put(t, to, vec);
  free(vec);
  return rc;
}

static int changed(sqlite3_value *v) { return !sqlite3_value_nochange(v); }

/* Whether rowid's stored vector is the embedding of its stored text (up to float noise from
 * batching) rather than one the user supplied: a text edit re-embeds only the former, since a
 * supplied embedding wins over the text. Without a model or a text the vector was supplied. */
static int vector_from_text(cdbx_table *t, int64_t rowid, sqlite3_value *text, int *from_text) {
  *from_text = 0;
  if (!t->model_name || sqlite3_value_type(text) != SQLITE_TEXT) return SQLITE_OK;
  clip_model *m = cdbx_table_model(t);
  if (!m) return SQLITE_ERROR;
  float *mine = malloc(sizeof(float) * (size_t)t->dims);
  if (!mine) return SQLITE_NOMEM;
  cdb_error err = {{0}};
  int rc = cdbx_embed_text(m, (const char *)sqlite3_value_text(text), sqlite3_value_bytes(text),
                           mine, &err) == 0 &&
                   cdbx_vec_normalize(mine, t->dims, "text embedding", &err) == 0
               ? SQLITE_OK
               : cdbx_fail(t, "row %lld: %s", (long long)rowid, err.msg);
  sqlite3_stmt *st = rc == SQLITE_OK ? cdbx_stmt(t, ST_GET_VECTOR) : NULL;
  if (st) {
    sqlite3_bind_int64(st, 1, rowid);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) == t->dims * 4) {
      *from_text = cdb_vec_dot(mine, sqlite3_column_blob(st, 0), t->dims) > 1.0 - 1e-4;
    }
    sqlite3_reset(st);
  } else if (rc == SQLITE_OK) {
    rc = SQLITE_ERROR;
  }
  free(mine);
  return rc;
}

int cdbx_row_update(cdbx_table *t, sqlite3_value *old_v, sqlite3_value *new_v,
                    sqlite3_value **cols) {
  int64_t old_id = 0, new_id = 0;
  int rc = rowid_arg(t, old_v, &old_id);
  if (rc == SQLITE_OK) rc = rowid_arg(t, new_v, &new_id);
  /* A queued row gets its vector first: the code below moves and replaces stored vectors. */
  if (rc == SQLITE_OK && (cdbx_pending_has(t, old_id) || cdbx_pending_has(t, new_id))) {
    rc = cdbx_pending_flush(t);
  }
  if (rc == SQLITE_OK) rc = check_row_types(t, cols[COL_IMAGE], cols[COL_TEXT]);
  sqlite3_value *image = cols[COL_IMAGE], *text = cols[COL_TEXT], *emb = cols[COL_EMBEDDING];
  int image_changed = changed(image), text_changed = changed(text), emb_changed = changed(emb);
  sqlite3_value *old_image = NULL, *old_text = NULL;
  int reembed = emb_changed || image_changed || text_changed;
  if (rc == SQLITE_OK && reembed && !(emb_changed && sqlite3_value_type(emb) != SQLITE_NULL)) {
    rc = cdbx_store_row_source(t, old_id, &old_image, &old_text);
    if (rc == SQLITE_OK) {
      if (!image_changed) image = old_image;
      if (!text_changed) text = old_text;
    }
    /* A text edit re-embeds only rows whose vector came from their text (not from their image,
     * not supplied as an embedding). */
    if (rc == SQLITE_OK && !emb_changed && !image_changed) {
      int from_text = 0;
      if (sqlite3_value_type(old_image) == SQLITE_NULL)
        rc = vector_from_text(t, old_id, old_text, &from_text);
      reembed = from_text;
    }
  }
  row_source src = {0};
  if (rc == SQLITE_OK && reembed)
    rc = row_source_of(t, image, text, emb_changed ? emb : NULL, &src);
  if (rc == SQLITE_OK && old_id != new_id) rc = move_row(t, old_id, new_id);
  sqlite3_stmt *st = rc == SQLITE_OK ? cdbx_stmt(t, ST_UPDATE_ROW) : NULL;
  if (rc == SQLITE_OK && !st) rc = SQLITE_ERROR;
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, new_id);
    sqlite3_bind_int(st, 2, image_changed);
    if (image_changed) sqlite3_bind_value(st, 3, cols[COL_IMAGE]);
    sqlite3_bind_int(st, 4, text_changed);
    if (text_changed) sqlite3_bind_value(st, 5, cols[COL_TEXT]);
    bind_user_columns(t, st, cols, 6);
    rc = step_write(t, st);
  }
  if (rc == SQLITE_OK && reembed) rc = cdbx_touch(t, new_id);
  if (rc == SQLITE_OK && reembed) rc = source_commit(t, new_id, &src);
  source_free(&src);
  sqlite3_value_free(old_image);
  sqlite3_value_free(old_text);
  return rc;
}
