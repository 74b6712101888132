/* fetch.h: HTTP(S) downloads over libcurl with limits on size, time and redirects.
 *
 * Only http:// and https:// URLs are accepted (also after redirects). Errors name the URL
 * (without credentials) and the reason: HTTP status, timeout, size limit, connection failure. */
#ifndef CDB_FETCH_H
#define CDB_FETCH_H

#include <stddef.h>

#include "src/err.h"

typedef struct cdb_fetch_limits {
  size_t max_bytes; /* refuse bodies larger than this */
  long timeout_ms;  /* whole transfer */
  long connect_timeout_ms;
  long max_redirects;
} cdb_fetch_limits;

/* Defaults for image URLs: 64 MiB, 30 s, 10 s connect, 5 redirects. The environment may
 * tighten or loosen the first two: CLIPDB_FETCH_MAX_BYTES (bytes), CLIPDB_FETCH_TIMEOUT (seconds,
 * fractions allowed); malformed values are ignored. */
cdb_fetch_limits cdb_fetch_default_limits(void);

/* True when s starts with http:// or https:// (case-insensitive). */
int cdb_is_url(const char *s);

/* url without any user:password@ part, for messages (truncated to cap). */
void cdb_url_redact(const char *url, char *out, size_t cap);

/* libcurl's process-wide initialisation, once (every libcurl user in clipdb calls this). */
void cdb_curl_init(void);

/* GETs url into a malloc'd buffer (caller frees). NULL on error. */
void *cdb_fetch(const char *url, const cdb_fetch_limits *limits, size_t *len_out, cdb_error *err);

#endif
