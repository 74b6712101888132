/* table.h: the state of one `clip` virtual table, shared by vtab.c (SQL interface) and store.c
 * (shadow tables and the in-memory index cache). Internal to sqlite-ext/. */
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
 * (vtab.c): images wait preprocessed (pixels), texts validated (a copy). A flush embeds each
 * kind in one encoder call. Every rowid appears at most once, and only rows written after the
 * latest savepoint began are ever queued (xSavepoint flushes), so any rollback drops them all. */
typedef struct pending_rows {
  int64_t *image_ids;
  float *pixels; /* n_images * cdbx_image_floats(model) */
  int n_images, cap_images;
  int64_t *text_ids;
  char **texts;  /* malloc'd copies */
  int n_texts, cap_texts;
} pending_rows;

struct cdbx_table {
  sqlite3_vtab base;
  sqlite3 *db;
  cdbx_conn *conn;
  struct cdbx_table *next_in_conn;
  char *schema;
  char *name;
  int n_user;
  char **user_names;
  char **user_types;

  /* From the config shadow table. */
  int dims;
  char *model_name;     /* "" = the default model; NULL = no model (dims= table) */
  char *model_identity; /* NULL when no model */
  char *index_type;
  int nlist, nprobe;
  int autotrain;
  int image_paths;      /* CREATE option: image may name a file or URL (the table is direct-only) */
  int64_t uid;          /* random id of this table (names its cold-start cache file) */

  clip_model *model; /* retained; loaded on first need */

  /* The cache: an index over the vectors, covering the change log up to cache_seq. */
  cdb_index *index;
  int stale;                /* rebuild from the shadow tables before next use */
  int64_t cache_seq;        /* highest change-log seq reflected in the cache */
  int64_t generation;       /* config generation the cache was loaded at */
  int64_t data_version;     /* PRAGMA data_version at the last check */
  int64_t log_since_snapshot;
  uint64_t file_tag;        /* cold-start cache file tag of the state the cache was loaded at */
  uint64_t bad_file_tag;    /* a cache file with this tag failed its checksums: not used */
  id_list pend_removes;      /* removals not yet handed to the index (batched) */
  id_list pend_ids;          /* additions not yet handed to the index (batched, after removals) */
  float *pend_vecs;
  int64_t pend_cap;

  /* Transaction state: rows changed since BEGIN and per-savepoint marks into that list. */
  int in_txn;
  int version_checked;
  int command_in_txn;
  id_list touched;
  int64_t *sp_marks;   /* sp_marks[i]: touched.n when savepoint i began */
  int64_t *sp_seq;     /* sp_seq[i]: cache_seq when savepoint i began */
  int n_sp, cap_sp;
  int64_t begin_seq;
  id_list resync;       /* rows to re-read from the tables (after a rollback) */

  pending_rows pending;
  int64_t embed_batches; /* encoder calls for this table's rows on this connection */
  int64_t embedded_rows; /* rows those calls embedded */

  sqlite3_stmt *stmts[ST_COUNT];

  /* Query planning (vtab.c): the column of the OR term whose disjuncts SQLite is planning one
   * by one after a KNN plan (CDBX_NO_COLUMN: none yet). */
  int or_column;
};

#define CDBX_NO_COLUMN (-2)

/* store.c */
int cdbx_store_create(cdbx_table *t, char **errmsg);
int cdbx_store_read_config(cdbx_table *t, char **errmsg);
int cdbx_store_drop(cdbx_table *t);
int cdbx_store_rename(cdbx_table *t, const char *new_name);
void cdbx_store_finalize(cdbx_table *t);
void cdbx_cache_file_remove(cdbx_table *t);
sqlite3_stmt *cdbx_stmt(cdbx_table *t, int which);

/* Brings the cache up to date with the tables (another connection's commits, rollbacks). */
int cdbx_cache_fresh(cdbx_table *t);
/* The index's state (kind, factory, nlist, nprobe, count), with the cache brought up to date. */
int cdbx_table_index_info(cdbx_table *t, cdb_index_info *info);
/* Adds/replaces and removes rows in the cache; the tables are written by the caller. */
int cdbx_cache_put(cdbx_table *t, int64_t rowid, const float *vec);
int cdbx_cache_remove(cdbx_table *t, int64_t rowid);
int cdbx_cache_flush(cdbx_table *t);
int cdbx_cache_rollback_flush(cdbx_table *t); /* runs no SQL: for xRollback / xRollbackTo */
void cdbx_cache_drop(cdbx_table *t);
/* Searches of the cache (cdb_index_search / cdb_index_range_search); one that meets a damaged
 * cache file discards it, rebuilds the cache from the tables and searches again. */
int cdbx_cache_search(cdbx_table *t, const float *query, int k, const cdb_search_opts *opts,
                      int64_t *ids, float *sims, int *n_found);
int cdbx_cache_range_search(cdbx_table *t, const float *query, float min_sim,
                            const cdb_search_opts *opts, int64_t **ids, float **sims,
                            int64_t *n_found);
/* Records a change of rowid's vector in the log (same transaction) and in `touched`. */
int cdbx_log_change(cdbx_table *t, int64_t rowid, int op);
int cdbx_touch(cdbx_table *t, int64_t rowid);
int cdbx_id_list_push(id_list *l, int64_t id);

/* vtab.c: embeds the queued rows and writes their vectors (before anything reads vectors). */
int cdbx_pending_flush(cdbx_table *t);
/* vtab.c, for 'rebuild': rows that lost their vector (deleted from T_vectors behind the table's
 * back) are embedded again from their stored image or text; one that cannot be is an error. */
int cdbx_reembed_missing(cdbx_table *t);

/* Commands and commit-time maintenance. */
int cdbx_command(cdbx_table *t, const char *cmd);
int cdbx_maintain(cdbx_table *t);

/* Sets the table's error message (printf style) and returns SQLITE_ERROR. */
int cdbx_table_error(cdbx_table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
