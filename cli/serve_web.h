/* serve_web.h (cli-internal): the gallery page's files (cli/web/), embedded at build time by
 * cli/web/embed.py into serve_web.c. */
#ifndef CLI_SERVE_WEB_H
#define CLI_SERVE_WEB_H

#include <stddef.h>

typedef struct serve_web_file {
  const char *url;  /* "/", "/app.js", ... */
  const char *type; /* Content-Type */
  const unsigned char *data;
  size_t len;
} serve_web_file;

extern const serve_web_file SERVE_WEB[];
extern const size_t SERVE_WEB_N;

#endif
