/* cmd_similar.c: `clipdb similar IMAGE`: the photos nearest to an image (its stored vector when
 * it is in the library, which is then left out of the results); `-` reads the image from stdin. */
#include <getopt.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/db.h"
#include "cli/output.h"
#include "src/fetch.h"

static const char USAGE[] =
    "usage: clipdb similar [OPTIONS] IMAGE\n"
    "Finds the photos that look most like IMAGE (indexed or not; an indexed IMAGE is not\n"
    "listed itself). IMAGE - reads the image's bytes from standard input (at most 64 MiB or\n"
    "CLIPDB_FETCH_MAX_BYTES, as for URLs).\n"
    "  -n, --top N        results (default 10)\n"
    "  --json             JSON array of {path, score, rowid, date, width, height}\n"
    "  --paths            one path per line\n"
    "  -0, --null         paths only, each ended by a NUL byte (for xargs -0)\n"
    "  --under DIR        only photos under DIR (see search)\n"
    "  --after DATE, --before DATE, --threshold S, --preview, --local  as for search\n";

/* The vector of the image piped into standard input. */
static int stdin_vector(cli_db *db, float **vec, int *dim, cdb_error *err) {
  size_t len;
  void *bytes = cli_read_stdin(cdb_fetch_default_limits().max_bytes, &len, err);
  int rc = bytes ? cli_db_embed_image_buffer(db, bytes, len, vec, dim, err) : -1;
  if (bytes && rc != 0) cdb_error_prefix(err, "standard input");
  g_free(bytes);
  return rc;
}

int cmd_similar(int argc, char **argv, const cli_ctx *ctx) {
  search_args a;
  int prc = search_parse_args(argc, argv, "similar", USAGE, &a);
  if (prc != 0) return prc < 0 ? CLI_OK : prc;
  if (argc - optind != 1) return cli_usage_error("similar", "expected one IMAGE");
  const char *image = argv[optind];
  cdb_error err = {{0}};
  cli_db db = {0};
  float *vec = NULL;
  cli_hit *hits = NULL;
  int dim = 0, n = 0;
  int64_t self = 0;
  clip_model *model; /* checked first: the library's vectors and this model's must agree */
  int rc = cli_db_open(ctx, a.local ? "." : NULL, false, &db, &err);
  if (rc == 0) rc = cli_db_model(&db, &model, &err);
  bool from_stdin = strcmp(image, "-") == 0;
  if (rc == 0 && from_stdin) rc = stdin_vector(&db, &vec, &dim, &err);
  if (rc == 0 && !from_stdin) {
    char *abs = realpath(image, NULL);
    rc = abs ? cli_db_vector_of_path(&db, abs, &vec, &dim, &self, &err) : 1;
    free(abs);
    if (rc == 1) rc = cli_db_embed_image_file(&db, image, &vec, &dim, &err);
  }
  cli_search_opts so = {(int)a.top, a.after, a.before, a.threshold, self, NULL};
  so.folder = a.under;
  cli_query q = {NULL, vec, dim};
  if (rc == 0) rc = cli_db_search(&db, &q, &so, &hits, &n, &err);
  if (rc == 0) output_hits(hits, n, a.fmt, a.preview);
  else cli_error("similar: %s", err.msg);
  cli_hits_free(hits, n);
  free(vec);
  cli_db_close(&db);
  return rc == 0 ? CLI_OK : CLI_FAIL;
}
