/* db.c: opening the CLI's library database through the clipdb extension, the photos table, its
 * model (clipdb_table_model: the table's record of the model, identity checked) and embedding
 * with it, and the KNN search the commands share. */
#include "cli/db.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/moments.h"
#include "embed/clip.h"
#include "sqlite-ext/clipdb.h"
#include "src/file.h"
#include "src/model_path.h"

/* The CLI's columns next to the extension's image/text/embedding (documented in
 * docs/clipdb.1.md): `date` is taken_at, or the file's mtime when the photo has no EXIF date,
 * so date filters need one column. */
#define CLI_USER_COLUMNS                                                                         \
  "path TEXT, size INTEGER, mtime INTEGER, hash TEXT, taken_at TEXT, date TEXT, width INTEGER, " \
  "height INTEGER, format TEXT"

/* Page size of new libraries (bench/README.md: 16 KiB pages hold 7 vectors of 512 floats, 4 KiB
 * pages one). */
#define CLI_PAGE_SIZE "16384"

/* Waiting for a writer (another program writing the library) instead of failing at once. */
#define BUSY_TIMEOUT_MS 10000

char *cli_db_path(const cli_ctx *ctx, const char *local_dir) {
  if (ctx->db_path) return strdup(ctx->db_path);
  if (local_dir) return cdb_path_join(local_dir, CLI_LOCAL_DB_NAME);
  const char *xdg = getenv("XDG_DATA_HOME");
  if (xdg && xdg[0] == '/') return cdb_path_join(xdg, "clipdb/library.db");
  const char *home = getenv("HOME");
  return cdb_path_join(home && home[0] ? home : ".", ".local/share/clipdb/library.db");
}

/* mkdir -p of the folder holding path. */
static int make_parent_dirs(const char *path, cdb_error *err) {
  char *dir = strdup(path);
  if (!dir) return cdb_error_set(err, "out of memory");
  char *slash = strrchr(dir, '/');
  int rc = 0;
  if (slash && slash != dir) {
    *slash = '\0';
    for (char *p = dir + 1; rc == 0; p++) {
      if (*p != '/' && *p != '\0') continue;
      char c = *p;
      *p = '\0';
      if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        rc = cdb_error_set(err, "cannot create folder %s: %s", dir, strerror(errno));
      *p = c;
      if (c == '\0') break;
    }
  }
  free(dir);
  return rc;
}

int cli_db_fail(cli_db *db, const char *what, cdb_error *err) {
  return cdb_error_set(err, "%s: %s", what, db->db ? sqlite3_errmsg(db->db) : "no database");
}

int cli_db_exec(cli_db *db, const char *sql, cdb_error *err) {
  char *msg = NULL;
  if (sqlite3_exec(db->db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
  cdb_error_set(err, "%s", msg ? msg : sqlite3_errmsg(db->db));
  sqlite3_free(msg);
  return -1;
}

int cli_db_prepare(cli_db *db, const char *sql, sqlite3_stmt **st, cdb_error *err) {
  if (sqlite3_prepare_v2(db->db, sql, -1, st, NULL) == SQLITE_OK) return 0;
  return cli_db_fail(db, "database", err);
}

/* What a database holds, read from sqlite_schema before anything is written. */
typedef enum { DB_EMPTY, DB_LIBRARY, DB_FOREIGN } db_kind;

/* A clipdb library holds the photos clip table (with its photos_* shadow tables); a database
 * with anything else, or a photos table of another kind, is not one. SQLite's own objects
 * (sqlite_*) do not count, nor clipdb_cli_meta, where earlier versions kept a copy of the
 * model's name (the photos table's own record is the one read now). */
static int classify_db(cli_db *db, db_kind *kind, cdb_error *err) {
  static const char sql[] =
      "SELECT count(*) FILTER (WHERE type = 'table' AND name = '" CLI_TABLE "' AND"
      "                        sql LIKE 'CREATE VIRTUAL TABLE%USING clip(%' AND"
      "                        sql LIKE '%path TEXT, size INTEGER%'),"
      "       count(*) FILTER (WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!' AND"
      "                        tbl_name NOT LIKE '" CLI_TABLE "!_%' ESCAPE '!' AND"
      "                        tbl_name <> 'clipdb_cli_meta')"
      " FROM sqlite_schema";
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db->db, sql, -1, &st, NULL) != SQLITE_OK)
    return cli_db_fail(db, db->path, err);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    int photos = sqlite3_column_int(st, 0);
    int other = sqlite3_column_int(st, 1) - photos; /* a photos table counts as other too */
    if (other > 0) *kind = DB_FOREIGN;
    else *kind = photos ? DB_LIBRARY : DB_EMPTY;
  }
  sqlite3_finalize(st);
  return rc == SQLITE_ROW ? 0 : cli_db_fail(db, db->path, err);
}

/* The model name the photos table was created with (its T_config record), malloc'd; NULL with
 * err set when it cannot be read. */
static char *stored_model(cli_db *db, cdb_error *err) {
  sqlite3_stmt *st;
  char *model = NULL;
  if (cli_db_prepare(db, "SELECT value FROM " CLI_TABLE "_config WHERE key = 'model'", &st, err) !=
      0)
    return NULL;
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
    model = strdup((const char *)sqlite3_column_text(st, 0));
  else cdb_error_set(err, "%s: the photos table names no model", db->path);
  sqlite3_finalize(st);
  return model;
}

static int create_table(cli_db *db, const char *model, cdb_error *err) {
  char *sql = sqlite3_mprintf("CREATE VIRTUAL TABLE " CLI_TABLE
                              " USING clip(model=%Q, index=auto, " CLI_USER_COLUMNS ")",
                              model);
  if (!sql) return cdb_error_set(err, "out of memory");
  int rc = cli_db_exec(db, sql, err);
  sqlite3_free(sql);
  if (rc != 0) cdb_error_prefix(err, "cannot create the photos table");
  return rc;
}

/* The model reference stored in the table: a hub name as given, a directory made absolute, so
 * that the sqlite3 shell or Python opening the library finds the same model. malloc'd. */
static char *model_reference(const char *wanted, cdb_error *err) {
  const char *ref = wanted && *wanted ? wanted : CDB_DEFAULT_MODEL;
  char *dir = cdb_model_resolve(ref, err); /* fails early with the `model pull` hint */
  if (!dir) return NULL;
  struct stat st;
  if (stat(ref, &st) == 0 && S_ISDIR(st.st_mode)) {
    char *abs = realpath(ref, NULL);
    free(dir);
    if (!abs) cdb_error_set(err, "model %s: %s", ref, strerror(errno));
    return abs;
  }
  free(dir);
  char *copy = strdup(ref);
  if (!copy) cdb_error_set(err, "out of memory");
  return copy;
}

/* Opens with the busy timeout set before the first read (a rollback-journal database being
 * written is locked for a moment). */
static int open_with_timeout(cli_db *out, const char *name, int flags) {
  int rc = sqlite3_open_v2(name, &out->db, flags, NULL);
  if (out->db) sqlite3_busy_timeout(out->db, BUSY_TIMEOUT_MS);
  return rc;
}

/* One `index` at a time per library: an flock on PATH-index.lock, held for the whole run and
 * released by the kernel when the process ends, however it ends. SQLite's own locks cannot do
 * this: a run commits many transactions, and two runs would each insert the same new files. */
static int take_writer_lock(cli_db *db, cdb_error *err) {
  char *lock = sqlite3_mprintf("%s-index.lock", db->path);
  if (!lock) return cdb_error_set(err, "out of memory");
  int rc = 0, fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = cdb_error_set(err, "cannot create the lock file %s: %s", lock, strerror(errno));
  } else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      rc = cdb_error_set(err,
                         "another clipdb index is running on this library (%s); run this "
                         "one again when it has finished",
                         db->path);
    else rc = cdb_error_set(err, "cannot lock %s: %s", lock, strerror(errno));
    close(fd);
  } else {
    db->lock_fd = fd;
    db->locked = true;
  }
  sqlite3_free(lock);
  return rc;
}

static int foreign_error(cli_db *db, cdb_error *err) {
  return cdb_error_set(err, "%s is not a clipdb library (it holds other tables); pass another --db",
                       db->path);
}

/* "file:" URI of a path with immutable=1 (%, ? and # percent-encoded). sqlite3_malloc'd. */
static char *immutable_uri(const char *path) {
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendall(s, "file:");
  for (const char *p = path; *p; p++) {
    if (*p == '%' || *p == '?' || *p == '#') sqlite3_str_appendf(s, "%%%02X", (unsigned char)*p);
    else sqlite3_str_appendchar(s, 1, *p);
  }
  sqlite3_str_appendall(s, "?immutable=1");
  return sqlite3_str_finish(s);
}

/* Read-only, and classified. A WAL library whose folder we cannot write (so no -shm can be
 * made) cannot be opened read-only by SQLite; when it has no -wal file either, no write is in
 * progress and the file is read as immutable. */
static int open_read_only(cli_db *out, db_kind *kind, cdb_error *err) {
  int rc = open_with_timeout(out, out->path, SQLITE_OPEN_READONLY);
  if (rc == SQLITE_OK && classify_db(out, kind, err) == 0) return 0;
  int code = out->db ? sqlite3_errcode(out->db) & 0xff : rc;
  char *wal = sqlite3_mprintf("%s-wal", out->path);
  struct stat st;
  bool no_wal = wal && stat(wal, &st) != 0 && errno == ENOENT;
  sqlite3_free(wal);
  if (rc != SQLITE_OK) cli_db_fail(out, out->path, err);
  if (!no_wal || (code != SQLITE_READONLY && code != SQLITE_CANTOPEN)) return -1;
  sqlite3_close_v2(out->db);
  out->db = NULL;
  char *uri = immutable_uri(out->path);
  if (!uri) return cdb_error_set(err, "out of memory");
  rc = open_with_timeout(out, uri, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI);
  sqlite3_free(uri);
  if (rc != SQLITE_OK) return cli_db_fail(out, out->path, err);
  return classify_db(out, kind, err);
}

/* Fails, writing nothing (not even the lock file), when the existing file is not a clipdb
 * library nor empty, or not a database. Another failure to read it (busy, a WAL file being
 * created by a running index) is left to the read after the lock. */
static int refuse_foreign(cli_db *out, cdb_error *err) {
  db_kind kind;
  int rc = open_read_only(out, &kind, err);
  bool not_a_db = rc != 0 && out->db && sqlite3_errcode(out->db) == SQLITE_NOTADB;
  sqlite3_close_v2(out->db);
  out->db = NULL;
  if (rc == 0) return kind == DB_FOREIGN ? foreign_error(out, err) : 0;
  return not_a_db ? -1 : 0;
}

/* The model reference for this run: the stored one for an existing library (queries must be
 * embedded by the model that embedded the photos), else --model / $CLIPDB_MODEL / the default. */
static int choose_model(const cli_ctx *ctx, cli_db *out, bool have_table, bool create,
                        cdb_error *err) {
  char *stored = have_table ? stored_model(out, err) : NULL;
  const char *wanted = ctx->model ? ctx->model : getenv("CLIPDB_MODEL");
  if (have_table && !stored) return -1;
  if (!stored) {
    out->model = model_reference(wanted, err);
    return out->model ? 0 : -1;
  }
  out->model = stored;
  char *want_ref = ctx->model ? model_reference(ctx->model, err) : NULL;
  bool differs = want_ref && strcmp(want_ref, stored) != 0;
  free(want_ref);
  if (differs && create)
    return cdb_error_set(err, "%s was indexed with model %s, not %s; use another --db for it",
                         out->path, stored, ctx->model);
  if (differs)
    fprintf(stderr, "clipdb: note: %s was indexed with model %s; using it\n", out->path, stored);
  return 0;
}

int cli_db_open(const cli_ctx *ctx, const char *local_dir, bool create, cli_db *out,
                cdb_error *err) {
  *out = (cli_db){0};
  out->path = cli_db_path(ctx, local_dir);
  if (!out->path) return cdb_error_set(err, "out of memory");
  struct stat st;
  bool exists = stat(out->path, &st) == 0;
  db_kind kind = DB_EMPTY;
  if (!exists && !create) {
    cdb_error_set(err, "no library at %s; run `clipdb index DIR` first (or pass --db PATH)",
                  out->path);
    goto fail;
  }
  if (create) {
    if (exists && refuse_foreign(out, err) != 0) goto fail; /* before the lock file appears */
    if (!exists && make_parent_dirs(out->path, err) != 0) goto fail;
    if (take_writer_lock(out, err) != 0) goto fail;
    out->created = !exists;
    if (open_with_timeout(out, out->path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) !=
        SQLITE_OK) {
      cli_db_fail(out, out->path, err);
      goto fail;
    }
    if (classify_db(out, &kind, err) != 0) goto fail;
  } else if (open_read_only(out, &kind, err) != 0) {
    goto fail;
  }
  if (kind == DB_FOREIGN) {
    foreign_error(out, err);
    goto fail;
  }
  if (kind == DB_EMPTY && !create) {
    cdb_error_set(err, "%s has no photos table; run `clipdb index DIR` first", out->path);
    goto fail;
  }
  char *msg = NULL;
  if (clipdb_register(out->db, &msg) != SQLITE_OK) {
    cdb_error_set(err, "cannot start the clipdb extension: %s", msg ? msg : "unknown error");
    sqlite3_free(msg);
    goto fail;
  }
  if (choose_model(ctx, out, kind == DB_LIBRARY, create, err) != 0) goto fail;
  /* Before anything fixes the page size: with 4 KiB pages each 2 KiB vector row takes a page. */
  if (create && kind == DB_EMPTY && cli_db_exec(out, "PRAGMA page_size=" CLI_PAGE_SIZE, err) != 0) {
    cdb_error_prefix(err, "%s", out->path);
    goto fail;
  }
  if (create && cli_db_exec(out, "PRAGMA journal_mode=WAL", err) != 0) {
    cdb_error_prefix(err, "%s", out->path);
    goto fail;
  }
  if (kind == DB_EMPTY && create_table(out, out->model, err) != 0) goto fail;
  if (create && cli_db_ensure_frames(out, err) != 0) goto fail;
  return 0;
fail:
  cli_db_close_discarding_empty(out);
  return -1;
}

static bool has_photos(cli_db *db) {
  sqlite3_stmt *st = NULL;
  bool some = db->db &&
              sqlite3_prepare_v2(db->db, "SELECT 1 FROM photos LIMIT 1", -1, &st, NULL) ==
                  SQLITE_OK &&
              sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  return some;
}

void cli_db_close_discarding_empty(cli_db *db) {
  if (!db->created || !db->locked || has_photos(db)) {
    cli_db_close(db);
    return;
  }
  clipdb_model_release(db->clip);
  db->clip = NULL;
  if (db->db) sqlite3_close_v2(db->db);
  db->db = NULL;
  static const char *const suffixes[] = {"", "-wal", "-shm", "-journal", "-index.lock"};
  for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
    char *file = sqlite3_mprintf("%s%s", db->path, suffixes[i]);
    if (file) unlink(file); /* the lock file last, while still held */
    sqlite3_free(file);
  }
  cli_db_close(db);
}

void cli_db_close(cli_db *db) {
  clipdb_model_release(db->clip);
  if (db->db) sqlite3_close_v2(db->db);
  if (db->locked) close(db->lock_fd); /* after the database: the lock covers every write */
  free(db->path);
  free(db->model);
  *db = (cli_db){0};
}

static int blob_to_vector(sqlite3_stmt *st, int col, float **out, int *dim, cdb_error *err) {
  int bytes = sqlite3_column_bytes(st, col);
  const void *blob = sqlite3_column_blob(st, col);
  if (!blob || bytes <= 0 || bytes % 4)
    return cdb_error_set(err, "the extension returned no vector (%d bytes)", bytes);
  float *v = malloc((size_t)bytes);
  if (!v) return cdb_error_set(err, "out of memory");
  memcpy(v, blob, (size_t)bytes);
  *out = v;
  *dim = bytes / 4;
  return 0;
}

int cli_db_model(cli_db *db, clip_model **model, cdb_error *err) {
  char *msg = NULL;
  if (!db->clip && clipdb_table_model(db->db, CLI_TABLE, &db->clip, &msg) != SQLITE_OK) {
    cdb_error_set(err, "%s", msg ? msg : "out of memory");
    sqlite3_free(msg);
    return -1;
  }
  *model = db->clip;
  return 0;
}

int cli_db_library_model(const cli_ctx *ctx, cli_db *db, clip_model **model, cdb_error *err) {
  *model = NULL;
  *db = (cli_db){0};
  char *path = ctx->model ? NULL : cli_db_path(ctx, NULL);
  struct stat st;
  bool exists = path && stat(path, &st) == 0;
  free(path);
  if (!exists) return 0;
  if (cli_db_open(ctx, NULL, false, db, err) == 0 && cli_db_model(db, model, err) == 0) return 0;
  cli_db_close(db);
  return -1;
}

clip_model *cli_load_model(const cli_ctx *ctx, cli_db *db) {
  cdb_error err = {{0}};
  clip_model *model = NULL;
  if (cli_db_library_model(ctx, db, &model, &err) != 0) {
    cli_error("%s", err.msg);
    return NULL;
  }
  if (model) return model;
  char *dir = cli_model_dir(ctx, &err);
  if (!dir) {
    cli_error("%s", err.msg);
    return NULL;
  }
  model = clip_model_load(dir, NULL, &err);
  if (!model) cli_error("%s", err.msg);
  free(dir);
  return model;
}

void cli_unload_model(clip_model *model, cli_db *db) {
  if (db->clip) cli_db_close(db);
  else clip_model_free(model);
}

/* One vector of the table's model: room for it, and the model. */
static int embed_start(cli_db *db, clip_model **m, float **out, int *dim, cdb_error *err) {
  if (cli_db_model(db, m, err) != 0) return -1;
  *dim = clip_model_dim(*m);
  *out = malloc(sizeof(float) * (size_t)*dim);
  return *out ? 0 : cdb_error_set(err, "out of memory");
}

static int embed_finish(int rc, float **out) {
  if (rc != 0) {
    free(*out);
    *out = NULL;
  }
  return rc;
}

int cli_db_embed_text(cli_db *db, const char *text, float **out, int *dim, cdb_error *err) {
  clip_model *m;
  if (embed_start(db, &m, out, dim, err) != 0) return -1;
  return embed_finish(clip_embed_texts(m, &text, 1, *out, err), out);
}

int cli_db_embed_image_file(cli_db *db, const char *source, float **out, int *dim, cdb_error *err) {
  clip_model *m;
  if (embed_start(db, &m, out, dim, err) != 0) return -1;
  return embed_finish(clip_embed_image_source(m, source, *out, err), out);
}

int cli_db_vector_of_path(cli_db *db, const char *path, float **out, int *dim, int64_t *rowid,
                          cdb_error *err) {
  sqlite3_stmt *st;
  if (cli_db_prepare(db, "SELECT rowid, embedding FROM " CLI_TABLE " WHERE path = ?1", &st, err) !=
      0)
    return -1;
  sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *rowid = sqlite3_column_int64(st, 0);
    rc = blob_to_vector(st, 1, out, dim, err);
  } else if (rc == SQLITE_DONE) {
    rc = 1;
  } else {
    rc = cli_db_fail(db, "database", err);
  }
  sqlite3_finalize(st);
  return rc;
}

int cli_check_date(const char *s) {
  /* YYYY, YYYY-MM, YYYY-MM-DD, "YYYY-MM-DD HH:MM", "YYYY-MM-DD HH:MM:SS" ('T' also accepted) */
  static const char shape[] = "dddd-dd-dd dd:dd:dd";
  size_t n = strlen(s);
  if (n != 4 && n != 7 && n != 10 && n != 16 && n != 19) return -1;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (shape[i] == 'd' ? !isdigit((unsigned char)c) : !(c == shape[i] || (i == 10 && c == 'T')))
      return -1;
  }
  /* the shape is right; GLib says whether such a day and time exist (no month 13, no Feb 30) */
  int f[6] = {0, 1, 1, 0, 0, 0};
  for (size_t i = 0, k = 0; i < n && k < 6; i += (k == 0 ? 5 : 3), k++)
    f[k] = (int)strtol(s + i, NULL, 10);
  GDateTime *t = g_date_time_new_utc(f[0], f[1], f[2], f[3], f[4], f[5]);
  if (!t) return -1;
  g_date_time_unref(t);
  return 0;
}

void cli_hits_free(cli_hit *hits, int n) {
  for (int i = 0; i < n; i++) {
    free(hits[i].path);
    free(hits[i].date);
    free(hits[i].moments);
  }
  free(hits);
}

/* "2020-05-01T10:00" -> "2020-05-01 10:00" (the stored form), into a buffer of 20. */
static void normalise_date(const char *in, char out[20]) {
  snprintf(out, 20, "%s", in);
  if (strlen(out) > 10 && out[10] == 'T') out[10] = ' ';
}

int cli_db_search(cli_db *db, const cli_query *q, const cli_search_opts *opts, cli_hit **hits,
                  int *n, cdb_error *err) {
  *hits = NULL;
  *n = 0;
  int k = opts->k + (opts->exclude_rowid != 0); /* the excluded row is usually the nearest */
  char *sql = sqlite3_mprintf("SELECT rowid, path, distance, date, width, height FROM " CLI_TABLE
                              " WHERE " CLI_TABLE " MATCH ?1 AND k = ?2%s%s%s%s ORDER BY distance",
                              opts->after ? " AND date >= ?3" : "",
                              opts->before ? " AND date < ?4" : "",
                              isfinite(opts->threshold) ? " AND distance <= ?5" : "",
                              opts->folder ? " AND path >= ?6 AND path < ?7" : "");
  sqlite3_stmt *st;
  int rc = sql ? cli_db_prepare(db, sql, &st, err) : cdb_error_set(err, "out of memory");
  sqlite3_free(sql);
  if (rc != 0) return -1;
  char after[20], before[20];
  if (q->text) sqlite3_bind_text(st, 1, q->text, -1, SQLITE_STATIC);
  else sqlite3_bind_blob(st, 1, q->vec, q->dim * (int)sizeof(float), SQLITE_STATIC);
  sqlite3_bind_int(st, 2, k);
  if (opts->after) {
    normalise_date(opts->after, after);
    sqlite3_bind_text(st, 3, after, -1, SQLITE_STATIC);
  }
  if (opts->before) {
    normalise_date(opts->before, before);
    sqlite3_bind_text(st, 4, before, -1, SQLITE_STATIC);
  }
  if (isfinite(opts->threshold)) sqlite3_bind_double(st, 5, 1.0 - opts->threshold);
  size_t flen = opts->folder ? strlen(opts->folder) : 0;
  while (flen > 0 && opts->folder[flen - 1] == '/') flen--;
  char *under = opts->folder ? sqlite3_mprintf("%.*s/", (int)flen, opts->folder) : NULL;
  if (under) { /* the paths starting with "FOLDER/": from "FOLDER/" up to "FOLDER0" ('/' + 1) */
    sqlite3_bind_text(st, 6, under, -1, SQLITE_TRANSIENT);
    under[strlen(under) - 1] = '0';
    sqlite3_bind_text(st, 7, under, -1, SQLITE_TRANSIENT);
    sqlite3_free(under);
  }
  cli_hit *out = calloc((size_t)k, sizeof *out);
  int count = 0;
  if (!out) rc = cdb_error_set(err, "out of memory");
  while (rc == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    rc = 0;
    int64_t rowid = sqlite3_column_int64(st, 0);
    if (rowid == opts->exclude_rowid || count == opts->k) continue;
    cli_hit *h = &out[count++];
    const char *path = (const char *)sqlite3_column_text(st, 1);
    const char *date = (const char *)sqlite3_column_text(st, 3);
    h->rowid = rowid;
    h->path = strdup(path ? path : "");
    h->date = date ? strdup(date) : NULL;
    h->score = 1.0 - sqlite3_column_double(st, 2);
    h->width = sqlite3_column_int(st, 4);
    h->height = sqlite3_column_int(st, 5);
    h->t = -1;
    if (!h->path) rc = cdb_error_set(err, "out of memory");
  }
  if (rc == SQLITE_DONE) rc = 0;
  else if (rc != 0 && rc != -1) rc = cli_db_fail(db, "search", err);
  sqlite3_finalize(st);
  if (rc != 0) {
    cli_hits_free(out, count);
    return -1;
  }
  *hits = out;
  *n = count;
  return 0;
}

int cli_db_embed_image_buffer(cli_db *db, const void *buf, size_t len, float **out, int *dim,
                              cdb_error *err) {
  clip_model *m;
  if (embed_start(db, &m, out, dim, err) != 0) return -1;
  return embed_finish(clip_embed_image_buffers(m, &buf, &len, 1, *out, err), out);
}
