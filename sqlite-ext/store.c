/* store.c: the shadow tables of a clip table and the in-memory index cache kept consistent
 * with them.
 *
 * Shadow tables (everything lives in the database file; T is the table name):
 *   T_config(key TEXT PRIMARY KEY, value) WITHOUT ROWID
 *       version, dims, model, model_identity, index_type, nlist, nprobe, autotrain, uid,
 *       generation (bumped whenever the change log is truncated or the snapshot replaced),
 *       snapshot_seq (change-log seq covered by T_index; -1 when there is no snapshot),
 *       snapshot_uid (random, new with every snapshot: names it in the cache file's tag)
 *   T_rows(rowid INTEGER PRIMARY KEY, image, text, <user columns>)
 *   T_vectors(rowid INTEGER PRIMARY KEY, embedding BLOB NOT NULL)   normalised float32
 *   T_changes(seq INTEGER PRIMARY KEY, id INTEGER NOT NULL, op INTEGER NOT NULL)
 *       one entry per vector write (op 1 = put, 2 = delete), in the writer's transaction
 *   T_index(piece INTEGER PRIMARY KEY, data BLOB NOT NULL)   serialised FAISS index (IVF only)
 *
 * Consistency: T_vectors is the truth. The cache is (snapshot or bulk load of T_vectors) plus
 * the replay of T_changes after the seq it covers. Writes change the cache eagerly; a rollback
 * re-reads the rows touched since BEGIN (or the savepoint) from the tables. Before each use the
 * cache compares PRAGMA data_version: after another connection's commit it replays the log
 * entries after cache_seq, or reloads fully when the config generation moved (log truncated).
 * The snapshot is rewritten only on 'train'/'optimize'/'rebuild', after automatic training at
 * commit, or when the log grows large next to the index; a flat index needs no snapshot. */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sqlite-ext/table.h"

#define PIECE_BYTES (1 << 20)
#define BULK_BATCH 4096
#define PEND_BATCH 4096
#define LOG_COMPACT_MIN 20000

int cdbx_table_error(cdbx_table *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *msg = sqlite3_vmprintf(fmt, ap);
  va_end(ap);
  sqlite3_free(t->base.zErrMsg);
  t->base.zErrMsg = msg;
  return SQLITE_ERROR;
}

static int sql_error(cdbx_table *t, const char *what) {
  int rc = sqlite3_errcode(t->db);
  cdbx_table_error(t, "clip: %s: %s: %s", t->name, what, sqlite3_errmsg(t->db));
  return rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_ERROR : rc;
}

static int exec_fmt(cdbx_table *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *sql = sqlite3_vmprintf(fmt, ap);
  va_end(ap);
  if (!sql) return SQLITE_NOMEM;
  int rc = sqlite3_exec(t->db, sql, NULL, NULL, NULL);
  sqlite3_free(sql);
  return rc == SQLITE_OK ? rc : sql_error(t, "shadow table");
}

int cdbx_id_list_push(id_list *l, int64_t id) {
  if (l->n == l->cap) {
    int64_t cap = l->cap ? l->cap * 2 : 64;
    int64_t *ids = realloc(l->ids, sizeof *ids * (size_t)cap);
    if (!ids) return SQLITE_NOMEM;
    l->ids = ids;
    l->cap = cap;
  }
  l->ids[l->n++] = id;
  return SQLITE_OK;
}

/* ---- statements ---- */

static char *user_list(cdbx_table *t, const char *prefix, int first_param) {
  sqlite3_str *s = sqlite3_str_new(NULL);
  for (int i = 0; i < t->n_user; i++) {
    if (first_param) {
      sqlite3_str_appendf(s, ", \"%w\" = ?%d", t->user_names[i], first_param + i);
    } else {
      sqlite3_str_appendf(s, "%s\"%w\"", prefix, t->user_names[i]);
    }
  }
  return cdbx_str_finish(s);
}

static char *insert_row_sql(cdbx_table *t) {
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendf(s, "INSERT INTO \"%w\".\"%w_rows\"(rowid, image, text", t->schema, t->name);
  for (int i = 0; i < t->n_user; i++) sqlite3_str_appendf(s, ", \"%w\"", t->user_names[i]);
  sqlite3_str_appendall(s, ") VALUES(?1, ?2, ?3");
  for (int i = 0; i < t->n_user; i++) sqlite3_str_appendf(s, ", ?%d", 4 + i);
  sqlite3_str_appendall(s, ")");
  return cdbx_str_finish(s);
}

static char *stmt_sql(cdbx_table *t, int which) {
  const char *s = t->schema, *n = t->name;
  switch (which) {
  case ST_INSERT_ROW:
    return insert_row_sql(t);
  case ST_UPDATE_ROW: {
    /* ?2/?4 say whether image/text change (an UPDATE that leaves them alone passes nochange). */
    char *users = user_list(t, NULL, 6);
    char *sql = users ? sqlite3_mprintf("UPDATE \"%w\".\"%w_rows\" SET "
                                        "image = CASE WHEN ?2 THEN ?3 ELSE image END, "
                                        "text = CASE WHEN ?4 THEN ?5 ELSE text END%s "
                                        "WHERE rowid = ?1",
                                        s, n, users)
                      : NULL;
    sqlite3_free(users);
    return sql;
  }
  case ST_MOVE_ROW:
    return sqlite3_mprintf("UPDATE \"%w\".\"%w_rows\" SET rowid = ?2 WHERE rowid = ?1", s, n);
  case ST_MOVE_VECTOR:
    return sqlite3_mprintf("UPDATE \"%w\".\"%w_vectors\" SET rowid = ?2 WHERE rowid = ?1", s, n);
  case ST_DELETE_ROW:
    return sqlite3_mprintf("DELETE FROM \"%w\".\"%w_rows\" WHERE rowid = ?1", s, n);
  case ST_ROW_EXISTS:
    return sqlite3_mprintf("SELECT 1 FROM \"%w\".\"%w_rows\" WHERE rowid = ?1", s, n);
  case ST_PUT_VECTOR:
    return sqlite3_mprintf("INSERT OR REPLACE INTO \"%w\".\"%w_vectors\"(rowid, embedding) "
                           "VALUES(?1, ?2)",
                           s, n);
  case ST_GET_VECTOR:
    return sqlite3_mprintf("SELECT embedding FROM \"%w\".\"%w_vectors\" WHERE rowid = ?1", s, n);
  case ST_DELETE_VECTOR:
    return sqlite3_mprintf("DELETE FROM \"%w\".\"%w_vectors\" WHERE rowid = ?1", s, n);
  case ST_LOG_CHANGE:
    return sqlite3_mprintf("INSERT INTO \"%w\".\"%w_changes\"(id, op) VALUES(?1, ?2)", s, n);
  case ST_DATA_VERSION:
    return sqlite3_mprintf("PRAGMA \"%w\".data_version", s);
  case ST_CONFIG_GET:
    return sqlite3_mprintf("SELECT value FROM \"%w\".\"%w_config\" WHERE key = ?1", s, n);
  case ST_CONFIG_SET:
    return sqlite3_mprintf("INSERT OR REPLACE INTO \"%w\".\"%w_config\"(key, value) "
                           "VALUES(?1, ?2)",
                           s, n);
  default:
    return NULL;
  }
}

sqlite3_stmt *cdbx_stmt(cdbx_table *t, int which) {
  sqlite3_stmt *st = t->stmts[which];
  if (st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
  }
  char *sql = stmt_sql(t, which);
  if (!sql) {
    cdbx_table_error(t, "clip: out of memory");
    return NULL;
  }
  int rc = sqlite3_prepare_v3(t->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
  sqlite3_free(sql);
  if (rc != SQLITE_OK) {
    sql_error(t, "preparing a statement");
    return NULL;
  }
  t->stmts[which] = st;
  return st;
}

void cdbx_store_finalize(cdbx_table *t) {
  for (int i = 0; i < ST_COUNT; i++) {
    sqlite3_finalize(t->stmts[i]);
    t->stmts[i] = NULL;
  }
}

/* Runs a statement that returns no rows (or whose rows are ignored); resets it. */
static int step_done(cdbx_table *t, sqlite3_stmt *st, const char *what) {
  int rc = sqlite3_step(st);
  while (rc == SQLITE_ROW) rc = sqlite3_step(st);
  if (rc != SQLITE_DONE) {
    rc = sql_error(t, what);
    sqlite3_reset(st);
    return rc;
  }
  sqlite3_reset(st);
  return SQLITE_OK;
}

/* ---- config ---- */

static int config_set_int(cdbx_table *t, const char *key, int64_t value) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_CONFIG_SET);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, value);
  return step_done(t, st, "writing config");
}

static int config_set_text(cdbx_table *t, const char *key, const char *value) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_CONFIG_SET);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  if (value) {
    sqlite3_bind_text(st, 2, value, -1, SQLITE_TRANSIENT);
  } else {
    sqlite3_bind_null(st, 2);
  }
  return step_done(t, st, "writing config");
}

/* *found = 0 when the key is absent. Text values are sqlite3_malloc'd copies. */
static int config_get(cdbx_table *t, const char *key, int64_t *ival, char **tval, int *found) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_CONFIG_GET);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  *found = rc == SQLITE_ROW;
  if (rc == SQLITE_ROW) {
    if (ival) *ival = sqlite3_column_int64(st, 0);
    if (tval) {
      const char *v = (const char *)sqlite3_column_text(st, 0);
      *tval = v ? sqlite3_mprintf("%s", v) : NULL;
    }
    rc = SQLITE_OK;
  } else if (rc == SQLITE_DONE) {
    rc = SQLITE_OK;
  } else {
    rc = sql_error(t, "reading config");
  }
  sqlite3_reset(st);
  return rc;
}

static int config_int(cdbx_table *t, const char *key, int64_t *out) {
  int found = 0;
  int rc = config_get(t, key, out, NULL, &found);
  if (rc == SQLITE_OK && !found) {
    return cdbx_table_error(t, "clip: %s: config entry \"%s\" is missing (not a clip table, or "
                               "corrupt)", t->name, key);
  }
  return rc;
}

int cdbx_store_create(cdbx_table *t, char **errmsg) {
  const char *s = t->schema, *n = t->name;
  sqlite3_str *cols = sqlite3_str_new(NULL);
  for (int i = 0; i < t->n_user; i++) {
    sqlite3_str_appendf(cols, ", \"%w\" %s", t->user_names[i], t->user_types[i]);
  }
  char *user_cols = cdbx_str_finish(cols);
  int rc = user_cols ? SQLITE_OK : SQLITE_NOMEM;
  if (rc == SQLITE_OK) {
    rc = exec_fmt(t,
                  "CREATE TABLE \"%w\".\"%w_config\"(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
                  "CREATE TABLE \"%w\".\"%w_rows\"(rowid INTEGER PRIMARY KEY, image, text%s);"
                  "CREATE TABLE \"%w\".\"%w_vectors\"(rowid INTEGER PRIMARY KEY, "
                  "embedding BLOB NOT NULL);"
                  "CREATE TABLE \"%w\".\"%w_changes\"(seq INTEGER PRIMARY KEY, "
                  "id INTEGER NOT NULL, op INTEGER NOT NULL);"
                  "CREATE TABLE \"%w\".\"%w_index\"(piece INTEGER PRIMARY KEY, "
                  "data BLOB NOT NULL);",
                  s, n, s, n, user_cols, s, n, s, n, s, n);
  }
  sqlite3_free(user_cols);
  if (rc == SQLITE_OK) rc = config_set_int(t, "version", 1);
  if (rc == SQLITE_OK) rc = config_set_int(t, "dims", t->dims);
  if (rc == SQLITE_OK) rc = config_set_text(t, "model", t->model_name);
  if (rc == SQLITE_OK) rc = config_set_text(t, "model_identity", t->model_identity);
  if (rc == SQLITE_OK) rc = config_set_text(t, "index_type", t->index_type);
  if (rc == SQLITE_OK) rc = config_set_int(t, "nlist", t->nlist);
  if (rc == SQLITE_OK) rc = config_set_int(t, "nprobe", t->nprobe);
  if (rc == SQLITE_OK) rc = config_set_int(t, "autotrain", t->autotrain);
  if (rc == SQLITE_OK) rc = config_set_int(t, "generation", 1);
  if (rc == SQLITE_OK) rc = config_set_int(t, "snapshot_seq", -1);
  if (rc == SQLITE_OK) {
    sqlite3_randomness(sizeof t->uid, &t->uid);
    rc = config_set_int(t, "uid", t->uid);
  }
  if (rc != SQLITE_OK && errmsg) *errmsg = sqlite3_mprintf("%s", t->base.zErrMsg);
  return rc;
}

int cdbx_store_read_config(cdbx_table *t, char **errmsg) {
  int64_t version = 0, dims = 0, nlist = 0, nprobe = 0;
  int found = 0;
  int rc = config_int(t, "version", &version);
  if (rc == SQLITE_OK && version != 1) {
    rc = cdbx_table_error(t, "clip: %s: unsupported storage version %lld", t->name,
                          (long long)version);
  }
  if (rc == SQLITE_OK) rc = config_int(t, "dims", &dims);
  if (rc == SQLITE_OK && (dims < 1 || dims > CDBX_MAX_DIMS)) {
    rc = cdbx_table_error(t, "clip: %s: corrupt config: dims %lld", t->name, (long long)dims);
  }
  if (rc == SQLITE_OK) rc = config_get(t, "model", NULL, &t->model_name, &found);
  if (rc == SQLITE_OK) rc = config_get(t, "model_identity", NULL, &t->model_identity, &found);
  if (rc == SQLITE_OK) rc = config_get(t, "index_type", NULL, &t->index_type, &found);
  if (rc == SQLITE_OK) rc = config_get(t, "uid", &t->uid, NULL, &found);
  int64_t autotrain = 1;
  if (rc == SQLITE_OK) rc = config_get(t, "autotrain", &autotrain, NULL, &found);
  t->autotrain = (int)autotrain;
  if (rc == SQLITE_OK) rc = config_int(t, "nlist", &nlist);
  if (rc == SQLITE_OK) rc = config_int(t, "nprobe", &nprobe);
  t->dims = (int)dims;
  t->nlist = (int)nlist;
  t->nprobe = (int)nprobe;
  if (rc == SQLITE_OK && !t->index_type) t->index_type = sqlite3_mprintf("auto");
  if (rc != SQLITE_OK && errmsg) *errmsg = sqlite3_mprintf("%s", t->base.zErrMsg);
  return rc;
}

int cdbx_store_drop(cdbx_table *t) {
  cdbx_cache_file_remove(t);
  return exec_fmt(t,
                  "DROP TABLE IF EXISTS \"%w\".\"%w_config\";"
                  "DROP TABLE IF EXISTS \"%w\".\"%w_rows\";"
                  "DROP TABLE IF EXISTS \"%w\".\"%w_vectors\";"
                  "DROP TABLE IF EXISTS \"%w\".\"%w_changes\";"
                  "DROP TABLE IF EXISTS \"%w\".\"%w_index\";",
                  t->schema, t->name, t->schema, t->name, t->schema, t->name, t->schema, t->name,
                  t->schema, t->name);
}

int cdbx_store_rename(cdbx_table *t, const char *to) {
  static const char *const suffixes[] = {"config", "rows", "vectors", "changes", "index"};
  cdbx_store_finalize(t);
  cdbx_cache_file_remove(t);
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    int rc = exec_fmt(t, "ALTER TABLE \"%w\".\"%w_%s\" RENAME TO \"%w_%s\"", t->schema, t->name,
                      suffixes[i], to, suffixes[i]);
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

/* ---- the cache ---- */

static cdb_index_params index_params(const cdbx_table *t) {
  cdb_index_params p = cdb_index_default_params();
  p.type = t->index_type;
  p.nlist = t->nlist;
  p.nprobe = t->nprobe;
  return p;
}

void cdbx_cache_drop(cdbx_table *t) {
  cdb_index_free(t->index);
  t->index = NULL;
  t->pend_ids.n = 0;
  t->pend_removes.n = 0;
  t->resync.n = 0;
}

static int index_error(cdbx_table *t, const char *what, const cdb_error *err) {
  t->stale = 1;
  return cdbx_table_error(t, "clip: %s: %s: %s", t->name, what, err->msg);
}

static int ensure_intact(cdbx_table *t);

/* Pending changes go to the index in batches (FAISS removal costs a pass over the index, so one
 * pass per batch, not per row): removals first, then additions, which always came later. */
int cdbx_cache_flush(cdbx_table *t) {
  cdb_error err = {{0}};
  int rc = t->pend_removes.n + t->pend_ids.n > 0 ? ensure_intact(t) : SQLITE_OK;
  if (t->index && t->pend_removes.n > 0 &&
      cdb_index_remove(t->index, t->pend_removes.n, t->pend_removes.ids, NULL, &err) != 0) {
    rc = index_error(t, "removing from the index", &err);
  }
  if (rc == SQLITE_OK && t->index && t->pend_ids.n > 0 &&
      cdb_index_add(t->index, t->pend_ids.n, t->pend_ids.ids, t->pend_vecs, &err) != 0) {
    rc = index_error(t, "adding to the index", &err);
  }
  t->pend_removes.n = 0;
  t->pend_ids.n = 0;
  return rc;
}

/* At ROLLBACK, where no SQL may run: an index still mapped from the cache file has taken no
 * write, so it is marked stale (the next use maps the file again and re-reads the log) instead
 * of being read into memory, which could find the file damaged and need a reload. */
int cdbx_cache_rollback_flush(cdbx_table *t) {
  cdb_index_info info;
  if (t->index) cdb_index_get_info(t->index, &info);
  if (!t->index || !info.mapped) return cdbx_cache_flush(t);
  t->pend_ids.n = 0;
  t->pend_removes.n = 0;
  t->stale = 1;
  return SQLITE_OK;
}

/* Adds or replaces (the index keeps the last of repeated ids in one batch). */
int cdbx_cache_put(cdbx_table *t, int64_t rowid, const float *vec) {
  if (!t->index) return SQLITE_OK;
  if (t->pend_ids.n == t->pend_cap) {
    int64_t cap = t->pend_cap ? t->pend_cap * 2 : 256;
    float *v = realloc(t->pend_vecs, sizeof(float) * (size_t)cap * (size_t)t->dims);
    if (!v) return SQLITE_NOMEM;
    t->pend_vecs = v;
    t->pend_cap = cap;
  }
  memcpy(t->pend_vecs + (size_t)t->pend_ids.n * t->dims, vec, sizeof(float) * (size_t)t->dims);
  int rc = cdbx_id_list_push(&t->pend_ids, rowid);
  if (rc == SQLITE_OK && t->pend_ids.n >= PEND_BATCH) rc = cdbx_cache_flush(t);
  return rc;
}

int cdbx_cache_remove(cdbx_table *t, int64_t rowid) {
  if (!t->index) return SQLITE_OK;
  int rc = t->pend_ids.n > 0 ? cdbx_cache_flush(t) : SQLITE_OK;
  if (rc == SQLITE_OK) rc = cdbx_id_list_push(&t->pend_removes, rowid);
  if (rc == SQLITE_OK && t->pend_removes.n >= PEND_BATCH) rc = cdbx_cache_flush(t);
  return rc;
}

int cdbx_touch(cdbx_table *t, int64_t rowid) {
  return t->in_txn ? cdbx_id_list_push(&t->touched, rowid) : SQLITE_OK;
}

int cdbx_log_change(cdbx_table *t, int64_t rowid, int op) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_LOG_CHANGE);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_int64(st, 1, rowid);
  sqlite3_bind_int(st, 2, op);
  int rc = step_done(t, st, "writing the change log");
  if (rc != SQLITE_OK) return rc;
  int64_t seq = sqlite3_last_insert_rowid(t->db);
  if (seq == t->cache_seq + 1) t->cache_seq = seq; /* else a later refresh replays the gap */
  t->log_since_snapshot++;
  return SQLITE_OK;
}

/* Reads rowid's vector; *found = 0 when the row has none. vec gets dims floats. */
static int read_vector(cdbx_table *t, int64_t rowid, float *vec, int *found) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_GET_VECTOR);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_int64(st, 1, rowid);
  int rc = sqlite3_step(st);
  *found = 0;
  if (rc == SQLITE_ROW) {
    if (sqlite3_column_bytes(st, 0) != t->dims * 4) {
      sqlite3_reset(st);
      return cdbx_table_error(t, "clip: %s: stored vector of row %lld has %d bytes, not %d",
                              t->name, (long long)rowid, sqlite3_column_bytes(st, 0),
                              t->dims * 4);
    }
    memcpy(vec, sqlite3_column_blob(st, 0), sizeof(float) * (size_t)t->dims);
    *found = 1;
    rc = SQLITE_OK;
  } else if (rc == SQLITE_DONE) {
    rc = SQLITE_OK;
  } else {
    rc = sql_error(t, "reading a vector");
  }
  sqlite3_reset(st);
  return rc;
}

/* Makes the cache agree with the tables for these rows. */
static int resync_ids(cdbx_table *t, const int64_t *ids, int64_t n) {
  float *vec = malloc(sizeof(float) * (size_t)t->dims);
  if (!vec) return SQLITE_NOMEM;
  int rc = cdbx_cache_flush(t);
  for (int64_t i = 0; rc == SQLITE_OK && i < n; i++) {
    int found = 0;
    rc = read_vector(t, ids[i], vec, &found);
    if (rc == SQLITE_OK) rc = found ? cdbx_cache_put(t, ids[i], vec) : cdbx_cache_remove(t, ids[i]);
  }
  free(vec);
  return rc == SQLITE_OK ? cdbx_cache_flush(t) : rc;
}

static int query_int(cdbx_table *t, int64_t *out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *sql = sqlite3_vmprintf(fmt, ap);
  va_end(ap);
  sqlite3_stmt *st = NULL;
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  if (rc == SQLITE_OK) rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *out = sqlite3_column_int64(st, 0);
    rc = SQLITE_OK;
  } else if (rc == SQLITE_DONE) {
    *out = 0;
    rc = SQLITE_OK;
  } else {
    rc = sql_error(t, "querying a shadow table");
  }
  sqlite3_finalize(st);
  return rc;
}

/* Replays the change log after seq `from` into the cache; cache_seq becomes the log's end. */
static int replay_log(cdbx_table *t, int64_t from) {
  char *sql = sqlite3_mprintf("SELECT DISTINCT id FROM \"%w\".\"%w_changes\" WHERE seq > ?1",
                              t->schema, t->name);
  sqlite3_stmt *st = NULL;
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  id_list ids = {0};
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, from);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      if (cdbx_id_list_push(&ids, sqlite3_column_int64(st, 0)) != SQLITE_OK) break;
    }
    rc = rc == SQLITE_DONE ? SQLITE_OK : rc == SQLITE_ROW ? SQLITE_NOMEM : sql_error(t, "log");
  }
  sqlite3_finalize(st);
  int64_t end = 0;
  if (rc == SQLITE_OK) rc = resync_ids(t, ids.ids, ids.n);
  free(ids.ids);
  if (rc == SQLITE_OK) {
    rc = query_int(t, &end, "SELECT max(seq) FROM \"%w\".\"%w_changes\"", t->schema, t->name);
  }
  if (rc == SQLITE_OK && end > t->cache_seq) t->cache_seq = end;
  return rc;
}

static int bulk_load(cdbx_table *t) {
  char *sql = sqlite3_mprintf("SELECT rowid, embedding FROM \"%w\".\"%w_vectors\"", t->schema,
                              t->name);
  sqlite3_stmt *st = NULL;
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    int64_t rowid = sqlite3_column_int64(st, 0);
    if (sqlite3_column_bytes(st, 1) != t->dims * 4) {
      rc = cdbx_table_error(t, "clip: %s: stored vector of row %lld has %d bytes, not %d",
                            t->name, (long long)rowid, sqlite3_column_bytes(st, 1), t->dims * 4);
      break;
    }
    rc = cdbx_cache_put(t, rowid, sqlite3_column_blob(st, 1));
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  else if (rc != SQLITE_OK && !t->base.zErrMsg) rc = sql_error(t, "loading vectors");
  sqlite3_finalize(st);
  if (rc == SQLITE_OK) rc = cdbx_cache_flush(t);
  return rc;
}

typedef struct piece_reader {
  sqlite3_stmt *st;
  int failed;
} piece_reader;

static int next_piece(void *ctx, const void **data, size_t *len) {
  piece_reader *r = ctx;
  int rc = sqlite3_step(r->st);
  if (rc == SQLITE_DONE) return 0;
  if (rc != SQLITE_ROW) {
    r->failed = 1;
    return -1;
  }
  *data = sqlite3_column_blob(r->st, 0);
  *len = (size_t)sqlite3_column_bytes(r->st, 0);
  return 1;
}

/* Loads the snapshot; NULL (not an error) when it is unusable: the caller rebuilds instead. */
static cdb_index *load_snapshot(cdbx_table *t) {
  char *sql = sqlite3_mprintf("SELECT data FROM \"%w\".\"%w_index\" ORDER BY piece", t->schema,
                              t->name);
  piece_reader r = {0};
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &r.st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  cdb_error err = {{0}};
  cdb_index *idx = rc == SQLITE_OK ? cdb_index_load(next_piece, &r, &err) : NULL;
  sqlite3_finalize(r.st);
  if (idx && cdb_index_dim(idx) != t->dims) {
    cdb_index_free(idx);
    idx = NULL;
  }
  return idx;
}

static int data_version(cdbx_table *t, int64_t *out) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_DATA_VERSION);
  if (!st) return SQLITE_ERROR;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *out = sqlite3_column_int64(st, 0);
    rc = SQLITE_OK;
  } else {
    rc = sql_error(t, "PRAGMA data_version");
  }
  sqlite3_reset(st);
  return rc;
}

/* ---- cold-start cache file ----
 * Next to a database file, "<db>-clip-<table>.idx" holds the snapshot as a memory-mappable
 * FAISS index (index/ivf.h), tagged with the table's uid, generation, snapshot seq and
 * snapshot uid. A new connection maps it instead of reading the T_index pieces: its first query
 * reads (and checksums) only the lists it probes. Missing, stale or damaged files are rebuilt
 * from the pieces; only committed state is ever written to it. */

/* Deserialized databases live in the "memdb" VFS under the made-up file name "x": no file. */
static int in_memory_vfs(cdbx_table *t) {
  sqlite3_vfs *vfs = NULL;
  if (sqlite3_file_control(t->db, t->schema, SQLITE_FCNTL_VFS_POINTER, &vfs) != SQLITE_OK || !vfs)
    return 1;
  return vfs->zName && strcmp(vfs->zName, "memdb") == 0;
}

static char *cache_path(cdbx_table *t) {
  const char *db = sqlite3_db_filename(t->db, t->schema);
  const char *off = getenv("CLIPDB_INDEX_CACHE");
  if (!db || !db[0] || !t->uid || (off && strcmp(off, "0") == 0) || in_memory_vfs(t)) return NULL;
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendf(s, "%s-clip-", db);
  for (const unsigned char *p = (const unsigned char *)t->name; *p; p++) {
    if (isalnum(*p) || *p == '_' || *p == '-') sqlite3_str_appendchar(s, 1, (char)*p);
    else sqlite3_str_appendf(s, "%%%02x", *p);
  }
  sqlite3_str_appendall(s, ".idx");
  return sqlite3_str_finish(s);
}

/* Unique per committed snapshot: snapshot_uid is drawn anew, in the writing transaction, for
 * every snapshot, so a rolled-back snapshot and the next one never share a tag. */
static uint64_t cache_tag(const cdbx_table *t, int64_t gen, int64_t snap, int64_t snap_uid) {
  uint64_t h = 1469598103934665603ull;
  const int64_t parts[4] = {t->uid, gen, snap, snap_uid};
  for (int i = 0; i < 4; i++) {
    h ^= (uint64_t)parts[i];
    h *= 1099511628211ull;
    h ^= h >> 29;
  }
  return h;
}

/* A read-only or immutable database gets no file written or removed beside it. */
static int may_touch_files(cdbx_table *t) {
  const char *db = sqlite3_db_filename(t->db, t->schema);
  return sqlite3_db_readonly(t->db, t->schema) == 0 && !sqlite3_uri_boolean(db, "immutable", 0);
}

/* Only committed state reaches the cache file: what a connection reads outside a write
 * transaction is committed; inside one it may still be rolled back. */
static int may_write_cache_file(cdbx_table *t) {
  return may_touch_files(t) && sqlite3_txn_state(t->db, t->schema) != SQLITE_TXN_WRITE;
}

void cdbx_cache_file_remove(cdbx_table *t) {
  char *path = may_touch_files(t) ? cache_path(t) : NULL;
  if (path) unlink(path);
  sqlite3_free(path);
}

enum { FROM_FILE_OR_PIECES, FROM_PIECES };

/* The snapshot, from the cache file when it is current (and not known damaged), else from the
 * pieces (then the cache file is rewritten, best effort, when committed state was read). */
static cdb_index *open_snapshot(cdbx_table *t, int source) {
  char *path = cache_path(t);
  cdb_error err = {{0}};
  int use_file = path && source == FROM_FILE_OR_PIECES && t->file_tag != t->bad_file_tag;
  cdb_index *idx = use_file ? cdb_index_open_file_mmap(path, t->file_tag, &err) : NULL;
  if (idx && cdb_index_dim(idx) != t->dims) {
    cdb_index_free(idx);
    idx = NULL;
  }
  if (!idx) {
    idx = load_snapshot(t);
    int replace = source == FROM_FILE_OR_PIECES || t->bad_file_tag == t->file_tag;
    if (idx && path && replace && may_write_cache_file(t) &&
        cdb_index_save_file(idx, path, t->file_tag, &err) == 0) {
      t->bad_file_tag = 0;
    }
  }
  sqlite3_free(path);
  return idx;
}

static int load_full_from(cdbx_table *t, int source) {
  cdbx_cache_drop(t);
  int64_t gen = 0, snap = -1, dv = 0, snap_uid = 0;
  int found = 0;
  int rc = data_version(t, &dv);
  if (rc == SQLITE_OK) rc = config_int(t, "generation", &gen);
  if (rc == SQLITE_OK) rc = config_int(t, "snapshot_seq", &snap);
  if (rc == SQLITE_OK) rc = config_get(t, "snapshot_uid", &snap_uid, NULL, &found);
  if (rc != SQLITE_OK) return rc;
  t->file_tag = cache_tag(t, gen, snap, snap_uid);
  t->index = snap >= 0 ? open_snapshot(t, source) : NULL;
  if (t->index) {
    t->cache_seq = snap;
    rc = replay_log(t, snap);
  } else {
    cdb_index_params p = index_params(t);
    cdb_error err = {{0}};
    t->index = cdb_index_new(t->dims, &p, &err);
    if (!t->index) return index_error(t, "creating the index", &err);
    rc = bulk_load(t);
    if (rc == SQLITE_OK) {
      rc = query_int(t, &t->cache_seq, "SELECT max(seq) FROM \"%w\".\"%w_changes\"", t->schema,
                     t->name);
    }
  }
  if (rc == SQLITE_OK) {
    rc = query_int(t, &t->log_since_snapshot,
                   "SELECT count(*) FROM \"%w\".\"%w_changes\" WHERE seq > %lld", t->schema,
                   t->name, (long long)snap);
  }
  if (rc != SQLITE_OK) {
    cdbx_cache_drop(t);
    return rc;
  }
  t->generation = gen;
  t->data_version = dv;
  t->stale = 0;
  return SQLITE_OK;
}

static int load_full(cdbx_table *t) { return load_full_from(t, FROM_FILE_OR_PIECES); }

/* The cache file behind the (mapped) index failed a checksum: it is removed (never used again
 * by this connection if it cannot be) and the cache rebuilt from the tables. */
static int discard_damaged_file(cdbx_table *t) {
  t->bad_file_tag = t->file_tag;
  cdbx_cache_file_remove(t);
  return load_full_from(t, FROM_PIECES);
}

/* Before writing to an index mapped from the cache file, all of its lists are checked. */
static int ensure_intact(cdbx_table *t) {
  cdb_error err = {{0}};
  if (!t->index || cdb_index_verify(t->index, &err) == 0) return SQLITE_OK;
  return discard_damaged_file(t);
}

int cdbx_cache_search(cdbx_table *t, const float *query, int k, const cdb_search_opts *opts,
                      int64_t *ids, float *sims, int *n_found) {
  cdb_error err = {{0}};
  int rc = SQLITE_OK;
  while (cdb_index_search(t->index, query, k, opts, ids, sims, n_found, &err) != 0) {
    if (rc != SQLITE_OK || !cdb_index_damaged(t->index)) {
      return cdbx_table_error(t, "clip: %s: search: %s", t->name, err.msg);
    }
    rc = discard_damaged_file(t);
    if (rc != SQLITE_OK) return rc;
    rc = SQLITE_ERROR; /* one retry */
  }
  return SQLITE_OK;
}

int cdbx_cache_range_search(cdbx_table *t, const float *query, float min_sim,
                            const cdb_search_opts *opts, int64_t **ids, float **sims,
                            int64_t *n_found) {
  cdb_error err = {{0}};
  int rc = SQLITE_OK;
  while (cdb_index_range_search(t->index, query, min_sim, opts, ids, sims, n_found, &err) != 0) {
    if (rc != SQLITE_OK || !cdb_index_damaged(t->index)) {
      return cdbx_table_error(t, "clip: %s: range search: %s", t->name, err.msg);
    }
    rc = discard_damaged_file(t);
    if (rc != SQLITE_OK) return rc;
    rc = SQLITE_ERROR; /* one retry */
  }
  return SQLITE_OK;
}

int cdbx_cache_fresh(cdbx_table *t) {
  if (!t->index || t->stale) return load_full(t);
  int rc = SQLITE_OK;
  if (t->resync.n > 0) {
    rc = resync_ids(t, t->resync.ids, t->resync.n);
    t->resync.n = 0;
    if (rc != SQLITE_OK) {
      t->stale = 1;
      return rc;
    }
  }
  if (t->in_txn && t->version_checked) return SQLITE_OK;
  int64_t dv = 0, gen = 0;
  rc = data_version(t, &dv);
  if (rc == SQLITE_OK && dv != t->data_version) {
    rc = config_int(t, "generation", &gen);
    if (rc == SQLITE_OK) rc = gen != t->generation ? load_full(t) : replay_log(t, t->cache_seq);
    if (rc == SQLITE_OK) t->data_version = dv;
  }
  if (rc == SQLITE_OK && t->in_txn) t->version_checked = 1;
  if (rc != SQLITE_OK) t->stale = 1;
  return rc;
}

int cdbx_table_index_info(cdbx_table *t, cdb_index_info *info) {
  int rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_fresh(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_flush(t);
  if (rc == SQLITE_OK) cdb_index_get_info(t->index, info);
  return rc;
}

/* ---- snapshots, training, commands ---- */

typedef struct piece_writer {
  cdbx_table *t;
  sqlite3_stmt *st;
  int64_t piece;
} piece_writer;

static int emit_piece(void *ctx, const void *data, size_t len) {
  piece_writer *w = ctx;
  sqlite3_bind_int64(w->st, 1, w->piece++);
  sqlite3_bind_blob(w->st, 2, data, (int)len, SQLITE_STATIC);
  int rc = sqlite3_step(w->st);
  sqlite3_reset(w->st);
  return rc == SQLITE_DONE ? 0 : -1;
}

static int index_is_ivf(const cdbx_table *t) {
  cdb_index_info info;
  cdb_index_get_info(t->index, &info);
  return strcmp(info.kind, "flat") != 0;
}

/* Writes the snapshot (IVF indexes; a flat one is rebuilt from T_vectors as fast as it loads),
 * truncates the log before it and bumps the generation so other connections reload. */
static int compact(cdbx_table *t) {
  int rc = cdbx_cache_flush(t);
  if (rc == SQLITE_OK) rc = replay_log(t, t->cache_seq);
  if (rc == SQLITE_OK) rc = ensure_intact(t);
  if (rc == SQLITE_OK) rc = exec_fmt(t, "DELETE FROM \"%w\".\"%w_index\"", t->schema, t->name);
  int64_t snap = t->cache_seq, snap_uid = 0;
  if (rc == SQLITE_OK && index_is_ivf(t)) {
    char *sql = sqlite3_mprintf("INSERT INTO \"%w\".\"%w_index\"(piece, data) VALUES(?1, ?2)",
                                t->schema, t->name);
    piece_writer w = {t, NULL, 0};
    rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &w.st, NULL) : SQLITE_NOMEM;
    sqlite3_free(sql);
    cdb_error err = {{0}};
    if (rc == SQLITE_OK && cdb_index_save(t->index, PIECE_BYTES, emit_piece, &w, &err) != 0) {
      rc = err.msg[0] ? cdbx_table_error(t, "clip: %s: saving the index: %s", t->name, err.msg)
                      : sql_error(t, "saving the index");
    }
    sqlite3_finalize(w.st);
  } else {
    snap = -1; /* no snapshot: loading reads T_vectors */
  }
  if (rc == SQLITE_OK) rc = config_set_int(t, "snapshot_seq", snap);
  sqlite3_randomness(sizeof snap_uid, &snap_uid);
  if (rc == SQLITE_OK) rc = config_set_int(t, "snapshot_uid", snap_uid);
  if (rc == SQLITE_OK) rc = config_set_int(t, "generation", t->generation + 1);
  if (rc == SQLITE_OK) {
    rc = exec_fmt(t, "DELETE FROM \"%w\".\"%w_changes\" WHERE seq < %lld", t->schema, t->name,
                  (long long)t->cache_seq);
  }
  if (rc == SQLITE_OK) {
    t->generation++;
    t->file_tag = cache_tag(t, t->generation, snap, snap_uid);
    t->log_since_snapshot = 0;
  }
  return rc;
}

static int train(cdbx_table *t) {
  int rc = cdbx_cache_flush(t);
  if (rc == SQLITE_OK) rc = ensure_intact(t);
  cdb_error err = {{0}};
  if (rc == SQLITE_OK && cdb_index_train(t->index, &err) != 0) {
    rc = index_error(t, "training the index", &err);
  }
  return rc;
}

/* Lists that no longer fit the vectors (most rows deleted, unbalanced): retrained for the
 * current size, or back to exact search when too few rows remain to train. */
static int rebalance(cdbx_table *t) {
  int rc = cdbx_cache_flush(t);
  cdb_error err = {{0}};
  if (rc == SQLITE_OK && cdb_index_rebalance(t->index, &err) != 0) {
    rc = index_error(t, "rebalancing the index", &err);
  }
  return rc;
}

static int wants_training(const cdbx_table *t) {
  return sqlite3_stricmp(t->index_type, "flat") != 0 && cdb_index_needs_training(t->index);
}

int cdbx_maintain(cdbx_table *t) {
  if (!t->index || t->stale) return SQLITE_OK;
  int rc = cdbx_cache_flush(t);
  if (rc != SQLITE_OK) return rc;
  if (t->autotrain && wants_training(t)) {
    rc = train(t);
    return rc == SQLITE_OK ? compact(t) : rc;
  }
  int64_t count = cdb_index_count(t->index);
  if (t->log_since_snapshot > LOG_COMPACT_MIN && t->log_since_snapshot > count / 2) {
    return compact(t);
  }
  return SQLITE_OK;
}

static int check_vectors(cdbx_table *t, int64_t *n_vectors) {
  char *sql = sqlite3_mprintf("SELECT rowid, embedding FROM \"%w\".\"%w_vectors\"", t->schema,
                              t->name);
  sqlite3_stmt *st = NULL;
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  *n_vectors = 0;
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    long long rowid = sqlite3_column_int64(st, 0);
    const float *v = sqlite3_column_blob(st, 1);
    if (sqlite3_column_bytes(st, 1) != t->dims * 4 || !v) {
      rc = cdbx_table_error(t, "row %lld: vector has %d bytes, expected %d", rowid,
                            sqlite3_column_bytes(st, 1), t->dims * 4);
      break;
    }
    double norm = 0;
    for (int i = 0; i < t->dims; i++) norm += (double)v[i] * v[i];
    if (!isfinite(norm) || fabs(norm - 1.0) > 1e-3) {
      rc = cdbx_table_error(t, "row %lld: vector is not normalised (squared norm %g)", rowid,
                            norm);
      break;
    }
    (*n_vectors)++;
    rc = SQLITE_OK;
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  sqlite3_finalize(st);
  return rc;
}

/* ---- integrity-check: every form of the cache against T_vectors ---- */

typedef struct truth_check {
  cdbx_table *t;
  int exact;      /* the index keeps vectors exactly (Flat): compare them too */
  float *vec;
  id_list seen;
} truth_check;

static int check_list_against_truth(void *ctx, size_t n, const int64_t *ids, const float *vecs,
                                    cdb_error *err) {
  truth_check *c = ctx;
  cdbx_table *t = c->t;
  for (size_t i = 0; i < n; i++) {
    int found = 0;
    if (read_vector(t, ids[i], c->vec, &found) != SQLITE_OK)
      return cdb_error_set(err, "%s", t->base.zErrMsg ? t->base.zErrMsg : "reading a vector");
    if (!found) {
      return cdb_error_set(err, "it holds row %lld, which has no vector", (long long)ids[i]);
    }
    for (int j = 0; c->exact && j < t->dims; j++) {
      if (!(fabsf(vecs[i * (size_t)t->dims + j] - c->vec[j]) <= 1e-5f))
        return cdb_error_set(err, "its vector of row %lld differs from the stored one",
                             (long long)ids[i]);
    }
    if (cdbx_id_list_push(&c->seen, ids[i]) != SQLITE_OK) {
      return cdb_error_set(err, "out of memory");
    }
  }
  return 0;
}

static int cmp_id(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* The index must hold exactly the rows of T_vectors, each once (and, exact encodings, with the
 * same vector). `what` names the index in the message. */
static int compare_with_truth(cdbx_table *t, const char *what, int64_t n_vectors) {
  cdb_index_info info;
  cdb_index_get_info(t->index, &info);
  size_t len = strlen(info.factory);
  truth_check c = {t, len >= 5 && strcmp(info.factory + len - 5, ",Flat") == 0,
                   malloc(sizeof(float) * (size_t)t->dims), {0}};
  cdb_error err = {{0}};
  int rc = c.vec ? SQLITE_OK : SQLITE_NOMEM;
  if (rc == SQLITE_OK && cdb_index_scan(t->index, check_list_against_truth, &c, &err) != 0) {
    rc = cdbx_table_error(t, "%s: %s", what, err.msg);
  }
  if (rc == SQLITE_OK) qsort(c.seen.ids, (size_t)c.seen.n, sizeof(int64_t), cmp_id);
  for (int64_t i = 1; rc == SQLITE_OK && i < c.seen.n; i++) {
    if (c.seen.ids[i] == c.seen.ids[i - 1]) {
      rc = cdbx_table_error(t, "%s holds row %lld twice", what, (long long)c.seen.ids[i]);
    }
  }
  if (rc == SQLITE_OK && (c.seen.n != n_vectors || cdb_index_count(t->index) != n_vectors)) {
    rc = cdbx_table_error(t, "%s holds %lld vectors, the table %lld", what,
                          (long long)c.seen.n, (long long)n_vectors);
  }
  free(c.vec);
  free(c.seen.ids);
  return rc;
}

/* The cache file of the current snapshot, when there is one (another tag, or a header that
 * cannot be read, is never used): all its checksums, then its content with the log replayed
 * against the truth. A damaged file is removed. */
static int check_cache_file(cdbx_table *t, int64_t n_vectors) {
  char *path = cache_path(t);
  uint64_t tag = 0;
  cdb_error err = {{0}};
  int current = path && cdb_index_file_generation(path, &tag, &err) == 0 && tag == t->file_tag;
  int rc = SQLITE_OK;
  cdb_index *file = NULL;
  if (current) {
    file = cdb_index_open_file_mmap(path, tag, &err);
    if (!file || cdb_index_verify(file, &err) != 0) {
      rc = cdbx_table_error(t, "the cache file is damaged: %s", err.msg);
    }
  }
  cdb_index_free(file);
  if (rc != SQLITE_OK) {
    t->bad_file_tag = t->file_tag;
    cdbx_cache_file_remove(t);
  } else if (current) {
    rc = load_full(t); /* maps the file just checked */
    if (rc == SQLITE_OK) rc = compare_with_truth(t, "the cache file", n_vectors);
  }
  sqlite3_free(path);
  return rc;
}

static int integrity_check(cdbx_table *t) {
  int64_t orphans = 0, missing = 0, n_vectors = 0;
  int rc = query_int(t, &missing,
                     "SELECT count(*) FROM \"%w\".\"%w_rows\" r WHERE NOT EXISTS "
                     "(SELECT 1 FROM \"%w\".\"%w_vectors\" v WHERE v.rowid = r.rowid)",
                     t->schema, t->name, t->schema, t->name);
  if (rc == SQLITE_OK) {
    rc = query_int(t, &orphans,
                   "SELECT count(*) FROM \"%w\".\"%w_vectors\" v WHERE NOT EXISTS "
                   "(SELECT 1 FROM \"%w\".\"%w_rows\" r WHERE v.rowid = r.rowid)",
                   t->schema, t->name, t->schema, t->name);
  }
  if (rc == SQLITE_OK && (missing || orphans)) {
    rc = cdbx_table_error(t, "%lld rows without a vector, %lld vectors without a row",
                          (long long)missing, (long long)orphans);
  }
  if (rc == SQLITE_OK) rc = check_vectors(t, &n_vectors);
  /* The index queries use now, then the persisted state (snapshot + log, or the vectors), then
   * the cache file: each must hold exactly the rows. */
  if (rc == SQLITE_OK) rc = cdbx_cache_fresh(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_flush(t);
  if (rc == SQLITE_OK) rc = compare_with_truth(t, "the in-memory index", n_vectors);
  if (rc == SQLITE_OK) rc = load_full_from(t, FROM_PIECES);
  if (rc == SQLITE_OK) rc = compare_with_truth(t, "the index stored in the database", n_vectors);
  if (rc == SQLITE_OK) rc = check_cache_file(t, n_vectors);
  if (rc != SQLITE_OK) {
    char *msg = sqlite3_mprintf("clip: integrity-check of %s failed: %s", t->name,
                                t->base.zErrMsg ? t->base.zErrMsg : sqlite3_errmsg(t->db));
    sqlite3_free(t->base.zErrMsg);
    t->base.zErrMsg = msg;
    t->stale = 1;
    return SQLITE_CORRUPT_VTAB;
  }
  return SQLITE_OK;
}

int cdbx_command(cdbx_table *t, const char *cmd) {
  t->command_in_txn = 1;
  int rc = SQLITE_OK;
  if (strcmp(cmd, "integrity-check") == 0) return integrity_check(t);
  if (strcmp(cmd, "rebuild") == 0) {
    /* Repairs damage done behind the table's back: rows whose vector was deleted from
     * T_vectors are embedded again (all checked before anything is written), vectors whose row
     * was deleted from T_rows go. */
    rc = cdbx_reembed_missing(t);
    if (rc == SQLITE_OK)
      rc = exec_fmt(t, "DELETE FROM \"%w\".\"%w_vectors\" WHERE rowid NOT IN "
                       "(SELECT rowid FROM \"%w\".\"%w_rows\")",
                    t->schema, t->name, t->schema, t->name);
    if (rc == SQLITE_OK) rc = config_set_int(t, "snapshot_seq", -1);
    if (rc == SQLITE_OK) rc = load_full(t);
    if (rc == SQLITE_OK && wants_training(t)) rc = train(t);
    return rc == SQLITE_OK ? compact(t) : rc;
  }
  if (strcmp(cmd, "train") == 0 || strcmp(cmd, "optimize") == 0) {
    rc = cdbx_cache_fresh(t);
    int trainable = sqlite3_stricmp(t->index_type, "flat") != 0; /* flat: nothing to train */
    if (rc == SQLITE_OK && trainable && (cmd[0] == 't' || wants_training(t))) rc = train(t);
    else if (rc == SQLITE_OK && cmd[0] == 'o' && cdb_index_needs_rebalance(t->index))
      rc = rebalance(t);
    return rc == SQLITE_OK ? compact(t) : rc;
  }
  return cdbx_table_error(t, "clip: unknown command \"%s\" (expected 'train', 'rebuild', "
                             "'optimize' or 'integrity-check')", cmd);
}
