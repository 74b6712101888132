/* args.h (cli-internal): the command-line options search and similar share. */
#ifndef CLI_ARGS_H
#define CLI_ARGS_H

#include <limits.h>
#include <stdbool.h>

#include "cli/output.h"

/* The options search and similar share (see `clipdb search --help`). */
typedef struct search_args {
  long top;
  output_format fmt;
  const char *after, *before;
  double threshold; /* -INFINITY when not given */
  bool preview, local;
  const char *under; /* --under DIR (or the current folder, CLIPDB_SEARCH_UNDER_CWD=1) resolved
                        as index stores paths, or NULL: the whole library */
  char under_buf[PATH_MAX];
} search_args;

/* 0 to go on, -1 after printing usage (--help), or CLI_USAGE after an error message. */
int search_parse_args(int argc, char **argv, const char *cmd, const char *usage, search_args *a);

#endif
