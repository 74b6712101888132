/* fuzz_sql.h: helpers for the fuzz targets that drive the SQLite extension through SQL
 * (fuzz_vtab_args, fuzz_vec_blobs, fuzz_shadow). They link the static extension library and
 * register it with clipdb_register on in-memory databases; the tiny model from tests/data is
 * the default model (CLIPDB_MODEL), so nothing is downloaded or read from the user's cache.
 * SQL errors are expected results here; only crashes, sanitizer reports and violated
 * invariants are findings. */
#ifndef CLIPDB_FUZZ_SQL_H
#define CLIPDB_FUZZ_SQL_H

#include <sqlite3.h>

#include "sqlite-ext/clipdb.h"
#include "tests/fuzz/fuzz_common.h"

static inline sqlite3 *fuzz_sql_open(void);

/* Points CLIPDB_MODEL at the tiny model and keeps one connection that holds it for the whole
 * run (the process-wide registry frees a model with its last user; reloading it for every
 * input would make the targets 100x slower). Call from LLVMFuzzerInitialize. */
static inline void fuzz_sql_init(void) {
  static char model[4096];
  static sqlite3 *anchor;
  setenv("CLIPDB_MODEL", fuzz_data_path("clip-tiny-shapes", model, sizeof model), 1);
  sqlite3_initialize();
  anchor = fuzz_sql_open();
  if (sqlite3_exec(anchor, "SELECT clip_embed_text('warm up')", NULL, NULL, NULL) != SQLITE_OK) {
    fprintf(stderr, "fuzz: cannot load the tiny model: %s\n", sqlite3_errmsg(anchor));
    abort();
  }
}

/* Binds a 64-dim unit vector along axis i (the tiny model's dimension) to parameter idx. */
static inline void fuzz_bind_unit(sqlite3_stmt *st, int idx, int i) {
  float v[64] = {0};
  v[i % 64] = 1.0f;
  sqlite3_bind_blob(st, idx, v, sizeof v, SQLITE_TRANSIENT);
}

/* A fresh in-memory database with clipdb registered. */
static inline sqlite3 *fuzz_sql_open(void) {
  sqlite3 *db = NULL;
  if (sqlite3_open(":memory:", &db) != SQLITE_OK) abort();
  char *msg = NULL;
  if (clipdb_register(db, &msg) != SQLITE_OK) {
    fprintf(stderr, "clipdb_register: %s\n", msg ? msg : "?");
    abort();
  }
  return db;
}

/* Runs sql (any number of statements); errors are ignored. Returns the result code. */
static inline int fuzz_sql_exec(sqlite3 *db, const char *sql) {
  return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* Steps a prepared statement to the end, reading every column of every row (so that lazily
 * produced values are materialised). Returns the final result code. */
static inline int fuzz_sql_drain(sqlite3_stmt *st) {
  int rc;
  volatile size_t sink = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    for (int i = 0; i < sqlite3_column_count(st); i++) {
      const unsigned char *p = sqlite3_column_blob(st, i);
      int n = sqlite3_column_bytes(st, i);
      if (p && n > 0) sink += p[0] + p[n - 1];
    }
  (void)sink;
  return rc;
}

/* Prepares and drains sql (one statement); errors are ignored. */
static inline int fuzz_sql_query(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (rc == SQLITE_OK) rc = fuzz_sql_drain(st);
  sqlite3_finalize(st);
  return rc;
}

#endif
