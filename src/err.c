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
  size_t plen = strlen(prefix);
  size_t mlen = strnlen(err->msg, sizeof err->msg - 1);
  if (plen + 2 >= sizeof err->msg) plen = sizeof err->msg - 3;
  size_t keep = mlen < sizeof err->msg - plen - 3 ? mlen : sizeof err->msg - plen - 3;
  memmove(err->msg + plen + 2, err->msg, keep);
  err->msg[plen + 2 + keep] = '\0';
  memcpy(err->msg, prefix, plen);
  err->msg[plen] = ':';
  err->msg[plen + 1] = ' ';
  return -1;
}

void cdb_error_clear(cdb_error *err) {
  if (err) err->msg[0] = '\0';
}
