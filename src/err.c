/* err.c: formatting of cdb_error messages. */
#include "src/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int cdb_error_set(cdb_error *err, const char *fmt, ...) {
  if (!err) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
  return -1;
}

int cdb_error_prefix(cdb_error *err, const char *fmt, ...) {
  if (!err) return -1;
  char prefix[CDB_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  char old[CDB_ERROR_MAX];
  memcpy(old, err->msg, sizeof old);
  snprintf(err->msg, sizeof err->msg, "%s: %s", prefix, old);
  return -1;
}

void cdb_error_clear(cdb_error *err) {
  if (err) err->msg[0] = '\0';
}
