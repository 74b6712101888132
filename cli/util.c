/* util.c: small helpers every command uses: error lines, number parsing, model lookup and load. */
#include <errno.h>
#include <getopt.h>
#include <glib.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "embed/clip.h"
#include "src/model_path.h"

void cli_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("clipdb: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

bool cli_stderr_live(void) {
  const char *term = getenv("TERM"), *no_color = getenv("NO_COLOR");
  return isatty(STDERR_FILENO) == 1 && term && term[0] && strcmp(term, "dumb") != 0 &&
         !(no_color && no_color[0]);
}

void *cli_read_stdin(size_t max_bytes, size_t *len, cdb_error *err) {
  if (isatty(STDIN_FILENO) == 1) {
    cdb_error_set(err, "standard input is a terminal: pipe an image into it");
    return NULL;
  }
  GByteArray *buf = g_byte_array_new();
  unsigned char chunk[1 << 16];
  int rc = 0;
  for (ssize_t got; rc == 0 && (got = read(STDIN_FILENO, chunk, sizeof chunk)) != 0;) {
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) rc = cdb_error_set(err, "standard input: %s", strerror(errno));
    else if (buf->len + (size_t)got > max_bytes)
      rc = cdb_error_set(err, "standard input is larger than %zu bytes (CLIPDB_FETCH_MAX_BYTES)",
                         max_bytes);
    else g_byte_array_append(buf, chunk, (guint)got);
  }
  if (rc == 0 && buf->len == 0)
    rc = cdb_error_set(err, "standard input is empty (expected the bytes of an image)");
  if (rc != 0) {
    g_byte_array_free(buf, TRUE);
    return NULL;
  }
  *len = buf->len;
  return g_byte_array_free(buf, FALSE);
}

int cli_option_error(const char *cmd, int c, char **argv) {
  /* getopt: optopt is 0 for an unknown long option; ':' (optstring starts with ':') means a value
   * is missing, and the option is then the whole previous argument. */
  char name[64];
  const char *given = optind > 0 && argv[optind - 1] ? argv[optind - 1] : "?";
  if (c == ':' || optopt == 0) snprintf(name, sizeof name, "%.*s", (int)strcspn(given, "="), given);
  else snprintf(name, sizeof name, "-%c", optopt);
  return cli_usage_error(cmd, c == ':' ? "option %s needs a value" : "unknown option %s", name);
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("clipdb: ", stderr);
  if (cmd) fprintf(stderr, "%s: ", cmd);
  vfprintf(stderr, fmt, ap);
  if (cmd) fprintf(stderr, " (see `clipdb %s --help`)", cmd);
  fputc('\n', stderr);
  va_end(ap);
  return CLI_USAGE;
}

char *cli_model_dir(const cli_ctx *ctx, cdb_error *err) {
  return cdb_model_resolve(ctx->model, err);
}

bool cli_is_help(const char *s) { return s && (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0); }

bool cli_parse_int(const char *s, long min, long max, long *out) {
  if (!s || !*s) return false;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < min || v > max) return false;
  *out = v;
  return true;
}

bool cli_parse_float(const char *s, double *out) {
  if (!s || !*s) return false;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !isfinite(v)) return false;
  *out = v;
  return true;
}
