/* clipdb.h: the SQLite extension's public API.
 *
 * Loaded dynamically (`.load clipdb`), the extension registers itself through its entry point
 * sqlite3_clipdb_init. Programs that link SQLite and the static library clipdb_sql call
 * clipdb_register on each connection instead (or pass it to sqlite3_auto_extension). */
#ifndef CLIPDB_H
#define CLIPDB_H

#include <sqlite3.h>

#define CLIPDB_VERSION "0.1.0" /* clip_version(), `clipdb --version` */

#ifdef __cplusplus
extern "C" {
#endif

/* Registers the clip_* SQL functions, the `clip` virtual table module and the clip_search
 * table-valued function on db. Returns SQLITE_OK, or an error code with *errmsg (when errmsg is
 * non-NULL) set to a message to be freed with sqlite3_free. */
int clipdb_register(sqlite3 *db, char **errmsg);

/* The encoder of embed/clip.h. */
typedef struct clip_model clip_model;

/* The model the clip table `table` embeds with ("schema.table", or a name resolved as SQL
 * resolves it), for a program that embeds outside SQL what it then writes to or searches in that
 * table. It is the model the table's own queries use, loaded once per process, and checked as
 * they check it: the identity stored with the table must be the one of the model now under its
 * model name (else the error names both and the way out). db must have clipdb registered.
 * Returns SQLITE_OK with *model retained (release it with clipdb_model_release before the
 * process ends; it outlives db), or an error code with *errmsg (when errmsg is non-NULL) set to a
 * message to be freed with sqlite3_free. */
int clipdb_table_model(sqlite3 *db, const char *table, clip_model **model, char **errmsg);
void clipdb_model_release(clip_model *model);

#ifdef __cplusplus
}
#endif

#endif
