/* download.h: resumable, verified file downloads over HTTP(S) (libcurl), for `clipdb model pull`.
 *
 * cdb_download() writes a URL to DEST through DEST.part: a .part left by an interrupted attempt
 * (or an earlier run) is continued with an HTTP Range request; DEST appears, by rename, only once
 * the body is complete and, when the server names the file's SHA-256, verified. The Hugging Face
 * hub names it for large (LFS) files as `X-Linked-Etag: "<64 hex>"`; a 64-hex ETag on the first
 * response of the redirect chain counts too (a CDN's ETag further down the chain does not).
 *
 * Transient failures (connection errors, stalls, HTTP 5xx and 429) are retried with exponential
 * backoff up to max_attempts. A bearer token travels in the Authorization header; libcurl drops
 * that header when a redirect leads to another host or port (we never set UNRESTRICTED_AUTH), and
 * the token never appears in messages. Only http and https, also after redirects.
 *
 * src/hub.c (pulls from the Hugging Face hub) is the caller. Thread-safe: no globals beyond
 * libcurl's once-only initialisation. */
#ifndef CDB_DOWNLOAD_H
#define CDB_DOWNLOAD_H

#include <stdbool.h>

#include "src/err.h"

typedef struct cdb_download_opts {
  const char *bearer_token; /* NULL or "": no Authorization header */
  long connect_timeout_ms;  /* default 15 s */
  long stall_timeout_s;     /* give up an attempt after this long under 1 KiB/s; default 30 */
  long max_redirects;       /* default 5 */
  int max_attempts;         /* tries per file, the first included; default 5 */
  long backoff_ms;          /* delay before the first retry, doubled each time; default 1000 */
  long max_wait_ms;         /* all delays between tries together, a server's Retry-After
                               included (honoured up to 60 s each); default 60000 */
  bool show_progress;       /* draw a progress bar on stderr */
  bool plain_progress;      /* with show_progress: plain lines instead of the redrawn bar (for
                               a log or a pipe): the start of each transfer, then every 10 % of
                               a file of 1 MB or more (every 5 s when its size is unknown); no
                               \r and no escape sequences */
  const char *label;        /* file name shown in the progress bar */
} cdb_download_opts;

/* The defaults above; CLIPDB_DOWNLOAD_BACKOFF_MS overrides backoff_ms and
 * CLIPDB_DOWNLOAD_MAX_WAIT_MS max_wait_ms (tests use them; each at most its default cap). */
cdb_download_opts cdb_download_default_opts(void);

typedef struct cdb_download_info {
  long long bytes;      /* size of DEST */
  char sha256[65];      /* hex SHA-256 of DEST, always computed */
  bool verified;        /* the server named a SHA-256 and it matched */
  bool resumed;         /* an existing .part was continued */
  int attempts;         /* attempts made */
  char repo_commit[41]; /* the commit the hub resolved the URL's revision to (X-Repo-Commit), or ""
                         */
} cdb_download_info;

enum { CDB_DOWNLOAD_NOT_FOUND = -2 };

/* Downloads url to dest (see above). Returns 0, -1 on failure, or CDB_DOWNLOAD_NOT_FOUND when the
 * server answered 404 (err is set in both failure cases; nothing is left at dest). info may be
 * NULL. */
int cdb_download(const char *url, const char *dest, const cdb_download_opts *opts,
                 cdb_download_info *info, cdb_error *err);

/* Asks (HEAD, redirects not followed) for the SHA-256 the server names for url, without
 * downloading it: sha256[0] is '\0' when it names none (small, non-LFS hub files). Returns 0, -1,
 * or CDB_DOWNLOAD_NOT_FOUND. One attempt, no retries: callers fall back to cdb_download. */
int cdb_download_probe(const char *url, const cdb_download_opts *opts, char sha256[65],
                       cdb_error *err);

/* Hex SHA-256 of a file into hex[65]. */
int cdb_sha256_file(const char *path, char hex[65], cdb_error *err);

#endif
