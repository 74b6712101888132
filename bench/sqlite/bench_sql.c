/* bench_sql.c: the SQL layer's cost next to FAISS used directly.
 *
 * Inserts N precomputed vectors (clustered synthetic data, dims floats) into a clip table in one
 * transaction (rows/s for the inserts and for the commit, which trains the IVF index and writes
 * its snapshot), then times KNN queries (k = 10) through SQL and through index/ivf.h on the same
 * index (loaded from the table's snapshot pieces), with recall@10 against exact brute force for
 * both. Also times a filtered query and cold opens (first query on a new connection).
 *
 * usage: bench_sqlite [rows=100000] [dims=512] [queries=200] [db=/tmp/clipdb-bench.db] [insert]
 * (a fifth argument "insert" stops after the inserts, for profiling them;
 * BENCH_INDEX='IVF1024,Flat' in the environment gives the table that index instead of index=auto)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "index/ivf.h"
#include "sqlite-ext/clipdb.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0;
}
static float gauss(void) {
  double u = uniform() + 1e-12, v = uniform();
  return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

static void normalize(float *v, int d) {
  double s = 0;
  for (int i = 0; i < d; i++) s += (double)v[i] * v[i];
  float inv = (float)(1 / sqrt(s));
  for (int i = 0; i < d; i++) v[i] *= inv;
}

/* Points around n/100 random centres (like embeddings: clustered, not uniform). */
static float *make_data(int64_t n, int d) {
  int centres = (int)(n / 100 > 16 ? n / 100 : 16);
  float *c = malloc(sizeof(float) * (size_t)centres * d);
  float *x = malloc(sizeof(float) * (size_t)n * d);
  for (int64_t i = 0; i < (int64_t)centres * d; i++) c[i] = gauss();
  for (int i = 0; i < centres; i++) normalize(c + (size_t)i * d, d);
  for (int64_t i = 0; i < n; i++) {
    const float *ci = c + (size_t)(uniform() * centres) * d;
    for (int j = 0; j < d; j++) x[i * d + j] = ci[j] + 0.35f * gauss() / sqrtf((float)d) * 4;
    normalize(x + (size_t)i * d, d);
  }
  free(c);
  return x;
}

static void check(int rc, sqlite3 *db, const char *what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
    exit(1);
  }
}

static sqlite3 *open_db(const char *path) {
  sqlite3 *db = NULL;
  check(sqlite3_open(path, &db), db, "open");
  char *err = NULL;
  if (clipdb_register(db, &err) != SQLITE_OK) {
    fprintf(stderr, "register: %s\n", err);
    exit(1);
  }
  return db;
}

typedef struct piece_reader {
  sqlite3_stmt *st;
} piece_reader;

static int next_piece(void *ctx, const void **data, size_t *len) {
  piece_reader *r = ctx;
  if (sqlite3_step(r->st) != SQLITE_ROW) return 0;
  *data = sqlite3_column_blob(r->st, 0);
  *len = (size_t)sqlite3_column_bytes(r->st, 0);
  return 1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Exact top-10 ids per query by brute force. */
static void exact_top10(const float *x, int64_t n, int d, const float *q, int64_t *out) {
  float best[10];
  for (int i = 0; i < 10; i++) best[i] = -INFINITY, out[i] = -1;
  for (int64_t i = 0; i < n; i++) {
    float s = 0;
    for (int j = 0; j < d; j++) s += x[i * d + j] * q[j];
    if (s <= best[9]) continue;
    int p = 9;
    while (p > 0 && best[p - 1] < s) {
      best[p] = best[p - 1];
      out[p] = out[p - 1];
      p--;
    }
    best[p] = s;
    out[p] = i + 1; /* rowids start at 1 */
  }
}

static double recall(const int64_t *got, int n_got, const int64_t *truth) {
  int hit = 0;
  for (int i = 0; i < n_got; i++)
    for (int j = 0; j < 10; j++) hit += got[i] == truth[j];
  return hit / 10.0;
}

static void report(const char *what, double *lat, int nq, double rec) {
  qsort(lat, (size_t)nq, sizeof *lat, cmp_double);
  double sum = 0;
  for (int i = 0; i < nq; i++) sum += lat[i];
  printf("%-28s mean %7.3f ms  p50 %7.3f ms  p95 %7.3f ms  recall@10 %.3f\n", what, sum / nq * 1e3,
         lat[nq / 2] * 1e3, lat[nq * 95 / 100] * 1e3, rec);
}

int main(int argc, char **argv) {
  int64_t n = argc > 1 ? atoll(argv[1]) : 100000;
  int d = argc > 2 ? atoi(argv[2]) : 512;
  int nq = argc > 3 ? atoi(argv[3]) : 200;
  const char *path = argc > 4 ? argv[4] : "/tmp/clipdb-bench.db";
  unlink(path);
  printf("rows %lld, dims %d, queries %d, db %s, sqlite %s\n", (long long)n, d, nq, path,
         sqlite3_libversion());
  float *x = make_data(n, d);
  float *q = malloc(sizeof(float) * (size_t)nq * d);
  for (int i = 0; i < nq; i++) { /* queries near random data points */
    const float *xi = x + (size_t)(uniform() * n) * d;
    for (int j = 0; j < d; j++) q[i * d + j] = xi[j] + 0.5f * gauss() / sqrtf((float)d);
    normalize(q + (size_t)i * d, d);
  }

  sqlite3 *db = open_db(path);
  char sql[256];
  const char *index = getenv("BENCH_INDEX");
  snprintf(sql, sizeof sql, "CREATE VIRTUAL TABLE t USING clip(dims=%d, index='%s', tag INTEGER)",
           d, index && *index ? index : "auto");
  check(sqlite3_exec(db, sql, NULL, NULL, NULL), db, "create");
  sqlite3_stmt *ins = NULL;
  check(sqlite3_prepare_v2(db, "INSERT INTO t(embedding, tag) VALUES(?, ?)", -1, &ins, NULL), db,
        "prepare");
  double t0 = now();
  check(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), db, "begin");
  for (int64_t i = 0; i < n; i++) {
    sqlite3_bind_blob(ins, 1, x + (size_t)i * d, d * 4, SQLITE_STATIC);
    sqlite3_bind_int64(ins, 2, i % 10);
    check(sqlite3_step(ins), db, "insert");
    sqlite3_reset(ins);
  }
  double t1 = now();
  if (argc > 5 && strcmp(argv[5], "insert") == 0) {
    printf("insert: %.0f rows/s (inserts %.2f s)\n", n / (t1 - t0), t1 - t0);
    return 0;
  }
  check(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), db, "commit");
  double t2 = now();
  printf("insert: %.0f rows/s (inserts %.2f s), commit incl. training + snapshot %.2f s, "
         "overall %.0f rows/s\n",
         n / (t1 - t0), t1 - t0, t2 - t1, n / (t2 - t0));

  int64_t *truth = malloc(sizeof(int64_t) * 10 * (size_t)nq);
  for (int i = 0; i < nq; i++) exact_top10(x, n, d, q + (size_t)i * d, truth + 10 * i);

  /* FAISS through index/ivf.h: the very index the table committed (its snapshot pieces). */
  cdb_error err = {{0}};
  piece_reader r = {NULL};
  check(sqlite3_prepare_v2(db, "SELECT data FROM t_index ORDER BY piece", -1, &r.st, NULL), db,
        "prepare pieces");
  double f0 = now();
  cdb_index *idx = cdb_index_load(next_piece, &r, &err);
  sqlite3_finalize(r.st);
  if (!idx) { /* no snapshot (flat index): build one from the same vectors */
    cdb_index_params p = cdb_index_default_params();
    p.type = "flat";
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) ids[i] = i + 1;
    idx = cdb_index_new(d, &p, &err);
    if (!idx || cdb_index_add(idx, n, ids, x, &err) != 0) {
      fprintf(stderr, "index: %s\n", err.msg);
      return 1;
    }
    free(ids);
  }
  double f1 = now();
  cdb_index_info info;
  cdb_index_get_info(idx, &info);
  printf("faiss direct: loaded in %.2f s (%s, nlist %d, nprobe %d)\n", f1 - f0, info.factory,
         info.nlist, info.nprobe);

  /* SQL and FAISS alternate query by query, so load on a shared machine hits both alike. */
  sqlite3_stmt *knn = NULL;
  check(sqlite3_prepare_v2(db, "SELECT rowid, distance FROM t WHERE t MATCH ? AND k = 10", -1, &knn,
                           NULL),
        db, "prepare knn");
  double *lat = malloc(sizeof(double) * (size_t)nq), *flat_ = malloc(sizeof(double) * (size_t)nq);
  double *ratio = malloc(sizeof(double) * (size_t)nq);
  double rec = 0, frec = 0;
  for (int pass = 0; pass < 2; pass++) { /* pass 0 warms caches */
    rec = frec = 0;
    for (int i = 0; i < nq; i++) {
      int64_t got[10];
      float sims[10];
      int ng = 0;
      double s = now();
      sqlite3_bind_blob(knn, 1, q + (size_t)i * d, d * 4, SQLITE_STATIC);
      while (sqlite3_step(knn) == SQLITE_ROW && ng < 10) got[ng++] = sqlite3_column_int64(knn, 0);
      sqlite3_reset(knn);
      lat[i] = now() - s;
      rec += recall(got, ng, truth + 10 * i);
      s = now();
      cdb_index_search(idx, q + (size_t)i * d, 10, NULL, got, sims, &ng, &err);
      flat_[i] = now() - s;
      frec += recall(got, ng, truth + 10 * i);
      ratio[i] = lat[i] / flat_[i];
    }
  }
  qsort(ratio, (size_t)nq, sizeof *ratio, cmp_double);
  printf("per-query latency ratio SQL / FAISS: median %.3f\n", ratio[nq / 2]);
  free(ratio);
  report("SQL  MATCH k=10", lat, nq, rec / nq);
  report("FAISS cdb_index_search k=10", flat_, nq, frec / nq);
  free(flat_);
  cdb_index_free(idx);
  sqlite3_finalize(knn);

  /* Filtered SQL KNN: tag = 3 keeps 10% of the rows; then with an index on the column. */
  for (int with_index = 0; with_index < 2; with_index++) {
    if (with_index) {
      check(sqlite3_exec(db, "CREATE INDEX t_rows_tag ON t_rows(tag)", NULL, NULL, NULL), db,
            "create index");
    }
    sqlite3_stmt *fk = NULL;
    check(sqlite3_prepare_v2(db, "SELECT rowid FROM t WHERE t MATCH ? AND k = 10 AND tag = 3", -1,
                             &fk, NULL),
          db, "prepare filtered");
    for (int i = 0; i < nq; i++) {
      double s = now();
      sqlite3_bind_blob(fk, 1, q + (size_t)i * d, d * 4, SQLITE_STATIC);
      while (sqlite3_step(fk) == SQLITE_ROW) {
      }
      sqlite3_reset(fk);
      lat[i] = now() - s;
    }
    report(with_index ? "SQL  k=10 tag=3, indexed" : "SQL  k=10 tag=3 (10% rows)", lat, nq, NAN);
    sqlite3_finalize(fk);
  }
  sqlite3_close(db);

  /* Cold open: a new connection's first query loads the snapshot pieces (and writes the
   * cold-start cache file); the next new connection maps that file. */
  for (int pass = 0; pass < 2; pass++) {
    double c0 = now();
    db = open_db(path);
    check(sqlite3_prepare_v2(db, "SELECT rowid FROM t WHERE t MATCH ? AND k = 10", -1, &knn, NULL),
          db, "prepare");
    sqlite3_bind_blob(knn, 1, q, d * 4, SQLITE_STATIC);
    while (sqlite3_step(knn) == SQLITE_ROW) {
    }
    sqlite3_finalize(knn);
    printf("cold open + first query (%s): %.3f s\n",
           pass == 0 ? "from pieces, writes cache file" : "cache file mapped", now() - c0);
    sqlite3_close(db);
  }
  unlink(path);
  char cache[1024];
  snprintf(cache, sizeof cache, "%s-clip-t.idx", path);
  unlink(cache);
  free(x);
  free(q);
  free(truth);
  free(lat);
  return 0;
}
