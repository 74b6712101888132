/* plan.c: the query plan of a clip table. xBestIndex's choice (KNN or scan, and which
 * constraints it uses) is written into idxStr; at xFilter the same entries are read back
 * against argv into the query's parts: the MATCH value, k, nprobe, LIMIT, OFFSET, the distance
 * bound, and the filters as SQL conditions on the declared columns with their bound values.
 * Owns: cdbx_table.or_column (the planning state across xBestIndex calls).
 * Calls nothing else of sqlite-ext/ but cdbx_fail; called by vtab.c. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/table.h"

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
  static const char *const stops[] = {"COLLATE",    "NOT",       "NULL",  "DEFAULT",
                                      "PRIMARY",    "UNIQUE",    "CHECK", "REFERENCES",
                                      "CONSTRAINT", "GENERATED", "AS"};
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
    b->inapplicable = !op         ? "an operator the table cannot apply"
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
      t,
      "clip: %s: a condition on %s cannot be applied before the k nearest rows are chosen (%s), "
      "so fewer than k rows would come back; move it into rowid IN (SELECT rowid FROM %s WHERE "
      "...), or use ORDER BY distance LIMIT N instead of k",
      t->name, t->name,
      b->inapplicable ? b->inapplicable
                      : "an OR over its columns other than equalities on one column",
      t->name);
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

int cdbx_plan_best_index(cdbx_table *t, sqlite3_index_info *info) {
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
      q->distance_le = e->op == OP_LE;
      break;
    case ARG_FILTER: return add_filter(t, q, e, v);
    default: return SQLITE_ERROR;
  }
  return SQLITE_OK;
}

/* Reads idxStr's entries against argv: one each, or the plan is refused. */
int cdbx_plan_parse(cdbx_table *t, const char *idx_str, int argc, sqlite3_value **argv,
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
    return cdbx_fail(t,
                     "the query plan \"%s\" does not match its %d "
                     "arguments",
                     idx_str ? idx_str : "", argc);
  }
  return sqlite3_str_errcode(q->where);
}

void cdbx_plan_parts_free(query_parts *q) {
  sqlite3_free(sqlite3_str_finish(q->where));
  for (int i = 0; i < q->n_binds; i++) {
    if (q->owned[i]) sqlite3_value_free(q->binds[i]);
  }
  free(q->binds);
  free(q->owned);
}
