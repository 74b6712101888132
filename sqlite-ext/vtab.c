/* vtab.c: the `clip` virtual table's sqlite3_module methods: connect and disconnect (and the
 * connection's list of open tables), the query plan (xBestIndex) and cursors (KNN and scan),
 * xUpdate's dispatch to row writes and commands, the transaction hooks that keep the queue and
 * the index cache consistent, rename and shadow names.
 * Owns: cdbx_table.base, .db, .conn, .next_in_conn, .schema, .name, .or_column and the
 * transaction state (.in_txn, .version_checked, .command_in_txn, .sp_marks, .sp_seq, .n_sp,
 * .begin_seq). Calls down into options.c, commands.c, queue.c, cache.c and store.c; SQL usage
 * is documented in extension.c. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/table.h"

/* ---- create / connect ---- */

static void table_free(cdbx_table *t) {
  if (!t) return;
  cdbx_store_finalize(t);
  cdbx_cache_drop(t);
  cdbx_registry_release(t->model);
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
  sqlite3_free(t->index_type);
  sqlite3_free(t->base.zErrMsg);
  free(t->pend_ids.ids);
  free(t->pend_removes.ids);
  free(t->pend_vecs);
  free(t->touched.ids);
  free(t->resync.ids);
  cdbx_pending_free(t);
  free(t->sp_marks);
  free(t->sp_seq);
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
                              "AND name = ?1 COLLATE NOCASE", schema);
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
  if (sqlite3_prepare_v2(db, "SELECT name FROM pragma_database_list "
                             "ORDER BY CASE seq WHEN 1 THEN -1 ELSE seq END", -1, &st,
                         NULL) != SQLITE_OK) {
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

const char *cdbx_table_schema(const cdbx_table *t) {
  return t->schema;
}

const char *cdbx_table_name(const cdbx_table *t) {
  return t->name;
}

static int init_table(sqlite3 *db, void *aux, int argc, const char *const *argv,
                      sqlite3_vtab **out, char **errmsg, int create) {
  cdbx_table *t = sqlite3_malloc(sizeof *t);
  if (!t) return SQLITE_NOMEM;
  memset(t, 0, sizeof *t);
  t->db = db;
  t->conn = aux;
  t->schema = sqlite3_mprintf("%s", argv[1]);
  t->name = sqlite3_mprintf("%s", argv[2]);
  t->or_column = CDBX_NO_COLUMN;
  int rc = t->schema && t->name ? cdbx_options_apply(t, argc, argv, create, errmsg)
                                 : SQLITE_NOMEM;
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

static int x_create(sqlite3 *db, void *aux, int argc, const char *const *argv,
                    sqlite3_vtab **out, char **errmsg) {
  return init_table(db, aux, argc, argv, out, errmsg, 1);
}

static int x_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                     sqlite3_vtab **out, char **errmsg) {
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

/* ---- query planning ----
 * idxStr lists one entry per argv value, each "<kind><op><column>[:<collation>];": kind and op
 * are the characters of arg_kind and filter_op below, column is the declared column number (-1
 * for rowid), collation the name SQLite compares with (filters only). idxNum is a plan_kind.
 * Semantics (documented in extension.c): every constraint SQLite hands the table on rowid, image,
 * text and user columns narrows the candidates before the top-k cut; a KNN query with k is
 * searched once per combination of the values its constraints take from other tables (so the
 * table is an inner loop of any join it is constrained by); a condition on the table that SQLite
 * would apply after the cut (an OR over its columns, a collation it cannot name, a non-equality
 * k) is an error instead of a silently shorter result. */

typedef enum plan_kind { PLAN_SCAN = 0, PLAN_KNN = 1 } plan_kind;

typedef enum arg_kind {
  ARG_MATCH = 'M',
  ARG_K = 'K',
  ARG_NPROBE = 'P',
  ARG_LIMIT = 'L',
  ARG_OFFSET = 'O',
  ARG_DISTANCE = 'D',
  ARG_FILTER = 'F'
} arg_kind;

typedef enum filter_op {
  OP_EQ = '=',
  OP_LT = '<',
  OP_LE = 'l',
  OP_GT = '>',
  OP_GE = 'g',
  OP_NE = 'N',
  OP_LIKE = 'L',
  OP_GLOB = 'G',
  OP_REGEXP = 'R',
  OP_IS = 'i',
  OP_ISNOT = 'j',
  OP_ISNULL = 'n',
  OP_NOTNULL = 'z',
  OP_IN = 'I'
} filter_op;

/* How each operator SQLite hands a filter is written in SQL on the rows table. */
static const struct {
  unsigned char sqlite_op;
  filter_op op;
  const char *sql;
} filter_ops[] = {
    {SQLITE_INDEX_CONSTRAINT_EQ, OP_EQ, "= ?"},
    {SQLITE_INDEX_CONSTRAINT_LT, OP_LT, "< ?"},
    {SQLITE_INDEX_CONSTRAINT_LE, OP_LE, "<= ?"},
    {SQLITE_INDEX_CONSTRAINT_GT, OP_GT, "> ?"},
    {SQLITE_INDEX_CONSTRAINT_GE, OP_GE, ">= ?"},
    {SQLITE_INDEX_CONSTRAINT_NE, OP_NE, "!= ?"},
    {SQLITE_INDEX_CONSTRAINT_LIKE, OP_LIKE, "LIKE ?"},
    {SQLITE_INDEX_CONSTRAINT_GLOB, OP_GLOB, "GLOB ?"},
    {SQLITE_INDEX_CONSTRAINT_REGEXP, OP_REGEXP, "REGEXP ?"},
    {SQLITE_INDEX_CONSTRAINT_IS, OP_IS, "IS ?"},
    {SQLITE_INDEX_CONSTRAINT_ISNOT, OP_ISNOT, "IS NOT ?"},
    {SQLITE_INDEX_CONSTRAINT_ISNULL, OP_ISNULL, "IS NULL"},
    {SQLITE_INDEX_CONSTRAINT_ISNOTNULL, OP_NOTNULL, "IS NOT NULL"},
    {SQLITE_INDEX_CONSTRAINT_EQ, OP_IN, "IN"},
};

static int filter_op_of(unsigned char sqlite_op) {
  for (size_t i = 0; i < sizeof filter_ops / sizeof filter_ops[0]; i++) {
    if (filter_ops[i].sqlite_op == sqlite_op) return filter_ops[i].op;
  }
  return 0;
}

static const char *filter_op_sql(int op) {
  for (size_t i = 0; i < sizeof filter_ops / sizeof filter_ops[0]; i++) {
    if ((int)filter_ops[i].op == op) return filter_ops[i].sql;
  }
  return NULL;
}

/* LIKE, GLOB and REGEXP call functions (no affinity, no collation); the null tests compare
 * nothing: the rows table applies them exactly as SQLite would. */
static int op_is_function(int op) {
  return op == OP_LIKE || op == OP_GLOB || op == OP_REGEXP || op == OP_ISNULL || op == OP_NOTNULL;
}

/* Whether a column has INTEGER, REAL or NUMERIC affinity: comparing it with anything converts
 * the other operand the same way in the rows table as in SQLite, whatever that operand's own
 * affinity. The affinity comes from the type name before any column constraint. */
static int column_is_numeric(const cdbx_table *t, int col) {
  if (col == -1) return 1;
  if (col < COL_USER0) return 0;
  static const char *const stops[] = {"COLLATE", "NOT", "NULL", "DEFAULT", "PRIMARY", "UNIQUE",
                                      "CHECK", "REFERENCES", "CONSTRAINT", "GENERATED", "AS"};
  const char *type = t->user_types[col - COL_USER0];
  size_t len = 0;
  while (type[len]) {
    size_t w = 0;
    while (type[len + w] && !isspace((unsigned char)type[len + w]) && type[len + w] != '(') w++;
    int stop = 0;
    for (size_t i = 0; i < sizeof stops / sizeof stops[0]; i++) {
      if (strlen(stops[i]) == w && sqlite3_strnicmp(type + len, stops[i], (int)w) == 0) stop = 1;
    }
    if (stop) break;
    len += w ? w : 1;
  }
  char *name = sqlite3_mprintf("%.*s", (int)len, type);
  if (!name) return 0;
  for (char *p = name; *p; p++) *p = (char)toupper((unsigned char)*p);
  int numeric = strstr(name, "INT") ||
                (!strstr(name, "CHAR") && !strstr(name, "CLOB") && !strstr(name, "TEXT") &&
                 !strstr(name, "BLOB") && strspn(name, " ") < strlen(name));
  sqlite3_free(name);
  return numeric;
}

/* Whether a user column declares a collation other than BINARY ("name TEXT COLLATE NOCASE"). */
static int declares_collation(const cdbx_table *t, int col) {
  if (col < COL_USER0) return 0;
  const char *type = t->user_types[col - COL_USER0];
  for (const char *p = type; *p; p++) {
    if ((p == type || isspace((unsigned char)p[-1])) && sqlite3_strnicmp(p, "COLLATE", 7) == 0 &&
        isspace((unsigned char)p[7])) {
      const char *name = p + 7;
      while (isspace((unsigned char)*name)) name++;
      return sqlite3_strnicmp(name, "BINARY", 6) != 0 || isalnum((unsigned char)name[6]);
    }
  }
  return 0;
}

static int is_filter_column(const cdbx_table *t, int col) {
  return col == -1 || col == COL_IMAGE || col == COL_TEXT ||
         (col >= COL_USER0 && col < COL_DISTANCE(t));
}

static int column_used(const sqlite3_index_info *info, int col) {
  return (info->colUsed >> (col < 63 ? col : 63)) & 1;
}

static int every_column_used(const cdbx_table *t, const sqlite3_index_info *info) {
  for (int col = 0; col <= COL_COMMAND(t); col++) {
    if (!column_used(info, col)) return 0;
  }
  return 1;
}

/* A collation name that can be written back into SQL unquoted. */
static int plain_collation(const char *name) {
  if (!name || !name[0]) return 0;
  for (const char *p = name; *p; p++) {
    if (!isalnum((unsigned char)*p) && *p != '_') return 0;
  }
  return 1;
}

typedef struct plan_builder {
  sqlite3_str *idx;
  int argc;
  int has_match, match_unusable, has_k, bad_k, unusable, unusable_arg, rowid_eq, n_filters;
  const char *inapplicable; /* why a constraint cannot be applied by the table, or NULL */
} plan_builder;

static void plan_use(sqlite3_index_info *info, plan_builder *b, int i, char kind, int op, int col,
                     const char *collation, int omit) {
  sqlite3_str_appendf(b->idx, "%c%c%d", kind, op ? op : '_', col);
  if (collation) sqlite3_str_appendf(b->idx, ":%s", collation);
  sqlite3_str_appendchar(b->idx, 1, ';');
  info->aConstraintUsage[i].argvIndex = ++b->argc;
  info->aConstraintUsage[i].omit = (unsigned char)omit;
}

/* A constraint on rowid, image, text or a user column. */
static void plan_filter(cdbx_table *t, sqlite3_index_info *info, plan_builder *b, int i) {
  const struct sqlite3_index_constraint *c = &info->aConstraint[i];
  int op = filter_op_of(c->op);
  const char *collation = sqlite3_vtab_collation(info, i);
  if (!c->usable) {
    b->unusable = 1;
    return;
  }
  /* rowid is always an integer: no collation applies to it. */
  if (op_is_function(op) || c->iColumn == -1) collation = NULL;
  /* For != and IS NOT SQLite reports only a COLLATE written in the query (BINARY otherwise),
   * so BINARY on a column declared with another collation is ambiguous: SQLite applies it. */
  int ambiguous = (op == OP_NE || op == OP_ISNOT) && declares_collation(t, c->iColumn) &&
                  sqlite3_stricmp(collation, "BINARY") == 0;
  if (!op || ambiguous || (collation && !plain_collation(collation))) {
    b->inapplicable = !op        ? "an operator the table cannot apply"
                      : ambiguous ? "!= or IS NOT on a column declared with a collation (SQLite "
                                    "does not tell which collation applies)"
                                  : "a collation whose name is not plain letters, digits and _";
    return;
  }
  if (op == OP_EQ && sqlite3_vtab_in(info, i, -1)) {
    sqlite3_vtab_in(info, i, 1);
    op = OP_IN;
  }
  sqlite3_value *rhs = NULL;
  /* The rows table compares with the value as if it were a parameter: exact unless the
   * operand is an expression whose own affinity would convert this column's values. */
  int exact = op == OP_IN || op_is_function(op) || column_is_numeric(t, c->iColumn) ||
              sqlite3_vtab_rhs_value(info, i, &rhs) == SQLITE_OK;
  if (c->iColumn == -1 && op == OP_EQ) b->rowid_eq = 1;
  b->n_filters++;
  plan_use(info, b, i, ARG_FILTER, op, c->iColumn, collation, exact);
}

/* k and nprobe take one value: k = N. */
static void plan_parameter(sqlite3_index_info *info, plan_builder *b, int i, char kind) {
  const struct sqlite3_index_constraint *c = &info->aConstraint[i];
  int equality = c->op == SQLITE_INDEX_CONSTRAINT_EQ && !sqlite3_vtab_in(info, i, -1);
  if (!equality) b->bad_k = kind;
  else if (!c->usable) b->unusable_arg = 1;
  else plan_use(info, b, i, kind, OP_EQ, c->iColumn, NULL, 1);
}

static void plan_constraint(cdbx_table *t, sqlite3_index_info *info, plan_builder *b, int i) {
  const struct sqlite3_index_constraint *c = &info->aConstraint[i];
  int col = c->iColumn;
  if (c->op == SQLITE_INDEX_CONSTRAINT_MATCH && col == COL_COMMAND(t)) {
    if (b->has_match) return; /* a second MATCH: SQLite reports it */
    b->has_match = 1;
    if (c->usable) plan_use(info, b, i, ARG_MATCH, OP_EQ, col, NULL, 1);
    else b->match_unusable = 1;
  } else if (c->op == SQLITE_INDEX_CONSTRAINT_LIMIT || c->op == SQLITE_INDEX_CONSTRAINT_OFFSET) {
    char kind = c->op == SQLITE_INDEX_CONSTRAINT_LIMIT ? ARG_LIMIT : ARG_OFFSET;
    if (c->usable) plan_use(info, b, i, kind, OP_EQ, col, NULL, 0);
  } else if (col == COL_K(t)) {
    b->has_k = 1;
    plan_parameter(info, b, i, ARG_K);
  } else if (col == COL_NPROBE(t)) {
    plan_parameter(info, b, i, ARG_NPROBE);
  } else if (col == COL_DISTANCE(t)) {
    int op = filter_op_of(c->op);
    if (op != OP_LT && op != OP_LE) b->inapplicable = "a distance test other than < or <=";
    else if (!c->usable) b->unusable_arg = 1;
    else plan_use(info, b, i, ARG_DISTANCE, op, col, NULL, 1);
  } else if (is_filter_column(t, col)) {
    plan_filter(t, info, b, i);
  }
}

/* The query uses the MATCH column of this table (UPDATE reads every column). */
static int match_used(const cdbx_table *t, const sqlite3_index_info *info) {
  return column_used(info, COL_COMMAND(t)) && !every_column_used(t, info);
}

/* SQLite plans an OR term one disjunct at a time, after the plans of the whole WHERE clause,
 * calling xBestIndex with only that disjunct's constraints: a call without MATCH from a query
 * that uses MATCH and k (UPDATE reads every column). An OR of equalities on one column SQLite
 * also hands the KNN plan as IN, so only other ORs would be applied after the cut. */
static int or_after_cut(cdbx_table *t, const sqlite3_index_info *info, const plan_builder *b) {
  if (b->has_match) {
    t->or_column = CDBX_NO_COLUMN;
    return 0;
  }
  if (!match_used(t, info) || !column_used(info, COL_K(t))) return 0;
  int n_filters = 0, at = -1;
  for (int i = 0; i < info->nConstraint; i++) {
    if (is_filter_column(t, info->aConstraint[i].iColumn)) {
      at = i;
      n_filters++;
    }
  }
  if (at < 0) return 0;
  const struct sqlite3_index_constraint *c = &info->aConstraint[at];
  /* sqlite3_vtab_in(): an IN disjunct, which SQLite does not merge into one IN. */
  int equality = n_filters == 1 && c->op == SQLITE_INDEX_CONSTRAINT_EQ &&
                 !sqlite3_vtab_in((sqlite3_index_info *)info, at, -1) &&
                 (t->or_column == CDBX_NO_COLUMN || t->or_column == c->iColumn);
  t->or_column = c->iColumn;
  return !equality;
}

static int plan_error(cdbx_table *t, const plan_builder *b) {
  if (b->bad_k) {
    return cdbx_fail(t, "%s must be given as %s = N (one integer)",
                     b->bad_k == ARG_K ? "k" : "nprobe", b->bad_k == ARG_K ? "k" : "nprobe");
  }
  return cdbx_table_error(
      t, "clip: %s: a condition on %s cannot be applied before the k nearest rows are chosen (%s), "
         "so fewer than k rows would come back; move it into rowid IN (SELECT rowid FROM %s WHERE "
         "...), or use ORDER BY distance LIMIT N instead of k", t->name, t->name,
      b->inapplicable ? b->inapplicable
                      : "an OR over its columns other than equalities on one column", t->name);
}

static void plan_costs(cdbx_table *t, sqlite3_index_info *info, const plan_builder *b) {
  if (b->has_match) {
    info->idxNum = PLAN_KNN;
    info->estimatedCost = 10.0 + b->n_filters;
    info->estimatedRows = 10;
    if (info->nOrderBy == 1 && info->aOrderBy[0].iColumn == COL_DISTANCE(t) &&
        !info->aOrderBy[0].desc) {
      info->orderByConsumed = 1;
    }
    return;
  }
  info->idxNum = PLAN_SCAN;
  info->estimatedCost = b->rowid_eq ? 1.0 : b->n_filters ? 1e5 : 1e6;
  info->estimatedRows = b->rowid_eq ? 1 : b->n_filters ? 10000 : 100000;
  if (b->rowid_eq) info->idxFlags |= SQLITE_INDEX_SCAN_UNIQUE;
  if (info->nOrderBy == 1 && info->aOrderBy[0].iColumn == -1 && !info->aOrderBy[0].desc) {
    info->orderByConsumed = 1;
  }
}

static int x_best_index(sqlite3_vtab *vt, sqlite3_index_info *info) {
  cdbx_table *t = (cdbx_table *)vt;
  plan_builder b = {sqlite3_str_new(NULL), 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL};
  for (int i = 0; i < info->nConstraint; i++) plan_constraint(t, info, &b, i);
  if (sqlite3_str_errcode(b.idx) != SQLITE_OK) {
    sqlite3_free(sqlite3_str_finish(b.idx));
    return SQLITE_NOMEM;
  }
  char *idx_str = sqlite3_str_finish(b.idx); /* NULL when no constraint was used */
  int rc = SQLITE_OK;
  if (b.bad_k || or_after_cut(t, info, &b) ||
      (b.has_match && b.has_k && b.inapplicable && !b.unusable && !b.unusable_arg)) {
    rc = plan_error(t, &b);
  } else if (b.match_unusable || (b.has_match && (b.unusable_arg || (b.has_k && b.unusable)))) {
    rc = SQLITE_CONSTRAINT; /* another plan hands the values from the other tables */
  }
  if (rc != SQLITE_OK) {
    sqlite3_free(idx_str);
    return rc;
  }
  info->idxStr = idx_str;
  info->needToFreeIdxStr = 1;
  plan_costs(t, info, &b);
  /* SQLite cannot evaluate MATCH itself: never the plan to pick (refusing it would stop SQLite
   * from showing the OR's other disjuncts to or_after_cut). */
  if (!b.has_match && match_used(t, info)) info->estimatedCost = 1e300;
  return SQLITE_OK;
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
  sqlite3_stmt *scan;   /* PLAN_SCAN: rowid, image, text, user columns */
  int64_t *ids;         /* PLAN_KNN results, best first */
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
  id_list seen;   /* progressive mode: ids returned by earlier rounds */
  int64_t n_raw;  /* results of the last search before the distance cut */
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

typedef struct query_parts {
  sqlite3_value *match, *k, *nprobe, *limit, *offset, *distance;
  int distance_op;
  sqlite3_str *where;     /* " AND ..." conditions on T_rows */
  sqlite3_value **binds;  /* values for the ?s in where, in order */
  int n_binds, cap_binds;
  unsigned char *owned;   /* owned[i]: binds[i] is a copy to free (IN list values) */
} query_parts;

static int add_bind(query_parts *q, sqlite3_value *v, int copy) {
  if (q->n_binds == q->cap_binds) {
    int cap = q->cap_binds ? q->cap_binds * 2 : 16;
    sqlite3_value **b = realloc(q->binds, sizeof *b * (size_t)cap);
    if (b) q->binds = b;
    unsigned char *o = realloc(q->owned, (size_t)cap);
    if (o) q->owned = o;
    if (!b || !o) return SQLITE_NOMEM;
    q->cap_binds = cap;
  }
  /* sqlite3_vtab_in_next may reuse its value object, so IN values are copied. */
  sqlite3_value *x = copy ? sqlite3_value_dup(v) : v;
  if (!x) return SQLITE_NOMEM;
  q->owned[q->n_binds] = (unsigned char)copy;
  q->binds[q->n_binds++] = x;
  return SQLITE_OK;
}

static void column_sql(cdbx_table *t, sqlite3_str *s, int col) {
  if (col == -1) sqlite3_str_appendall(s, "rowid");
  else if (col == COL_IMAGE) sqlite3_str_appendall(s, "image");
  else if (col == COL_TEXT) sqlite3_str_appendall(s, "text");
  else sqlite3_str_appendf(s, "\"%w\"", t->user_names[col - COL_USER0]);
}

/* One entry of idxStr (see "query planning"). */
typedef struct plan_entry {
  int kind, op, col;
  char collation[64]; /* "" when none */
} plan_entry;

/* Parses the entry at *p and moves *p past it; 0 when malformed. */
static int next_entry(const char **p, plan_entry *e) {
  const char *s = *p;
  if (!s[0] || !s[1]) return 0;
  e->kind = s[0];
  e->op = s[1];
  char *end = NULL;
  e->col = (int)strtol(s + 2, &end, 10);
  if (end == s + 2) return 0;
  e->collation[0] = 0;
  if (*end == ':') {
    size_t n = strcspn(end + 1, ";");
    if (n >= sizeof e->collation) return 0;
    memcpy(e->collation, end + 1, n);
    e->collation[n] = 0;
    end += 1 + n;
  }
  if (*end != ';') return 0;
  *p = end + 1;
  return 1;
}

static int add_filter(cdbx_table *t, query_parts *q, const plan_entry *e, sqlite3_value *v) {
  const char *op_sql = filter_op_sql(e->op);
  if (!op_sql || !is_filter_column(t, e->col)) return SQLITE_ERROR;
  sqlite3_str_appendall(q->where, " AND ");
  column_sql(t, q->where, e->col);
  if (e->collation[0]) sqlite3_str_appendf(q->where, " COLLATE \"%w\"", e->collation);
  sqlite3_str_appendf(q->where, " %s", op_sql);
  if (e->op == OP_ISNULL || e->op == OP_NOTNULL) return SQLITE_OK;
  if (e->op != OP_IN) return add_bind(q, v, 0);
  sqlite3_str_appendall(q->where, " (");
  sqlite3_value *x = NULL;
  int rc, first = 1;
  for (rc = sqlite3_vtab_in_first(v, &x); rc == SQLITE_OK && x; rc = sqlite3_vtab_in_next(v, &x)) {
    sqlite3_str_appendall(q->where, first ? "?" : ", ?");
    first = 0;
    if (add_bind(q, x, 1) != SQLITE_OK) return SQLITE_NOMEM;
  }
  sqlite3_str_appendall(q->where, first ? "NULL)" : ")");
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int plan_arg(cdbx_table *t, query_parts *q, const plan_entry *e, sqlite3_value *v) {
  switch (e->kind) {
  case ARG_MATCH: q->match = v; break;
  case ARG_K: q->k = v; break;
  case ARG_NPROBE: q->nprobe = v; break;
  case ARG_LIMIT: q->limit = v; break;
  case ARG_OFFSET: q->offset = v; break;
  case ARG_DISTANCE:
    q->distance = v;
    q->distance_op = e->op;
    break;
  case ARG_FILTER: return add_filter(t, q, e, v);
  default: return SQLITE_ERROR;
  }
  return SQLITE_OK;
}

/* Reads idxStr's entries against argv: one each, or the plan is refused. */
static int parse_plan(cdbx_table *t, const char *idx_str, int argc, sqlite3_value **argv,
                      query_parts *q) {
  q->where = sqlite3_str_new(NULL);
  const char *p = idx_str ? idx_str : "";
  int i = 0, rc = SQLITE_OK;
  plan_entry e;
  for (; rc == SQLITE_OK && *p && i < argc && next_entry(&p, &e); i++) {
    rc = plan_arg(t, q, &e, argv[i]);
  }
  if (rc == SQLITE_NOMEM) return rc;
  if (rc != SQLITE_OK || *p || i != argc) {
    return cdbx_fail(t, "the query plan \"%s\" does not match its %d "
                        "arguments", idx_str ? idx_str : "", argc);
  }
  return sqlite3_str_errcode(q->where);
}

static void query_parts_free(query_parts *q) {
  sqlite3_free(sqlite3_str_finish(q->where));
  for (int i = 0; i < q->n_binds; i++) {
    if (q->owned[i]) sqlite3_value_free(q->binds[i]);
  }
  free(q->binds);
  free(q->owned);
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
    return cdbx_fail(t, "k, nprobe and distance apply to MATCH queries "
                        "(WHERE %s MATCH :query)", t->name);
  }
  int rc = prepare_rows(t, q, 1, &c->scan);
  if (rc != SQLITE_OK) return rc;
  c->eof = 0;
  rc = sqlite3_step(c->scan);
  if (rc == SQLITE_ROW) return SQLITE_OK;
  c->eof = 1;
  return rc == SQLITE_DONE ? SQLITE_OK
                           : cdbx_fail(t, "%s", sqlite3_errmsg(t->db));
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
        return cdbx_fail(t, "MATCH BLOB has %d bytes; an embedding of this "
                            "table has %d", sqlite3_value_bytes(v), t->dims * 4);
      }
      return SQLITE_ERROR;
    }
    int rc = type == SQLITE_TEXT
                 ? cdbx_embed_text(m, (const char *)sqlite3_value_text(v), sqlite3_value_bytes(v),
                                   out, &err)
                 : cdbx_embed_image_value(m, v, out, &err);
    if (rc == 0) return SQLITE_OK;
    if (type == SQLITE_BLOB) {
      return cdbx_fail(t, "MATCH query: a BLOB of %d bytes is neither an "
                          "embedding of this table (%d float32 values: %d bytes) nor a "
                          "readable image (%s)", sqlite3_value_bytes(v), t->dims,
                       t->dims * 4, err.msg);
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
    rc = int_arg(t, q->k, "k", 1, CDBX_MAX_K, k);
  } else if (q->limit) {
    rc = int_arg(t, q->limit, "LIMIT", 0, CDBX_MAX_K, k);
    if (rc == SQLITE_OK && q->offset) rc = int_arg(t, q->offset, "OFFSET", 0, CDBX_MAX_K, &offset);
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

static int run_search(cdbx_table *t, cdbx_cursor *c, int k, double max_dist) {
  cdb_filter filter = {c->allowed.ids, c->allowed.n, NULL, NULL};
  cdb_search_opts opts = {c->nprobe, c->filtered ? &filter : NULL};
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
    int rc = cdbx_cache_range_search(t, c->query, (float)(1.0 - max_dist), &opts, &c->ids,
                                     &c->dist, &c->n);
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
  if (rc == SQLITE_OK) rc = allowed_ids(t, q, &c->allowed, &c->filtered);
  if (rc == SQLITE_OK && (!c->filtered || c->allowed.n > 0)) {
    c->dist_op_le = q->distance_op == OP_LE;
    rc = run_search(t, c, k, max_dist);
  }
  c->eof = rc != SQLITE_OK || c->n == 0;
  return rc;
}

/* Progressive mode: the next, larger search; rows already returned are skipped. */
static int grow_search(cdbx_table *t, cdbx_cursor *c) {
  int64_t limit = cdb_index_count(t->index);
  if (c->filtered && c->allowed.n < limit) limit = c->allowed.n;
  int full = c->n_raw == c->k;
  for (int64_t i = 0; i < c->n; i++) {
    if (cdbx_id_list_push(&c->seen, c->ids[i]) != SQLITE_OK) return SQLITE_NOMEM;
  }
  if (!full || c->seen.n >= limit || c->k >= CDBX_MAX_K) return SQLITE_DONE;
  qsort(c->seen.ids, (size_t)c->seen.n, sizeof(int64_t), cmp_i64);
  c->k = c->k * 4 > CDBX_MAX_K ? CDBX_MAX_K : c->k * 4;
  int rc = run_search(t, c, c->k, -1);
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
  int rc = parse_plan(t, idx_str, argc, argv, &q);
  if (rc == SQLITE_OK) rc = idx_num == PLAN_KNN ? filter_knn(t, c, &q) : filter_scan(t, c, &q);
  query_parts_free(&q);
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

static int x_eof(sqlite3_vtab_cursor *cur) {
  return ((cdbx_cursor *)cur)->eof;
}

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
      return cdbx_fail(t, "a command (INSERT INTO %s(%s) VALUES(...)) sets no "
                          "other column; insert rows in a separate statement", t->name, t->name);
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
  t->in_txn = 1;
  t->version_checked = 0;
  t->command_in_txn = 0;
  t->touched.n = 0;
  t->n_sp = 0;
  t->begin_seq = t->cache_seq;
  return SQLITE_OK;
}

static int x_sync(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  int rc = cdbx_pending_flush(t);
  return rc == SQLITE_OK ? cdbx_maintain(t) : rc;
}

static int x_commit(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  cdbx_pending_free(t); /* empty after xSync; the buffers are not kept between transactions */
  t->in_txn = 0;
  t->touched.n = 0;
  t->n_sp = 0;
  t->command_in_txn = 0;
  return SQLITE_OK;
}

/* Queues the rows touched since touched[from] for re-reading from the (rolled back) tables. */
static int rollback_from(cdbx_table *t, int64_t from, int64_t seq) {
  int rc = cdbx_cache_rollback_flush(t);
  for (int64_t i = from; rc == SQLITE_OK && i < t->touched.n; i++) {
    rc = cdbx_id_list_push(&t->resync, t->touched.ids[i]);
  }
  if (rc != SQLITE_OK || t->command_in_txn) t->stale = 1;
  if (seq < t->cache_seq) t->cache_seq = seq;
  return SQLITE_OK;
}

static int x_rollback(sqlite3_vtab *vt) {
  cdbx_table *t = (cdbx_table *)vt;
  cdbx_pending_free(t);
  rollback_from(t, 0, t->begin_seq);
  t->in_txn = 0;
  t->touched.n = 0;
  t->n_sp = 0;
  t->command_in_txn = 0;
  return SQLITE_OK;
}

/* SQLite opens a savepoint for user SAVEPOINTs and at the start of multi-row statements inside a
 * transaction (not for single-row INSERTs, so executemany keeps batching). Flushing here keeps
 * the queue newer than every open savepoint: a ROLLBACK TO then simply discards it. */
static int x_savepoint(sqlite3_vtab *vt, int i) {
  cdbx_table *t = (cdbx_table *)vt;
  int rc = cdbx_pending_flush(t);
  if (rc != SQLITE_OK) return rc;
  if (i >= t->cap_sp) {
    int cap = i + 8;
    int64_t *marks = realloc(t->sp_marks, sizeof *marks * (size_t)cap);
    if (marks) t->sp_marks = marks;
    int64_t *seqs = realloc(t->sp_seq, sizeof *seqs * (size_t)cap);
    if (seqs) t->sp_seq = seqs;
    if (!marks || !seqs) return SQLITE_NOMEM;
    t->cap_sp = cap;
  }
  for (int j = t->n_sp; j <= i; j++) {
    t->sp_marks[j] = t->touched.n;
    t->sp_seq[j] = t->cache_seq;
  }
  t->n_sp = i + 1;
  return SQLITE_OK;
}

static int x_release(sqlite3_vtab *vt, int i) {
  cdbx_table *t = (cdbx_table *)vt;
  if (i < t->n_sp) t->n_sp = i;
  return SQLITE_OK;
}

static int x_rollback_to(sqlite3_vtab *vt, int i) {
  cdbx_table *t = (cdbx_table *)vt;
  int have = i < t->n_sp;
  cdbx_pending_clear(t); /* every queued row is newer than savepoint i: SQLite removed it */
  rollback_from(t, have ? t->sp_marks[i] : 0, have ? t->sp_seq[i] : t->begin_seq);
  if (have) t->n_sp = i + 1;
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

static int x_shadow_name(const char *suffix) {
  return cdbx_store_is_shadow_name(suffix);
}

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

const sqlite3_module *cdbx_vtab_module(void) {
  return &clip_module;
}
