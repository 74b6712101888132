/* search.c: clip_search(table, query [, k [, nprobe]]), an eponymous table-valued function that
 * runs the same KNN query as `SELECT ... FROM table WHERE table MATCH query AND k = N` on any
 * clip table, returning rowid, distance, image, text, embedding and the user columns as a JSON
 * object (a table-valued function has one fixed set of columns for every table). */
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/internal.h"

enum {
  S_ROWID,
  S_DISTANCE,
  S_IMAGE,
  S_TEXT,
  S_EMBEDDING,
  S_METADATA,
  S_TABLE,
  S_QUERY,
  S_K,
  S_NPROBE
};
#define DEFAULT_K 10

typedef struct search_vtab {
  sqlite3_vtab base;
  sqlite3 *db;
  cdbx_conn *conn;
} search_vtab;

typedef struct search_cursor {
  sqlite3_vtab_cursor base;
  sqlite3_stmt *st;
  int eof;
  int64_t row;
} search_cursor;

static int s_connect(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                     char **errmsg) {
  (void)argc;
  (void)argv;
  (void)errmsg;
  int rc = sqlite3_declare_vtab(db, "CREATE TABLE x(rowid, distance, image, text, embedding, "
                                    "metadata, table_name HIDDEN, query HIDDEN, k HIDDEN, "
                                    "nprobe HIDDEN)");
  if (rc != SQLITE_OK) return rc;
  search_vtab *v = sqlite3_malloc(sizeof *v);
  if (!v) return SQLITE_NOMEM;
  memset(v, 0, sizeof *v);
  v->db = db;
  v->conn = aux;
  *out = &v->base;
  return SQLITE_OK;
}

static int s_disconnect(sqlite3_vtab *vt) {
  sqlite3_free(vt);
  return SQLITE_OK;
}

/* idxNum bit (col - S_TABLE) says the argument is present; argv follows column order. */
static int s_best_index(sqlite3_vtab *vt, sqlite3_index_info *info) {
  (void)vt;
  int where[4] = {-1, -1, -1, -1};
  for (int i = 0; i < info->nConstraint; i++) {
    const struct sqlite3_index_constraint *c = &info->aConstraint[i];
    if (c->iColumn < S_TABLE || c->op != SQLITE_INDEX_CONSTRAINT_EQ) continue;
    if (!c->usable) return SQLITE_CONSTRAINT;
    where[c->iColumn - S_TABLE] = i;
  }
  int argv_i = 0;
  info->idxNum = 0;
  for (int j = 0; j < 4; j++) {
    if (where[j] < 0) continue;
    info->idxNum |= 1 << j;
    info->aConstraintUsage[where[j]].argvIndex = ++argv_i;
    info->aConstraintUsage[where[j]].omit = 1;
  }
  info->estimatedCost = 10;
  info->estimatedRows = DEFAULT_K;
  if (info->nOrderBy == 1 && info->aOrderBy[0].iColumn == S_DISTANCE && !info->aOrderBy[0].desc) {
    info->orderByConsumed = 1;
  }
  return SQLITE_OK;
}

static int s_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out) {
  (void)vt;
  search_cursor *c = sqlite3_malloc(sizeof *c);
  if (!c) return SQLITE_NOMEM;
  memset(c, 0, sizeof *c);
  c->eof = 1;
  *out = &c->base;
  return SQLITE_OK;
}

static int s_close(sqlite3_vtab_cursor *cur) {
  search_cursor *c = (search_cursor *)cur;
  sqlite3_finalize(c->st);
  sqlite3_free(c);
  return SQLITE_OK;
}

static int s_error(sqlite3_vtab *vt, char *msg) {
  sqlite3_free(vt->zErrMsg);
  vt->zErrMsg = msg;
  return SQLITE_ERROR;
}

static char *search_sql(cdbx_table *t, int with_nprobe) {
  const char *name = cdbx_table_name(t);
  const char *const *cols = NULL;
  int n = cdbx_table_user_columns(t, &cols);
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendall(s, "SELECT rowid, distance, image, text, embedding, json_object(");
  for (int i = 0; i < n; i++)
    sqlite3_str_appendf(s, "%s%Q, \"%w\"", i ? ", " : "", cols[i], cols[i]);
  sqlite3_str_appendf(s, ") FROM \"%w\".\"%w\" WHERE \"%w\" MATCH ?1 AND k = ?2%s",
                      cdbx_table_schema(t), name, name, with_nprobe ? " AND nprobe = ?3" : "");
  return cdbx_str_finish(s);
}

static int s_filter(sqlite3_vtab_cursor *cur, int idx_num, const char *idx_str, int argc,
                    sqlite3_value **argv) {
  (void)idx_str;
  search_cursor *c = (search_cursor *)cur;
  search_vtab *v = (search_vtab *)cur->pVtab;
  sqlite3_value *args[4] = {NULL, NULL, NULL, NULL};
  for (int j = 0, a = 0; j < 4 && a < argc; j++) {
    if (idx_num & (1 << j)) args[j] = argv[a++];
  }
  sqlite3_finalize(c->st);
  c->st = NULL;
  c->eof = 1;
  c->row = 0;
  if (!args[0] || !args[1] || sqlite3_value_type(args[0]) != SQLITE_TEXT) {
    return s_error(cur->pVtab, sqlite3_mprintf("clip_search: usage: clip_search(table TEXT, query "
                                               "[, k [, nprobe]])"));
  }
  const char *name = (const char *)sqlite3_value_text(args[0]);
  cdbx_table *t = cdbx_conn_open_table(v->db, v->conn, name);
  if (!t) return s_error(cur->pVtab, sqlite3_mprintf("clip_search: %s is not a clip table", name));
  char *sql = search_sql(t, args[3] != NULL);
  int rc = sql ? sqlite3_prepare_v2(v->db, sql, -1, &c->st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  if (rc != SQLITE_OK) {
    return s_error(cur->pVtab, sqlite3_mprintf("clip_search: %s", sqlite3_errmsg(v->db)));
  }
  sqlite3_bind_value(c->st, 1, args[1]);
  if (args[2]) sqlite3_bind_value(c->st, 2, args[2]);
  else sqlite3_bind_int(c->st, 2, DEFAULT_K);
  if (args[3]) sqlite3_bind_value(c->st, 3, args[3]);
  rc = sqlite3_step(c->st);
  if (rc == SQLITE_ROW) {
    c->eof = 0;
    return SQLITE_OK;
  }
  if (rc == SQLITE_DONE) return SQLITE_OK;
  return s_error(cur->pVtab, sqlite3_mprintf("%s", sqlite3_errmsg(v->db)));
}

static int s_next(sqlite3_vtab_cursor *cur) {
  search_cursor *c = (search_cursor *)cur;
  int rc = sqlite3_step(c->st);
  c->row++;
  if (rc == SQLITE_ROW) return SQLITE_OK;
  c->eof = 1;
  if (rc == SQLITE_DONE) return SQLITE_OK;
  return s_error(cur->pVtab,
                 sqlite3_mprintf("%s", sqlite3_errmsg(((search_vtab *)cur->pVtab)->db)));
}

static int s_eof(sqlite3_vtab_cursor *cur) { return ((search_cursor *)cur)->eof; }

static int s_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col) {
  search_cursor *c = (search_cursor *)cur;
  if (col <= S_METADATA) sqlite3_result_value(ctx, sqlite3_column_value(c->st, col));
  return SQLITE_OK;
}

static int s_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid) {
  *rowid = ((search_cursor *)cur)->row;
  return SQLITE_OK;
}

static const sqlite3_module search_module = {
    .iVersion = 1,
    .xCreate = NULL, /* eponymous only */
    .xConnect = s_connect,
    .xBestIndex = s_best_index,
    .xDisconnect = s_disconnect,
    .xDestroy = s_disconnect,
    .xOpen = s_open,
    .xClose = s_close,
    .xFilter = s_filter,
    .xNext = s_next,
    .xEof = s_eof,
    .xColumn = s_column,
    .xRowid = s_rowid,
};

int cdbx_register_search(sqlite3 *db, cdbx_conn *conn) {
  return sqlite3_create_module(db, "clip_search", &search_module, conn);
}
