/* commands.c: the table's commands, run by INSERT INTO t(t) VALUES('<command>'): 'train',
 * 'rebuild', 'optimize' and 'integrity-check', and the maintenance done at every commit
 * (automatic training, a new snapshot when the change log grows long).
 * Owns no state of its own (marks the table's transaction as having run a command).
 * Calls down into queue.c (embedding queued rows, re-embedding for 'rebuild'), cache.c (index
 * operations) and store.c (checks of the shadow tables); called by vtab.c and functions.c. */
#include <math.h>
#include <string.h>

#include "sqlite-ext/table.h"
#include "src/vec.h"

int cdbx_maintain(cdbx_table *t) {
  if (!cdbx_cache_in_use(t)) return SQLITE_OK;
  int rc = cdbx_cache_flush(t);
  if (rc != SQLITE_OK) return rc;
  if (t->autotrain && cdbx_cache_wants_training(t)) {
    rc = cdbx_cache_train(t);
    return rc == SQLITE_OK ? cdbx_cache_compact(t) : rc;
  }
  return cdbx_cache_log_is_long(t) ? cdbx_cache_compact(t) : SQLITE_OK;
}

static int check_vector(cdbx_table *t, void *ctx, int64_t rowid, const float *v, int bytes) {
  if (bytes != t->dims * 4 || !v) {
    return cdbx_table_error(t, "row %lld: vector has %d bytes, expected %d", (long long)rowid,
                            bytes, t->dims * 4);
  }
  if (!cdb_vec_is_unit(v, (size_t)t->dims)) {
    return cdbx_table_error(t, "row %lld: vector is not normalised (squared norm %g)",
                            (long long)rowid, cdb_vec_dot(v, v, (size_t)t->dims));
  }
  (*(int64_t *)ctx)++;
  return SQLITE_OK;
}

/* Every stored vector has the table's size and unit length; *n_vectors counts them. */
static int check_vectors(cdbx_table *t, int64_t *n_vectors) {
  *n_vectors = 0;
  return cdbx_store_scan_vectors(t, "reading vectors", check_vector, n_vectors);
}

static int integrity_check(cdbx_table *t) {
  int64_t orphans = 0, missing = 0, n_vectors = 0;
  int rc = cdbx_store_count_unpaired(t, &missing, &orphans);
  if (rc == SQLITE_OK && (missing || orphans)) {
    rc = cdbx_table_error(t, "%lld rows without a vector, %lld vectors without a row",
                          (long long)missing, (long long)orphans);
  }
  if (rc == SQLITE_OK) rc = check_vectors(t, &n_vectors);
  if (rc == SQLITE_OK) rc = cdbx_cache_check(t, n_vectors);
  if (rc != SQLITE_OK) {
    char *msg = sqlite3_mprintf("clip: integrity-check of %s failed: %s", t->name,
                                t->base.zErrMsg ? t->base.zErrMsg : sqlite3_errmsg(t->db));
    sqlite3_free(t->base.zErrMsg);
    t->base.zErrMsg = msg;
    cdbx_cache_invalidate(t);
    return SQLITE_CORRUPT_VTAB;
  }
  return SQLITE_OK;
}

/* Repairs damage done behind the table's back: rows whose vector was deleted from T_vectors
 * are embedded again (all checked before anything is written), vectors whose row was deleted
 * from T_rows go; then the index is rebuilt from the vectors. Under a model name that now loads
 * a model of another identity, every row is embedded again with it first. */
static int rebuild(cdbx_table *t) {
  int adopted = 0;
  int rc = cdbx_reembed_for_new_model(t, &adopted);
  if (rc == SQLITE_OK && !adopted) rc = cdbx_reembed_missing(t);
  if (rc == SQLITE_OK) rc = cdbx_store_delete_orphan_vectors(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_reload_from_vectors(t);
  if (rc == SQLITE_OK && cdbx_cache_wants_training(t)) rc = cdbx_cache_train(t);
  return rc == SQLITE_OK ? cdbx_cache_compact(t) : rc;
}

static int train_or_optimize(cdbx_table *t, const char *cmd) {
  int rc = cdbx_cache_fresh(t);
  int trainable = sqlite3_stricmp(t->index_type, "flat") != 0; /* flat: nothing to train */
  if (rc == SQLITE_OK && trainable && (cmd[0] == 't' || cdbx_cache_wants_training(t)))
    rc = cdbx_cache_train(t);
  else if (rc == SQLITE_OK && cmd[0] == 'o' && cdbx_cache_needs_rebalance(t))
    rc = cdbx_cache_rebalance(t);
  return rc == SQLITE_OK ? cdbx_cache_compact(t) : rc;
}

/* The index's state (kind, factory, nlist, nprobe, count), queued rows embedded first and the
 * cache brought up to date. */
int cdbx_table_index_info(cdbx_table *t, cdb_index_info *info) {
  int rc = cdbx_pending_flush(t);
  if (rc == SQLITE_OK) rc = cdbx_cache_info(t, info);
  return rc;
}

int cdbx_command(cdbx_table *t, const char *cmd) {
  t->txn.command_in_txn = 1;
  if (strcmp(cmd, "integrity-check") == 0) return integrity_check(t);
  if (strcmp(cmd, "rebuild") == 0) return rebuild(t);
  if (strcmp(cmd, "train") == 0 || strcmp(cmd, "optimize") == 0) return train_or_optimize(t, cmd);
  return cdbx_table_error(t,
                          "clip: unknown command \"%s\" (expected 'train', 'rebuild', "
                          "'optimize' or 'integrity-check')",
                          cmd);
}
