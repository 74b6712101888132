/* table.h: the state of one `clip` virtual table and the calls between the files that implement
 * it (vtab.c, options.c, commands.c, queue.c, cache.c, store.c). Internal to sqlite-ext/. */
#ifndef CLIPDB_TABLE_H
#define CLIPDB_TABLE_H

#include "sqlite-ext/internal.h"

#define CDBX_MAX_USER_COLUMNS 64

/* Declared column order: image, text, embedding, user columns, then the hidden ones. */
enum { COL_IMAGE = 0, COL_TEXT = 1, COL_EMBEDDING = 2, COL_USER0 = 3 };
#define COL_DISTANCE(t) (COL_USER0 + (t)->n_user)
#define COL_K(t) (COL_USER0 + (t)->n_user + 1)
#define COL_NPROBE(t) (COL_USER0 + (t)->n_user + 2)
#define COL_COMMAND(t) (COL_USER0 + (t)->n_user + 3)

enum {
  ST_INSERT_ROW,
  ST_UPDATE_ROW,
  ST_MOVE_ROW,
  ST_MOVE_VECTOR,
  ST_DELETE_ROW,
  ST_ROW_EXISTS,
  ST_PUT_VECTOR,
  ST_GET_VECTOR,
  ST_DELETE_VECTOR,
  ST_LOG_CHANGE,
  ST_DATA_VERSION,
  ST_CONFIG_GET,
  ST_CONFIG_SET,
  ST_COUNT
};

typedef struct id_list {
  int64_t *ids;
  int64_t n, cap;
} id_list;

/* Rows written in the current transaction whose vector the encoder has not computed yet
 * (queue.c): images wait preprocessed (pixels), texts validated (a copy). A flush embeds each
 * kind in one encoder call. Every rowid appears at most once, and only rows written after the
 * latest savepoint began are ever queued (xSavepoint flushes), so any rollback drops them all. */
typedef struct pending_rows {
  int64_t *image_ids;
  float *pixels; /* n_images * cdbx_image_floats(model) */
  int n_images, cap_images;
  int64_t *text_ids;
  char **texts; /* malloc'd copies */
  int n_texts, cap_texts;
} pending_rows;

/* The in-memory index cache (cache.c): an index over the vectors, covering the change log up to
 * cache_seq, with changes batched before they reach FAISS. */
typedef struct table_cache {
  cdb_index *index;
  int stale;            /* rebuild from the shadow tables before next use */
  int64_t cache_seq;    /* highest change-log seq reflected in the cache */
  int64_t generation;   /* config generation the cache was loaded at */
  int64_t data_version; /* PRAGMA data_version at the last check */
  int64_t log_since_snapshot;
  uint64_t file_tag;     /* cold-start cache file tag of the state the cache was loaded at */
  uint64_t bad_file_tag; /* a cache file with this tag failed its checksums: not used */
  int file_at_commit;    /* the index equals the snapshot this transaction wrote */
  id_list pend_removes;  /* removals not yet handed to the index (batched) */
  id_list pend_ids;      /* additions not yet handed to the index (batched, after removals) */
  float *pend_vecs;
  int64_t pend_cap;
  id_list resync; /* rows to re-read from the tables (after a rollback) */
} table_cache;

/* Transaction state (vtab.c's transaction hooks; cdbx_touch in cache.c records rows): rows
 * changed since BEGIN and per-savepoint marks into that list. */
typedef struct table_txn {
  int in_txn;
  int version_checked;
  int command_in_txn;
  id_list touched;
  int64_t *sp_marks; /* sp_marks[i]: touched.n when savepoint i began */
  int64_t *sp_seq;   /* sp_seq[i]: cache_seq when savepoint i began */
  int n_sp, cap_sp;
  int64_t begin_seq;
} table_txn;

/* The embedding queue and the model it embeds with (queue.c). */
typedef struct table_queue {
  clip_model *model; /* retained; loaded on first need (or chosen at CREATE by options.c) */
  /* The model's identity, sqlite3_malloc'd, to be written into T_config by the next commit
   * that writes the table, since T_config holds its legacy form; NULL when none. */
  char *identity_pending;
  int model_adopted; /* 'rebuild' moved the table to a new model in this transaction */
  pending_rows pending;
  int64_t embed_batches; /* encoder calls for this table's rows on this connection */
  int64_t embedded_rows; /* rows those calls embedded */
} table_queue;

struct cdbx_table {
  sqlite3_vtab base; /* vtab.c: the module's handle and the connection's list of tables */
  sqlite3 *db;
  cdbx_conn *conn;
  struct cdbx_table *next_in_conn;
  char *schema;
  char *name;

  /* The table's definition, fixed once xCreate / xConnect returns: user columns and CREATE
   * options (options.c), and the values kept in T_config (store.c writes them at CREATE and
   * reads them at connect). */
  int n_user;
  char **user_names;
  char **user_types;
  int dims;
  char *model_name;     /* "" = the default model; NULL = no model (dims= table) */
  char *model_identity; /* NULL when no model */
  char *index_type;
  int nlist, nprobe;
  int autotrain;
  int image_paths; /* CREATE option: image may name a file or URL (the table is direct-only) */
  int64_t uid;     /* random id of this table (names its cold-start cache file) */

  table_queue queue;
  table_cache cache;
  table_txn txn;
  sqlite3_stmt *stmts[ST_COUNT]; /* store.c: prepared statements on the shadow tables */

  /* Query planning (plan.c): the column of the OR term whose disjuncts SQLite is planning one
   * by one after a KNN plan (CDBX_NO_COLUMN: none yet). */
  int or_column;
};

#define CDBX_NO_COLUMN (-2)

/* Each file below calls only the files listed after it (and encoder.c, vec.c, embed/, index/):
 * vtab.c -> commands.c -> queue.c -> cache.c -> store.c; plan.c and options.c are called by
 * vtab.c only. */

/* ---- plan.c ---- */
/* idxNum: the kind of plan (idxStr's grammar is in plan.c and ARCHITECTURE.md). */
typedef enum plan_kind { PLAN_SCAN = 0, PLAN_KNN = 1 } plan_kind;

/* A query's parts, read from its plan at xFilter (NULL values: not constrained). */
typedef struct query_parts {
  sqlite3_value *match, *k, *nprobe, *limit, *offset, *distance;
  int distance_le;       /* the distance bound is <= (else <) */
  sqlite3_str *where;    /* " AND ..." conditions on the stored columns (for T_rows) */
  sqlite3_value **binds; /* values for the ?s in where, in order */
  int n_binds, cap_binds;
  unsigned char *owned; /* owned[i]: binds[i] is a copy to free (IN list values) */
} query_parts;

/* xBestIndex: chooses the plan and writes it into info (idxNum, idxStr, costs). */
int cdbx_plan_best_index(cdbx_table *t, sqlite3_index_info *info);
/* xFilter: reads idxStr's entries against argv into q (an error when they do not match). */
int cdbx_plan_parse(cdbx_table *t, const char *idx_str, int argc, sqlite3_value **argv,
                    query_parts *q);
void cdbx_plan_parts_free(query_parts *q);

/* ---- options.c ---- */
/* Parses and checks the CREATE arguments into t (at CREATE also the model, dims and index
 * parameters; at connect those come from T_config) and declares the table to SQLite. */
int cdbx_options_apply(cdbx_table *t, int argc, const char *const *argv, int create, char **errmsg);
/* Why `name` cannot name this clip table (it is also one of its column names), or NULL. */
char *cdbx_table_name_error(const cdbx_table *t, const char *name);

/* ---- commands.c ---- */
/* A command ('train', 'rebuild', 'optimize', 'integrity-check') and commit-time maintenance. */
int cdbx_command(cdbx_table *t, const char *cmd);
int cdbx_maintain(cdbx_table *t);
/* The index's state (kind, factory, nlist, nprobe, count): queued rows embedded first, the
 * cache brought up to date. */
int cdbx_table_index_info(cdbx_table *t, cdb_index_info *info);

/* ---- queue.c ---- */
/* The model this table embeds with, loaded on first need and checked against the table; NULL
 * (with the table's error set) for a dims= table or a model whose identity changed. */
clip_model *cdbx_table_model(cdbx_table *t);
/* A legacy identity's upgrade is written into T_config at xSync and adopted at xCommit; a
 * rollback after 'rebuild' moved the table to a new model drops the model, so its next use
 * reads the identity T_config holds again. */
int cdbx_table_model_sync(cdbx_table *t);
void cdbx_table_model_commit(cdbx_table *t);
void cdbx_table_model_rollback(cdbx_table *t);
/* The writes of xUpdate; cols points at the declared columns (argv + 2). */
int cdbx_row_insert(cdbx_table *t, sqlite3_value *rowid_v, sqlite3_value **cols,
                    sqlite3_int64 *out_rowid);
int cdbx_row_update(cdbx_table *t, sqlite3_value *old_v, sqlite3_value *new_v,
                    sqlite3_value **cols);
int cdbx_row_delete(cdbx_table *t, sqlite3_value *rowid_v);
/* Embeds the queued rows and writes their vectors (before anything reads vectors). */
int cdbx_pending_flush(cdbx_table *t);
int cdbx_pending_has(const cdbx_table *t, int64_t rowid);
/* Discards the queue without embedding (its rows were rolled back); free also drops buffers. */
void cdbx_pending_clear(cdbx_table *t);
void cdbx_pending_free(cdbx_table *t);
/* For 'rebuild': rows that lost their vector (deleted from T_vectors behind the table's back)
 * are embedded again from their stored image or text; one that cannot be is an error. */
int cdbx_reembed_missing(cdbx_table *t);
/* For 'rebuild' under a model whose identity is not the table's: every row embedded again with
 * it (*adopted set); nothing when the model matches. */
int cdbx_reembed_for_new_model(cdbx_table *t, int *adopted);

/* ---- cache.c ---- */
/* Brings the cache up to date with the tables (another connection's commits, rollbacks). */
int cdbx_cache_fresh(cdbx_table *t);
int cdbx_cache_info(cdbx_table *t, cdb_index_info *info);
/* Adds/replaces and removes rows in the cache; the tables are written by the caller. */
int cdbx_cache_put(cdbx_table *t, int64_t rowid, const float *vec);
int cdbx_cache_remove(cdbx_table *t, int64_t rowid);
int cdbx_cache_flush(cdbx_table *t);
int cdbx_cache_rollback_flush(cdbx_table *t); /* runs no SQL: for xRollback / xRollbackTo */
void cdbx_cache_drop(cdbx_table *t);
void cdbx_cache_file_remove(cdbx_table *t);
/* Searches of the cache (cdb_index_search / cdb_index_range_search); one that meets a damaged
 * cache file discards it, rebuilds the cache from the tables and searches again. A filter whose
 * max_allow ran out makes them return CDBX_FILTER_SPENT (no SQLite code is negative). */
#define CDBX_FILTER_SPENT (-1)
int cdbx_cache_search(cdbx_table *t, const float *query, int k, const cdb_search_opts *opts,
                      int64_t *ids, float *sims, int *n_found);
int cdbx_cache_range_search(cdbx_table *t, const float *query, float min_sim,
                            const cdb_search_opts *opts, int64_t **ids, float **sims,
                            int64_t *n_found);
/* Records a change of rowid's vector in the log (same transaction) and in `touched`. */
int cdbx_log_change(cdbx_table *t, int64_t rowid, int op);
int cdbx_touch(cdbx_table *t, int64_t rowid);
/* The index operations of the commands: training, rebalancing the lists, writing a snapshot
 * (T_index, the log truncated before it) and reloading from T_vectors. */
int cdbx_cache_train(cdbx_table *t);
int cdbx_cache_rebalance(cdbx_table *t);
int cdbx_cache_compact(cdbx_table *t);
/* At xCommit: the cache file of the snapshot the transaction wrote, when the index still equals
 * it (best effort; the commit is done, so only committed state is written). */
void cdbx_cache_after_commit(cdbx_table *t);
int cdbx_cache_reload_from_vectors(cdbx_table *t);
int cdbx_cache_wants_training(const cdbx_table *t);
int cdbx_cache_needs_rebalance(const cdbx_table *t);
int cdbx_cache_log_is_long(const cdbx_table *t);
int cdbx_cache_in_use(const cdbx_table *t);
void cdbx_cache_invalidate(cdbx_table *t);
/* For integrity-check: the cache in every form it takes (in memory, rebuilt from the tables,
 * the cache file) against the n_vectors rows of T_vectors. */
int cdbx_cache_check(cdbx_table *t, int64_t n_vectors);

/* ---- store.c: every SQL statement on the shadow tables ---- */
int cdbx_store_create(cdbx_table *t, char **errmsg);
int cdbx_store_read_config(cdbx_table *t, char **errmsg);
int cdbx_store_drop(cdbx_table *t);
int cdbx_store_rename(cdbx_table *t, const char *new_name);
void cdbx_store_finalize(cdbx_table *t);
sqlite3_stmt *cdbx_stmt(cdbx_table *t, int which);
/* Whether T_<suffix> is one of the shadow tables (xShadowName). */
int cdbx_store_is_shadow_name(const char *suffix);
/* Reads of T_rows: the rows a query's filters select (`where` is " AND ..." on the declared
 * column names; all stored columns, or rowids only), one row's stored columns (rowid bound to
 * ?1), the image and text a row was embedded from, the rows that have no vector. */
int cdbx_store_prepare_rows(cdbx_table *t, int all_columns, const char *where, sqlite3_stmt **out);
/* 1 when SQLite would read every row of T_rows to list those that meet `where` (its query plan
 * has no rowid range or index for them), else 0. */
int cdbx_store_rows_scan_all(cdbx_table *t, const char *where);
/* A row (rowid bound to ?1) that meets `where` (as above, its values bound from ?2 on) yields
 * one row. */
int cdbx_store_prepare_row_check(cdbx_table *t, const char *where, sqlite3_stmt **out);
int cdbx_store_prepare_row_lookup(cdbx_table *t, sqlite3_stmt **out);
int cdbx_store_row_source(cdbx_table *t, int64_t rowid, sqlite3_value **image,
                          sqlite3_value **text);
int cdbx_store_rows_without_vector(cdbx_table *t, id_list *ids);
int cdbx_store_all_row_ids(cdbx_table *t, id_list *ids);
/* The identity of the model the table's vectors come from, in T_config: written, or read back
 * into t->model_identity. */
int cdbx_store_set_model_identity(cdbx_table *t, const char *identity);
int cdbx_store_read_model_identity(cdbx_table *t);
/* The vision-tower precision (clip_model_precision) of the images' vectors, in T_config:
 * noting one keeps it when it is the first or the same, and makes it "mixed" when it differs.
 * Reading gives a sqlite3_malloc'd copy, NULL when no image was embedded yet. */
int cdbx_store_note_precision(cdbx_table *t, const char *precision);
int cdbx_store_read_precision(cdbx_table *t, char **precision);
/* Vectors: one row's (*found = 0 when it has none; vec gets dims floats), or each in turn. */
int cdbx_store_read_vector(cdbx_table *t, int64_t rowid, float *vec, int *found);
typedef int (*cdbx_vector_fn)(cdbx_table *t, void *ctx, int64_t rowid, const float *v, int bytes);
int cdbx_store_scan_vectors(cdbx_table *t, const char *what, cdbx_vector_fn fn, void *ctx);
/* The change log: append (op 1 = put, 2 = delete; *seq gets its seq), rows changed after a seq,
 * the last seq, the entries after a seq. */
int cdbx_store_append_log(cdbx_table *t, int64_t rowid, int op, int64_t *seq);
int cdbx_store_changed_ids(cdbx_table *t, int64_t after, id_list *ids);
int cdbx_store_log_end(cdbx_table *t, int64_t *end);
int cdbx_store_log_count_after(cdbx_table *t, int64_t after, int64_t *n);
/* The snapshot (T_index) and the config that versions it. NULL from read_snapshot (not an
 * error) when it is missing or unusable. */
cdb_index *cdbx_store_read_snapshot(cdbx_table *t);
int cdbx_store_save_snapshot(cdbx_table *t, cdb_index *idx, int64_t snap, int64_t log_from,
                             int64_t generation, int64_t *snap_uid);
int cdbx_store_forget_snapshot(cdbx_table *t);
int cdbx_store_snapshot_state(cdbx_table *t, int64_t *gen, int64_t *snap, int64_t *snap_uid);
int cdbx_store_generation(cdbx_table *t, int64_t *gen);
int cdbx_store_data_version(cdbx_table *t, int64_t *out);
/* For integrity-check and rebuild: rows without a vector and vectors without a row. */
int cdbx_store_count_unpaired(cdbx_table *t, int64_t *missing, int64_t *orphans);
int cdbx_store_delete_orphan_vectors(cdbx_table *t);
int cdbx_id_list_push(id_list *l, int64_t id);
/* Sets the table's error message (printf style) and returns SQLITE_ERROR; cdbx_fail prefixes
 * the message with "clip: <table>: ", as almost every message of a table operation is. */
int cdbx_table_error(cdbx_table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cdbx_fail(cdbx_table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
