/* args.c: parsing of the options search and similar share (getopt_long). */
#include "cli/args.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/db.h"

#define MAX_TOP 10000
#define DEFAULT_TOP 10

static int bad_date(const char *cmd, const char *opt, const char *value) {
  return cli_usage_error(cmd,
                         "%s \"%s\" is not a valid date (dates look like 2021, 2021-06, "
                         "2021-06-30 or \"2021-06-30 18:00\")",
                         opt, value);
}

/* Resolves DIR the way `index` stores paths (realpath: absolute, symlinks resolved) into a. */
static int resolve_under(const char *cmd, const char *dir, search_args *a) {
  struct stat st;
  if (!realpath(dir, a->under_buf))
    return cli_usage_error(cmd, "--under %s: %s", dir, strerror(errno));
  if (stat(a->under_buf, &st) != 0 || !S_ISDIR(st.st_mode))
    return cli_usage_error(cmd, "--under %s: not a folder", dir);
  a->under = a->under_buf;
  return 0;
}

/* CLIPDB_SEARCH_UNDER_CWD=1 makes "under the current folder" the default, as rclip does. */
static bool under_cwd_by_default(void) {
  const char *v = getenv("CLIPDB_SEARCH_UNDER_CWD");
  return v && strcmp(v, "1") == 0;
}

int search_parse_args(int argc, char **argv, const char *cmd, const char *usage, search_args *a) {
  static const struct option longopts[] = {{"top", required_argument, 0, 'n'},
                                           {"json", no_argument, 0, 'j'},
                                           {"paths", no_argument, 0, 'p'},
                                           {"after", required_argument, 0, 'a'},
                                           {"before", required_argument, 0, 'b'},
                                           {"threshold", required_argument, 0, 't'},
                                           {"preview", no_argument, 0, 'v'},
                                           {"local", no_argument, 0, 'l'},
                                           {"null", no_argument, 0, '0'},
                                           {"under", required_argument, 0, 'u'},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  *a = (search_args){.top = DEFAULT_TOP, .threshold = -INFINITY};
  int c;
  bool null = false;
  const char *under = NULL;
  while ((c = getopt_long(argc, argv, ":hn:0", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': return fputs(usage, stdout), -1;
      case 'n':
        if (!cli_parse_int(optarg, 1, MAX_TOP, &a->top))
          return cli_usage_error(cmd, "--top wants a number from 1 to %d", MAX_TOP);
        break;
      case 'j':
      case 'p':
        if (a->fmt != OUTPUT_TEXT && a->fmt != (c == 'j' ? OUTPUT_JSON : OUTPUT_PATHS))
          return cli_usage_error(cmd, "--json and --paths cannot be used together");
        a->fmt = c == 'j' ? OUTPUT_JSON : OUTPUT_PATHS;
        break;
      case 'a': a->after = optarg; break;
      case 'b': a->before = optarg; break;
      case 't':
        if (!cli_parse_float(optarg, &a->threshold) || a->threshold < -1 || a->threshold > 1)
          return cli_usage_error(cmd, "--threshold wants a number from -1 to 1");
        break;
      case 'v': a->preview = true; break;
      case 'l': a->local = true; break;
      case '0': null = true; break;
      case 'u': under = optarg; break;
      default: return cli_option_error(cmd, c, argv);
    }
  }
  if (null && a->fmt == OUTPUT_JSON)
    return cli_usage_error(cmd, "--null (-0) prints paths; it cannot be used with --json");
  if (null) a->fmt = OUTPUT_PATHS_NUL; /* with or without --paths */
  if (a->after && cli_check_date(a->after)) return bad_date(cmd, "--after", a->after);
  if (a->before && cli_check_date(a->before)) return bad_date(cmd, "--before", a->before);
  if (!under && under_cwd_by_default()) under = ".";
  return under ? resolve_under(cmd, under, a) : 0;
}
