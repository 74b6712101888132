/* db.h (cli-internal): the CLI's library database: where it lives, opening it with the clipdb
 * extension registered, and the `photos` table the CLI keeps (schema in docs/clipdb.1.md). */
#ifndef CLI_DB_H
#define CLI_DB_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "cli/cli.h"
#include "embed/clip.h"

#define CLI_TABLE "photos"
#define CLI_LOCAL_DB_NAME ".clipdb"

typedef struct cli_db {
  sqlite3 *db;
  char *path;       /* the database file, malloc'd */
  char *model;      /* the photos table's model name (as created), malloc'd */
  clip_model *clip; /* the table's model once cli_db_model loaded it (retained) */
  int lock_fd;      /* the writer lock file (PATH-index.lock), held while locked */
  bool locked;
  bool created; /* this open made the database file */
} cli_db;

/* --db, else LOCAL_DIR/.clipdb when local_dir is set (--local), else
 * $XDG_DATA_HOME/clipdb/library.db (~/.local/share/clipdb/library.db). malloc'd. */
char *cli_db_path(const cli_ctx *ctx, const char *local_dir);

/* Opens the database. create (for `index`, the only writer): take the library's writer lock
 * for the whole run (a second `index` is refused with a clear message), make the file (and its
 * folder) and the photos table when missing. Otherwise the library is opened read-only: nothing
 * is written, not even the journal mode, and a missing library is an error telling the user to
 * run `clipdb index`. Either way a database that is not a clipdb library is refused before
 * anything in it is changed. */
int cli_db_open(const cli_ctx *ctx, const char *local_dir, bool create, cli_db *out,
                cdb_error *err);
void cli_db_close(cli_db *db);

/* Closes db; a library this run created and that holds no photo is removed with its files
 * (-wal, -shm, the lock file), so a failed first `index` leaves nothing behind. */
void cli_db_close_discarding_empty(cli_db *db);

int cli_db_exec(cli_db *db, const char *sql, cdb_error *err);
int cli_db_prepare(cli_db *db, const char *sql, sqlite3_stmt **st, cdb_error *err);
/* Fills err from the connection's last error, prefixed with what was being done. -1. */
int cli_db_fail(cli_db *db, const char *what, cdb_error *err);

/* The photos table's model (clipdb_table_model: loaded once per process, its identity checked
 * against the library's), owned by db. */
int cli_db_model(cli_db *db, clip_model **model, cdb_error *err);

/* For embed, tokenize and classify: without --model, the library's model when there is a
 * library (opened read-only into db; its identity checked as for a search). *model is NULL
 * (and db closed) when there is none or --model was given: the caller loads the model that
 * --model, $CLIPDB_MODEL or the default names. */
int cli_db_library_model(const cli_ctx *ctx, cli_db *db, clip_model **model, cdb_error *err);

/* The library's model (db holds it), else the one --model / $CLIPDB_MODEL / the default names;
 * NULL after printing the error. Release with cli_unload_model. */
clip_model *cli_load_model(const cli_ctx *ctx, cli_db *db);
void cli_unload_model(clip_model *model, cli_db *db);

/* Embeds a text, or an image file or http(s) URL, with the table's model. *out is malloc'd (dim
 * floats, normalised). */
int cli_db_embed_text(cli_db *db, const char *text, float **out, int *dim, cdb_error *err);
int cli_db_embed_image_file(cli_db *db, const char *path, float **out, int *dim, cdb_error *err);

/* Embeds an image held in memory (its encoded bytes), as cli_db_embed_image_file. */
int cli_db_embed_image_buffer(cli_db *db, const void *buf, size_t len, float **out, int *dim,
                              cdb_error *err);

/* A stored photo's vector by path (0 found, 1 not indexed, -1 error). */
int cli_db_vector_of_path(cli_db *db, const char *path, float **out, int *dim, int64_t *rowid,
                          cdb_error *err);

/* Another matching moment of a video hit. */
typedef struct cli_moment {
  double t, score;
} cli_moment;

typedef struct cli_hit {
  int64_t rowid;
  char *path;
  double score; /* cosine similarity */
  char *date;   /* taken_at, else the file time; may be NULL */
  int width, height;
  double t;             /* a video frame: seconds from the start; a photo: -1 */
  cli_moment *moments;  /* a video's other matching frames, best first (cli_db_search_videos) */
  int n_moments;
} cli_hit;

typedef struct cli_search_opts {
  int k;
  const char *after, *before; /* dates "YYYY[-MM[-DD[ HH:MM[:SS]]]]" or NULL */
  double threshold;           /* keep score >= threshold; -INFINITY for all */
  int64_t exclude_rowid;      /* leave this row out (similar IMAGE), 0 for none */
  const char *folder;         /* only photos under this folder (absolute path), or NULL */
} cli_search_opts;

/* A query: a text, embedded by the table in the search statement itself (its model's identity
 * checked there), or a normalised vector of dim floats. */
typedef struct cli_query {
  const char *text;
  const float *vec;
  int dim;
} cli_query;

/* The k nearest rows (photos and video frames) to the query, best first; t is -1 (see
 * cli_db_search_videos for one hit per video). */
int cli_db_search(cli_db *db, const cli_query *q, const cli_search_opts *opts, cli_hit **hits,
                  int *n, cdb_error *err);
void cli_hits_free(cli_hit *hits, int n);

/* dedup's groups of near-duplicates (threshold: least cosine similarity) as its --json array. */
struct json_object;
int cli_dedup_groups(cli_db *db, double threshold, struct json_object **out, cdb_error *err);

/* classify: clip_classify_templates on db with model_dir as its default model; the JSON
 * [{"label","score"}, ...], most likely first, malloc'd (NULL with err set). */
char *cli_classify_sql(sqlite3 *db, const char *model_dir, const char *image, char **labels, int n,
                       const char *tmpl, cdb_error *err);

/* Checks a --after/--before value; 0 when it is a date prefix as above of a real day and time
 * (validated by GLib: 2021-02-29, month 13 or 24:00 are refused). */
int cli_check_date(const char *s);

#endif
