/* cmd_similar.c: `clipdb similar IMAGE`: the photos and videos nearest to an image (its stored
 * vector when it is in the library, which is then left out of the results), to a video's frame
 * (`VIDEO@T`), or to an image read from stdin (`-`). */
#include <errno.h>
#include <getopt.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/db.h"
#include "cli/moments.h"
#include "cli/output.h"
#include "cli/walk.h"
#include "src/fetch.h"

static const char USAGE[] =
    "usage: clipdb similar [OPTIONS] IMAGE | VIDEO[@T] | -\n"
    "Finds the photos and videos that look most like IMAGE (indexed or not; an indexed IMAGE\n"
    "is not listed itself), or like the frame of VIDEO at T (83, 83.5, 1:23 or 1:02:03; 0\n"
    "when left out): the stored frame nearest to T when VIDEO is indexed (VIDEO itself is then\n"
    "not listed), else the frame decoded at T. A video is listed with its best moment.\n"
    "- reads the image's bytes from standard input (at most 64 MiB or CLIPDB_FETCH_MAX_BYTES,\n"
    "as for URLs).\n"
    "  -n, --top N        results (default 10)\n"
    "  --json             JSON array of {path, score, rowid, date, width, height, t, moments}\n"
    "  --paths            one path per line\n"
    "  -0, --null         paths only, each ended by a NUL byte (for xargs -0)\n"
    "  --under DIR        only photos under DIR (see search)\n"
    "  --after DATE, --before DATE, --threshold S, --preview, --local  as for search\n";

/* VIDEO@T, or a video file (its first frame): the stored frame nearest to T, else the frame
 * decoded from the file. 1 when image names no video. */
static int frame_query(cli_db *db, const char *image, char **video, float **vec, int *dim,
                       cdb_error *err) {
  char *path = NULL;
  double t = 0;
  if (cli_split_video_at(image, &path, &t) != 0) {
    if (!walk_is_video_name(image) || access(image, F_OK) != 0) return 1;
    path = strdup(image);
  }
  *video = path ? realpath(path, NULL) : NULL;
  int64_t rowid;
  int rc = *video ? cli_db_frame_vector(db, *video, t, vec, dim, &rowid, err)
                  : cdb_error_set(err, "%s: %s", path ? path : image, strerror(errno));
  if (rc == 1) rc = cli_embed_video_frame(db, path, t, vec, dim, err);
  free(path);
  return rc;
}

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
  if (argc - optind != 1) return cli_usage_error("similar", "expected one IMAGE, VIDEO@T or -");
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
  char *video = NULL; /* the query is a frame of this video (absolute path) */
  bool from_stdin = strcmp(image, "-") == 0;
  if (rc == 0 && from_stdin) {
    rc = stdin_vector(&db, &vec, &dim, &err);
  } else if (rc == 0 && (rc = frame_query(&db, image, &video, &vec, &dim, &err)) == 1) {
    char *abs = realpath(image, NULL);
    rc = abs ? cli_db_vector_of_path(&db, abs, &vec, &dim, &self, &err) : 1;
    free(abs);
    if (rc == 1) rc = cli_db_embed_image_file(&db, image, &vec, &dim, &err);
  }
  cli_search_opts so = {(int)a.top, a.after, a.before, a.threshold, self, NULL};
  so.folder = a.under;
  cli_query q = {NULL, vec, dim};
  if (rc == 0) rc = cli_db_search_videos(&db, &q, &so, video, &hits, &n, &err);
  free(video);
  if (rc == 0) output_hits(hits, n, a.fmt, a.preview);
  else cli_error("similar: %s", err.msg);
  cli_hits_free(hits, n);
  free(vec);
  cli_db_close(&db);
  return rc == 0 ? CLI_OK : CLI_FAIL;
}
