/* vtab.c: the `clip` virtual table's sqlite3_module methods: connect and disconnect (and the
 * connection's list of open tables), the query plan (xBestIndex) and cursors (KNN and scan),
 * xUpdate's dispatch to row writes and commands, the transaction hooks that keep the queue and
 * the index cache consistent, rename and shadow names.
 * Owns: cdbx_table.base, .db, .conn, .next_in_conn, .schema, .name, .or_column and .txn.
 * Calls down into options.c, commands.c, queue.c, cache.c and store.c; SQL usage is documented
 * in extension.c. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/table.h"

/* ---- create / connect ---- */

static void table_free(cdbx_table *t) {
  if (!t) return;
  cdbx_store_finalize(t);
  cdbx_cache_drop(t);
  cdbx_registry_release(t->queue.model);
  for (int i = 0; i < t->n_user; i++) {
    sqlite3_free(t->user_names[i]);
    sqlite3_free(t->user_types[i]);
  }
  sqlite3_free(t->user_names);
  sqlite3_free(t->user_types);
  sqlite3_free(t->schema);
  sqlite3_free(t->name);
  sqlite3_free(t->model_name);
  sqlite3_free(t->model_identity);
  sqlite3_free(t->queue.identity_pending);
  sqlite3_free(t->index_type);
  sqlite3_free(t->base.zErrMsg);
  free(t->cache.pend_ids.ids);
  free(t->cache.pend_removes.ids);
  free(t->cache.pend_vecs);
  free(t->txn.touched.ids);
  free(t->cache.resync.ids);
  cdbx_pending_free(t);
  free(t->txn.sp_marks);
  free(t->txn.sp_seq);
  sqlite3_free(t);
}

static void conn_add_table(cdbx_table *t) {
  t->next_in_conn = t->conn->tables;
  t->conn->tables = t;
}

static void conn_remove_table(cdbx_table *t) {
  for (cdbx_table **p = &t->conn->tables; *p; p = &(*p)->next_in_conn) {
    if (*p == t) {
      *p = t->next_in_conn;
      break;
    }
  }
}

cdbx_table *cdbx_conn_find_table(cdbx_conn *conn, const char *schema, const char *name) {
  for (cdbx_table *t = conn->tables; t; t = t->next_in_conn) {
    if (sqlite3_stricmp(t->schema, schema) == 0 && sqlite3_stricmp(t->name, name) == 0) return t;
  }
  return NULL;
}

/* Whether schema holds a table or view named `name` (SQLite compares names case-insensitively). */
static int schema_has(sqlite3 *db, const char *schema, const char *name) {
  char *sql = sqlite3_mprintf("SELECT 1 FROM \"%w\".sqlite_master WHERE type IN ('table', 'view') "
                              "AND name = ?1 COLLATE NOCASE",
                              schema);
  sqlite3_stmt *st = NULL;
  int found = sql && sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
              sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC) == SQLITE_OK &&
              sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  sqlite3_free(sql);
  return found;
}

/* The schema an SQL statement would find `name` in, as SQLite resolves an unqualified name:
 * temp first, then main, then the attached databases in the order they were attached.
 * A "schema.table" name whose prefix is an attached schema names that schema's table.
 * *table points into name. Returns a sqlite3_malloc'd schema name, or NULL. */
static char *resolve_schema(sqlite3 *db, const char *name, const char **table) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db,
                         "SELECT name FROM pragma_database_list "
                         "ORDER BY CASE seq WHEN 1 THEN -1 ELSE seq END",
                         -1, &st, NULL) != SQLITE_OK) {
    return NULL;
  }
  char *found = NULL, *unqualified = NULL;
  while (!found && sqlite3_step(st) == SQLITE_ROW) {
    const char *schema = (const char *)sqlite3_column_text(st, 0);
    size_t n = strlen(schema);
    if (strlen(name) > n && name[n] == '.' && sqlite3_strnicmp(name, schema, (int)n) == 0 &&
        schema_has(db, schema, name + n + 1)) {
      found = sqlite3_mprintf("%s", schema);
      *table = name + n + 1;
    } else if (!unqualified && schema_has(db, schema, name)) {
      unqualified = sqlite3_mprintf("%s", schema);
    }
  }
  sqlite3_finalize(st);
  if (found) {
    sqlite3_free(unqualified);
    return found;
  }
  *table = name;
  return unqualified;
}

cdbx_table *cdbx_conn_open_table(sqlite3 *db, cdbx_conn *conn, const char *name) {
  const char *table = name;
  char *schema = resolve_schema(db, name, &table);
  if (!schema) return NULL;
  /* Preparing a statement on the table connects it when this connection has not used it yet
   * (xConnect registers it), and lets SQLite finish disconnecting tables of detached schemas. */
  char *sql = sqlite3_mprintf("SELECT 1 FROM \"%w\".\"%w\" WHERE 0", schema, table);
  sqlite3_stmt *st = NULL;
  cdbx_table *t = NULL;
  if (sql && sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK)
    t = cdbx_conn_find_table(conn, schema, table);
  sqlite3_finalize(st);
  sqlite3_free(sql);
  sqlite3_free(schema);
  return t;
}

int cdbx_table_user_columns(const cdbx_table *t, const char *const **names) {
  *names = (const char *const *)t->user_names;
  return t->n_user;
}

const char *cdbx_table_schema(const cdbx_table *t) { return t->schema; }

const char *cdbx_table_name(const cdbx_table *t) { return t->name; }

static int init_table(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                      char **errmsg, int create) {
  cdbx_table *t = sqlite3_malloc(sizeof *t);
  if (!t) return SQLITE_NOMEM;
  memset(t, 0, sizeof *t);
  t->db = db;
  t->conn = aux;
  t->schema = sqlite3_mprintf("%s", argv[1]);
  t->name = sqlite3_mprintf("%s", argv[2]);
  t->or_column = CDBX_NO_COLUMN;
  int rc = t->schema && t->name ? cdbx_options_apply(t, argc, argv, create, errmsg) : SQLITE_NOMEM;
  if (rc == SQLITE_OK)
    rc = create ? cdbx_store_create(t, errmsg) : cdbx_store_read_config(t, errmsg);
  if (rc != SQLITE_OK) {
    if (errmsg && !*errmsg) *errmsg = sqlite3_mprintf("clip: %s", sqlite3_errstr(rc));
    table_free(t);
    return rc;
  }
  conn_add_table(t);
  *out = &t->base;
  return SQLITE_OK;
}

static int x_create(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                    char **errmsg) {
  return init_table(db, aux, argc, argv, out, errmsg, 1);
}

static int x_connect(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                     char **errmsg) {
  return init_table(db, aux, argc, argv, out, errmsg, 0);
}

static int x_disconnect(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  conn_remove_table(t);
  table_free(t);
  return SQLITE_OK;
}

static int x_destroy(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  cdbx_store_finalize(t);
  cdbx_cache_file_remove(t);
  int rc = cdbx_store_drop(t);
  if (rc == SQLITE_OK) x_disconnect(vt);
  return rc;
}

static int x_best_index(sqlite3_vtab *vt, sqlite3_index_info *info) {
  return cdbx_plan_best_index((cdbx_table *)vt, info);
}

/* ---- cursors ---- */

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

typedef struct cdbx_cursor {
  sqlite3_vtab_cursor base;
  int plan;
  int eof;
  sqlite3_stmt *scan; /* PLAN_SCAN: rowid, image, text, user columns */
  int64_t *ids;       /* PLAN_KNN results, best first */
  float *dist;
  int64_t n, pos;
  sqlite3_stmt *lookup; /* PLAN_KNN: image, text, user columns of one row */
  int64_t looked_up;    /* rowid lookup is positioned on, or -1 */
  int dist_op_le;       /* distance bound is <= (else <) */
  /* Without k (SQLite before 3.41 does not pass LIMIT with MATCH) the search grows
   * progressively: xNext re-runs it with a larger k when the current results run out. */
  int progressive;
  int k;
  int nprobe;
  float *query;
  id_list allowed;
  int filtered;
  id_list seen;  /* progressive mode: ids returned by earlier rounds */
  int64_t n_raw; /* results of the last search before the distance cut */
} cdbx_cursor;

static int x_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out) {
  (void)vt;
  cdbx_cursor *c = sqlite3_malloc(sizeof *c);
  if (!c) return SQLITE_NOMEM;
  memset(c, 0, sizeof *c);
  c->looked_up = -1;
  *out = &c->base;
  return SQLITE_OK;
}

static void cursor_reset(cdbx_cursor *c) {
  sqlite3_finalize(c->scan);
  c->scan = NULL;
  free(c->ids);
  free(c->dist);
  c->ids = NULL;
  c->dist = NULL;
  c->n = c->pos = 0;
  c->eof = 1;
  c->looked_up = -1;
  if (c->lookup) sqlite3_reset(c->lookup);
  free(c->query);
  c->query = NULL;
  free(c->allowed.ids);
  memset(&c->allowed, 0, sizeof c->allowed);
  free(c->seen.ids);
  memset(&c->seen, 0, sizeof c->seen);
  c->progressive = c->filtered = 0;
}

static int x_close(sqlite3_vtab_cursor *cur) {
  cdbx_cursor *c = (cdbx_cursor *)cur;
  cursor_reset(c);
  sqlite3_finalize(c->lookup);
  sqlite3_free(c);
  return SQLITE_OK;
}

/* The rows of T_rows the plan's filters select (all stored columns, or rowids only). */
static int prepare_rows(cdbx_table *t, query_parts *q, int all_columns, sqlite3_stmt **out) {
  int rc = cdbx_store_prepare_rows(t, all_columns, sqlite3_str_value(q->where), out);
  if (rc != SQLITE_OK) return rc;
  for (int i = 0; i < q->n_binds; i++) sqlite3_bind_value(*out, i + 1, q->binds[i]);
  return SQLITE_OK;
}

static int filter_scan(cdbx_table *t, cdbx_cursor *c, query_parts *q) {
  if (q->k || q->nprobe || q->distance) {
    return cdbx_fail(t,
                     "k, nprobe and distance apply to MATCH queries "
                     "(WHERE %s MATCH :query)",
                     t->name);
  }
  int rc = prepare_rows(t, q, 1, &c->scan);
  if (rc != SQLITE_OK) return rc;
  c->eof = 0;
  rc = sqlite3_step(c->scan);
  if (rc == SQLITE_ROW) return SQLITE_OK;
  c->eof = 1;
  return rc == SQLITE_DONE ? SQLITE_OK : cdbx_fail(t, "%s", sqlite3_errmsg(t->db));
}

static int is_blank(const char *s) {
  while (s && isspace((unsigned char)*s)) s++;
  return !s || !*s;
}

/* The MATCH operand as a normalised query vector. */
static int query_vector(cdbx_table *t, sqlite3_value *v, float *out) {
  cdb_error err = {{0}};
  int type = sqlite3_value_type(v);
  if (type == SQLITE_NULL) return cdbx_fail(t, "MATCH query is NULL");
  if (type == SQLITE_INTEGER || type == SQLITE_FLOAT) {
    return cdbx_fail(t, "MATCH query must be TEXT, an embedding BLOB or image bytes, not a "
                        "number");
  }
  if (type == SQLITE_TEXT && is_blank((const char *)sqlite3_value_text(v))) {
    return cdbx_fail(t, "MATCH query: text is empty");
  }
  if (cdbx_value_is_vector(v, t->dims)) {
    memcpy(out, sqlite3_value_blob(v), sizeof(float) * (size_t)t->dims);
    if (cdbx_vec_check_finite(out, t->dims, "query embedding", &err) == 0 &&
        cdbx_vec_normalize(out, t->dims, "query embedding", &err) == 0) {
      return SQLITE_OK;
    }
  } else {
    clip_model *m = cdbx_table_model(t);
    if (!m) {
      if (type == SQLITE_BLOB && !t->model_name) {
        return cdbx_fail(t,
                         "MATCH BLOB has %d bytes; an embedding of this "
                         "table has %d",
                         sqlite3_value_bytes(v), t->dims * 4);
      }
      return SQLITE_ERROR;
    }
    int rc = type == SQLITE_TEXT ? cdbx_embed_text(m, (const char *)sqlite3_value_text(v),
                                                   sqlite3_value_bytes(v), out, &err)
                                 : cdbx_embed_image_value(m, v, out, &err);
    if (rc == 0) return SQLITE_OK;
    if (type == SQLITE_BLOB) {
      return cdbx_fail(t,
                       "MATCH query: a BLOB of %d bytes is neither an "
                       "embedding of this table (%d float32 values: %d bytes) nor a "
                       "readable image (%s)",
                       sqlite3_value_bytes(v), t->dims, t->dims * 4, err.msg);
    }
  }
  return cdbx_fail(t, "MATCH query: %s", err.msg);
}

static int int_arg(cdbx_table *t, sqlite3_value *v, const char *what, int lo, int hi, int *out) {
  int64_t x = sqlite3_value_int64(v);
  if (sqlite3_value_type(v) != SQLITE_INTEGER || x < lo || x > hi) {
    return cdbx_fail(t, "%s must be an integer from %d to %d", what, lo, hi);
  }
  *out = (int)x;
  return SQLITE_OK;
}

/* Sorted allowed rowids when the query filters on columns; *active = 0 when it does not. */
static int allowed_ids(cdbx_table *t, query_parts *q, id_list *ids, int *active) {
  *active = q->n_binds > 0 || sqlite3_str_length(q->where) > 0;
  if (!*active) return SQLITE_OK;
  sqlite3_stmt *st = NULL;
  int rc = prepare_rows(t, q, 0, &st);
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    rc = cdbx_id_list_push(ids, sqlite3_column_int64(st, 0));
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  else if (rc != SQLITE_OK && !t->base.zErrMsg)
    rc = cdbx_fail(t, "filter: %s", sqlite3_errmsg(t->db));
  sqlite3_finalize(st);
  return rc;
}

static int knn_limits(cdbx_table *t, query_parts *q, int *k, int *nprobe, double *max_dist) {
  int rc = SQLITE_OK, offset = 0;
  *k = 0;
  *nprobe = 0;
  *max_dist = -1;
  if (q->k) {
    rc = int_arg(t, q->k, "k", 1, CDB_INDEX_MAX_K, k);
  } else if (q->limit) {
    rc = int_arg(t, q->limit, "LIMIT", 0, CDB_INDEX_MAX_K, k);
    if (rc == SQLITE_OK && q->offset)
      rc = int_arg(t, q->offset, "OFFSET", 0, CDB_INDEX_MAX_K, &offset);
    *k += offset;
  }
  if (rc == SQLITE_OK && q->nprobe) rc = int_arg(t, q->nprobe, "nprobe", 1, 1 << 24, nprobe);
  if (rc == SQLITE_OK && q->distance) {
    int type = sqlite3_value_type(q->distance);
    *max_dist = sqlite3_value_double(q->distance);
    if ((type != SQLITE_INTEGER && type != SQLITE_FLOAT) || !(*max_dist >= 0)) {
      rc = cdbx_fail(t, "the distance bound must be a number >= 0");
    }
  }
  return rc;
}

/* Searches with the listed allowed rowids when the query filters, or with `lazy` when given. */
static int run_search(cdbx_table *t, cdbx_cursor *c, int k, double max_dist,
                      const cdb_filter *lazy) {
  cdb_filter filter = {c->allowed.ids, c->allowed.n, NULL, NULL, 0};
  cdb_search_opts opts = {.nprobe = c->nprobe,
                          .filter = lazy ? lazy : c->filtered ? &filter : NULL};
  free(c->ids);
  free(c->dist);
  c->ids = NULL;
  c->dist = NULL;
  c->n = 0;
  if (k > 0) {
    c->ids = malloc(sizeof(int64_t) * (size_t)k);
    c->dist = malloc(sizeof(float) * (size_t)k);
    int found = 0;
    if (!c->ids || !c->dist) return SQLITE_NOMEM;
    int rc = cdbx_cache_search(t, c->query, k, &opts, c->ids, c->dist, &found);
    if (rc != SQLITE_OK) return rc;
    c->n = found;
  } else {
    int rc = cdbx_cache_range_search(t, c->query, (float)(1.0 - max_dist), &opts, &c->ids, &c->dist,
                                     &c->n);
    if (rc != SQLITE_OK) return rc;
  }
  int64_t kept = 0;
  c->n_raw = c->n;
  for (int64_t i = 0; i < c->n; i++) {
    float d = 1.0f - c->dist[i];
    if (max_dist >= 0 && (c->dist_op_le ? d > max_dist : d >= max_dist)) continue;
    c->ids[kept] = c->ids[i];
    c->dist[kept++] = d;
  }
  c->n = kept;
  return SQLITE_OK;
}

#define PROGRESSIVE_K0 32

static int has_filter(const query_parts *q) {
  return q->n_binds > 0 || sqlite3_str_length(q->where) > 0;
}

/* A filtered k-NN that tests the conditions on the best candidates first, one row lookup each,
 * instead of listing every allowed rowid: about k / selectivity lookups. Taken when listing
 * would read every row (no rowid range or index narrows the filter). */
typedef struct row_check {
  sqlite3_stmt *st;
  int failed;
} row_check;

static int row_allowed(void *ctx, int64_t rowid) {
  row_check *r = ctx;
  sqlite3_bind_int64(r->st, 1, rowid);
  int rc = sqlite3_step(r->st);
  sqlite3_reset(r->st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) r->failed = 1;
  return rc == SQLITE_ROW;
}

/* Lookups allowed before listing the allowed rowids is the cheaper way (a scan of every row: at
 * 1M rows ~55 ms, or ~13k lookups at ~4 us). */
static int64_t row_check_budget(cdbx_table *t) {
  return 256 + cdb_index_count(t->cache.index) / 100;
}

/* Returns CDBX_FILTER_SPENT when the filter rejected too many for lookups to pay. */
static int search_checking_rows(cdbx_table *t, cdbx_cursor *c, query_parts *q, int k) {
  row_check r = {NULL, 0};
  int rc = cdbx_store_prepare_row_check(t, sqlite3_str_value(q->where), &r.st);
  for (int i = 0; rc == SQLITE_OK && i < q->n_binds; i++)
    rc = sqlite3_bind_value(r.st, i + 2, q->binds[i]);
  cdb_filter lazy = {NULL, 0, row_allowed, &r, row_check_budget(t)};
  if (rc == SQLITE_OK) rc = run_search(t, c, k, -1, &lazy);
  if (rc == SQLITE_OK && r.failed) rc = cdbx_fail(t, "filter: %s", sqlite3_errmsg(t->db));
  sqlite3_finalize(r.st);
  if (rc == SQLITE_OK) c->filtered = 1;
  return rc;
}

static int filter_knn(cdbx_table *t, cdbx_cursor *c, query_parts *q) {
  int k = 0;
  double max_dist = -1;
  int rc = knn_limits(t, q, &k, &c->nprobe, &max_dist);
  if (rc != SQLITE_OK) return rc;
  c->eof = 1;
  if (k == 0 && (q->k || q->limit)) return SQLITE_OK; /* LIMIT 0 */
  c->progressive = k == 0 && max_dist < 0;
  if (c->progressive) k = PROGRESSIVE_K0;
  c->k = k;
  c->query = malloc(sizeof(float) * (size_t)t->dims);
  if (!c->query) return SQLITE_NOMEM;
  rc = query_vector(t, q->match, c->query);
  if (rc == SQLITE_OK) rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_fresh(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_flush(t);
  c->dist_op_le = q->distance_le;
  int listed = 1; /* allowed rowids listed (or no filter) */
  if (rc == SQLITE_OK && !c->progressive && max_dist < 0 && has_filter(q) &&
      cdbx_store_rows_scan_all(t, sqlite3_str_value(q->where))) {
    rc = search_checking_rows(t, c, q, k);
    listed = rc == CDBX_FILTER_SPENT;
    if (listed) rc = SQLITE_OK;
  }
  if (rc == SQLITE_OK && listed) rc = allowed_ids(t, q, &c->allowed, &c->filtered);
  if (rc == SQLITE_OK && listed && (!c->filtered || c->allowed.n > 0))
    rc = run_search(t, c, k, max_dist, NULL);
  c->eof = rc != SQLITE_OK || c->n == 0;
  return rc;
}

/* Progressive mode: the next, larger search; rows already returned are skipped. */
static int grow_search(cdbx_table *t, cdbx_cursor *c) {
  int64_t limit = cdb_index_count(t->cache.index);
  if (c->filtered && c->allowed.n < limit) limit = c->allowed.n;
  int full = c->n_raw == c->k;
  for (int64_t i = 0; i < c->n; i++) {
    if (cdbx_id_list_push(&c->seen, c->ids[i]) != SQLITE_OK) return SQLITE_NOMEM;
  }
  if (!full || c->seen.n >= limit || c->k >= CDB_INDEX_MAX_K) return SQLITE_DONE;
  qsort(c->seen.ids, (size_t)c->seen.n, sizeof(int64_t), cmp_i64);
  c->k = c->k * 4 > CDB_INDEX_MAX_K ? CDB_INDEX_MAX_K : c->k * 4;
  int rc = run_search(t, c, c->k, -1, NULL);
  int64_t kept = 0;
  for (int64_t i = 0; rc == SQLITE_OK && i < c->n; i++) {
    if (bsearch(&c->ids[i], c->seen.ids, (size_t)c->seen.n, sizeof(int64_t), cmp_i64)) continue;
    c->ids[kept] = c->ids[i];
    c->dist[kept++] = c->dist[i];
  }
  if (rc != SQLITE_OK) return rc;
  c->n = kept;
  c->pos = 0;
  return kept > 0 ? SQLITE_OK : SQLITE_DONE;
}

static int x_filter(sqlite3_vtab_cursor *cur, int idx_num, const char *idx_str, int argc,
                    sqlite3_value **argv) {
  cdbx_cursor *c = (cdbx_cursor *)cur;
  cdbx_table *t = (cdbx_table *)cur->pVtab;
  cursor_reset(c);
  c->plan = idx_num;
  query_parts q = {0};
  int rc = cdbx_plan_parse(t, idx_str, argc, argv, &q);
  if (rc == SQLITE_OK) rc = idx_num == PLAN_KNN ? filter_knn(t, c, &q) : filter_scan(t, c, &q);
  cdbx_plan_parts_free(&q);
  return rc;
}

static int x_next(sqlite3_vtab_cursor *cur) {
  cdbx_cursor *c = (cdbx_cursor *)cur;
  if (c->plan == PLAN_KNN) {
    c->looked_up = -1;
    if (++c->pos < c->n) return SQLITE_OK;
    int rc = c->progressive ? grow_search((cdbx_table *)cur->pVtab, c) : SQLITE_DONE;
    c->eof = rc != SQLITE_OK;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }
  int rc = sqlite3_step(c->scan);
  if (rc == SQLITE_ROW) return SQLITE_OK;
  c->eof = 1;
  if (rc == SQLITE_DONE) return SQLITE_OK;
  cdbx_table *t = (cdbx_table *)cur->pVtab;
  return cdbx_fail(t, "%s", sqlite3_errmsg(t->db));
}

static int x_eof(sqlite3_vtab_cursor *cur) { return ((cdbx_cursor *)cur)->eof; }

static int64_t cursor_rowid(cdbx_cursor *c) {
  return c->plan == PLAN_KNN ? c->ids[c->pos] : sqlite3_column_int64(c->scan, 0);
}

static int x_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid) {
  *rowid = cursor_rowid((cdbx_cursor *)cur);
  return SQLITE_OK;
}

/* Positions the KNN cursor's lookup statement on the current row's stored columns. */
static int lookup_row(cdbx_table *t, cdbx_cursor *c, int64_t rowid) {
  if (c->looked_up == rowid) return SQLITE_ROW;
  if (!c->lookup) {
    int rc = cdbx_store_prepare_row_lookup(t, &c->lookup);
    if (rc != SQLITE_OK) return rc;
  }
  sqlite3_reset(c->lookup);
  sqlite3_bind_int64(c->lookup, 1, rowid);
  int rc = sqlite3_step(c->lookup);
  c->looked_up = rc == SQLITE_ROW ? rowid : -1;
  return rc;
}

static int column_embedding(cdbx_table *t, sqlite3_context *ctx, int64_t rowid) {
  int rc = cdbx_pending_has(t, rowid) ? cdbx_pending_flush(t) : SQLITE_OK;
  if (rc != SQLITE_OK) return rc;
  sqlite3_stmt *st = cdbx_stmt(t, ST_GET_VECTOR);
  if (!st) return SQLITE_ERROR;
  sqlite3_bind_int64(st, 1, rowid);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) sqlite3_result_value(ctx, sqlite3_column_value(st, 0));
  sqlite3_reset(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int x_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col) {
  cdbx_cursor *c = (cdbx_cursor *)cur;
  cdbx_table *t = (cdbx_table *)cur->pVtab;
  int64_t rowid = cursor_rowid(c);
  if (col <= COL_EMBEDDING && sqlite3_vtab_nochange(ctx)) return SQLITE_OK;
  if (col == COL_EMBEDDING) return column_embedding(t, ctx, rowid);
  if (col == COL_DISTANCE(t)) {
    if (c->plan == PLAN_KNN) sqlite3_result_double(ctx, c->dist[c->pos]);
    return SQLITE_OK;
  }
  if (col > COL_DISTANCE(t)) return SQLITE_OK; /* k, nprobe, command: NULL */
  int stored = col == COL_IMAGE ? 0 : col == COL_TEXT ? 1 : col - COL_USER0 + 2;
  if (c->plan == PLAN_SCAN) {
    sqlite3_result_value(ctx, sqlite3_column_value(c->scan, stored + 1));
    return SQLITE_OK;
  }
  int rc = lookup_row(t, c, rowid);
  if (rc == SQLITE_ROW) sqlite3_result_value(ctx, sqlite3_column_value(c->lookup, stored));
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* A command row carries only the command: values in other columns would be silently lost. */
static int command_alone(cdbx_table *t, int argc, sqlite3_value **argv) {
  for (int i = 1; i < argc; i++) {
    if (i != 2 + COL_COMMAND(t) && sqlite3_value_type(argv[i]) != SQLITE_NULL) {
      return cdbx_fail(t,
                       "a command (INSERT INTO %s(%s) VALUES(...)) sets no "
                       "other column; insert rows in a separate statement",
                       t->name, t->name);
    }
  }
  return SQLITE_OK;
}

static int run_command(cdbx_table *t, sqlite3_value *cmd) {
  if (sqlite3_value_type(cmd) != SQLITE_TEXT) {
    return cdbx_fail(t, "a command must be TEXT ('train', 'rebuild', 'optimize' or "
                        "'integrity-check')");
  }
  return cdbx_command(t, (const char *)sqlite3_value_text(cmd));
}

static int x_update(sqlite3_vtab *vt, int argc, sqlite3_value **argv, sqlite3_int64 *rowid) {
  cdbx_table *t = (cdbx_table *)vt;
  sqlite3_int64 last = sqlite3_last_insert_rowid(t->db);
  int rc = cdbx_cache_fresh(t);
  if (rc != SQLITE_OK) return rc;
  int is_insert = argc > 1 && sqlite3_value_type(argv[0]) == SQLITE_NULL;
  if (argc == 1) {
    rc = cdbx_row_delete(t, argv[0]);
  } else if (is_insert && sqlite3_value_type(argv[2 + COL_COMMAND(t)]) != SQLITE_NULL) {
    rc = command_alone(t, argc, argv);
    if (rc == SQLITE_OK) rc = cdbx_pending_flush(t);
    if (rc == SQLITE_OK) rc = run_command(t, argv[2 + COL_COMMAND(t)]);
    is_insert = 0;
  } else if (is_insert) {
    rc = cdbx_row_insert(t, argv[1], argv + 2, rowid);
  } else {
    rc = cdbx_row_update(t, argv[0], argv[1], argv + 2);
  }
  /* Internal writes (change log) must not leak into the user's last_insert_rowid. */
  sqlite3_set_last_insert_rowid(t->db, is_insert && rc == SQLITE_OK ? *rowid : last);
  return rc;
}

/* ---- transactions ---- */

static int x_begin(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  t->txn.in_txn = 1;
  t->txn.version_checked = 0;
  t->txn.command_in_txn = 0;
  t->txn.touched.n = 0;
  t->txn.n_sp = 0;
  t->txn.begin_seq = t->cache.cache_seq;
  return SQLITE_OK;
}

static int x_sync(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  sqlite3_int64 last = sqlite3_last_insert_rowid(t->db); /* training writes are internal */
  int rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) rc = cdbx_maintain(t);
  if (rc == SQLITE_OK) rc = cdbx_table_model_sync(t);
  sqlite3_set_last_insert_rowid(t->db, last);
  return rc;
}

static int x_commit(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  cdbx_pending_free(t); /* empty after xSync; the buffers are not kept between transactions */
  cdbx_table_model_commit(t);
  cdbx_cache_after_commit(t);
  t->txn.in_txn = 0;
  t->txn.touched.n = 0;
  t->txn.n_sp = 0;
  t->txn.command_in_txn = 0;
  return SQLITE_OK;
}

/* Queues the rows touched since touched[from] for re-reading from the (rolled back) tables. */
static int rollback_from(cdbx_table *t, int64_t from, int64_t seq) {
  int rc = cdbx_cache_rollback_flush(t);
  for (int64_t i = from; rc == SQLITE_OK && i < t->txn.touched.n; i++) {
    rc = cdbx_id_list_push(&t->cache.resync, t->txn.touched.ids[i]);
  }
  if (rc != SQLITE_OK || t->txn.command_in_txn) t->cache.stale = 1;
  if (seq < t->cache.cache_seq) t->cache.cache_seq = seq;
  return SQLITE_OK;
}

static int x_rollback(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  cdbx_pending_free(t);
  cdbx_table_model_rollback(t);
  rollback_from(t, 0, t->txn.begin_seq);
  t->txn.in_txn = 0;
  t->txn.touched.n = 0;
  t->txn.n_sp = 0;
  t->txn.command_in_txn = 0;
  return SQLITE_OK;
}

/* SQLite opens a savepoint for user SAVEPOINTs and at the start of multi-row statements inside a
 * transaction (not for single-row INSERTs, so executemany keeps batching). Flushing here keeps
 * the queue newer than every open savepoint: a ROLLBACK TO then simply discards it. */
static int x_savepoint(sqlite3_vtab *vt, int i) {
  cdbx_table *t = (cdbx_table *)vt;
  int rc = cdbx_pending_flush(t);
  if (rc != SQLITE_OK) return rc;
  if (i >= t->txn.cap_sp) {
    int cap = i + 8;
    int64_t *marks = realloc(t->txn.sp_marks, sizeof *marks * (size_t)cap);
    if (marks) t->txn.sp_marks = marks;
    int64_t *seqs = realloc(t->txn.sp_seq, sizeof *seqs * (size_t)cap);
    if (seqs) t->txn.sp_seq = seqs;
    if (!marks || !seqs) return SQLITE_NOMEM;
    t->txn.cap_sp = cap;
  }
  for (int j = t->txn.n_sp; j <= i; j++) {
    t->txn.sp_marks[j] = t->txn.touched.n;
    t->txn.sp_seq[j] = t->cache.cache_seq;
  }
  t->txn.n_sp = i + 1;
  return SQLITE_OK;
}

static int x_release(sqlite3_vtab *vt, int i) {
  cdbx_table *t = (cdbx_table *)vt;
  if (i < t->txn.n_sp) t->txn.n_sp = i;
  return SQLITE_OK;
}

static int x_rollback_to(sqlite3_vtab *vt, int i) {
  cdbx_table *t = (cdbx_table *)vt;
  int have = i < t->txn.n_sp;
  cdbx_pending_clear(t); /* every queued row is newer than savepoint i: SQLite removed it */
  cdbx_table_model_rollback(t);
  rollback_from(t, have ? t->txn.sp_marks[i] : 0, have ? t->txn.sp_seq[i] : t->txn.begin_seq);
  if (have) t->txn.n_sp = i + 1;
  return SQLITE_OK;
}

static int x_rename(sqlite3_vtab *vt, const char *to) {
  cdbx_table *t = (cdbx_table *)vt;
  char *refused = cdbx_table_name_error(t, to);
  if (refused) {
    sqlite3_free(t->base.zErrMsg);
    t->base.zErrMsg = refused;
    return SQLITE_ERROR;
  }
  int rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) {
    cdbx_cache_file_remove(t);
    rc = cdbx_store_rename(t, to);
  }
  if (rc != SQLITE_OK) return rc;
  char *name = sqlite3_mprintf("%s", to);
  if (!name) return SQLITE_NOMEM;
  sqlite3_free(t->name);
  t->name = name;
  return SQLITE_OK;
}

static int x_shadow_name(const char *suffix) { return cdbx_store_is_shadow_name(suffix); }

static const sqlite3_module clip_module = {
    .iVersion = 3,
    .xCreate = x_create,
    .xConnect = x_connect,
    .xBestIndex = x_best_index,
    .xDisconnect = x_disconnect,
    .xDestroy = x_destroy,
    .xOpen = x_open,
    .xClose = x_close,
    .xFilter = x_filter,
    .xNext = x_next,
    .xEof = x_eof,
    .xColumn = x_column,
    .xRowid = x_rowid,
    .xUpdate = x_update,
    .xBegin = x_begin,
    .xSync = x_sync,
    .xCommit = x_commit,
    .xRollback = x_rollback,
    .xRename = x_rename,
    .xSavepoint = x_savepoint,
    .xRelease = x_release,
    .xRollbackTo = x_rollback_to,
    .xShadowName = x_shadow_name,
};

const sqlite3_module *cdbx_vtab_module(void) { return &clip_module; }
