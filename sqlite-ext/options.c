/* options.c: the arguments of CREATE VIRTUAL TABLE ... USING clip(...): options (model=,
 * dims=, index=, nlist=, nprobe=, autotrain=, image_paths=) and user columns, their validation,
 * and the table's declaration to SQLite (sqlite3_declare_vtab) built from them.
 * Owns: the table's definition (cdbx_table.n_user ... .uid): the user columns, and at CREATE the
 * choice of dims, model name and identity, index type and parameters (store.c persists them in
 * T_config and reads them back at connect).
 * Calls only encoder.c and index/; called by vtab.c (xCreate, xConnect, xRename). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/table.h"

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
  char *model; /* NULL: not given */
  int has_dims;
  int dims;
  char *index_type;
  int nlist, nprobe;
  int autotrain;   /* 1 (default): COMMIT trains when the index policy says so */
  int image_paths; /* 1 (default): image may name a file or URL; 0: image bytes only */
  unsigned given;  /* bit i: option_names[i] was given */
  int creating;    /* CREATE VIRTUAL TABLE (not connecting a table created earlier) */
} table_args;

static const char *const option_names[] = {"model", "index",  "dims",       "autotrain",
                                           "nlist", "nprobe", "image_paths"};

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
    return parse_int_option(key, value, 1, CDB_INDEX_MAX_DIM, &a->dims, errmsg);
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
  static const char *const reserved[] = {"image",  "text",  "embedding", "distance", "k",
                                         "nprobe", "rowid", "oid",       "_rowid_"};
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
char *cdbx_table_name_error(const cdbx_table *t, const char *name) {
  int user = 0;
  for (int i = 0; i < t->n_user && !user; i++) user = sqlite3_stricmp(name, t->user_names[i]) == 0;
  if (!user && !is_column_word(name)) return NULL;
  return sqlite3_mprintf("clip: a clip table cannot be named \"%s\": that is the name of %s "
                         "column (image, text, embedding, distance, k, nprobe, rowid and the "
                         "user columns are reserved)",
                         name, user ? "a user" : "a built-in");
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
  static const char *const constraints[] = {"CONSTRAINT", "PRIMARY",   "KEY",    "NOT",
                                            "NULL",       "UNIQUE",    "CHECK",  "DEFAULT",
                                            "REFERENCES", "GENERATED", "AS",     "ALWAYS",
                                            "STORED",     "VIRTUAL",   "HIDDEN", "AUTOINCREMENT",
                                            "ON",         "CONFLICT",  "ASC",    "DESC"};
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
                              "(got \"%s\")",
                              name, type);
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
  t->queue.model = m;
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

int cdbx_options_apply(cdbx_table *t, int argc, const char *const *argv, int create,
                       char **errmsg) {
  table_args a = {0};
  a.autotrain = 1;
  a.image_paths = 1;
  a.creating = create;
  int rc = parse_args(t, &a, argc, argv, errmsg);
  if (rc == SQLITE_OK && create && (*errmsg = cdbx_table_name_error(t, t->name)) != NULL)
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
  sqlite3_free(a.model);
  sqlite3_free(a.index_type);
  return rc;
}
