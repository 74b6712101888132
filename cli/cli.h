/* cli.h: what every `clipdb` subcommand shares.
 *
 * A command is `int cmd_NAME(int argc, char **argv, const cli_ctx *ctx)`: argv[0] is the command
 * name ("search"), the rest are its own arguments (parse them with getopt_long; main has already
 * removed the global options --db/--model wherever they appeared and reset optind). It returns
 * the process exit status: CLI_OK, CLI_FAIL (the operation failed; message printed with
 * cli_error), CLI_USAGE (bad arguments) or CLI_INCOMPLETE (see below). Output goes to stdout,
 * messages to stderr. */
#ifndef CLIPDB_CLI_H
#define CLIPDB_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "src/err.h"

/* CLI_INCOMPLETE: `index` finished but could not list some folders (their photos were kept). */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2, CLI_INCOMPLETE = 3 };

/* json_object_to_json_string_ext flags for machine-readable output: one line, "/" unescaped. */
#define CLI_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

typedef struct cli_ctx {
  const char *db_path; /* --db PATH, or NULL for the default (see cli_db_path) */
  const char *model;   /* --model DIR-or-hub-name, or NULL: $CLIPDB_MODEL, then the default */
  bool stderr_tty;     /* cli_stderr_live(): progress bars instead of plain lines */
} cli_ctx;

/* True when stderr is a terminal that may get redraws and escape sequences: not when TERM is
 * unset, empty or "dumb", nor when NO_COLOR is set (non-empty); then progress is plain lines. */
bool cli_stderr_live(void);

/* Prints "clipdb: <message>\n" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "clipdb: <message>\n" and returns CLI_USAGE (say what was wrong and hint at --help). */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* After getopt_long returned c ('?' or ':', with an optstring starting with ':' and opterr 0):
 * prints one line, "clipdb: CMD: unknown option X" or "... option X needs a value", and returns
 * CLI_USAGE. */
int cli_option_error(const char *cmd, int c, char **argv);

/* Reads all of standard input (an image for `similar -`) into a buffer to release with g_free;
 * NULL with err set when it is a terminal, empty, unreadable or larger than max_bytes. */
void *cli_read_stdin(size_t max_bytes, size_t *len, cdb_error *err);

/* The model directory for ctx->model (cdb_model_resolve), malloc'd; NULL with err set. */
char *cli_model_dir(const cli_ctx *ctx, cdb_error *err);

/* True when s equals "-h" or "--help" (commands print their usage to stdout and return 0). */
bool cli_is_help(const char *s);

/* Parses a whole decimal number / a finite float; false when s is not one. */
bool cli_parse_int(const char *s, long min, long max, long *out);
bool cli_parse_float(const char *s, double *out);

/* The subcommands (one file each). */
int cmd_index(int argc, char **argv, const cli_ctx *ctx);
int cmd_search(int argc, char **argv, const cli_ctx *ctx);
int cmd_similar(int argc, char **argv, const cli_ctx *ctx);
int cmd_dedup(int argc, char **argv, const cli_ctx *ctx);
int cmd_classify(int argc, char **argv, const cli_ctx *ctx);
int cmd_tokenize(int argc, char **argv, const cli_ctx *ctx);
int cmd_embed(int argc, char **argv, const cli_ctx *ctx);
int cmd_info(int argc, char **argv, const cli_ctx *ctx);
int cmd_model(int argc, char **argv, const cli_ctx *ctx);
int cmd_serve(int argc, char **argv, const cli_ctx *ctx);

#endif
