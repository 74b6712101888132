/* store.c: the shadow tables of a clip table: their creation, every SQL statement on them, and
 * the config they hold.
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
 * Owns: cdbx_table.stmts (prepared statements) and the config keys above; the only file that
 * names a shadow table. Calls nothing else of sqlite-ext/ (only index/ to (de)serialise the
 * snapshot); called by the files above it: cache.c, queue.c, commands.c, vtab.c. */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sqlite-ext/table.h"

#define PIECE_BYTES (1 << 20)

static const char *const suffixes[] = {"config", "rows", "vectors", "changes", "index"};

int cdbx_table_error(cdbx_table *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *msg = sqlite3_vmprintf(fmt, ap);
  va_end(ap);
  sqlite3_free(t->base.zErrMsg);
  t->base.zErrMsg = msg;
  return SQLITE_ERROR;
}

/* Fails the table's operation with "clip: <table>: <message>" (printf style): SQLITE_ERROR. */
int cdbx_fail(cdbx_table *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *msg = sqlite3_vmprintf(fmt, ap);
  va_end(ap);
  int rc = cdbx_table_error(t, "clip: %s: %s", t->name, msg ? msg : "out of memory");
  sqlite3_free(msg);
  return rc;
}

/* Prepares the statement that fmt (sqlite3_mprintf style, for quoting names with %w) formats. */
static int prepare_vfmt(cdbx_table *t, sqlite3_stmt **st, const char *fmt, va_list ap) {
  char *sql = sqlite3_vmprintf(fmt, ap);
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  return rc;
}

static int prepare_fmt(cdbx_table *t, sqlite3_stmt **st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = prepare_vfmt(t, st, fmt, ap);
  va_end(ap);
  return rc;
}

static int sql_error(cdbx_table *t, const char *what) {
  int rc = sqlite3_errcode(t->db);
  cdbx_fail(t, "%s: %s", what, sqlite3_errmsg(t->db));
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
    case ST_INSERT_ROW: return insert_row_sql(t);
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
    case ST_DATA_VERSION: return sqlite3_mprintf("PRAGMA \"%w\".data_version", s);
    case ST_CONFIG_GET:
      return sqlite3_mprintf("SELECT value FROM \"%w\".\"%w_config\" WHERE key = ?1", s, n);
    case ST_CONFIG_SET:
      return sqlite3_mprintf("INSERT OR REPLACE INTO \"%w\".\"%w_config\"(key, value) "
                             "VALUES(?1, ?2)",
                             s, n);
    default: return NULL;
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

int cdbx_store_is_shadow_name(const char *suffix) {
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    if (sqlite3_stricmp(suffix, suffixes[i]) == 0) return 1;
  }
  return 0;
}

/* ---- reads of T_rows for queries and row writes ---- */

static char *row_columns(cdbx_table *t, int with_rowid) {
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendall(s, with_rowid ? "rowid, image, text" : "image, text");
  for (int i = 0; i < t->n_user; i++) sqlite3_str_appendf(s, ", \"%w\"", t->user_names[i]);
  return cdbx_str_finish(s);
}

/* Rows of T_rows matching `where` (" AND ..." conditions on the declared column names, or ""),
 * in rowid order: rowid and every stored column, or the rowid only. */
int cdbx_store_prepare_rows(cdbx_table *t, int all_columns, const char *where, sqlite3_stmt **out) {
  char *cols = all_columns ? row_columns(t, 1) : sqlite3_mprintf("rowid");
  char *sql = cols ? sqlite3_mprintf("SELECT %s FROM \"%w\".\"%w_rows\" WHERE 1%s ORDER BY rowid",
                                     cols, t->schema, t->name, where ? where : "")
                   : NULL;
  sqlite3_free(cols);
  if (!sql) return SQLITE_NOMEM;
  int rc = sqlite3_prepare_v2(t->db, sql, -1, out, NULL);
  sqlite3_free(sql);
  if (rc != SQLITE_OK) {
    return cdbx_fail(t, "filter: %s", sqlite3_errmsg(t->db));
  }
  return SQLITE_OK;
}

int cdbx_store_rows_scan_all(cdbx_table *t, const char *where) {
  sqlite3_stmt *st = NULL;
  char *sql = sqlite3_mprintf("EXPLAIN QUERY PLAN SELECT rowid FROM \"%w\".\"%w_rows\" WHERE 1%s",
                              t->schema, t->name, where ? where : "");
  int scans = 1;
  if (sql && sqlite3_prepare_v2(t->db, sql, -1, &st, NULL) == SQLITE_OK) {
    scans = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
      const char *detail = (const char *)sqlite3_column_text(st, 3);
      if (detail && strncmp(detail, "SCAN", 4) == 0) scans = 1;
    }
  }
  sqlite3_finalize(st);
  sqlite3_free(sql);
  return scans;
}

int cdbx_store_prepare_row_check(cdbx_table *t, const char *where, sqlite3_stmt **out) {
  char *sql = sqlite3_mprintf("SELECT 1 FROM \"%w\".\"%w_rows\" WHERE rowid = ?1%s", t->schema,
                              t->name, where ? where : "");
  if (!sql) return SQLITE_NOMEM;
  int rc = sqlite3_prepare_v2(t->db, sql, -1, out, NULL);
  sqlite3_free(sql);
  return rc == SQLITE_OK ? rc : cdbx_fail(t, "filter: %s", sqlite3_errmsg(t->db));
}

/* The stored columns (image, text, user columns) of the row bound to ?1. */
int cdbx_store_prepare_row_lookup(cdbx_table *t, sqlite3_stmt **out) {
  char *cols = row_columns(t, 0);
  char *sql = cols ? sqlite3_mprintf("SELECT %s FROM \"%w\".\"%w_rows\" WHERE rowid = ?1", cols,
                                     t->schema, t->name)
                   : NULL;
  sqlite3_free(cols);
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, out, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  return rc;
}

/* Stored image and text of a row, for UPDATEs that change only one of them. */
int cdbx_store_row_source(cdbx_table *t, int64_t rowid, sqlite3_value **image,
                          sqlite3_value **text) {
  sqlite3_stmt *st = NULL;
  int rc = prepare_fmt(t, &st, "SELECT image, text FROM \"%w\".\"%w_rows\" WHERE rowid = ?1",
                       t->schema, t->name);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, rowid);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      *image = sqlite3_value_dup(sqlite3_column_value(st, 0));
      *text = sqlite3_value_dup(sqlite3_column_value(st, 1));
      rc = SQLITE_OK;
    } else {
      rc = cdbx_fail(t, "row %lld vanished during UPDATE", (long long)rowid);
    }
  }
  sqlite3_finalize(st);
  return rc;
}

/* Rows of T_rows that have no vector, collected first (their vectors are written while a
 * statement over the same tables would still be open). */
/* Appends the rowids st selects (prepared when rc is SQLITE_OK) to ids; finalizes st. */
static int collect_ids(cdbx_table *t, sqlite3_stmt *st, int rc, id_list *ids) {
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
    rc = cdbx_id_list_push(ids, sqlite3_column_int64(st, 0));
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  if (rc != SQLITE_OK && rc != SQLITE_NOMEM) rc = cdbx_fail(t, "%s", sqlite3_errmsg(t->db));
  sqlite3_finalize(st);
  return rc;
}

int cdbx_store_rows_without_vector(cdbx_table *t, id_list *ids) {
  sqlite3_stmt *st = NULL;
  int rc = prepare_fmt(t, &st,
                       "SELECT rowid FROM \"%w\".\"%w_rows\" r WHERE NOT EXISTS "
                       "(SELECT 1 FROM \"%w\".\"%w_vectors\" v WHERE v.rowid = r.rowid)",
                       t->schema, t->name, t->schema, t->name);
  return collect_ids(t, st, rc, ids);
}

/* Every row, for a 'rebuild' that embeds all of them again with another model. */
int cdbx_store_all_row_ids(cdbx_table *t, id_list *ids) {
  sqlite3_stmt *st = NULL;
  int rc = prepare_fmt(t, &st, "SELECT rowid FROM \"%w\".\"%w_rows\"", t->schema, t->name);
  return collect_ids(t, st, rc, ids);
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

int cdbx_store_set_model_identity(cdbx_table *t, const char *identity) {
  return config_set_text(t, "model_identity", identity);
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

int cdbx_store_read_model_identity(cdbx_table *t) {
  char *identity = NULL;
  int found = 0;
  int rc = config_get(t, "model_identity", NULL, &identity, &found);
  if (rc != SQLITE_OK) return rc;
  sqlite3_free(t->model_identity);
  t->model_identity = identity;
  return SQLITE_OK;
}

int cdbx_store_read_precision(cdbx_table *t, char **precision) {
  int found = 0;
  *precision = NULL;
  return config_get(t, "precision", NULL, precision, &found);
}

int cdbx_store_note_precision(cdbx_table *t, const char *precision) {
  char *stored = NULL;
  int rc = cdbx_store_read_precision(t, &stored);
  if (rc == SQLITE_OK && (!stored || strcmp(stored, precision) != 0))
    rc = config_set_text(t, "precision", stored ? "mixed" : precision);
  sqlite3_free(stored);
  return rc;
}

static int config_int(cdbx_table *t, const char *key, int64_t *out) {
  int found = 0;
  int rc = config_get(t, key, out, NULL, &found);
  if (rc == SQLITE_OK && !found) {
    return cdbx_fail(t,
                     "config entry \"%s\" is missing (not a clip table, or "
                     "corrupt)",
                     key);
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
    rc = cdbx_fail(t, "unsupported storage version %lld", (long long)version);
  }
  if (rc == SQLITE_OK) rc = config_int(t, "dims", &dims);
  if (rc == SQLITE_OK && (dims < 1 || dims > CDB_INDEX_MAX_DIM)) {
    rc = cdbx_fail(t, "corrupt config: dims %lld", (long long)dims);
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
  int rc = SQLITE_OK;
  for (size_t i = 0; rc == SQLITE_OK && i < sizeof suffixes / sizeof suffixes[0]; i++)
    rc = exec_fmt(t, "DROP TABLE IF EXISTS \"%w\".\"%w_%s\"", t->schema, t->name, suffixes[i]);
  return rc;
}

int cdbx_store_rename(cdbx_table *t, const char *to) {
  cdbx_store_finalize(t);
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    int rc = exec_fmt(t, "ALTER TABLE \"%w\".\"%w_%s\" RENAME TO \"%w_%s\"", t->schema, t->name,
                      suffixes[i], to, suffixes[i]);
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

/* ---- vectors, the change log and the snapshot (for the cache) ---- */

/* Reads rowid's vector; *found = 0 when the row has none. vec gets dims floats. */
int cdbx_store_read_vector(cdbx_table *t, int64_t rowid, float *vec, int *found) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_GET_VECTOR);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_int64(st, 1, rowid);
  int rc = sqlite3_step(st);
  *found = 0;
  if (rc == SQLITE_ROW) {
    int bytes = sqlite3_column_bytes(st, 0);
    if (bytes != t->dims * 4) {
      sqlite3_reset(st);
      return cdbx_fail(t, "stored vector of row %lld has %d bytes, not %d", (long long)rowid,
                       bytes, t->dims * 4);
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

static int query_int(cdbx_table *t, int64_t *out, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  sqlite3_stmt *st = NULL;
  int rc = prepare_vfmt(t, &st, fmt, ap);
  va_end(ap);
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

/* Every vector of T_vectors in turn to fn (raw blob and its length); `what` names the reading
 * in an SQL error. Stops at the first error fn returns. */
int cdbx_store_scan_vectors(cdbx_table *t, const char *what, cdbx_vector_fn fn, void *ctx) {
  sqlite3_stmt *st = NULL;
  int rc = prepare_fmt(t, &st, "SELECT rowid, embedding FROM \"%w\".\"%w_vectors\"", t->schema,
                       t->name);
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    rc = fn(t, ctx, sqlite3_column_int64(st, 0), sqlite3_column_blob(st, 1),
            sqlite3_column_bytes(st, 1));
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  else if (rc != SQLITE_OK && !t->base.zErrMsg) rc = sql_error(t, what);
  sqlite3_finalize(st);
  return rc;
}

int cdbx_store_append_log(cdbx_table *t, int64_t rowid, int op, int64_t *seq) {
  sqlite3_stmt *st = cdbx_stmt(t, ST_LOG_CHANGE);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_int64(st, 1, rowid);
  sqlite3_bind_int(st, 2, op);
  int rc = step_done(t, st, "writing the change log");
  if (rc == SQLITE_OK) *seq = sqlite3_last_insert_rowid(t->db);
  return rc;
}

/* The rows changed in the log after seq `after`, each once. */
int cdbx_store_changed_ids(cdbx_table *t, int64_t after, id_list *ids) {
  sqlite3_stmt *st = NULL;
  int rc = prepare_fmt(t, &st, "SELECT DISTINCT id FROM \"%w\".\"%w_changes\" WHERE seq > ?1",
                       t->schema, t->name);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, after);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      if (cdbx_id_list_push(ids, sqlite3_column_int64(st, 0)) != SQLITE_OK) break;
    }
    rc = rc == SQLITE_DONE ? SQLITE_OK : rc == SQLITE_ROW ? SQLITE_NOMEM : sql_error(t, "log");
  }
  sqlite3_finalize(st);
  return rc;
}

/* The log's last seq (0 when empty) and the number of entries after seq `after`. */
int cdbx_store_log_end(cdbx_table *t, int64_t *end) {
  return query_int(t, end, "SELECT max(seq) FROM \"%w\".\"%w_changes\"", t->schema, t->name);
}

int cdbx_store_log_count_after(cdbx_table *t, int64_t after, int64_t *n) {
  return query_int(t, n, "SELECT count(*) FROM \"%w\".\"%w_changes\" WHERE seq > %lld", t->schema,
                   t->name, (long long)after);
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

typedef struct vector_feed {
  cdb_vector_sink sink;
  void *sink_ctx;
  cdb_error *err;
} vector_feed;

static int feed_vector(cdbx_table *t, void *ctx, int64_t rowid, const float *v, int bytes) {
  vector_feed *feed = ctx;
  if (bytes != t->dims * 4 || !v) {
    cdb_error_set(feed->err, "stored vector of row %lld has %d bytes", (long long)rowid, bytes);
    return SQLITE_CORRUPT;
  }
  return feed->sink(feed->sink_ctx, rowid, v, feed->err) == 0 ? SQLITE_OK : SQLITE_ERROR;
}

/* The snapshot's vectors are those of T_vectors (snapshots of trained indexes hold only the
 * lists' ids). */
static int feed_stored_vectors(void *ctx, cdb_vector_sink sink, void *sink_ctx, cdb_error *err) {
  cdbx_table *t = ctx;
  vector_feed feed = {sink, sink_ctx, err};
  int rc = cdbx_store_scan_vectors(t, "loading the snapshot's vectors", feed_vector, &feed);
  if (rc != SQLITE_OK && !err->msg[0]) cdb_error_set(err, "reading the vectors failed");
  return rc == SQLITE_OK ? 0 : -1;
}

/* Loads the snapshot; NULL (not an error) when it is unusable: the caller rebuilds instead. */
cdb_index *cdbx_store_read_snapshot(cdbx_table *t) {
  piece_reader r = {0};
  int rc = prepare_fmt(t, &r.st, "SELECT data FROM \"%w\".\"%w_index\" ORDER BY piece", t->schema,
                       t->name);
  cdb_error err = {{0}};
  cdb_index *idx = rc == SQLITE_OK
                       ? cdb_index_load_ids(next_piece, &r, feed_stored_vectors, t, &err)
                       : NULL;
  sqlite3_finalize(r.st);
  if (!idx) { /* the caller rebuilds from T_vectors and reports what it finds there */
    sqlite3_free(t->base.zErrMsg);
    t->base.zErrMsg = NULL;
  }
  if (idx && cdb_index_dim(idx) != t->dims) {
    cdb_index_free(idx);
    idx = NULL;
  }
  return idx;
}

int cdbx_store_data_version(cdbx_table *t, int64_t *out) {
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

/* The config of the persisted cache state: generation, snapshot seq (-1: none), snapshot uid. */
int cdbx_store_snapshot_state(cdbx_table *t, int64_t *gen, int64_t *snap, int64_t *snap_uid) {
  int found = 0;
  int rc = config_int(t, "generation", gen);
  if (rc == SQLITE_OK) rc = config_int(t, "snapshot_seq", snap);
  if (rc == SQLITE_OK) rc = config_get(t, "snapshot_uid", snap_uid, NULL, &found);
  return rc;
}

int cdbx_store_generation(cdbx_table *t, int64_t *gen) { return config_int(t, "generation", gen); }

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

static int write_pieces(cdbx_table *t, cdb_index *idx) {
  piece_writer w = {t, NULL, 0};
  int rc = prepare_fmt(t, &w.st, "INSERT INTO \"%w\".\"%w_index\"(piece, data) VALUES(?1, ?2)",
                       t->schema, t->name);
  cdb_error err = {{0}};
  if (rc == SQLITE_OK && cdb_index_save_ids(idx, PIECE_BYTES, emit_piece, &w, &err) != 0) {
    rc = err.msg[0] ? cdbx_fail(t, "saving the index: %s", err.msg)
                    : sql_error(t, "saving the index");
  }
  sqlite3_finalize(w.st);
  return rc;
}

/* Replaces the snapshot with idx (NULL: none, loading reads T_vectors) covering the log up to
 * seq `snap`, drops the log entries before `log_from`, and records the new generation and a new
 * random snapshot uid (*snap_uid). */
int cdbx_store_save_snapshot(cdbx_table *t, cdb_index *idx, int64_t snap, int64_t log_from,
                             int64_t generation, int64_t *snap_uid) {
  int rc = exec_fmt(t, "DELETE FROM \"%w\".\"%w_index\"", t->schema, t->name);
  if (rc == SQLITE_OK && idx) rc = write_pieces(t, idx);
  if (rc == SQLITE_OK) rc = config_set_int(t, "snapshot_seq", snap);
  sqlite3_randomness(sizeof *snap_uid, snap_uid);
  if (rc == SQLITE_OK) rc = config_set_int(t, "snapshot_uid", *snap_uid);
  if (rc == SQLITE_OK) rc = config_set_int(t, "generation", generation);
  if (rc == SQLITE_OK) {
    rc = exec_fmt(t, "DELETE FROM \"%w\".\"%w_changes\" WHERE seq < %lld", t->schema, t->name,
                  (long long)log_from);
  }
  return rc;
}

int cdbx_store_forget_snapshot(cdbx_table *t) { return config_set_int(t, "snapshot_seq", -1); }

/* Rows of T_rows without a vector and vectors of T_vectors without a row. */
int cdbx_store_count_unpaired(cdbx_table *t, int64_t *missing, int64_t *orphans) {
  int rc = query_int(t, missing,
                     "SELECT count(*) FROM \"%w\".\"%w_rows\" r WHERE NOT EXISTS "
                     "(SELECT 1 FROM \"%w\".\"%w_vectors\" v WHERE v.rowid = r.rowid)",
                     t->schema, t->name, t->schema, t->name);
  if (rc == SQLITE_OK) {
    rc = query_int(t, orphans,
                   "SELECT count(*) FROM \"%w\".\"%w_vectors\" v WHERE NOT EXISTS "
                   "(SELECT 1 FROM \"%w\".\"%w_rows\" r WHERE v.rowid = r.rowid)",
                   t->schema, t->name, t->schema, t->name);
  }
  return rc;
}

int cdbx_store_delete_orphan_vectors(cdbx_table *t) {
  return exec_fmt(t,
                  "DELETE FROM \"%w\".\"%w_vectors\" WHERE rowid NOT IN "
                  "(SELECT rowid FROM \"%w\".\"%w_rows\")",
                  t->schema, t->name, t->schema, t->name);
}
