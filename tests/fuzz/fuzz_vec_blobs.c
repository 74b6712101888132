/* fuzz_vec_blobs.c: libFuzzer target for the SQL surface that takes vector BLOBs:
 * clip_similarity, clip_vec_*, clip_classify with an embedding, the embedding column of a
 * `clip` table (insert/update), MATCH with a BLOB and clip_search.
 *
 * Input: byte 0 picks the operation, byte 1 is k / a type selector, then two length-prefixed
 * byte strings a and b (fuzz_bytes). One in-memory database holds a small table (tiny model,
 * 64 dims) with four precomputed unit vectors; each run happens inside a transaction that is
 * rolled back (so rollback of the table's index cache is exercised too, and FAISS's slow
 * index_factory is not paid per input). Invariants checked on
 * success: similarities are finite and within [-1, 1], normalised vectors have unit length,
 * a vector's JSON round trip (op 5) gives equal floats, stored embeddings are unit length, KNN
 * returns at most k rows. */
#include <math.h>

#include "tests/fuzz/fuzz_sql.h"

enum { DIMS = 64 };

static sqlite3 *db;

static sqlite3 *open_with_table(void);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_sql_init();
  db = open_with_table();
  return 0;
}

static sqlite3 *open_with_table(void) {
  sqlite3 *conn = fuzz_sql_open();
  if (fuzz_sql_exec(conn, "CREATE VIRTUAL TABLE t USING clip(label TEXT)") != SQLITE_OK) {
    fprintf(stderr, "fuzz_vec_blobs: CREATE failed: %s\n", sqlite3_errmsg(conn));
    abort();
  }
  /* e0, e1, e2 and (e0+e1)/sqrt2 */
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(conn,
                         "INSERT INTO t(embedding, label) VALUES(?1, 'e0'), (?2, 'e1'), "
                         "(?3, 'e2'), (?4, 'e01')",
                         -1, &st, NULL) != SQLITE_OK)
    abort();
  for (int i = 0; i < 3; i++) fuzz_bind_unit(st, i + 1, i);
  float mix[DIMS] = {0.70710678f, 0.70710678f};
  sqlite3_bind_blob(st, 4, mix, sizeof mix, SQLITE_TRANSIENT);
  if (sqlite3_step(st) != SQLITE_DONE) {
    fprintf(stderr, "fuzz_vec_blobs: set-up insert failed: %s\n", sqlite3_errmsg(conn));
    abort();
  }
  sqlite3_finalize(st);
  return conn;
}

/* Binds a (or b) as the type chosen by sel's low bits: BLOB mostly, sometimes TEXT, INTEGER,
 * REAL or NULL (wrong SQL argument types must be clean errors). */
static void bind_value(sqlite3_stmt *st, int i, const uint8_t *p, size_t n, unsigned sel) {
  switch (sel % 8) {
    case 5: sqlite3_bind_text(st, i, (const char *)p, (int)n, SQLITE_TRANSIENT); break;
    case 6: sqlite3_bind_int64(st, i, n ? (int64_t)p[0] - 128 : 0); break;
    case 7: sqlite3_bind_null(st, i); break;
    default: sqlite3_bind_blob(st, i, p, (int)n, SQLITE_TRANSIENT); break;
  }
}

static double blob_norm(const void *p, int n) {
  double s = 0;
  const unsigned char *b = p;
  for (int i = 0; i + 4 <= n; i += 4) {
    float x;
    memcpy(&x, b + i, 4);
    s += (double)x * x;
  }
  return sqrt(s);
}

/* A vector that clip_vec_to_json accepts comes back from clip_vec_from_json bit for bit
 * (finite floats only, so no NaN payloads; -0.0 keeps its sign). */
static void check_json_round_trip(sqlite3_stmt *st) {
  FUZZ_CHECK(sqlite3_column_type(st, 0) == SQLITE_BLOB);
  int n = sqlite3_column_bytes(st, 0);
  FUZZ_CHECK(n == sqlite3_column_bytes(st, 1));
  const unsigned char *got = sqlite3_column_blob(st, 0), *want = sqlite3_column_blob(st, 1);
  FUZZ_CHECK(n == 0 || memcmp(got, want, (size_t)n) == 0);
}

static void check_result(unsigned op, sqlite3_stmt *st, int k) {
  int rows = 0, rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    rows++;
    if (op == 0 && sqlite3_column_type(st, 0) == SQLITE_FLOAT) {
      double s = sqlite3_column_double(st, 0);
      FUZZ_CHECK(isfinite(s) && s >= -1.0001 && s <= 1.0001);
    }
    if (op == 5) check_json_round_trip(st);
    if (op == 4 && sqlite3_column_type(st, 0) == SQLITE_BLOB) {
      double nrm = blob_norm(sqlite3_column_blob(st, 0), sqlite3_column_bytes(st, 0));
      FUZZ_CHECK(fabs(nrm - 1.0) < 1e-3);
    }
    for (int i = 0; i < sqlite3_column_count(st); i++) (void)sqlite3_column_bytes(st, i);
  }
  if (op == 8 || op == 9) FUZZ_CHECK(rc != SQLITE_DONE || k <= 0 || rows <= k);
}

static const char *const ops[] = {
    /* 0 */ "SELECT clip_similarity(?1, ?2)",
    /* 1 */ "SELECT clip_vec_add(?1, ?2)",
    /* 2 */ "SELECT clip_vec_sub(?1, ?2)",
    /* 3 */ "SELECT clip_vec_scale(?1, ?3)",
    /* 4 */ "SELECT clip_vec_normalize(?1)",
    /* 5 */ "SELECT clip_vec_from_json(clip_vec_to_json(?1)), ?1",
    /* 6 */ "SELECT clip_vec_from_json(CAST(?1 AS TEXT))",
    /* 7 */ "INSERT INTO t(embedding, label) VALUES(?1, 'new')",
    /* 8 */ "SELECT rowid, distance FROM t WHERE t MATCH ?1 AND k = ?4",
    /* 9 */ "SELECT rowid, distance FROM clip_search('t', ?1, ?4)",
    /* 10 */ "SELECT clip_classify(?1, 'red', 'blue', CAST(?2 AS TEXT))",
    /* 11 */ "UPDATE t SET embedding = ?1 WHERE label = 'e1'",
    /* 12 */ "SELECT rowid FROM t WHERE t MATCH ?1 AND k = ?4 AND distance < ?3",
    /* 13 */ "SELECT clip_similarity(?1, embedding) FROM t",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_reader r = {data, size};
  unsigned op = fuzz_u8(&r) % (sizeof ops / sizeof ops[0]);
  unsigned sel = fuzz_u8(&r);
  size_t na, nb;
  const uint8_t *a = fuzz_bytes(&r, &na), *b = fuzz_bytes(&r, &nb);
  /* k spans negative, zero, small and huge values */
  static const int64_t ks[] = {-1, 0, 1, 3, 10, 1000, 100001, INT64_MAX, INT64_MIN, 2147483648};
  int64_t k = ks[(sel >> 4) % (sizeof ks / sizeof ks[0])];
  double scale = 0;
  if (nb >= 8) memcpy(&scale, b, 8); /* any double, NaN and Inf included */

  FUZZ_CHECK(fuzz_sql_exec(db, "BEGIN") == SQLITE_OK);
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, ops[op], -1, &st, NULL) == SQLITE_OK) {
    bind_value(st, 1, a, na, sel);
    if (sqlite3_bind_parameter_count(st) >= 2) bind_value(st, 2, b, nb, sel >> 3);
    if (sqlite3_bind_parameter_count(st) >= 3) sqlite3_bind_double(st, 3, scale);
    if (sqlite3_bind_parameter_count(st) >= 4) sqlite3_bind_int64(st, 4, k);
    check_result(op, st, k > INT32_MAX ? INT32_MAX : (int)k);
  }
  sqlite3_finalize(st);
  if (op == 7 || op == 11) {
    /* whatever was accepted is stored normalised and the table stays consistent */
    if (sqlite3_prepare_v2(db, "SELECT embedding FROM t", -1, &st, NULL) == SQLITE_OK)
      while (sqlite3_step(st) == SQLITE_ROW) {
        FUZZ_CHECK(sqlite3_column_bytes(st, 0) == 4 * DIMS);
        FUZZ_CHECK(fabs(blob_norm(sqlite3_column_blob(st, 0), 4 * DIMS) - 1.0) < 1e-3);
      }
    sqlite3_finalize(st);
    FUZZ_CHECK(fuzz_sql_exec(db, "INSERT INTO t(t) VALUES('integrity-check')") == SQLITE_OK);
  }
  FUZZ_CHECK(fuzz_sql_exec(db, "ROLLBACK") == SQLITE_OK);
  FUZZ_CHECK(sqlite3_get_autocommit(db));
  /* the rollback restored the four rows (the index is checked against them every 64 runs:
   * reloading it after a rollback costs more than the rest of a run) */
  static unsigned runs;
  if (++runs % 64 == 0) {
    if (sqlite3_prepare_v2(db, "SELECT rowid FROM t WHERE t MATCH ?1 AND k = 1", -1, &st, NULL))
      abort();
    fuzz_bind_unit(st, 1, 1);
    FUZZ_CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) == 2);
    sqlite3_finalize(st);
  }
  if (sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &st, NULL)) abort();
  FUZZ_CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) == 4);
  sqlite3_finalize(st);
  return 0;
}
