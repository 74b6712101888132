/* internal.h: declarations shared by the files of the SQLite extension (not a public header).
 *
 * extension.c  entry points, per-connection context, SQL usage documentation
 * encoder.c    process-wide model registry, per-connection model names, embedding SQL values
 * vec.c        float32 BLOB vectors: parsing, checking, normalising
 * functions.c  the clip_* scalar SQL functions
 * search.c     the clip_search table-valued function
 * The `clip` virtual table (state in table.h; each file calls only those listed after it):
 * vtab.c       the sqlite3_module methods: connect, cursors, update, transactions
 * plan.c       the query plan: idxStr written at xBestIndex, read back at xFilter
 * options.c    CREATE arguments: options, user columns, validation, the table declaration
 * commands.c   train, rebuild, optimize, integrity-check, commit-time maintenance
 * queue.c      row writes, the embedding queue, the table's model
 * cache.c      the in-memory index cache and its cold-start cache file
 * store.c      the shadow tables: every SQL statement on them */
#ifndef CLIPDB_INTERNAL_H
#define CLIPDB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef SQLITE_CORE
#include <sqlite3.h>
#else
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT3
#endif

#include "embed/clip.h"
#include "index/ivf.h"
#include "src/err.h"
#include "src/vec.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "clipdb stores vectors as host-order float32 and supports little-endian hosts only"
#endif

/* sqlite3_str_finish, but "" (allocated) rather than NULL for an empty string. */
static inline char *cdbx_str_finish(sqlite3_str *s) {
  int err = sqlite3_str_errcode(s);
  char *r = sqlite3_str_finish(s);
  return r || err != SQLITE_OK ? r : sqlite3_mprintf("");
}

/* ---- per-connection context (extension.c, encoder.c) ---- */

typedef struct cdbx_table cdbx_table;

typedef struct cdbx_model_entry {
  char *name;        /* as the user names it; "" is the default model */
  char *dir;         /* resolved directory; NULL until resolved */
  clip_model *model; /* retained from the registry; NULL until first use */
  int registered;    /* set by clip_model(name, path) */
  struct cdbx_model_entry *next;
} cdbx_model_entry;

typedef struct cdbx_conn {
  sqlite3 *db;
  cdbx_model_entry *models;
  cdbx_table *tables; /* open clip tables of this connection (for clip_search) */
  int refs;           /* registrations of the extension on db holding this context */
  struct cdbx_conn *next_conn;
} cdbx_conn;

/* ---- encoder.c ---- */

/* The process-wide registry: one clip_model per directory, refcounted. */
clip_model *cdbx_registry_acquire(const char *dir, cdb_error *err);
void cdbx_registry_retain(clip_model *model);
void cdbx_registry_release(clip_model *model);

/* The model a connection knows by `name` (NULL or "" = default: a model registered as
 * "default", else CLIPDB_MODEL or the cache). Owned by the connection; retain to keep it. */
clip_model *cdbx_conn_model(cdbx_conn *conn, const char *name, cdb_error *err);
int cdbx_conn_register_model(cdbx_conn *conn, const char *name, const char *path, clip_model **out,
                             cdb_error *err);
void cdbx_conn_free_models(cdbx_conn *conn);

/* Every encoder output is checked before use: a damaged model (NaN/huge weights) must give an
 * error, never a NaN vector. rows vectors of clip_model_dim floats. */
int cdbx_check_embeddings(const clip_model *model, const float *v, int rows, cdb_error *err);
/* Embeds one text (non-empty UTF-8) or one image given as a SQL value: BLOB bytes, or TEXT
 * naming a file or an http(s) URL. out gets clip_model_dim floats. */
int cdbx_embed_text(clip_model *model, const char *text, int len, float *out, cdb_error *err);
int cdbx_embed_image_value(clip_model *model, sqlite3_value *value, float *out, cdb_error *err);
/* The first half of cdbx_embed_image_value: fetch/read, decode and preprocess the image into
 * pixels[cdbx_image_floats(model)] (clip_embed_pixels input). Every user error surfaces here. */
int cdbx_image_value_pixels(clip_model *model, sqlite3_value *value, float *pixels, cdb_error *err);
size_t cdbx_image_floats(const clip_model *model);

/* ---- vec.c ---- */

/* A BLOB holding float32 values: *n gets the count. Errors for non-BLOBs, lengths that are not a
 * multiple of 4, empty blobs, NaN/Inf. `what` names the argument. Returns a malloc'd copy. */
float *cdbx_vec_from_value(sqlite3_value *value, const char *what, int *n, cdb_error *err);
int cdbx_vec_check_finite(const float *v, int n, const char *what, cdb_error *err);
/* Scales v to unit length (the one normalisation on the way to index/, which only checks);
 * -1 for the zero vector. */
int cdbx_vec_normalize(float *v, int n, const char *what, cdb_error *err);
/* True when the SQL value is a BLOB of exactly dims float32 values. */
int cdbx_value_is_vector(sqlite3_value *value, int dims);

/* ---- functions.c, vtab.c, search.c ---- */

int cdbx_register_functions(sqlite3 *db, cdbx_conn *conn);
const sqlite3_module *cdbx_vtab_module(void);
int cdbx_register_search(sqlite3 *db, cdbx_conn *conn);
/* video.c: the clip_video_frames table-valued function. */
int cdbx_register_video(sqlite3 *db, cdbx_conn *conn);

/* Open clip table of this connection by schema and name (case-insensitive), or NULL. */
cdbx_table *cdbx_conn_find_table(cdbx_conn *conn, const char *schema, const char *name);
/* The clip table a name given to a SQL function means, resolved as SQLite resolves table names
 * ("schema.table", or temp, main, then attached schemas in order), connecting it first when this
 * connection has not used it yet; NULL when that name is not a clip table. */
cdbx_table *cdbx_conn_open_table(sqlite3 *db, cdbx_conn *conn, const char *name);
int cdbx_table_user_columns(const cdbx_table *t, const char *const **names);
const char *cdbx_table_schema(const cdbx_table *t);
const char *cdbx_table_name(const cdbx_table *t);

#endif
