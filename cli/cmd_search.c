/* cmd_search.c: `clipdb search QUERY`: text, image, or query-arithmetic search (grammar in
 * query.h), with date and score filters applied inside the KNN query. */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/db.h"
#include "cli/moments.h"
#include "cli/output.h"
#include "cli/query.h"
#include "cli/walk.h"
#include "src/vec.h"

#define MAX_QUERY_BYTES 4096

static const char USAGE[] =
    "usage: clipdb search [OPTIONS] QUERY...\n"
    "Finds the photos and videos that best match QUERY: a text (\"a red star\"), an image\n"
    "path or URL (image-to-image), or arithmetic on both: `2:sunset - people + \"a red star\"`.\n"
    "Terms are separated by a lone + or -, may carry a weight (2:sunset, 0.5:\"blue sky\"),\n"
    "and double quotes keep signs as text. Words of several arguments are joined by spaces.\n"
    "A video is listed once, with its best moment: SCORE<TAB>PATH<TAB>hh:mm:ss.\n"
    "  -n, --top N        results (default 10)\n"
    "  --json             JSON array of {path, score, rowid, date, width, height, t,\n"
    "                     moments}: t the best moment in seconds (null for a photo), moments\n"
    "                     the video's other matching moments [{t, score}], best first\n"
    "  --paths            one path per line\n"
    "  -0, --null         paths only, each ended by a NUL byte (for xargs -0)\n"
    "  --after DATE       taken (EXIF date, else file time) at or after DATE\n"
    "  --before DATE      taken before DATE   (DATE: YYYY[-MM[-DD[ HH:MM[:SS]]]])\n"
    "  --threshold S      only results with score (cosine similarity) >= S\n"
    "  --under DIR        only photos under DIR (`--under .`: the current folder; the\n"
    "                     default when CLIPDB_SEARCH_UNDER_CWD=1, then `--under /` for all)\n"
    "  --preview          thumbnails in kitty / iTerm2 / WezTerm terminals\n"
    "  --local            use ./.clipdb instead of the default library\n";

/* Joins argv[from..] with spaces (the query may arrive as several shell words). */
static char *join_args(int argc, char **argv, int from) {
  size_t len = 1;
  for (int i = from; i < argc; i++) len += strlen(argv[i]) + 1;
  if (len > MAX_QUERY_BYTES) return NULL;
  char *s = calloc(1, len);
  for (int i = from; s && i < argc; i++) {
    if (i > from) strcat(s, " ");
    strcat(s, argv[i]);
  }
  return s;
}

/* True when a text term reads as a file path: it ends in an image extension, or it contains a
 * '/' and starts with '/', './' or '../' or names an existing folder before its last '/' (so
 * "AC/DC" stays text). Such a term that is not an existing file is a mistake, not a text. */
static bool looks_like_image_path(const char *s) {
  if (strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0) return false;
  if (walk_is_image_name(s)) return true;
  const char *slash = strrchr(s, '/');
  if (!slash) return false;
  if (s[0] == '/' || strncmp(s, "./", 2) == 0 || strncmp(s, "../", 3) == 0) return true;
  char *dir = strndup(s, (size_t)(slash - s));
  struct stat st;
  bool is_dir = dir && stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
  free(dir);
  return is_dir;
}

/* A term's unit vector: a stored photo's vector when the image is indexed, else embedded. */
static int term_vector(cli_db *db, const query_term *t, float **v, int *dim, cdb_error *err) {
  if (!t->is_image) return cli_db_embed_text(db, t->text, v, dim, err);
  char *abs = realpath(t->text, NULL);
  int64_t rowid;
  int rc = abs ? cli_db_vector_of_path(db, abs, v, dim, &rowid, err) : 1;
  free(abs);
  if (rc == 1) rc = cli_db_embed_image_file(db, t->text, v, dim, err);
  return rc;
}

/* Scales v to unit length; -1 when it is (nearly) zero: terms that cancel out. */
static int normalise(float *v, int n) { return cdb_vec_normalise(v, (size_t)n) > 1e-12 ? 0 : -1; }

/* sum of weight * unit(term) over the terms, normalised. */
int query_vector(cli_db *db, const query *q, float **out, int *dim, cdb_error *err) {
  float *sum = NULL;
  *dim = 0;
  for (size_t i = 0; i < q->n; i++) {
    float *v;
    int d;
    if (term_vector(db, &q->terms[i], &v, &d, err) != 0) {
      cdb_error_prefix(err, "query term \"%s\"", q->terms[i].text);
      free(sum);
      return -1;
    }
    if (!sum && !(sum = calloc((size_t)d, sizeof *sum))) {
      free(v);
      return cdb_error_set(err, "out of memory");
    }
    if (*dim && d != *dim) {
      free(v);
      free(sum);
      return cdb_error_set(err, "query terms have different dimensions");
    }
    *dim = d;
    normalise(v, d);
    for (int j = 0; j < d; j++) sum[j] += (float)q->terms[i].weight * v[j];
    free(v);
  }
  if (normalise(sum, *dim) != 0) {
    free(sum);
    return cdb_error_set(err, "the query's terms cancel out (a zero vector)");
  }
  *out = sum;
  return 0;
}

int cmd_search(int argc, char **argv, const cli_ctx *ctx) {
  search_args a;
  int prc = search_parse_args(argc, argv, "search", USAGE, &a);
  if (prc != 0) return prc < 0 ? CLI_OK : prc;
  if (optind == argc) return cli_usage_error("search", "expected a QUERY");
  char *text = join_args(argc, argv, optind);
  if (!text) return cli_usage_error("search", "the query is longer than %d bytes", MAX_QUERY_BYTES);
  cdb_error err = {{0}};
  query q = {0};
  cli_db db = {0};
  float *vec = NULL;
  cli_hit *hits = NULL;
  int dim = 0, n = 0, rc = query_parse(text, &q, &err);
  for (size_t i = 0; rc == 0 && i < q.n; i++)
    if (!q.terms[i].is_image && looks_like_image_path(q.terms[i].text))
      rc = cdb_error_set(&err, "no such image file: %s", q.terms[i].text);
  if (rc != 0) {
    query_free(&q);
    free(text);
    return cli_usage_error("search", "%s", err.msg);
  }
  clip_model *model; /* checked first: the library's vectors and this model's must agree */
  if (rc == 0) rc = cli_db_open(ctx, a.local ? "." : NULL, false, &db, &err);
  if (rc == 0) rc = cli_db_model(&db, &model, &err);
  /* One text with a positive weight is the text itself: the search statement embeds it. */
  bool one_text = q.n == 1 && !q.terms[0].is_image && q.terms[0].weight > 0;
  if (rc == 0 && !one_text) rc = query_vector(&db, &q, &vec, &dim, &err);
  cli_search_opts so = {(int)a.top, a.after, a.before, a.threshold, 0, NULL};
  so.folder = a.under;
  cli_query cq = {one_text ? q.terms[0].text : NULL, vec, dim};
  if (rc == 0) rc = cli_db_search_videos(&db, &cq, &so, NULL, &hits, &n, &err);
  if (rc == 0) output_hits(hits, n, a.fmt, a.preview);
  else cli_error("search: %s", err.msg);
  cli_hits_free(hits, n);
  free(vec);
  cli_db_close(&db);
  query_free(&q);
  free(text);
  return rc == 0 ? CLI_OK : CLI_FAIL;
}
