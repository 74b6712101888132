/* vtab.c: the `clip` virtual table: declaration, KNN and scan queries, writes whose images and
 * texts are embedded in batches (the pending queue), commands, and the transaction hooks that
 * keep the queue and the index cache consistent.
 * Shadow tables and the cache live in store.c; SQL usage is documented in extension.c. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/table.h"

/* The pending queue (see "writes" below). */
static int pending_has(const cdbx_table *t, int64_t rowid);
static void pending_free(cdbx_table *t);

/* ---- arguments ---- */

static char *dequote(const char *s, size_t n) {
  while (n && isspace((unsigned char)*s)) s++, n--;
  while (n && isspace((unsigned char)s[n - 1])) n--;
  if (n >= 2 && (s[0] == '\'' || s[0] == '"' || s[0] == '`') && s[n - 1] == s[0]) {
    char q = s[0];
    sqlite3_str *out = sqlite3_str_new(NULL);
    for (size_t i = 1; i + 1 < n; i++) {
      sqlite3_str_appendchar(out, 1, s[i]);
      if (s[i] == q && i + 2 < n && s[i + 1] == q) i++;
    }
    return cdbx_str_finish(out);
  }
  if (n >= 2 && s[0] == '[' && s[n - 1] == ']') return sqlite3_mprintf("%.*s", (int)n - 2, s + 1);
  return sqlite3_mprintf("%.*s", (int)n, s);
}

typedef struct table_args {
  char *model;   /* NULL: not given */
  int has_dims;
  int dims;
  char *index_type;
  int nlist, nprobe;
  int autotrain; /* 1 (default): COMMIT trains when the index policy says so */
  int image_paths; /* 1 (default): image may name a file or URL; 0: image bytes only */
  unsigned given; /* bit i: option_names[i] was given */
  int creating;   /* CREATE VIRTUAL TABLE (not connecting a table created earlier) */
} table_args;

static const char *const option_names[] = {"model", "index", "dims", "autotrain", "nlist",
                                           "nprobe", "image_paths"};

/* An option given twice (dims=4, dims=8) is refused at CREATE rather than the last one winning
 * (tables created before this check still connect). */
static int check_option_once(table_args *a, const char *key, char **errmsg) {
  for (unsigned i = 0; i < sizeof option_names / sizeof option_names[0]; i++) {
    if (sqlite3_stricmp(key, option_names[i]) != 0) continue;
    if ((a->given & (1u << i)) && a->creating) {
      *errmsg = sqlite3_mprintf("clip: option %s= is given more than once", option_names[i]);
      return SQLITE_ERROR;
    }
    a->given |= 1u << i;
  }
  return SQLITE_OK;
}

static int parse_int_option(const char *key, const char *value, int lo, int hi, int *out,
                            char **errmsg) {
  char *end = NULL;
  long v = strtol(value, &end, 10);
  if (!value[0] || *end || v < lo || v > hi) {
    *errmsg = sqlite3_mprintf("clip: option %s=%s: expected an integer from %d to %d", key, value,
                              lo, hi);
    return SQLITE_ERROR;
  }
  *out = (int)v;
  return SQLITE_OK;
}

static int parse_bool_option(const char *key, const char *value, int *out, char **errmsg) {
  int on = sqlite3_stricmp(value, "on") == 0 || strcmp(value, "1") == 0 ||
           sqlite3_stricmp(value, "true") == 0;
  int off = sqlite3_stricmp(value, "off") == 0 || strcmp(value, "0") == 0 ||
            sqlite3_stricmp(value, "false") == 0;
  if (!on && !off) {
    *errmsg = sqlite3_mprintf("clip: option %s=%s: expected on or off", key, value);
    return SQLITE_ERROR;
  }
  *out = on;
  return SQLITE_OK;
}

static int parse_option(table_args *a, const char *key, const char *value, char **errmsg) {
  if (check_option_once(a, key, errmsg) != SQLITE_OK) return SQLITE_ERROR;
  if (sqlite3_stricmp(key, "model") == 0) {
    if (!value[0]) {
      *errmsg = sqlite3_mprintf("clip: option model= is empty (omit it for the default model)");
      return SQLITE_ERROR;
    }
    sqlite3_free(a->model);
    a->model = sqlite3_mprintf("%s", value);
    return SQLITE_OK;
  }
  if (sqlite3_stricmp(key, "index") == 0) {
    if (!value[0]) {
      *errmsg = sqlite3_mprintf("clip: option index= is empty (auto, flat or a FAISS factory)");
      return SQLITE_ERROR;
    }
    sqlite3_free(a->index_type);
    a->index_type = sqlite3_mprintf("%s", value);
    return SQLITE_OK;
  }
  if (sqlite3_stricmp(key, "dims") == 0) {
    a->has_dims = 1;
    return parse_int_option(key, value, 1, CDBX_MAX_DIMS, &a->dims, errmsg);
  }
  if (sqlite3_stricmp(key, "autotrain") == 0) {
    return parse_bool_option(key, value, &a->autotrain, errmsg);
  }
  if (sqlite3_stricmp(key, "image_paths") == 0) {
    return parse_bool_option(key, value, &a->image_paths, errmsg);
  }
  if (sqlite3_stricmp(key, "nlist") == 0) {
    return parse_int_option(key, value, 0, 1 << 24, &a->nlist, errmsg);
  }
  if (sqlite3_stricmp(key, "nprobe") == 0) {
    return parse_int_option(key, value, 0, 1 << 24, &a->nprobe, errmsg);
  }
  *errmsg = sqlite3_mprintf("clip: unknown option \"%s\" (expected model=, dims=, index=, "
                            "nlist=, nprobe=, autotrain=, image_paths= or a column definition)",
                            key);
  return SQLITE_ERROR;
}

static int is_column_word(const char *name) {
  static const char *const reserved[] = {"image", "text", "embedding", "distance", "k",
                                         "nprobe", "rowid", "oid", "_rowid_"};
  for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++) {
    if (sqlite3_stricmp(name, reserved[i]) == 0) return 1;
  }
  return 0;
}

static int is_reserved(const cdbx_table *t, const char *name) {
  return is_column_word(name) || sqlite3_stricmp(name, t->name) == 0;
}

/* The table's hidden command column is named like the table, so a table cannot be named like
 * another of its columns (its declaration would fail, leaving a table no statement can use). */
static char *table_name_error(const cdbx_table *t, const char *name) {
  int user = 0;
  for (int i = 0; i < t->n_user && !user; i++) user = sqlite3_stricmp(name, t->user_names[i]) == 0;
  if (!user && !is_column_word(name)) return NULL;
  return sqlite3_mprintf("clip: a clip table cannot be named \"%s\": that is the name of %s "
                         "column (image, text, embedding, distance, k, nprobe, rowid and the "
                         "user columns are reserved)", name, user ? "a user" : "a built-in");
}

static int valid_type(const char *type) {
  for (const char *p = type; *p; p++) {
    if (!isalnum((unsigned char)*p) && !strchr(" _()+-", *p)) return 0;
  }
  return 1;
}

/* A declared type may carry COLLATE name, but no constraint: the table would not apply them
 * (DEFAULT, CHECK, UNIQUE, NOT NULL, ...), so a new table refuses them. */
static char *type_constraint_error(const char *column, const char *type) {
  static const char *const constraints[] = {
      "CONSTRAINT", "PRIMARY", "KEY", "NOT", "NULL", "UNIQUE", "CHECK", "DEFAULT",
      "REFERENCES", "GENERATED", "AS", "ALWAYS", "STORED", "VIRTUAL", "HIDDEN",
      "AUTOINCREMENT", "ON", "CONFLICT", "ASC", "DESC"};
  int depth = 0;
  for (const char *p = type; *p;) {
    if (!isalnum((unsigned char)*p) && *p != '_') {
      depth += *p == '(' ? 1 : *p == ')' ? -1 : 0;
      p++;
      continue;
    }
    const char *w = p;
    while (isalnum((unsigned char)*p) || *p == '_') p++;
    if (depth > 0) continue;
    for (size_t i = 0; i < sizeof constraints / sizeof constraints[0]; i++) {
      if ((size_t)(p - w) == strlen(constraints[i]) &&
          sqlite3_strnicmp(w, constraints[i], (int)(p - w)) == 0) {
        return sqlite3_mprintf("clip: column \"%s\": column constraints are not supported "
                               "(found %.*s); declare only a type name and optionally COLLATE",
                               column, (int)(p - w), w);
      }
    }
  }
  return NULL;
}

/* "name [type]": the name may be quoted; the type is a plain SQL type name. */
static int parse_column(cdbx_table *t, const char *arg, char **errmsg) {
  const char *p = arg;
  while (isspace((unsigned char)*p)) p++;
  const char *end = p;
  if (*p == '"' || *p == '`' || *p == '[') {
    char close = *p == '[' ? ']' : *p;
    end = p + 1;
    while (*end && !(*end == close && end[1] != close)) end += (*end == close) ? 2 : 1;
    if (*end) end++;
  } else {
    while (*end && (isalnum((unsigned char)*end) || *end == '_' || (unsigned char)*end >= 0x80))
      end++;
  }
  if (end == p) {
    *errmsg = sqlite3_mprintf("clip: cannot parse column definition \"%s\"", arg);
    return SQLITE_ERROR;
  }
  char *name = dequote(p, (size_t)(end - p));
  char *type = dequote(end, strlen(end));
  int rc = SQLITE_OK;
  if (!name || !type || !name[0]) {
    *errmsg = sqlite3_mprintf("clip: cannot parse column definition \"%s\"", arg);
    rc = SQLITE_ERROR;
  } else if (is_reserved(t, name)) {
    *errmsg = sqlite3_mprintf("clip: column name \"%s\" is reserved (image, text, embedding, "
                              "distance, k, nprobe, rowid and the table's name)",
                              name);
    rc = SQLITE_ERROR;
  } else if (!valid_type(type)) {
    *errmsg = sqlite3_mprintf("clip: column \"%s\": only a type name may follow the column name "
                              "(got \"%s\")", name, type);
    rc = SQLITE_ERROR;
  } else if (t->n_user >= CDBX_MAX_USER_COLUMNS) {
    *errmsg = sqlite3_mprintf("clip: at most %d user columns", CDBX_MAX_USER_COLUMNS);
    rc = SQLITE_ERROR;
  }
  for (int i = 0; rc == SQLITE_OK && i < t->n_user; i++) {
    if (sqlite3_stricmp(t->user_names[i], name) == 0) {
      *errmsg = sqlite3_mprintf("clip: duplicate column \"%s\"", name);
      rc = SQLITE_ERROR;
    }
  }
  if (rc != SQLITE_OK) {
    sqlite3_free(name);
    sqlite3_free(type);
    return rc;
  }
  t->user_names[t->n_user] = name;
  t->user_types[t->n_user] = type;
  t->n_user++;
  return SQLITE_OK;
}

static int parse_args(cdbx_table *t, table_args *a, int argc, const char *const *argv,
                      char **errmsg) {
  t->user_names = sqlite3_malloc(sizeof(char *) * CDBX_MAX_USER_COLUMNS);
  t->user_types = sqlite3_malloc(sizeof(char *) * CDBX_MAX_USER_COLUMNS);
  if (!t->user_names || !t->user_types) return SQLITE_NOMEM;
  for (int i = 3; i < argc; i++) {
    const char *arg = argv[i];
    const char *eq = strchr(arg, '=');
    const char *k = arg;
    while (isspace((unsigned char)*k)) k++;
    size_t klen = 0;
    while (k[klen] && (isalnum((unsigned char)k[klen]) || k[klen] == '_')) klen++;
    const char *after = k + klen;
    while (isspace((unsigned char)*after)) after++;
    int rc;
    if (eq && after == eq && klen > 0) {
      char *key = sqlite3_mprintf("%.*s", (int)klen, k);
      char *value = dequote(eq + 1, strlen(eq + 1));
      rc = key && value ? parse_option(a, key, value, errmsg) : SQLITE_NOMEM;
      sqlite3_free(key);
      sqlite3_free(value);
    } else {
      rc = parse_column(t, arg, errmsg);
    }
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

static int declare(cdbx_table *t) {
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendall(s, "CREATE TABLE x(image, text, embedding");
  for (int i = 0; i < t->n_user; i++) {
    sqlite3_str_appendf(s, ", \"%w\" %s", t->user_names[i], t->user_types[i]);
  }
  sqlite3_str_appendf(s, ", distance HIDDEN, k HIDDEN, nprobe HIDDEN, \"%w\" HIDDEN)", t->name);
  char *sql = cdbx_str_finish(s);
  if (!sql) return SQLITE_NOMEM;
  int rc = sqlite3_declare_vtab(t->db, sql);
  sqlite3_free(sql);
  if (rc == SQLITE_OK) rc = sqlite3_vtab_config(t->db, SQLITE_VTAB_CONSTRAINT_SUPPORT, 1);
  /* Writing a path or URL into image reads that file or fetches that URL, so a trigger or view
   * stored in a database file must not reach the table (as for a DIRECTONLY function). SQLite
   * tells a virtual table nothing about where a write comes from, so a table that accepts paths
   * is direct-only as a whole; one created with image_paths=off takes image bytes only and may
   * be used from triggers and views. */
  if (rc == SQLITE_OK && t->image_paths) rc = sqlite3_vtab_config(t->db, SQLITE_VTAB_DIRECTONLY);
  return rc;
}

/* ---- the table's model ---- */

static int short_id(const char *identity) {
  return identity && strlen(identity) > 12 ? 12 : identity ? (int)strlen(identity) : 0;
}

/* The model this table embeds with, loaded on first need and checked against the table. */
static clip_model *table_model(cdbx_table *t) {
  if (t->model) return t->model;
  if (!t->model_name) {
    cdbx_table_error(t, "clip: %s holds precomputed vectors only (created with dims=, no model): "
                        "write the embedding column, and query with an embedding BLOB",
                     t->name);
    return NULL;
  }
  cdb_error err = {{0}};
  clip_model *m = cdbx_conn_model(t->conn, t->model_name, &err);
  const char *shown = t->model_name[0] ? t->model_name : "(the default model)";
  if (!m) {
    cdbx_table_error(t, "clip: %s uses model %s: %s; register it with SELECT clip_model(name, "
                        "path)", t->name, shown, err.msg);
    return NULL;
  }
  const char *id = clip_model_identity(m);
  if (clip_model_dim(m) != t->dims || !t->model_identity || strcmp(id, t->model_identity) != 0) {
    cdbx_table_error(t, "clip: %s was created with model %s (identity %.*s, %d dims) but that "
                        "name now loads a different model (identity %.*s, %d dims); register "
                        "the original with clip_model() or recreate the table",
                     t->name, shown, short_id(t->model_identity),
                     t->model_identity ? t->model_identity : "", t->dims, short_id(id), id,
                     clip_model_dim(m));
    return NULL;
  }
  cdbx_registry_retain(m);
  t->model = m;
  return m;
}

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
  pending_free(t);
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

/* Sets dims, model name and identity for a new table from its options. */
static int choose_model(cdbx_table *t, table_args *a, char **errmsg) {
  if (a->has_dims && !a->model) {
    t->dims = a->dims;
    return SQLITE_OK;
  }
  cdb_error err = {{0}};
  const char *name = a->model ? a->model : "";
  clip_model *m = cdbx_conn_model(t->conn, name, &err);
  if (!m) {
    *errmsg = sqlite3_mprintf("clip: model %s: %s", name[0] ? name : "(default)", err.msg);
    return SQLITE_ERROR;
  }
  if (a->has_dims && a->dims != clip_model_dim(m)) {
    *errmsg = sqlite3_mprintf("clip: dims=%d does not match the model's %d dimensions", a->dims,
                              clip_model_dim(m));
    return SQLITE_ERROR;
  }
  t->dims = clip_model_dim(m);
  t->model_name = sqlite3_mprintf("%s", name);
  t->model_identity = sqlite3_mprintf("%s", clip_model_identity(m));
  cdbx_registry_retain(m);
  t->model = m;
  return t->model_name && t->model_identity ? SQLITE_OK : SQLITE_NOMEM;
}

static int check_index_params(cdbx_table *t, char **errmsg) {
  cdb_index_params p = cdb_index_default_params();
  p.type = t->index_type;
  p.nlist = t->nlist;
  p.nprobe = t->nprobe;
  cdb_error err = {{0}};
  cdb_index *idx = cdb_index_new(t->dims, &p, &err);
  if (!idx) {
    *errmsg = sqlite3_mprintf("clip: index=%s: %s", t->index_type, err.msg);
    return SQLITE_ERROR;
  }
  cdb_index_free(idx);
  return SQLITE_OK;
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
  table_args a = {0};
  a.autotrain = 1;
  a.image_paths = 1;
  a.creating = create;
  int rc = t->schema && t->name ? parse_args(t, &a, argc, argv, errmsg) : SQLITE_NOMEM;
  if (rc == SQLITE_OK && create && (*errmsg = table_name_error(t, t->name)) != NULL)
    rc = SQLITE_ERROR;
  for (int i = 0; rc == SQLITE_OK && create && i < t->n_user; i++) {
    if ((*errmsg = type_constraint_error(t->user_names[i], t->user_types[i])) != NULL)
      rc = SQLITE_ERROR;
  }
  if (rc == SQLITE_OK && create) {
    t->index_type = sqlite3_mprintf("%s", a.index_type ? a.index_type : "auto");
    t->nlist = a.nlist;
    t->nprobe = a.nprobe;
    t->autotrain = a.autotrain;
    rc = choose_model(t, &a, errmsg);
    if (rc == SQLITE_OK) rc = check_index_params(t, errmsg);
  }
  t->image_paths = a.image_paths;
  if (rc == SQLITE_OK) rc = declare(t);
  if (rc == SQLITE_OK) rc = create ? cdbx_store_create(t, errmsg) : cdbx_store_read_config(t, errmsg);
  sqlite3_free(a.model);
  sqlite3_free(a.index_type);
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
    return cdbx_table_error(t, "clip: %s: %s must be given as %s = N (one integer)", t->name,
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
    return cdbx_table_error(t, "clip: %s: the query plan \"%s\" does not match its %d "
                               "arguments", t->name, idx_str ? idx_str : "", argc);
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

static int prepare_rows(cdbx_table *t, query_parts *q, const char *columns, sqlite3_stmt **out) {
  char *sql = sqlite3_mprintf("SELECT %s FROM \"%w\".\"%w_rows\" WHERE 1%s ORDER BY rowid",
                              columns, t->schema, t->name, sqlite3_str_value(q->where));
  if (!sql) return SQLITE_NOMEM;
  int rc = sqlite3_prepare_v2(t->db, sql, -1, out, NULL);
  sqlite3_free(sql);
  if (rc != SQLITE_OK) {
    return cdbx_table_error(t, "clip: %s: filter: %s", t->name, sqlite3_errmsg(t->db));
  }
  for (int i = 0; i < q->n_binds; i++) sqlite3_bind_value(*out, i + 1, q->binds[i]);
  return SQLITE_OK;
}

static char *row_columns(cdbx_table *t, int with_rowid) {
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendall(s, with_rowid ? "rowid, image, text" : "image, text");
  for (int i = 0; i < t->n_user; i++) sqlite3_str_appendf(s, ", \"%w\"", t->user_names[i]);
  return cdbx_str_finish(s);
}

static int filter_scan(cdbx_table *t, cdbx_cursor *c, query_parts *q) {
  if (q->k || q->nprobe || q->distance) {
    return cdbx_table_error(t, "clip: %s: k, nprobe and distance apply to MATCH queries "
                               "(WHERE %s MATCH :query)", t->name, t->name);
  }
  char *cols = row_columns(t, 1);
  int rc = cols ? prepare_rows(t, q, cols, &c->scan) : SQLITE_NOMEM;
  sqlite3_free(cols);
  if (rc != SQLITE_OK) return rc;
  c->eof = 0;
  rc = sqlite3_step(c->scan);
  if (rc == SQLITE_ROW) return SQLITE_OK;
  c->eof = 1;
  return rc == SQLITE_DONE ? SQLITE_OK
                           : cdbx_table_error(t, "clip: %s: %s", t->name, sqlite3_errmsg(t->db));
}

static int is_blank(const char *s) {
  while (s && isspace((unsigned char)*s)) s++;
  return !s || !*s;
}

/* The MATCH operand as a normalised query vector. */
static int query_vector(cdbx_table *t, sqlite3_value *v, float *out) {
  cdb_error err = {{0}};
  int type = sqlite3_value_type(v);
  if (type == SQLITE_NULL) return cdbx_table_error(t, "clip: %s: MATCH query is NULL", t->name);
  if (type == SQLITE_INTEGER || type == SQLITE_FLOAT) {
    return cdbx_table_error(t, "clip: %s: MATCH query must be TEXT, an embedding BLOB or image "
                               "bytes, not a number", t->name);
  }
  if (type == SQLITE_TEXT && is_blank((const char *)sqlite3_value_text(v))) {
    return cdbx_table_error(t, "clip: %s: MATCH query: text is empty", t->name);
  }
  if (cdbx_value_is_vector(v, t->dims)) {
    memcpy(out, sqlite3_value_blob(v), sizeof(float) * (size_t)t->dims);
    if (cdbx_vec_check_finite(out, t->dims, "query embedding", &err) == 0 &&
        cdbx_vec_normalize(out, t->dims, "query embedding", &err) == 0) {
      return SQLITE_OK;
    }
  } else {
    clip_model *m = table_model(t);
    if (!m) {
      if (type == SQLITE_BLOB && !t->model_name) {
        return cdbx_table_error(t, "clip: %s: MATCH BLOB has %d bytes; an embedding of this "
                                   "table has %d", t->name, sqlite3_value_bytes(v), t->dims * 4);
      }
      return SQLITE_ERROR;
    }
    int rc = type == SQLITE_TEXT
                 ? cdbx_embed_text(m, (const char *)sqlite3_value_text(v), sqlite3_value_bytes(v),
                                   out, &err)
                 : cdbx_embed_image_value(m, v, out, &err);
    if (rc == 0) return SQLITE_OK;
    if (type == SQLITE_BLOB) {
      return cdbx_table_error(t, "clip: %s: MATCH query: a BLOB of %d bytes is neither an "
                                 "embedding of this table (%d float32 values: %d bytes) nor a "
                                 "readable image (%s)", t->name, sqlite3_value_bytes(v), t->dims,
                              t->dims * 4, err.msg);
    }
  }
  return cdbx_table_error(t, "clip: %s: MATCH query: %s", t->name, err.msg);
}

static int int_arg(cdbx_table *t, sqlite3_value *v, const char *what, int lo, int hi, int *out) {
  int64_t x = sqlite3_value_int64(v);
  if (sqlite3_value_type(v) != SQLITE_INTEGER || x < lo || x > hi) {
    return cdbx_table_error(t, "clip: %s: %s must be an integer from %d to %d", t->name, what, lo,
                            hi);
  }
  *out = (int)x;
  return SQLITE_OK;
}

/* Sorted allowed rowids when the query filters on columns; *active = 0 when it does not. */
static int allowed_ids(cdbx_table *t, query_parts *q, id_list *ids, int *active) {
  *active = q->n_binds > 0 || sqlite3_str_length(q->where) > 0;
  if (!*active) return SQLITE_OK;
  sqlite3_stmt *st = NULL;
  int rc = prepare_rows(t, q, "rowid", &st);
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    rc = cdbx_id_list_push(ids, sqlite3_column_int64(st, 0));
  }
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  else if (rc != SQLITE_OK && !t->base.zErrMsg)
    rc = cdbx_table_error(t, "clip: %s: filter: %s", t->name, sqlite3_errmsg(t->db));
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
      rc = cdbx_table_error(t, "clip: %s: the distance bound must be a number >= 0", t->name);
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
  return cdbx_table_error(t, "clip: %s: %s", t->name, sqlite3_errmsg(t->db));
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
    char *cols = row_columns(t, 0);
    char *sql = cols ? sqlite3_mprintf("SELECT %s FROM \"%w\".\"%w_rows\" WHERE rowid = ?1", cols,
                                       t->schema, t->name)
                     : NULL;
    sqlite3_free(cols);
    int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &c->lookup, NULL) : SQLITE_NOMEM;
    sqlite3_free(sql);
    if (rc != SQLITE_OK) return rc;
  }
  sqlite3_reset(c->lookup);
  sqlite3_bind_int64(c->lookup, 1, rowid);
  int rc = sqlite3_step(c->lookup);
  c->looked_up = rc == SQLITE_ROW ? rowid : -1;
  return rc;
}

static int column_embedding(cdbx_table *t, sqlite3_context *ctx, int64_t rowid) {
  int rc = pending_has(t, rowid) ? cdbx_pending_flush(t) : SQLITE_OK;
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

static int pending_has(const cdbx_table *t, int64_t rowid) {
  const pending_rows *p = &t->pending;
  for (int i = 0; i < p->n_images; i++)
    if (p->image_ids[i] == rowid) return 1;
  for (int i = 0; i < p->n_texts; i++)
    if (p->text_ids[i] == rowid) return 1;
  return 0;
}

static void pending_drop_images(cdbx_table *t, int from, int count) {
  pending_rows *p = &t->pending;
  size_t img = cdbx_image_floats(t->model);
  int rest = p->n_images - from - count;
  memmove(p->image_ids + from, p->image_ids + from + count, sizeof(int64_t) * (size_t)rest);
  memmove(p->pixels + img * (size_t)from, p->pixels + img * (size_t)(from + count),
          sizeof(float) * img * (size_t)rest);
  p->n_images -= count;
}

static void pending_drop_texts(cdbx_table *t, int from, int count) {
  pending_rows *p = &t->pending;
  for (int i = from; i < from + count; i++) free(p->texts[i]);
  int rest = p->n_texts - from - count;
  memmove(p->text_ids + from, p->text_ids + from + count, sizeof(int64_t) * (size_t)rest);
  memmove(p->texts + from, p->texts + from + count, sizeof(char *) * (size_t)rest);
  p->n_texts -= count;
}

/* Forgets rowid's queued input (its row is being deleted). */
static void pending_drop(cdbx_table *t, int64_t rowid) {
  pending_rows *p = &t->pending;
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
static void pending_clear(cdbx_table *t) {
  pending_rows *p = &t->pending;
  if (p->n_texts) pending_drop_texts(t, 0, p->n_texts);
  p->n_images = 0;
}

static void pending_free(cdbx_table *t) {
  pending_clear(t);
  pending_rows *p = &t->pending;
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
  return cdbx_table_error(t, "clip: %s: embedding %d queued %s: %s", t->name, n, what, err->msg);
}

int cdbx_pending_flush(cdbx_table *t) {
  pending_rows *p = &t->pending;
  if (p->n_images == 0 && p->n_texts == 0) return SQLITE_OK;
  int most = p->n_images > p->n_texts ? p->n_images : p->n_texts;
  float *out = malloc(sizeof(float) * (size_t)t->dims * (size_t)most);
  if (!out) return SQLITE_NOMEM;
  cdb_error err = {{0}};
  int rc = SQLITE_OK, written = 0;
  if (p->n_images > 0) {
    if (clip_embed_pixels(t->model, p->pixels, p->n_images, out, &err) != 0 ||
        cdbx_check_embeddings(t->model, out, p->n_images, &err) != 0) {
      rc = flush_error(t, p->n_images, "images", &err);
    } else {
      t->embed_batches++;
      t->embedded_rows += p->n_images;
      rc = put_vectors(t, p->image_ids, p->n_images, out, &written);
      pending_drop_images(t, 0, written);
    }
  }
  if (rc == SQLITE_OK && p->n_texts > 0) {
    if (clip_embed_texts(t->model, (const char *const *)p->texts, p->n_texts, out, &err) != 0 ||
        cdbx_check_embeddings(t->model, out, p->n_texts, &err) != 0) {
      rc = flush_error(t, p->n_texts, "texts", &err);
    } else {
      t->embed_batches++;
      t->embedded_rows += p->n_texts;
      rc = put_vectors(t, p->text_ids, p->n_texts, out, &written);
      pending_drop_texts(t, 0, written);
    }
  }
  free(out);
  return rc;
}

/* Room for one more entry of a kind: a full queue is flushed first (before the row writes). */
static int pending_reserve(cdbx_table *t, int image) {
  pending_rows *p = &t->pending;
  if (image ? p->n_images >= PENDING_IMAGES : p->n_texts >= PENDING_TEXTS) {
    int rc = cdbx_pending_flush(t);
    if (rc != SQLITE_OK) return rc;
  }
  if (image && p->n_images == p->cap_images) {
    int cap = p->cap_images ? p->cap_images * 2 : 1;
    if (cap > PENDING_IMAGES) cap = PENDING_IMAGES;
    int64_t *ids = realloc(p->image_ids, sizeof *ids * (size_t)cap);
    if (ids) p->image_ids = ids;
    float *px = realloc(p->pixels, sizeof(float) * cdbx_image_floats(t->model) * (size_t)cap);
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
    return cdbx_table_error(t, "clip: %s: embedding must be a BLOB of %d float32 values (%d "
                               "bytes), got %s of %d bytes", t->name, t->dims, t->dims * 4,
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
  return cdbx_table_error(t, "clip: %s: %s", t->name, err.msg);
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
  if (rc < 0) return cdbx_table_error(t, "clip: %s: %s", t->name, err.msg);
  src->kind = SRC_TEXT;
  src->text = malloc((size_t)len + 1);
  if (!src->text) return SQLITE_NOMEM;
  memcpy(src->text, s, (size_t)len + 1);
  return pending_reserve(t, 0);
}

static int source_image(cdbx_table *t, clip_model *m, sqlite3_value *image, row_source *src) {
  if (!t->image_paths && sqlite3_value_type(image) != SQLITE_BLOB) {
    return cdbx_table_error(t, "clip: %s: image must be image bytes (a BLOB): the table was "
                               "created with image_paths=off", t->name);
  }
  int rc = pending_reserve(t, 1);
  if (rc != SQLITE_OK) return rc;
  pending_rows *p = &t->pending;
  cdb_error err = {{0}};
  float *slot = p->pixels + cdbx_image_floats(m) * (size_t)p->n_images;
  if (cdbx_image_value_pixels(m, image, slot, &err) != 0) {
    return cdbx_table_error(t, "clip: %s: %s", t->name, err.msg);
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
    return cdbx_table_error(t, "clip: %s: a row needs an image, a text or an embedding", t->name);
  }
  clip_model *m = table_model(t);
  if (!m) return SQLITE_ERROR;
  return has_image ? source_image(t, m, image, src) : source_text(t, m, text, src);
}

/* The row is written: store its vector now, or queue its input (the queue takes the text). */
static int source_commit(cdbx_table *t, int64_t rowid, row_source *src) {
  pending_rows *p = &t->pending;
  switch (src->kind) {
  case SRC_VECTOR:
    return put_vector(t, rowid, src->vec);
  case SRC_IMAGE:
    p->image_ids[p->n_images++] = rowid;
    return SQLITE_OK;
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
    return cdbx_table_error(t, "clip: %s: image must be a BLOB of image bytes or a TEXT path or "
                               "URL", t->name);
  }
  if (!sqlite3_value_nochange(text) && tt != SQLITE_NULL && tt != SQLITE_TEXT) {
    return cdbx_table_error(t, "clip: %s: text must be TEXT", t->name);
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
  cdbx_table_error(t, "clip: %s: %s", t->name, sqlite3_errmsg(t->db));
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
    return cdbx_table_error(t, "clip: %s: rowid must be an integer", t->name);
  }
  *out = sqlite3_value_int64(v);
  return SQLITE_OK;
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

static int insert_row(cdbx_table *t, sqlite3_value *rowid_v, sqlite3_value **cols,
                      sqlite3_int64 *out_rowid) {
  int64_t rowid = 0;
  int rc = SQLITE_OK;
  int has_rowid = sqlite3_value_type(rowid_v) != SQLITE_NULL;
  if (has_rowid) rc = rowid_arg(t, rowid_v, &rowid);
  /* REPLACE of a queued row: flushed first, since deleting it from the queue below would move
   * the slot that row_source_of() is about to fill. */
  if (rc == SQLITE_OK && has_rowid && pending_has(t, rowid)) rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) rc = check_row_types(t, cols[COL_IMAGE], cols[COL_TEXT]);
  /* Check and preprocess before writing anything, so a bad image changes nothing. */
  row_source src = {0};
  if (rc == SQLITE_OK) rc = row_source_of(t, cols[COL_IMAGE], cols[COL_TEXT], cols[COL_EMBEDDING], &src);
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

/* Stored image and text of a row, for UPDATEs that change only one of them. */
static int stored_source(cdbx_table *t, int64_t rowid, sqlite3_value **image,
                         sqlite3_value **text) {
  char *sql = sqlite3_mprintf("SELECT image, text FROM \"%w\".\"%w_rows\" WHERE rowid = ?1",
                              t->schema, t->name);
  sqlite3_stmt *st = NULL;
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, rowid);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      *image = sqlite3_value_dup(sqlite3_column_value(st, 0));
      *text = sqlite3_value_dup(sqlite3_column_value(st, 1));
      rc = SQLITE_OK;
    } else {
      rc = cdbx_table_error(t, "clip: %s: row %lld vanished during UPDATE", t->name,
                            (long long)rowid);
    }
  }
  sqlite3_finalize(st);
  return rc;
}

/* Rows of T_rows that have no vector, collected first (their vectors are written while a
 * statement over the same tables would still be open). */
static int rows_without_vector(cdbx_table *t, id_list *ids) {
  char *sql = sqlite3_mprintf("SELECT rowid FROM \"%w\".\"%w_rows\" r WHERE NOT EXISTS "
                              "(SELECT 1 FROM \"%w\".\"%w_vectors\" v WHERE v.rowid = r.rowid)",
                              t->schema, t->name, t->schema, t->name);
  sqlite3_stmt *st = NULL;
  int rc = sql ? sqlite3_prepare_v2(t->db, sql, -1, &st, NULL) : SQLITE_NOMEM;
  sqlite3_free(sql);
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
    rc = cdbx_id_list_push(ids, sqlite3_column_int64(st, 0));
  if (rc == SQLITE_DONE) rc = SQLITE_OK;
  if (rc != SQLITE_OK && rc != SQLITE_NOMEM) rc = cdbx_table_error(t, "clip: %s: %s", t->name,
                                                                   sqlite3_errmsg(t->db));
  sqlite3_finalize(st);
  return rc;
}

/* One row's vector again, from its stored image or text: checked and preprocessed, then queued
 * like an INSERT's when `queue` is set. Without it nothing is written (an image lands in the
 * queue's free slot but stays uncounted): a dry run. */
static int reembed_row(cdbx_table *t, int64_t rowid, int queue) {
  sqlite3_value *image = NULL, *text = NULL;
  row_source src = {0};
  int rc = stored_source(t, rowid, &image, &text);
  if (rc == SQLITE_OK) rc = row_source_of(t, image, text, NULL, &src);
  if (rc == SQLITE_OK && queue) rc = cdbx_touch(t, rowid);
  if (rc == SQLITE_OK && queue) rc = source_commit(t, rowid, &src);
  if (rc != SQLITE_OK && t->base.zErrMsg) {
    char *why = sqlite3_mprintf("%s", t->base.zErrMsg);
    cdbx_table_error(t, "clip: %s: rebuild: row %lld has no vector and cannot be embedded again "
                        "(%s); fix or delete the row, then rebuild", t->name, (long long)rowid,
                     why ? why : "out of memory");
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
  int rc = rows_without_vector(t, &ids);
  for (int64_t i = 0; rc == SQLITE_OK && i < ids.n; i++) rc = reembed_row(t, ids.ids[i], 0);
  for (int64_t i = 0; rc == SQLITE_OK && i < ids.n; i++) rc = reembed_row(t, ids.ids[i], 1);
  if (rc == SQLITE_OK) rc = cdbx_pending_flush(t);
  free(ids.ids);
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
      rc = cdbx_table_error(t, "clip: %s: row %lld has no vector", t->name, (long long)to);
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

static int changed(sqlite3_value *v) {
  return !sqlite3_value_nochange(v);
}

/* Whether rowid's stored vector is the embedding of its stored text (up to float noise from
 * batching) rather than one the user supplied: a text edit re-embeds only the former, since a
 * supplied embedding wins over the text. Without a model or a text the vector was supplied. */
static int vector_from_text(cdbx_table *t, int64_t rowid, sqlite3_value *text, int *from_text) {
  *from_text = 0;
  if (!t->model_name || sqlite3_value_type(text) != SQLITE_TEXT) return SQLITE_OK;
  clip_model *m = table_model(t);
  if (!m) return SQLITE_ERROR;
  float *mine = malloc(sizeof(float) * (size_t)t->dims);
  if (!mine) return SQLITE_NOMEM;
  cdb_error err = {{0}};
  int rc = cdbx_embed_text(m, (const char *)sqlite3_value_text(text), sqlite3_value_bytes(text),
                           mine, &err) == 0 &&
                   cdbx_vec_normalize(mine, t->dims, "text embedding", &err) == 0
               ? SQLITE_OK
               : cdbx_table_error(t, "clip: %s: row %lld: %s", t->name, (long long)rowid,
                                  err.msg);
  sqlite3_stmt *st = rc == SQLITE_OK ? cdbx_stmt(t, ST_GET_VECTOR) : NULL;
  if (st) {
    sqlite3_bind_int64(st, 1, rowid);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) == t->dims * 4) {
      *from_text = cdbx_vec_dot(mine, sqlite3_column_blob(st, 0), t->dims) > 1.0 - 1e-4;
    }
    sqlite3_reset(st);
  } else if (rc == SQLITE_OK) {
    rc = SQLITE_ERROR;
  }
  free(mine);
  return rc;
}

static int update_row(cdbx_table *t, sqlite3_value *old_v, sqlite3_value *new_v,
                      sqlite3_value **cols) {
  int64_t old_id = 0, new_id = 0;
  int rc = rowid_arg(t, old_v, &old_id);
  if (rc == SQLITE_OK) rc = rowid_arg(t, new_v, &new_id);
  /* A queued row gets its vector first: the code below moves and replaces stored vectors. */
  if (rc == SQLITE_OK && (pending_has(t, old_id) || pending_has(t, new_id))) {
    rc = cdbx_pending_flush(t);
  }
  if (rc == SQLITE_OK) rc = check_row_types(t, cols[COL_IMAGE], cols[COL_TEXT]);
  sqlite3_value *image = cols[COL_IMAGE], *text = cols[COL_TEXT], *emb = cols[COL_EMBEDDING];
  int image_changed = changed(image), text_changed = changed(text), emb_changed = changed(emb);
  sqlite3_value *old_image = NULL, *old_text = NULL;
  int reembed = emb_changed || image_changed || text_changed;
  if (rc == SQLITE_OK && reembed && !(emb_changed && sqlite3_value_type(emb) != SQLITE_NULL)) {
    rc = stored_source(t, old_id, &old_image, &old_text);
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
  if (rc == SQLITE_OK && reembed) rc = row_source_of(t, image, text, emb_changed ? emb : NULL, &src);
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

/* A command row carries only the command: values in other columns would be silently lost. */
static int command_alone(cdbx_table *t, int argc, sqlite3_value **argv) {
  for (int i = 1; i < argc; i++) {
    if (i != 2 + COL_COMMAND(t) && sqlite3_value_type(argv[i]) != SQLITE_NULL) {
      return cdbx_table_error(t, "clip: %s: a command (INSERT INTO %s(%s) VALUES(...)) sets no "
                                 "other column; insert rows in a separate statement",
                              t->name, t->name, t->name);
    }
  }
  return SQLITE_OK;
}

static int run_command(cdbx_table *t, sqlite3_value *cmd) {
  if (sqlite3_value_type(cmd) != SQLITE_TEXT) {
    return cdbx_table_error(t, "clip: %s: a command must be TEXT ('train', 'rebuild', "
                               "'optimize' or 'integrity-check')", t->name);
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
    int64_t id = 0;
    rc = rowid_arg(t, argv[0], &id);
    if (rc == SQLITE_OK) rc = delete_row(t, id);
  } else if (is_insert && sqlite3_value_type(argv[2 + COL_COMMAND(t)]) != SQLITE_NULL) {
    rc = command_alone(t, argc, argv);
    if (rc == SQLITE_OK) rc = cdbx_pending_flush(t);
    if (rc == SQLITE_OK) rc = run_command(t, argv[2 + COL_COMMAND(t)]);
    is_insert = 0;
  } else if (is_insert) {
    rc = insert_row(t, argv[1], argv + 2, rowid);
  } else {
    rc = update_row(t, argv[0], argv[1], argv + 2);
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
  pending_free(t); /* empty after xSync; the buffers are not kept between transactions */
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
  pending_free(t);
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
  pending_clear(t); /* every queued row is newer than savepoint i: SQLite removed it */
  rollback_from(t, have ? t->sp_marks[i] : 0, have ? t->sp_seq[i] : t->begin_seq);
  if (have) t->n_sp = i + 1;
  return SQLITE_OK;
}

static int x_rename(sqlite3_vtab *vt, const char *to) {
  cdbx_table *t = (cdbx_table *)vt;
  char *refused = table_name_error(t, to);
  if (refused) {
    sqlite3_free(t->base.zErrMsg);
    t->base.zErrMsg = refused;
    return SQLITE_ERROR;
  }
  int rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) rc = cdbx_store_rename(t, to);
  if (rc != SQLITE_OK) return rc;
  char *name = sqlite3_mprintf("%s", to);
  if (!name) return SQLITE_NOMEM;
  sqlite3_free(t->name);
  t->name = name;
  return SQLITE_OK;
}

static int x_shadow_name(const char *suffix) {
  static const char *const names[] = {"config", "rows", "vectors", "changes", "index"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (sqlite3_stricmp(suffix, names[i]) == 0) return 1;
  }
  return 0;
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
