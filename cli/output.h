/* output.h (cli-internal): options and result printing shared by search and similar. */
#ifndef CLI_OUTPUT_H
#define CLI_OUTPUT_H

#include <stdbool.h>

#include "cli/db.h"

typedef enum { OUTPUT_TEXT, OUTPUT_JSON, OUTPUT_PATHS } output_format;

/* text: "SCORE  PATH" per line (with a thumbnail under each when preview is set);
 * JSON: [{"path", "score", "rowid", "date", "width", "height"}, ...]; paths: one per line. */
void output_hits(const cli_hit *hits, int n, output_format fmt, bool preview);

/* The options search and similar share (see `clipdb search --help`). */
typedef struct search_args {
  long top;
  output_format fmt;
  const char *after, *before;
  double threshold; /* -INFINITY when not given */
  bool preview, local;
} search_args;

/* 0 to go on, -1 after printing usage (--help), or CLI_USAGE after an error message. */
int search_parse_args(int argc, char **argv, const char *cmd, const char *usage,
                      search_args *a);

#endif
