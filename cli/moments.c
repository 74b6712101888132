/* moments.c: videos in the library (schema in moments.h): the photos_frames table, one result
 * per video with its best moment, and the times those moments are written and read as. */
#include "cli/moments.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FIRST_FETCH 64      /* frames asked for at first, at least */
#define MAX_FETCH 10000000L /* frames asked for at most (the table has fewer) */

int cli_db_ensure_frames(cli_db *db, cdb_error *err) {
  if (cli_db_exec(db,
                  "CREATE TABLE IF NOT EXISTS " CLI_FRAMES_TABLE
                  "(rowid INTEGER PRIMARY KEY, t REAL NOT NULL)",
                  err) == 0)
    return 0;
  return cdb_error_prefix(err, "cannot create the " CLI_FRAMES_TABLE " table");
}

bool cli_db_has_frames(cli_db *db) {
  sqlite3_stmt *st = NULL;
  bool has = sqlite3_prepare_v2(
                 db->db,
                 "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '" CLI_FRAMES_TABLE
                 "'",
                 -1, &st, NULL) == SQLITE_OK &&
             sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  return has;
}

/* Sets each hit's t from photos_frames (-1 for photos). */
static int fill_times(cli_db *db, cli_hit *hits, int n, cdb_error *err) {
  sqlite3_stmt *st;
  if (cli_db_prepare(db, "SELECT t FROM " CLI_FRAMES_TABLE " WHERE rowid = ?1", &st, err) != 0)
    return -1;
  int rc = 0;
  for (int i = 0; rc == 0 && i < n; i++) {
    sqlite3_bind_int64(st, 1, hits[i].rowid);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) hits[i].t = sqlite3_column_double(st, 0);
    else if (step != SQLITE_DONE) rc = cli_db_fail(db, "reading frame times", err);
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  return rc;
}

static int add_moment(cli_hit *h, const cli_hit *frame) {
  cli_moment *m = realloc(h->moments, sizeof *m * (size_t)(h->n_moments + 1));
  if (!m) return -1;
  h->moments = m;
  m[h->n_moments++] = (cli_moment){frame->t, frame->score};
  return 0;
}

/* Moves the best row of each file (rows come best first) to out, up to k files; a video's
 * later rows become its moments. Returns the number of files, -1 when out of memory. */
static int group_by_file(cli_hit *rows, int n, int k, const char *exclude_path, cli_hit *out) {
  int count = 0;
  for (int i = 0; i < n; i++) {
    cli_hit *r = &rows[i];
    if (exclude_path && r->t >= 0 && strcmp(r->path, exclude_path) == 0) continue;
    int j = 0;
    while (j < count && !(out[j].t >= 0 && r->t >= 0 && strcmp(out[j].path, r->path) == 0)) j++;
    if (j < count) {
      if (add_moment(&out[j], r) != 0) return -1;
    } else if (count < k) {
      out[count++] = *r;
      *r = (cli_hit){0};
    }
  }
  return count;
}

int cli_db_search_videos(cli_db *db, const cli_query *q, const cli_search_opts *opts,
                         const char *exclude_path, cli_hit **hits, int *n, cdb_error *err) {
  if (!cli_db_has_frames(db)) return cli_db_search(db, q, opts, hits, n, err);
  *hits = NULL;
  *n = 0;
  cli_hit *out = calloc((size_t)opts->k + 1, sizeof *out);
  if (!out) return cdb_error_set(err, "out of memory");
  long fetch = (long)opts->k * 4 < FIRST_FETCH ? FIRST_FETCH : (long)opts->k * 4;
  for (;;) {
    cli_search_opts more = *opts;
    more.k = (int)fetch;
    cli_hit *rows;
    int got, files = 0;
    if (cli_db_search(db, q, &more, &rows, &got, err) != 0 || fill_times(db, rows, got, err) != 0 ||
        (files = group_by_file(rows, got, opts->k, exclude_path, out)) < 0) {
      if (files < 0) cdb_error_set(err, "out of memory");
      cli_hits_free(rows, got);
      cli_hits_free(out, opts->k);
      return -1;
    }
    cli_hits_free(rows, got);
    if (files >= opts->k || got < more.k || fetch >= MAX_FETCH) {
      *hits = out;
      *n = files;
      return 0;
    }
    cli_hits_free(out, files); /* too few files among these frames: ask for more */
    if (!(out = calloc((size_t)opts->k + 1, sizeof *out)))
      return cdb_error_set(err, "out of memory");
    fetch *= 8;
  }
}

void cli_format_moment(double t, char out[32]) {
  long s = t > 0 ? (long)floor(t) : 0;
  snprintf(out, 32, "%02ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
}

bool cli_parse_moment(const char *s, double *seconds) {
  double total = 0;
  const char *p = s;
  for (int part = 0; part < 3; part++) {
    char *end;
    if (*p < '0' || *p > '9') return false;
    double v = strtod(p, &end);
    if (!isfinite(v) || v < 0) return false;
    total = total * 60 + v;
    if (*end == '\0') {
      *seconds = total;
      return true;
    }
    if (*end != ':' || memchr(p, '.', (size_t)(end - p))) return false; /* only seconds: 1.5 */
    p = end + 1;
  }
  return false;
}

int cli_db_frame_vector(cli_db *db, const char *path, double t, float **out, int *dim,
                        int64_t *rowid, cdb_error *err) {
  if (!cli_db_has_frames(db)) return 1;
  sqlite3_stmt *st;
  if (cli_db_prepare(db,
                     "SELECT p.rowid, p.embedding FROM " CLI_TABLE " AS p JOIN " CLI_FRAMES_TABLE
                     " AS f ON f.rowid = p.rowid WHERE p.path = ?1 ORDER BY abs(f.t - ?2) LIMIT 1",
                     &st, err) != 0)
    return -1;
  sqlite3_bind_text(st, 1, path, -1, SQLITE_STATIC);
  sqlite3_bind_double(st, 2, t);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    int bytes = sqlite3_column_bytes(st, 1);
    const void *blob = sqlite3_column_blob(st, 1);
    *rowid = sqlite3_column_int64(st, 0);
    *out = bytes > 0 && bytes % 4 == 0 ? malloc((size_t)bytes) : NULL;
    if (*out) memcpy(*out, blob, (size_t)bytes);
    *dim = bytes / 4;
    rc = *out ? 0 : cdb_error_set(err, "a stored frame has no vector");
  } else {
    rc = rc == SQLITE_DONE ? 1 : cli_db_fail(db, "reading a frame", err);
  }
  sqlite3_finalize(st);
  return rc;
}

/* The first sample at or after t (the sampling interval is t itself), else the last one. */
static int frame_pixels_at(clip_model *m, const char *path, double t, float *pixels,
                           cdb_error *err) {
  clip_video_params params = clip_video_default_params();
  params.interval = t > 0 ? t : 1.0;
  params.max_samples = 0;
  clip_video *v = clip_video_open(m, path, &params, err);
  if (!v) return -1;
  clip_video_frame f;
  int got, rc = -1;
  while ((got = clip_video_next(v, &f, err)) > 0) {
    rc = clip_video_frame_pixels(m, &f, pixels, err);
    if (rc != 0 || f.t + 1e-3 >= t) break;
  }
  if (got < 0) rc = -1;
  clip_video_close(v);
  return rc;
}

int cli_embed_video_frame(cli_db *db, const char *path, double t, float **out, int *dim,
                          cdb_error *err) {
  clip_model *m;
  if (cli_db_model(db, &m, err) != 0) return -1;
  int side = clip_model_image_size(m);
  float *pixels = malloc(sizeof(float) * 3 * (size_t)side * side);
  *dim = clip_model_dim(m);
  *out = malloc(sizeof(float) * (size_t)*dim);
  int rc = pixels && *out ? frame_pixels_at(m, path, t, pixels, err)
                          : cdb_error_set(err, "out of memory");
  if (rc == 0) rc = clip_embed_pixels(m, pixels, 1, *out, err);
  free(pixels);
  if (rc != 0) {
    free(*out);
    *out = NULL;
  }
  return rc;
}

int cli_split_video_at(const char *arg, char **path, double *t) {
  const char *at = strrchr(arg, '@');
  struct stat st;
  if (!at || at == arg || !cli_parse_moment(at + 1, t)) return 1;
  char *p = strndup(arg, (size_t)(at - arg));
  if (!p || stat(p, &st) != 0 || !S_ISREG(st.st_mode)) {
    free(p);
    return 1;
  }
  *path = p;
  return 0;
}
