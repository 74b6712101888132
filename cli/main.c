/* main.c: the `clipdb` command line: global options, the command table, dispatch.
 *
 * Global options (--db PATH, --model NAME) may appear before or after the command name; they are
 * taken out of argv here so each command only parses its own options. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "embed/clip.h"
#include "sqlite-ext/clipdb.h"
#include "src/model_path.h"

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv, const cli_ctx *ctx);
  const char *summary;
} command;

static const command COMMANDS[] = {
    {"index", cmd_index, "add a folder of photos to the library (incremental)"},
    {"search", cmd_search, "find photos by text, image, or query arithmetic"},
    {"similar", cmd_similar, "find photos that look like an image"},
    {"dedup", cmd_dedup, "list groups of near-duplicate photos"},
    {"classify", cmd_classify, "zero-shot classify an image among labels"},
    {"info", cmd_info, "show the library: rows, index, size, model"},
    {"tokenize", cmd_tokenize, "print a text's CLIP token ids (JSON)"},
    {"embed", cmd_embed, "print the normalised embedding of a text, image or pixels (JSON)"},
    {"serve", cmd_serve, "serve a web gallery of the library (JSON API under /api/)"},
    {"model", cmd_model, "download, list, inspect and remove models"},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void print_usage(FILE *out) {
  fprintf(out, "usage: clipdb [--db PATH] [--model NAME] COMMAND [ARGS...]\n"
               "\n"
               "Search a photo library by meaning with CLIP.\n"
               "\n"
               "commands:\n");
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(out, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
  fprintf(out,
          "\n"
          "global options (before or after the command):\n"
          "  --db PATH      library database (default $XDG_DATA_HOME/clipdb/library.db)\n"
          "  --model NAME   model directory or cached hub name (default $CLIPDB_MODEL, then %s)\n"
          "  -h, --help     this help; `clipdb help COMMAND` for a command's options\n"
          "  --version      print the version\n",
          CDB_DEFAULT_MODEL);
}

/* Takes --db/--model (both "--opt V" and "--opt=V") out of argv, up to a "--". Returns the new
 * argc, or -1 when an option lacks its value. */
static int take_global_options(int argc, char **argv, cli_ctx *ctx) {
  static const struct {
    const char *name;
    size_t off;
  } opts[] = {{"--db", offsetof(cli_ctx, db_path)}, {"--model", offsetof(cli_ctx, model)}};
  int out = 1;
  int in = 1;
  for (; in < argc; in++) {
    const char *a = argv[in];
    if (strcmp(a, "--") == 0) break;
    bool taken = false;
    for (size_t o = 0; o < 2 && !taken; o++) {
      size_t n = strlen(opts[o].name);
      const char **slot = (const char **)((char *)ctx + opts[o].off);
      if (strcmp(a, opts[o].name) == 0) {
        if (in + 1 >= argc) {
          cli_error("%s needs a value", opts[o].name);
          return -1;
        }
        *slot = argv[++in];
        taken = true;
      } else if (strncmp(a, opts[o].name, n) == 0 && a[n] == '=') {
        *slot = a + n + 1;
        taken = true;
      }
    }
    if (!taken) argv[out++] = argv[in];
  }
  for (; in < argc; in++) argv[out++] = argv[in];
  argv[out] = NULL;
  return out;
}

/* rc, or CLI_FAIL when stdout could not be written (a full disk, a closed pipe): the last
 * buffered bytes are only written here, so the check is made after the command's output. */
static int finish_stdout(int rc) {
  bool failed = ferror(stdout) != 0;
  errno = 0;
  if (fclose(stdout) != 0) failed = true;
  if (!failed) return rc;
  if (errno) cli_error("error writing standard output: %s", strerror(errno));
  else cli_error("error writing standard output");
  return rc == CLI_OK ? CLI_FAIL : rc;
}

static int run_command(int argc, char **argv, cli_ctx *ctx) {
  argc = take_global_options(argc, argv, ctx);
  if (argc < 0) return CLI_USAGE;
  if (argc < 2) {
    print_usage(stderr);
    return CLI_USAGE;
  }
  const char *name = argv[1];
  if (strcmp(name, "help") == 0 && argc > 2) { /* `clipdb help CMD` is `clipdb CMD --help` */
    if (argc > 3) return cli_usage_error("help", "expected one COMMAND");
    char *help_argv[] = {argv[0], argv[2], "--help", NULL};
    return run_command(3, help_argv, ctx);
  }
  if (cli_is_help(name) || strcmp(name, "help") == 0) {
    print_usage(stdout);
    return CLI_OK;
  }
  if (strcmp(name, "--version") == 0) {
    printf("clipdb %s\n", CLIPDB_VERSION);
    return CLI_OK;
  }
  for (size_t i = 0; i < N_COMMANDS; i++) {
    if (strcmp(name, COMMANDS[i].name) != 0) continue;
    clip_release_blas_threads(); /* one thread here: nothing else is inside OpenBLAS */
    optind = 0; /* GNU getopt: a full re-initialisation for the command's own parse */
    opterr = 0; /* the commands print their own one-line message (cli_option_error) */
    int rc = COMMANDS[i].run(argc - 1, argv + 1, ctx); /* libvips starts on first use */
    clip_vips_stop();
    return rc;
  }
  cli_error("unknown command \"%s\" (see `clipdb --help`)", name);
  return CLI_USAGE;
}

int main(int argc, char **argv) {
  cli_ctx ctx = {.stderr_tty = cli_stderr_live()};
  return finish_stdout(run_command(argc, argv, &ctx));
}
