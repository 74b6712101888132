/* fuzz_shadow.c: libFuzzer target for a database whose shadow tables were corrupted.
 *
 * At start-up a valid small database is built in memory and serialised: table t (tiny model,
 * flat index, a user column, a few rows with text or precomputed embeddings) and table v
 * (dims=16, IVF index trained over 96 rows), so every shadow table has rows: config, rows,
 * vectors, index pieces. Each input is a list of edits of those shadow tables (set a cell to
 * NULL / an integer / a real / text / bytes, truncate or splice a blob, delete or duplicate a
 * row); some are applied before the virtual tables are first used, the rest after their index
 * caches are built (byte 0: bits 0-2 = edits before first use, bit 3 = run maintenance).
 * Then every read and write path runs: scans, KNN by vector and by text, clip_search,
 * insert/update/delete, and with bit 3 'integrity-check', 'rebuild', 'optimize', 'train'.
 * Cache-file mode (byte 0 bit 4): the same database as a file, and beside it the table v's
 * memory-mapped cold-start file "<db>-clip-v.idx" (the valid one, written at start-up) with
 * the input's edits applied (overwrite, truncate or insert bytes at an offset), so the cache
 * file's parser and the mapped index are fuzzed; the shadow tables stay intact.
 * Errors are fine; a crash, sanitizer report, leak or hang is a finding. */
#include <math.h>

#include "tests/fuzz/fuzz_sql.h"

enum { MAX_TABLES = 16, MAX_COLS = 16, V_DIMS = 16, V_ROWS = 96 };

static unsigned char *image; /* the serialised valid database */
static sqlite3_int64 image_size;
static char tables[MAX_TABLES][64];
static char cols[MAX_TABLES][MAX_COLS][64];
static int n_tables, n_cols[MAX_TABLES];
static float query16[V_DIMS];
static char run_db[4096], run_cache[4200]; /* cache-file mode: the database and its cache */
static unsigned char *cache_bytes, *cache_scratch;
static size_t cache_len;

static void must(sqlite3 *db, const char *sql) {
  if (fuzz_sql_exec(db, sql) != SQLITE_OK) {
    fprintf(stderr, "fuzz_shadow: set-up failed: %s: %s\n", sql, sqlite3_errmsg(db));
    abort();
  }
}

/* Deterministic pseudo-random unit vectors (xorshift), no libc rand state involved. */
static void unit_vector(uint32_t seed, float *v, int n) {
  uint32_t x = seed * 2654435761u + 1;
  double s = 0;
  for (int i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    v[i] = (float)((x % 2001) / 1000.0 - 1.0);
    s += (double)v[i] * v[i];
  }
  for (int i = 0; i < n; i++) v[i] = (float)(v[i] / sqrt(s));
}

static void build_template(void) {
  sqlite3 *db = fuzz_sql_open();
  must(db, "CREATE VIRTUAL TABLE t USING clip(label TEXT)");
  must(db, "INSERT INTO t(text, label) VALUES('a red star', 'x'), ('a blue square', 'y')");
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, "INSERT INTO t(embedding, label) VALUES(?1, 'e0'), (?2, 'e1')", -1,
                         &st, NULL))
    abort();
  fuzz_bind_unit(st, 1, 0);
  fuzz_bind_unit(st, 2, 1);
  if (sqlite3_step(st) != SQLITE_DONE) abort();
  sqlite3_finalize(st);
  must(db, "CREATE VIRTUAL TABLE v USING clip(dims=16, index='IVF2,Flat', tag INT)");
  if (sqlite3_prepare_v2(db, "INSERT INTO v(embedding, tag) VALUES(?, ?)", -1, &st, NULL)) abort();
  for (int i = 0; i < V_ROWS; i++) {
    float v[V_DIMS];
    unit_vector((uint32_t)i, v, V_DIMS);
    sqlite3_bind_blob(st, 1, v, sizeof v, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, i);
    if (sqlite3_step(st) != SQLITE_DONE) abort();
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  must(db, "INSERT INTO v(v) VALUES('train')");
  must(db, "INSERT INTO t(t) VALUES('integrity-check')");
  must(db, "INSERT INTO v(v) VALUES('integrity-check')");
  unit_vector(7, query16, V_DIMS);

  if (sqlite3_prepare_v2(db,
                         "SELECT name FROM sqlite_schema WHERE type = 'table' AND "
                         "(name LIKE 't\\_%' ESCAPE '\\' OR name LIKE 'v\\_%' ESCAPE '\\') "
                         "ORDER BY name",
                         -1, &st, NULL))
    abort();
  while (sqlite3_step(st) == SQLITE_ROW && n_tables < MAX_TABLES)
    snprintf(tables[n_tables++], 64, "%s", (const char *)sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  for (int i = 0; i < n_tables; i++) {
    char *sql = sqlite3_mprintf("SELECT name FROM pragma_table_info(%Q)", tables[i]);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL)) abort();
    while (sqlite3_step(st) == SQLITE_ROW && n_cols[i] < MAX_COLS)
      snprintf(cols[i][n_cols[i]++], 64, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_free(sql);
  }
  if (n_tables == 0) abort();
  image = sqlite3_serialize(db, "main", &image_size, 0);
  if (!image) abort();
  sqlite3_close(db);
}

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
    perror(path);
    abort();
  }
}

/* Writes the template as a file database and lets clipdb write v's cache file beside it: the
 * valid cache file that cache-file mode edits. */
static void build_cache_template(void) {
  char dir[] = "/tmp/clipdb-fuzz-shadow-XXXXXX";
  if (!mkdtemp(dir)) abort();
  snprintf(run_db, sizeof run_db, "%s/run.db", dir);
  snprintf(run_cache, sizeof run_cache, "%s-clip-v.idx", run_db);
  write_file(run_db, image, (size_t)image_size);
  sqlite3 *db = NULL;
  char *msg = NULL;
  if (sqlite3_open(run_db, &db) != SQLITE_OK || clipdb_register(db, &msg) != SQLITE_OK) abort();
  sqlite3_stmt *st = NULL; /* the first search loads the index and writes the cache file */
  if (sqlite3_prepare_v2(db, "SELECT rowid FROM v WHERE v MATCH ?1 AND k = 1", -1, &st, NULL))
    abort();
  sqlite3_bind_blob(st, 1, query16, sizeof query16, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_ROW) abort();
  sqlite3_finalize(st);
  sqlite3_close(db);
  FILE *f = fopen(run_cache, "rb");
  if (!f || fseek(f, 0, SEEK_END) != 0) {
    fprintf(stderr, "fuzz_shadow: no cache file %s was written\n", run_cache);
    abort();
  }
  cache_len = (size_t)ftell(f);
  rewind(f);
  cache_bytes = malloc(cache_len);
  cache_scratch = malloc(cache_len + 65536 * 2);
  if (!cache_bytes || !cache_scratch || fread(cache_bytes, 1, cache_len, f) != cache_len) abort();
  fclose(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_sql_init();
  build_template();
  build_cache_template();
  return 0;
}

/* The valid cache file with the input's edits: (4-byte offset, kind, bytes) each. */
static size_t edited_cache(fuzz_reader *r) {
  size_t n = cache_len;
  memcpy(cache_scratch, cache_bytes, n);
  for (int i = 0; i < 8 && r->left; i++) {
    size_t off = fuzz_u32(r) % (n + 1), len;
    unsigned kind = fuzz_u8(r) % 3;
    const uint8_t *p = fuzz_bytes(r, &len);
    if (kind == 0) { /* overwrite */
      if (len > n - off) len = n - off;
      memcpy(cache_scratch + off, p, len);
    } else if (kind == 1) { /* truncate */
      n = off;
    } else if (n + len <= cache_len + 65536) { /* insert */
      memmove(cache_scratch + off + len, cache_scratch + off, n - off);
      memcpy(cache_scratch + off, p, len);
      n += len;
    }
  }
  return n;
}

/* One edit: table, row (offset in rowid order), column, kind, payload. */
static void apply_edit(sqlite3 *db, fuzz_reader *r) {
  int ti = (int)(fuzz_u8(r) % (unsigned)n_tables);
  unsigned row = fuzz_u8(r), ci = fuzz_u8(r) % (unsigned)n_cols[ti], kind = fuzz_u8(r) % 9;
  size_t n;
  const uint8_t *p = fuzz_bytes(r, &n);
  const char *tab = tables[ti], *col = cols[ti][ci];
  const char *where = "rowid = (SELECT rowid FROM \"%w\" ORDER BY rowid LIMIT 1 OFFSET %u)";
  char *w = sqlite3_mprintf(where, tab, row % 128);
  char *sql;
  switch (kind) {
    case 0: sql = sqlite3_mprintf("UPDATE \"%w\" SET \"%w\" = NULL WHERE %s", tab, col, w); break;
    case 1: sql = sqlite3_mprintf("UPDATE \"%w\" SET \"%w\" = ?2 WHERE %s", tab, col, w); break;
    case 2: sql = sqlite3_mprintf("UPDATE \"%w\" SET \"%w\" = ?1 WHERE %s", tab, col, w); break;
    case 3:
      sql = sqlite3_mprintf("UPDATE \"%w\" SET \"%w\" = CAST(?1 AS TEXT) WHERE %s", tab, col, w);
      break;
    case 4: /* truncate a blob or text to n bytes */
      sql = sqlite3_mprintf("UPDATE \"%w\" SET \"%w\" = substr(\"%w\", 1, ?3) WHERE %s", tab, col,
                            col, w);
      break;
    case 5: /* splice the payload into the value at offset row */
      sql = sqlite3_mprintf("UPDATE \"%w\" SET \"%w\" = substr(\"%w\", 1, ?4) || ?1 || "
                            "substr(\"%w\", ?4 + length(?1) + 1) WHERE %s",
                            tab, col, col, col, w);
      break;
    case 6: sql = sqlite3_mprintf("DELETE FROM \"%w\" WHERE %s", tab, w); break;
    case 7: sql = sqlite3_mprintf("UPDATE \"%w\" SET \"%w\" = ?5 WHERE %s", tab, col, w); break;
    default: /* duplicate a row under a new rowid */
      sql = sqlite3_mprintf("INSERT INTO \"%w\" SELECT * FROM \"%w\" WHERE %s", tab, tab, w);
      break;
  }
  sqlite3_stmt *st = NULL;
  if (sql && sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
    int64_t ival = 0;
    double dval = 0;
    memcpy(&ival, p, n < 8 ? n : 8);
    memcpy(&dval, p, n < 8 ? n : 8);
    sqlite3_bind_blob(st, 1, p, (int)n, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, ival);
    sqlite3_bind_int64(st, 3, (int64_t)n);
    sqlite3_bind_int64(st, 4, (int64_t)row * 4);
    sqlite3_bind_double(st, 5, dval);
    sqlite3_step(st);
  }
  sqlite3_finalize(st);
  sqlite3_free(sql);
  sqlite3_free(w);
}

static void knn_blob(sqlite3 *db, const char *sql, const void *q, int nq) {
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
    sqlite3_bind_blob(st, 1, q, nq, SQLITE_STATIC);
    fuzz_sql_drain(st);
  }
  sqlite3_finalize(st);
}

static void read_everything(sqlite3 *db) {
  fuzz_sql_query(db, "SELECT count(*) FROM t");
  fuzz_sql_query(db, "SELECT rowid, * , embedding FROM t");
  fuzz_sql_query(db, "SELECT rowid, *, embedding FROM v");
  fuzz_sql_query(db, "SELECT rowid, distance FROM t WHERE t MATCH 'a red star' AND k = 3");
  knn_blob(db, "SELECT rowid, distance FROM v WHERE v MATCH ?1 AND k = 5", query16, sizeof query16);
  knn_blob(db, "SELECT rowid, distance FROM v WHERE v MATCH ?1 AND distance < 0.9", query16,
           sizeof query16);
  knn_blob(db, "SELECT rowid, tag FROM v WHERE v MATCH ?1 AND tag < 50 ORDER BY distance LIMIT 4",
           query16, sizeof query16);
  knn_blob(db, "SELECT * FROM clip_search('v', ?1, 4)", query16, sizeof query16);
}

static void write_some(sqlite3 *db) {
  knn_blob(db, "INSERT INTO v(embedding, tag) VALUES(?1, 1000)", query16, sizeof query16);
  fuzz_sql_exec(db, "DELETE FROM v WHERE rowid IN (3, 4)");
  fuzz_sql_exec(db, "UPDATE v SET tag = -1 WHERE rowid = 5");
  fuzz_sql_exec(db, "UPDATE t SET label = 'z' WHERE rowid = 1");
  fuzz_sql_exec(db, "DELETE FROM t WHERE rowid = 2");
}

/* Maintenance commands. (After corruption, 'rebuild' may succeed while 'integrity-check'
 * still fails, e.g. for a vector whose row was deleted: rebuild re-derives the index from the
 * stored vectors and does not repair the rows. That is reported, not treated as a crash.) */
static void maintenance(sqlite3 *db, const char *table) {
  static const char *const cmds[] = {"integrity-check", "rebuild", "integrity-check", "optimize",
                                     "train"};
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s(%s) VALUES('%s')", table, table, cmds[i]);
    fuzz_sql_exec(db, sql);
  }
}

static void run_cache_file_mode(fuzz_reader *r, unsigned control) {
  size_t n = edited_cache(r);
  write_file(run_db, image, (size_t)image_size);
  write_file(run_cache, cache_scratch, n);
  sqlite3 *db = NULL;
  char *msg = NULL;
  if (sqlite3_open(run_db, &db) != SQLITE_OK || clipdb_register(db, &msg) != SQLITE_OK) abort();
  read_everything(db);
  write_some(db);
  read_everything(db);
  if (control & 8) {
    maintenance(db, "v");
    read_everything(db);
  }
  sqlite3_close(db);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size && (data[0] & 16)) {
    fuzz_reader r = {data + 1, size - 1};
    run_cache_file_mode(&r, data[0]);
    return 0;
  }
  sqlite3 *db = fuzz_sql_open();
  unsigned char *copy = sqlite3_malloc64((sqlite3_uint64)image_size);
  if (!copy) abort();
  memcpy(copy, image, (size_t)image_size);
  if (sqlite3_deserialize(db, "main", copy, image_size, image_size,
                          SQLITE_DESERIALIZE_FREEONCLOSE | SQLITE_DESERIALIZE_RESIZEABLE) !=
      SQLITE_OK)
    abort();
  fuzz_reader r = {data, size};
  unsigned control = fuzz_u8(&r), before = control % 8;
  for (unsigned i = 0; i < before && r.left; i++) apply_edit(db, &r);
  read_everything(db);
  for (int i = 0; i < 8 && r.left; i++) apply_edit(db, &r); /* caches are built now */
  read_everything(db);
  write_some(db);
  read_everything(db);
  if (control & 8) { /* maintenance is the slowest part: half of the inputs */
    maintenance(db, "t");
    maintenance(db, "v");
    read_everything(db);
  }
  sqlite3_close(db);
  return 0;
}
