/* clipdb.h: the SQLite extension's public API (owned by sqlite-ext/).
 *
 * Loaded dynamically (`.load clipdb`), the extension registers itself through its entry point
 * sqlite3_clipdb_init: installed programs call sqlite3_load_extension(db, "clipdb",
 * CLIPDB_ENTRY_POINT, &errmsg) (`pkg-config --variable=extension clipdb` gives the full path).
 * Programs built in the source tree that link SQLite and the static library clipdb_sql call
 * clipdb_register on each connection instead (or pass it to sqlite3_auto_extension). */
#ifndef CLIPDB_H
#define CLIPDB_H

#include <sqlite3.h>

/* The prompt clip_classify (and `clipdb classify`) fills with each label. */
#define CLIPDB_CLASSIFY_TEMPLATE "a photo of a {}."
/* The installed extension's entry point (its name follows SQLite's rule for "clipdb.so"). */
#define CLIPDB_ENTRY_POINT "sqlite3_clipdb_init"

#ifdef __cplusplus
extern "C" {
#endif

/* Registers the clip_* SQL functions, the `clip` virtual table module and the clip_search
 * table-valued function on db. Returns SQLITE_OK, or an error code with *errmsg (when errmsg is
 * non-NULL) set to a message to be freed with sqlite3_free. */
int clipdb_register(sqlite3 *db, char **errmsg);

#ifdef __cplusplus
}
#endif

#endif
