/* cache.c: the in-memory index cache of a clip table and its cold-start cache file.
 *
 * Consistency: T_vectors is the truth. The cache is (snapshot or bulk load of T_vectors) plus
 * the replay of T_changes after the seq it covers. Writes change the cache eagerly; a rollback
 * re-reads the rows touched since BEGIN (or the savepoint) from the tables. Before each use the
 * cache compares PRAGMA data_version: after another connection's commit it replays the log
 * entries after cache_seq, or reloads fully when the config generation moved (log truncated).
 * The snapshot is rewritten only on 'train'/'optimize'/'rebuild', after automatic training at
 * commit, or when the log grows large next to the index; a flat index needs no snapshot.
 * Owns: cdbx_table.cache (and appends to the transaction's list of touched rows). Runs no
 * SQL: calls down into store.c; called by queue.c, commands.c and vtab.c. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sqlite-ext/table.h"

#define PEND_BATCH 4096
#define LOG_COMPACT_MIN 20000

/* ---- the cache ---- */

static cdb_index_params index_params(const cdbx_table *t) {
  cdb_index_params p = cdb_index_default_params();
  p.type = t->index_type;
  p.nlist = t->nlist;
  p.nprobe = t->nprobe;
  return p;
}

void cdbx_cache_drop(cdbx_table *t) {
  cdb_index_free(t->cache.index);
  t->cache.index = NULL;
  t->cache.file_at_commit = 0;
  t->cache.pend_ids.n = 0;
  t->cache.pend_removes.n = 0;
  t->cache.resync.n = 0;
}

static int index_error(cdbx_table *t, const char *what, const cdb_error *err) {
  t->cache.stale = 1;
  return cdbx_fail(t, "%s: %s", what, err->msg);
}

static int ensure_intact(cdbx_table *t);

/* Pending changes go to the index in batches (FAISS removal costs a pass over the index, so one
 * pass per batch, not per row): removals first, then additions, which always came later. */
int cdbx_cache_flush(cdbx_table *t) {
  table_cache *c = &t->cache;
  cdb_error err = {{0}};
  int rc = c->pend_removes.n + c->pend_ids.n > 0 ? ensure_intact(t) : SQLITE_OK;
  if (c->index && c->pend_removes.n > 0 &&
      cdb_index_remove(c->index, c->pend_removes.n, c->pend_removes.ids, NULL, &err) != 0) {
    rc = index_error(t, "removing from the index", &err);
  }
  if (rc == SQLITE_OK && c->index && c->pend_ids.n > 0 &&
      cdb_index_add(c->index, c->pend_ids.n, c->pend_ids.ids, c->pend_vecs, &err) != 0) {
    rc = index_error(t, "adding to the index", &err);
  }
  c->pend_removes.n = 0;
  c->pend_ids.n = 0;
  return rc;
}

/* At ROLLBACK, where no SQL may run: an index still mapped from the cache file has taken no
 * write, so it is marked stale (the next use maps the file again and re-reads the log) instead
 * of being read into memory, which could find the file damaged and need a reload. */
int cdbx_cache_rollback_flush(cdbx_table *t) {
  t->cache.file_at_commit = 0;
  cdb_index_info info;
  if (t->cache.index) cdb_index_get_info(t->cache.index, &info);
  if (!t->cache.index || !info.mapped) return cdbx_cache_flush(t);
  t->cache.pend_ids.n = 0;
  t->cache.pend_removes.n = 0;
  t->cache.stale = 1;
  return SQLITE_OK;
}

/* Adds or replaces (the index keeps the last of repeated ids in one batch). */
int cdbx_cache_put(cdbx_table *t, int64_t rowid, const float *vec) {
  table_cache *c = &t->cache;
  if (!c->index) return SQLITE_OK;
  c->file_at_commit = 0;
  if (c->pend_ids.n == c->pend_cap) {
    int64_t cap = c->pend_cap ? c->pend_cap * 2 : 256;
    float *v = realloc(c->pend_vecs, sizeof(float) * (size_t)cap * (size_t)t->dims);
    if (!v) return SQLITE_NOMEM;
    c->pend_vecs = v;
    c->pend_cap = cap;
  }
  memcpy(c->pend_vecs + (size_t)c->pend_ids.n * t->dims, vec, sizeof(float) * (size_t)t->dims);
  int rc = cdbx_id_list_push(&c->pend_ids, rowid);
  if (rc == SQLITE_OK && c->pend_ids.n >= PEND_BATCH) rc = cdbx_cache_flush(t);
  return rc;
}

int cdbx_cache_remove(cdbx_table *t, int64_t rowid) {
  if (!t->cache.index) return SQLITE_OK;
  t->cache.file_at_commit = 0;
  int rc = t->cache.pend_ids.n > 0 ? cdbx_cache_flush(t) : SQLITE_OK;
  if (rc == SQLITE_OK) rc = cdbx_id_list_push(&t->cache.pend_removes, rowid);
  if (rc == SQLITE_OK && t->cache.pend_removes.n >= PEND_BATCH) rc = cdbx_cache_flush(t);
  return rc;
}

int cdbx_touch(cdbx_table *t, int64_t rowid) {
  return t->txn.in_txn ? cdbx_id_list_push(&t->txn.touched, rowid) : SQLITE_OK;
}

int cdbx_log_change(cdbx_table *t, int64_t rowid, int op) {
  int64_t seq = 0;
  int rc = cdbx_store_append_log(t, rowid, op, &seq);
  if (rc != SQLITE_OK) return rc;
  /* A gap (seq not next) is left for a later refresh to replay. */
  if (seq == t->cache.cache_seq + 1) t->cache.cache_seq = seq;
  t->cache.log_since_snapshot++;
  return SQLITE_OK;
}

/* Makes the cache agree with the tables for these rows. */
static int resync_ids(cdbx_table *t, const int64_t *ids, int64_t n) {
  float *vec = malloc(sizeof(float) * (size_t)t->dims);
  if (!vec) return SQLITE_NOMEM;
  int rc = cdbx_cache_flush(t);
  for (int64_t i = 0; rc == SQLITE_OK && i < n; i++) {
    int found = 0;
    rc = cdbx_store_read_vector(t, ids[i], vec, &found);
    if (rc == SQLITE_OK) rc = found ? cdbx_cache_put(t, ids[i], vec) : cdbx_cache_remove(t, ids[i]);
  }
  free(vec);
  return rc == SQLITE_OK ? cdbx_cache_flush(t) : rc;
}

/* Replays the change log after seq `from` into the cache; cache_seq becomes the log's end. */
static int replay_log(cdbx_table *t, int64_t from) {
  id_list ids = {0};
  int rc = cdbx_store_changed_ids(t, from, &ids);
  int64_t end = 0;
  if (rc == SQLITE_OK) rc = resync_ids(t, ids.ids, ids.n);
  free(ids.ids);
  if (rc == SQLITE_OK) rc = cdbx_store_log_end(t, &end);
  if (rc == SQLITE_OK && end > t->cache.cache_seq) t->cache.cache_seq = end;
  return rc;
}

static int put_stored_vector(cdbx_table *t, void *ctx, int64_t rowid, const float *v, int bytes) {
  (void)ctx;
  if (bytes != t->dims * 4) {
    return cdbx_fail(t, "stored vector of row %lld has %d bytes, not %d", (long long)rowid, bytes,
                     t->dims * 4);
  }
  return cdbx_cache_put(t, rowid, v);
}

static int bulk_load(cdbx_table *t) {
  int rc = cdbx_store_scan_vectors(t, "loading vectors", put_stored_vector, NULL);
  return rc == SQLITE_OK ? cdbx_cache_flush(t) : rc;
}

/* ---- cold-start cache file ----
 * Next to a database file (or in the user's cache folder, see cache_path), "<db>-clip-<table>.idx"
 * holds the snapshot as a memory-mappable
 * FAISS index (index/ivf.h), tagged with the table's uid, generation, snapshot seq and
 * snapshot uid. A new connection maps it instead of reading the T_index pieces: its first query
 * reads (and checksums) only the lists it probes. Missing, stale or damaged files are rebuilt
 * from the pieces; only committed state is ever written to it. */

/* Deserialized databases live in the "memdb" VFS under the made-up file name "x": no file. */
static int in_memory_vfs(cdbx_table *t) {
  sqlite3_vfs *vfs = NULL;
  if (sqlite3_file_control(t->db, t->schema, SQLITE_FCNTL_VFS_POINTER, &vfs) != SQLITE_OK || !vfs)
    return 1;
  return vfs->zName && strcmp(vfs->zName, "memdb") == 0;
}

/* "<db>-clip-<table>.idx" beside the database, or NULL (no file, an in-memory database, or
 * CLIPDB_INDEX_CACHE=0). */
static char *path_beside(cdbx_table *t, const char *db) {
  const char *off = getenv("CLIPDB_INDEX_CACHE");
  if (!db || !db[0] || !t->uid || (off && strcmp(off, "0") == 0) || in_memory_vfs(t)) return NULL;
  sqlite3_str *s = sqlite3_str_new(NULL);
  sqlite3_str_appendf(s, "%s-clip-", db);
  for (const unsigned char *p = (const unsigned char *)t->name; *p; p++) {
    if (isalnum(*p) || *p == '_' || *p == '-') sqlite3_str_appendchar(s, 1, (char)*p);
    else sqlite3_str_appendf(s, "%%%02x", *p);
  }
  sqlite3_str_appendall(s, ".idx");
  return sqlite3_str_finish(s);
}

static int folder_writable(const char *file) {
  const char *slash = strrchr(file, '/');
  if (!slash) return access(".", W_OK) == 0;
  char *dir = sqlite3_mprintf("%.*s", (int)(slash - file) + (slash == file), file);
  int ok = dir && access(dir, W_OK) == 0;
  sqlite3_free(dir);
  return ok;
}

/* The user's cache folder: $CLIPDB_CACHE_DIR, else $XDG_CACHE_HOME/clipdb, else
 * ~/.cache/clipdb (NULL when none can be named). */
static char *user_cache_dir(void) {
  const char *dir = getenv("CLIPDB_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME");
  const char *home = getenv("HOME");
  if (dir && dir[0]) return sqlite3_mprintf("%s", dir);
  if (xdg && xdg[0] == '/') return sqlite3_mprintf("%s/clipdb", xdg);
  return home && home[0] ? sqlite3_mprintf("%s/.cache/clipdb", home) : NULL;
}

/* In the user's cache folder, named by the database's identity (its real path, device and
 * inode: another file never shares the name) and the table: "<hash>-<table>.idx". */
static char *path_in_user_cache(const char *beside, const char *db) {
  struct stat st;
  char *real = realpath(db, NULL);
  char *dir = user_cache_dir();
  char *path = NULL;
  if (real && dir && stat(real, &st) == 0) {
    uint64_t h = 1469598103934665603ull;
    const uint64_t id[2] = {(uint64_t)st.st_dev, (uint64_t)st.st_ino};
    for (const unsigned char *p = (const unsigned char *)real; *p; p++)
      h = (h ^ *p) * 1099511628211ull;
    for (int i = 0; i < 2; i++) h = (h ^ id[i]) * 1099511628211ull;
    const char *suffix = beside + strlen(db) + strlen("-clip-");
    path = sqlite3_mprintf("%s/%016llx-%s", dir, (unsigned long long)h, suffix);
  }
  free(real);
  sqlite3_free(dir);
  return path;
}

/* Where the table's cache file lives: beside the database when it is there or that folder can
 * be written, else in the user's cache folder (so that a database in a read-only folder still
 * gets a fast cold start). */
static char *cache_path(cdbx_table *t) {
  const char *db = sqlite3_db_filename(t->db, t->schema);
  char *beside = path_beside(t, db);
  if (!beside || access(beside, F_OK) == 0 || folder_writable(db)) return beside;
  char *user = path_in_user_cache(beside, db);
  if (!user) return beside;
  sqlite3_free(beside);
  return user;
}

/* Creates the folder a cache file in the user's cache folder goes into (best effort). */
static void make_parent_folder(const char *path) {
  char *dir = sqlite3_mprintf("%s", path);
  for (char *p = dir ? dir + 1 : NULL; p && *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    mkdir(dir, 0700);
    *p = '/';
  }
  sqlite3_free(dir);
}

/* Unique per committed snapshot: snapshot_uid is drawn anew, in the writing transaction, for
 * every snapshot, so a rolled-back snapshot and the next one never share a tag. */
static uint64_t cache_tag(const cdbx_table *t, int64_t gen, int64_t snap, int64_t snap_uid) {
  uint64_t h = 1469598103934665603ull;
  const int64_t parts[4] = {t->uid, gen, snap, snap_uid};
  for (int i = 0; i < 4; i++) {
    h ^= (uint64_t)parts[i];
    h *= 1099511628211ull;
    h ^= h >> 29;
  }
  return h;
}

/* Whether the cache file at `path` may be written or removed. An open that is read-only by
 * choice (mode=ro, immutable=1, or a read-only connection to a file it could write) writes
 * nothing anywhere; a database read-only because its file cannot be written keeps its cache
 * in the user's cache folder. */
static int may_touch_file(cdbx_table *t, const char *path) {
  const char *db = sqlite3_db_filename(t->db, t->schema);
  const char *mode = sqlite3_uri_parameter(db, "mode");
  if (!path || sqlite3_uri_boolean(db, "immutable", 0) || (mode && strcmp(mode, "ro") == 0))
    return 0;
  if (sqlite3_db_readonly(t->db, t->schema) == 0) return 1;
  char *beside = path_beside(t, db);
  int in_user_cache = beside && strcmp(beside, path) != 0;
  sqlite3_free(beside);
  return in_user_cache && access(db, W_OK) != 0;
}

/* Only committed state reaches the cache file: what a connection reads outside a write
 * transaction is committed; inside one it may still be rolled back. */
static int may_write_cache_file(cdbx_table *t, const char *path) {
  if (!may_touch_file(t, path) || sqlite3_txn_state(t->db, t->schema) == SQLITE_TXN_WRITE)
    return 0;
  make_parent_folder(path);
  return 1;
}

void cdbx_cache_file_remove(cdbx_table *t) {
  char *path = cache_path(t);
  if (may_touch_file(t, path)) unlink(path);
  sqlite3_free(path);
}

enum { FROM_FILE_OR_PIECES, FROM_PIECES };

/* The snapshot, from the cache file when it is current (and not known damaged), else from the
 * pieces (then the cache file is rewritten, best effort, when committed state was read). */
static cdb_index *open_snapshot(cdbx_table *t, int source) {
  char *path = cache_path(t);
  cdb_error err = {{0}};
  int use_file = path && source == FROM_FILE_OR_PIECES &&
                 t->cache.file_tag != t->cache.bad_file_tag;
  cdb_index *idx = use_file ? cdb_index_open_file_mmap(path, t->cache.file_tag, &err) : NULL;
  if (idx && cdb_index_dim(idx) != t->dims) {
    cdb_index_free(idx);
    idx = NULL;
  }
  if (!idx) {
    idx = cdbx_store_read_snapshot(t);
    int replace = source == FROM_FILE_OR_PIECES || t->cache.bad_file_tag == t->cache.file_tag;
    if (idx && path && replace && may_write_cache_file(t, path) &&
        cdb_index_save_file(idx, path, t->cache.file_tag, &err) == 0) {
      t->cache.bad_file_tag = 0;
    }
  }
  sqlite3_free(path);
  return idx;
}

static int load_full_from(cdbx_table *t, int source) {
  cdbx_cache_drop(t);
  int64_t gen = 0, snap = -1, dv = 0, snap_uid = 0;
  int rc = cdbx_store_data_version(t, &dv);
  if (rc == SQLITE_OK) rc = cdbx_store_snapshot_state(t, &gen, &snap, &snap_uid);
  if (rc != SQLITE_OK) return rc;
  t->cache.file_tag = cache_tag(t, gen, snap, snap_uid);
  t->cache.index = snap >= 0 ? open_snapshot(t, source) : NULL;
  if (t->cache.index) {
    t->cache.cache_seq = snap;
    rc = replay_log(t, snap);
  } else {
    cdb_index_params p = index_params(t);
    cdb_error err = {{0}};
    t->cache.index = cdb_index_new(t->dims, &p, &err);
    if (!t->cache.index) return index_error(t, "creating the index", &err);
    rc = bulk_load(t);
    if (rc == SQLITE_OK) rc = cdbx_store_log_end(t, &t->cache.cache_seq);
  }
  if (rc == SQLITE_OK) rc = cdbx_store_log_count_after(t, snap, &t->cache.log_since_snapshot);
  if (rc != SQLITE_OK) {
    cdbx_cache_drop(t);
    return rc;
  }
  t->cache.generation = gen;
  t->cache.data_version = dv;
  t->cache.stale = 0;
  return SQLITE_OK;
}

static int load_full(cdbx_table *t) { return load_full_from(t, FROM_FILE_OR_PIECES); }

/* The cache file behind the (mapped) index failed a checksum: it is removed (never used again
 * by this connection if it cannot be) and the cache rebuilt from the tables. */
static int discard_damaged_file(cdbx_table *t) {
  t->cache.bad_file_tag = t->cache.file_tag;
  cdbx_cache_file_remove(t);
  return load_full_from(t, FROM_PIECES);
}

/* Before writing to an index mapped from the cache file, all of its lists are checked. */
static int ensure_intact(cdbx_table *t) {
  cdb_error err = {{0}};
  if (!t->cache.index || cdb_index_verify(t->cache.index, &err) == 0) return SQLITE_OK;
  return discard_damaged_file(t);
}

/* After a failed search: an index mapped from a damaged cache file is rebuilt from the tables
 * and the search retried once (SQLITE_OK); any other failure, or a second one, is the error. */
static int retry_after_damage(cdbx_table *t, const char *what, const cdb_error *err, int *retried) {
  if (*retried || !cdb_index_damaged(t->cache.index)) {
    return cdbx_fail(t, "%s: %s", what, err->msg);
  }
  *retried = 1;
  return discard_damaged_file(t);
}

/* Exact re-ranking of a compressed index's candidates reads their vectors from T_vectors. */
static int fetch_stored_vector(void *ctx, int64_t id, float *vec, cdb_error *err) {
  cdbx_table *t = ctx;
  int found = 0;
  if (cdbx_store_read_vector(t, id, vec, &found) != SQLITE_OK) {
    cdb_error_set(err, "%s", t->base.zErrMsg ? t->base.zErrMsg : "reading a vector");
    return -1;
  }
  return found;
}

static cdb_search_opts with_rerank(cdbx_table *t, const cdb_search_opts *opts) {
  cdb_search_opts o = opts ? *opts : (cdb_search_opts){0};
  o.fetch = fetch_stored_vector;
  o.fetch_ctx = t;
  return o;
}

int cdbx_cache_search(cdbx_table *t, const float *query, int k, const cdb_search_opts *opts,
                      int64_t *ids, float *sims, int *n_found) {
  cdb_error err = {{0}};
  int retried = 0, rc = SQLITE_OK, irc;
  cdb_search_opts o = with_rerank(t, opts);
  while (rc == SQLITE_OK &&
         (irc = cdb_index_search(t->cache.index, query, k, &o, ids, sims, n_found, &err)) != 0) {
    if (irc == CDB_INDEX_FILTER_SPENT) return CDBX_FILTER_SPENT;
    rc = retry_after_damage(t, "search", &err, &retried);
  }
  return rc;
}

int cdbx_cache_range_search(cdbx_table *t, const float *query, float min_sim,
                            const cdb_search_opts *opts, int64_t **ids, float **sims,
                            int64_t *n_found) {
  cdb_error err = {{0}};
  int retried = 0, rc = SQLITE_OK, irc;
  cdb_search_opts o = with_rerank(t, opts);
  while (rc == SQLITE_OK && (irc = cdb_index_range_search(t->cache.index, query, min_sim, &o, ids,
                                                          sims, n_found, &err)) != 0) {
    if (irc == CDB_INDEX_FILTER_SPENT) return CDBX_FILTER_SPENT;
    rc = retry_after_damage(t, "range search", &err, &retried);
  }
  return rc;
}

int cdbx_cache_fresh(cdbx_table *t) {
  if (!t->cache.index || t->cache.stale) return load_full(t);
  int rc = SQLITE_OK;
  if (t->cache.resync.n > 0) {
    rc = resync_ids(t, t->cache.resync.ids, t->cache.resync.n);
    t->cache.resync.n = 0;
    if (rc != SQLITE_OK) {
      t->cache.stale = 1;
      return rc;
    }
  }
  if (t->txn.in_txn && t->txn.version_checked) return SQLITE_OK;
  int64_t dv = 0, gen = 0;
  rc = cdbx_store_data_version(t, &dv);
  if (rc == SQLITE_OK && dv != t->cache.data_version) {
    rc = cdbx_store_generation(t, &gen);
    if (rc == SQLITE_OK)
      rc = gen != t->cache.generation ? load_full(t) : replay_log(t, t->cache.cache_seq);
    if (rc == SQLITE_OK) t->cache.data_version = dv;
  }
  if (rc == SQLITE_OK && t->txn.in_txn) t->txn.version_checked = 1;
  if (rc != SQLITE_OK) t->cache.stale = 1;
  return rc;
}

/* ---- snapshots and training ---- */

static int index_is_ivf(const cdbx_table *t) {
  cdb_index_info info;
  cdb_index_get_info(t->cache.index, &info);
  return strcmp(info.kind, "flat") != 0;
}

/* Writes the snapshot (IVF indexes; a flat one is rebuilt from T_vectors as fast as it loads),
 * truncates the log before it and bumps the generation so other connections reload. */
int cdbx_cache_compact(cdbx_table *t) {
  int rc = cdbx_cache_flush(t);
  if (rc == SQLITE_OK) rc = replay_log(t, t->cache.cache_seq);
  if (rc == SQLITE_OK) rc = ensure_intact(t);
  int ivf = rc == SQLITE_OK && index_is_ivf(t);
  int64_t snap = ivf ? t->cache.cache_seq : -1, snap_uid = 0; /* -1: no snapshot, load T_vectors */
  if (rc == SQLITE_OK) {
    rc = cdbx_store_save_snapshot(t, ivf ? t->cache.index : NULL, snap, t->cache.cache_seq,
                                  t->cache.generation + 1, &snap_uid);
  }
  if (rc == SQLITE_OK) {
    t->cache.generation++;
    t->cache.file_tag = cache_tag(t, t->cache.generation, snap, snap_uid);
    t->cache.log_since_snapshot = 0;
    t->cache.file_at_commit = ivf;
  }
  return rc;
}

/* Written after the commit rather than by the next process's first query, which would otherwise
 * read the whole snapshot (and T_vectors) before answering. */
void cdbx_cache_after_commit(cdbx_table *t) {
  table_cache *c = &t->cache;
  int current = c->file_at_commit && c->index && !c->stale && c->resync.n == 0 &&
                c->pend_ids.n == 0 && c->pend_removes.n == 0;
  c->file_at_commit = 0;
  char *path = current ? cache_path(t) : NULL;
  cdb_error err = {{0}};
  if (path && may_write_cache_file(t, path) &&
      cdb_index_save_file(c->index, path, c->file_tag, &err) == 0)
    c->bad_file_tag = 0;
  sqlite3_free(path);
}

/* Before the index is rebuilt from its own contents: pending changes applied, an index mapped
 * from a damaged cache file replaced by one read from the tables, and compressed codes set to be
 * re-encoded from the stored vectors rather than from the codes' approximations. */
static int ready_to_relist(cdbx_table *t) {
  int rc = cdbx_cache_flush(t);
  if (rc == SQLITE_OK) rc = ensure_intact(t);
  if (rc == SQLITE_OK && t->cache.index)
    cdb_index_set_vector_fetch(t->cache.index, fetch_stored_vector, t);
  return rc;
}

int cdbx_cache_train(cdbx_table *t) {
  int rc = ready_to_relist(t);
  cdb_error err = {{0}};
  if (rc == SQLITE_OK && cdb_index_train(t->cache.index, &err) != 0) {
    rc = index_error(t, "training the index", &err);
  }
  return rc;
}

/* Lists that no longer fit the vectors (most rows deleted, unbalanced): retrained for the
 * current size, or back to exact search when too few rows remain to train. */
int cdbx_cache_rebalance(cdbx_table *t) {
  int rc = ready_to_relist(t);
  cdb_error err = {{0}};
  if (rc == SQLITE_OK && cdb_index_rebalance(t->cache.index, &err) != 0) {
    rc = index_error(t, "rebalancing the index", &err);
  }
  return rc;
}

int cdbx_cache_wants_training(const cdbx_table *t) {
  return sqlite3_stricmp(t->index_type, "flat") != 0 && cdb_index_needs_training(t->cache.index);
}

/* ---- integrity-check: every form of the cache against T_vectors ---- */

typedef struct truth_check {
  cdbx_table *t;
  int exact; /* the index keeps vectors exactly (Flat): compare them too */
  float *vec;
  id_list seen;
} truth_check;

static int check_list_against_truth(void *ctx, size_t n, const int64_t *ids, const float *vecs,
                                    cdb_error *err) {
  truth_check *c = ctx;
  cdbx_table *t = c->t;
  for (size_t i = 0; i < n; i++) {
    int found = 0;
    if (cdbx_store_read_vector(t, ids[i], c->vec, &found) != SQLITE_OK)
      return cdb_error_set(err, "%s", t->base.zErrMsg ? t->base.zErrMsg : "reading a vector");
    if (!found) {
      return cdb_error_set(err, "it holds row %lld, which has no vector", (long long)ids[i]);
    }
    for (int j = 0; c->exact && j < t->dims; j++) {
      if (!(fabsf(vecs[i * (size_t)t->dims + j] - c->vec[j]) <= 1e-5f))
        return cdb_error_set(err, "its vector of row %lld differs from the stored one",
                             (long long)ids[i]);
    }
    if (cdbx_id_list_push(&c->seen, ids[i]) != SQLITE_OK) {
      return cdb_error_set(err, "out of memory");
    }
  }
  return 0;
}

static int cmp_id(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* The index must hold exactly the rows of T_vectors, each once (and, exact encodings, with the
 * same vector). `what` names the index in the message. */
static int compare_with_truth(cdbx_table *t, const char *what, int64_t n_vectors) {
  cdb_index_info info;
  cdb_index_get_info(t->cache.index, &info);
  size_t len = strlen(info.factory);
  truth_check c = {t,
                   len >= 5 && strcmp(info.factory + len - 5, ",Flat") == 0,
                   malloc(sizeof(float) * (size_t)t->dims),
                   {0}};
  cdb_error err = {{0}};
  int rc = c.vec ? SQLITE_OK : SQLITE_NOMEM;
  if (rc == SQLITE_OK && cdb_index_scan(t->cache.index, check_list_against_truth, &c, &err) != 0) {
    rc = cdbx_table_error(t, "%s: %s", what, err.msg);
  }
  if (rc == SQLITE_OK) qsort(c.seen.ids, (size_t)c.seen.n, sizeof(int64_t), cmp_id);
  for (int64_t i = 1; rc == SQLITE_OK && i < c.seen.n; i++) {
    if (c.seen.ids[i] == c.seen.ids[i - 1]) {
      rc = cdbx_table_error(t, "%s holds row %lld twice", what, (long long)c.seen.ids[i]);
    }
  }
  if (rc == SQLITE_OK && (c.seen.n != n_vectors || cdb_index_count(t->cache.index) != n_vectors)) {
    rc = cdbx_table_error(t, "%s holds %lld vectors, the table %lld", what, (long long)c.seen.n,
                          (long long)n_vectors);
  }
  free(c.vec);
  free(c.seen.ids);
  return rc;
}

/* The cache file of the current snapshot, when there is one (another tag, or a header that
 * cannot be read, is never used): all its checksums, then its content with the log replayed
 * against the truth. A damaged file is removed. */
static int check_cache_file(cdbx_table *t, int64_t n_vectors) {
  char *path = cache_path(t);
  uint64_t tag = 0;
  cdb_error err = {{0}};
  int current = path && cdb_index_file_generation(path, &tag, &err) == 0 &&
                tag == t->cache.file_tag;
  int rc = SQLITE_OK;
  cdb_index *file = NULL;
  if (current) {
    file = cdb_index_open_file_mmap(path, tag, &err);
    if (!file || cdb_index_verify(file, &err) != 0) {
      rc = cdbx_table_error(t, "the cache file is damaged: %s", err.msg);
    }
  }
  cdb_index_free(file);
  if (rc != SQLITE_OK) {
    t->cache.bad_file_tag = t->cache.file_tag;
    cdbx_cache_file_remove(t);
  } else if (current) {
    rc = load_full(t); /* maps the file just checked */
    if (rc == SQLITE_OK) rc = compare_with_truth(t, "the cache file", n_vectors);
  }
  sqlite3_free(path);
  return rc;
}

/* The cache against the truth (n_vectors rows in T_vectors): the index queries use now, then
 * the persisted state (snapshot + log, or the vectors), then the cache file: each must hold
 * exactly the rows. */
int cdbx_cache_check(cdbx_table *t, int64_t n_vectors) {
  int rc = cdbx_cache_fresh(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_flush(t);
  if (rc == SQLITE_OK) rc = compare_with_truth(t, "the in-memory index", n_vectors);
  if (rc != SQLITE_OK && t->cache.index && cdb_index_damaged(t->cache.index)) {
    discard_damaged_file(t); /* reported now; the next statement uses the rebuilt cache */
    return rc;
  }
  if (rc == SQLITE_OK) rc = load_full_from(t, FROM_PIECES);
  if (rc == SQLITE_OK) rc = compare_with_truth(t, "the index stored in the database", n_vectors);
  if (rc == SQLITE_OK) rc = check_cache_file(t, n_vectors);
  return rc;
}

/* Forgets the snapshot and loads the cache from T_vectors. */
int cdbx_cache_reload_from_vectors(cdbx_table *t) {
  int rc = cdbx_store_forget_snapshot(t);
  return rc == SQLITE_OK ? load_full(t) : rc;
}

/* Whether the cache is loaded and in use (commit-time maintenance has something to do). */
int cdbx_cache_in_use(const cdbx_table *t) { return t->cache.index && !t->cache.stale; }

/* Whether the change log has grown large next to the index: time for a new snapshot. */
int cdbx_cache_log_is_long(const cdbx_table *t) {
  return t->cache.log_since_snapshot > LOG_COMPACT_MIN &&
         t->cache.log_since_snapshot > cdb_index_count(t->cache.index) / 2;
}

/* Forces a rebuild from the shadow tables before the next use. */
void cdbx_cache_invalidate(cdbx_table *t) { t->cache.stale = 1; }

int cdbx_cache_needs_rebalance(const cdbx_table *t) {
  return cdb_index_needs_rebalance(t->cache.index);
}

/* The index's state (kind, factory, nlist, nprobe, count), with the cache brought up to date. */
int cdbx_cache_info(cdbx_table *t, cdb_index_info *info) {
  int rc = cdbx_cache_fresh(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_flush(t);
  if (rc == SQLITE_OK) cdb_index_get_info(t->cache.index, info);
  return rc;
}
