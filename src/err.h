/* err.h: the error type every clipdb module reports through.
 *
 * The function that detects an error fills the message (naming the domain, e.g.
 * "safetensors: model.safetensors: header length 9e18 exceeds file size"); callers only
 * propagate it. Functions return 0 / -1 (or NULL) and take a `cdb_error *` that may be NULL. */
#ifndef CDB_ERR_H
#define CDB_ERR_H

#include <stddef.h>

#define CDB_ERROR_MAX 1024

typedef struct cdb_error {
  char msg[CDB_ERROR_MAX];
} cdb_error;

/* Sets err->msg from a printf format (no-op when err is NULL). Always returns -1 so that
 * `return cdb_error_set(err, ...)` reads naturally. */
int cdb_error_set(cdb_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to an existing message (for adding context such as a file name). */
int cdb_error_prefix(cdb_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void cdb_error_clear(cdb_error *err);

#endif
