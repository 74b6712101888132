/* fuzz_vtab_args.c: libFuzzer target for the `clip` virtual table's constructor arguments.
 *
 * The input is the text between the parentheses of CREATE VIRTUAL TABLE t USING clip(...),
 * run on a fresh in-memory database. When the table is created, it is used a little (insert
 * by text and by vector, KNN query, integrity-check, DROP) so that the parsed options are
 * exercised; nothing may crash, leak or hang, whatever the options say. */
#include "tests/fuzz/fuzz_sql.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_sql_init();
  return 0;
}

static void use_table(sqlite3 *db) {
  fuzz_sql_exec(db, "INSERT INTO t(text) VALUES('a red star')");
  /* Unit vectors of the tiny model's dimension and of the table's own (from the text row). */
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, "INSERT INTO t(embedding) VALUES(?)", -1, &st, NULL) == SQLITE_OK) {
    fuzz_bind_unit(st, 1, 0);
    sqlite3_step(st);
  }
  sqlite3_finalize(st);
  fuzz_sql_exec(db, "INSERT INTO t(embedding) SELECT CAST(x'0000803f' || "
                    "zeroblob(length(embedding) - 4) AS BLOB) FROM t "
                    "WHERE embedding IS NOT NULL LIMIT 1");
  fuzz_sql_query(db, "SELECT rowid, distance FROM t WHERE t MATCH 'a red star' AND k = 3");
  fuzz_sql_query(db, "SELECT * FROM t");
  fuzz_sql_exec(db, "INSERT INTO t(t) VALUES('integrity-check')");
  fuzz_sql_exec(db, "INSERT INTO t(t) VALUES('train')");
  fuzz_sql_exec(db, "DROP TABLE t");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  char *sql = sqlite3_mprintf("CREATE VIRTUAL TABLE t USING clip(%.*s)", (int)size, data);
  if (!sql) return 0;
  if (memchr(data, 0, size)) { /* SQL text stops at NUL: same statement without it */
    sqlite3_free(sql);
    return 0;
  }
  sqlite3 *db = fuzz_sql_open();
  if (fuzz_sql_exec(db, sql) == SQLITE_OK) use_table(db);
  sqlite3_free(sql);
  sqlite3_close(db);
  return 0;
}
