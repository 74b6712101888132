/* cmd_tokenize.c: `clipdb tokenize`, a thin wrapper over embed/clip.h that prints a text's token
 * ids as one JSON array (for scripting and golden checks). */
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/db.h"
#include "embed/clip.h"

static const char TOKENIZE_USAGE[] =
    "usage: clipdb tokenize [--model DIR] TEXT\n"
    "Prints the model's context-length token ids for TEXT (SOT, tokens, EOT, zero padding)\n"
    "as one JSON array.\n";

int cmd_tokenize(int argc, char **argv, const cli_ctx *ctx) {
  static const struct option longopts[] = {{"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "+:h", longopts, NULL)) != -1) {
    if (c == 'h') return fputs(TOKENIZE_USAGE, stdout), CLI_OK;
    return cli_option_error("tokenize", c, argv);
  }
  if (argc - optind != 1) return cli_usage_error("tokenize", "expected one TEXT argument");
  const char *text = argv[optind];
  cli_db db = {0};
  clip_model *model = cli_load_model(ctx, &db);
  if (!model) return CLI_FAIL;
  int n = clip_model_context_length(model);
  int32_t *ids = calloc((size_t)n, sizeof *ids);
  cdb_error err = {{0}};
  int rc = CLI_FAIL;
  if (!ids) {
    cli_error("out of memory");
  } else if (clip_tokenize(model, text, strlen(text), ids, &err) < 0) {
    cli_error("%s", err.msg);
  } else {
    putchar('[');
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", (int)ids[i]);
    puts("]");
    rc = CLI_OK;
  }
  free(ids);
  cli_unload_model(model, &db);
  return rc;
}
