/* digest.h: a file's SHA-256, computed once per version of the file and remembered.
 *
 * The digest is kept under $XDG_CACHE_HOME/clipdb/digests (default ~/.cache/clipdb/digests),
 * one small file per version, named by the file's identity: device, inode, size, modification
 * and change times. Any change to the file (in place or by replacing it) gives another name, so
 * a stale digest is never used; the change time also catches tools that restore the
 * modification time after writing. A cache that cannot be read or written only costs time. */
#ifndef CDB_DIGEST_H
#define CDB_DIGEST_H

#include "src/err.h"

/* Hex SHA-256 of the file at path into hex[65]: the remembered one, else computed (and
 * remembered when the file did not change while it was read). */
int cdb_file_sha256_cached(const char *path, char hex[65], cdb_error *err);

/* Remembers hex as the SHA-256 of the file now at path (one the caller computed or verified,
 * e.g. while downloading it). Failures are ignored. */
void cdb_file_sha256_remember(const char *path, const char *hex);

#endif
