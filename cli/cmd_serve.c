/* cmd_serve.c: `clipdb serve`: a local web gallery over the library. libmicrohttpd answers with
 * a pool of threads, each holding its own read-only connection to the library (opened on the
 * thread's first request, closed when the thread ends). The JSON API lives under /api/ (see
 * docs/clipdb.1.md); the page itself is embedded in the binary (serve_web.h). Only photos that
 * are rows of the library are ever read from disk: requests name them by rowid, never by path. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vips/vips.h>

#include "cli/cli.h"
#include "cli/db.h"
#include "cli/meta.h"
#include "cli/moments.h"
#include "cli/output.h"
#include "cli/query.h"
#include "cli/serve_web.h"
#include "embed/clip_internal.h"
#include "embed/image.h"
#include "sqlite-ext/clipdb.h"
#include "src/model_path.h"

#define MAX_QUERY_BYTES 4096
#define MAX_UPLOAD_BYTES (20u << 20)
#define MAX_UPLOAD_PIXELS 100000000.0
#define MAX_K 1000
#define MAX_CONNECTIONS 256 /* each may hold an upload of up to MAX_UPLOAD_BYTES */
#define THUMB_PX 320
#define FRAME_THUMB_PX 240 /* a video frame thumbnail's short side */
#define MAX_LABELS 64
#define MAX_LABELS_BYTES 4096

static const char USAGE[] =
    "usage: clipdb serve [OPTIONS]\n"
    "Serves a web gallery of the library: search as you type, similar photos, search by image.\n"
    "  --listen ADDR:PORT  where to listen (default 127.0.0.1:8765; port 0 picks a free one)\n"
    "  --token T           require T on every request (Authorization: Bearer T, or ?token=T);\n"
    "                      a non-loopback ADDR without --token gets a generated one (printed)\n"
    "  --threads N         worker threads (default 4)\n"
    "  --local             use ./.clipdb instead of the default library\n";

typedef struct server {
  const cli_ctx *ctx;
  bool local;
  char token[65]; /* "" when none is required */
  char *cache_dir;
  pthread_key_t db_key;
} server;

/* A request's state across libmicrohttpd's calls: the uploaded body, when there is one. */
typedef struct request {
  char *body;
  size_t len;
  bool too_big;
} request;

static void close_worker_db(void *p) {
  cli_db_close(p);
  free(p);
}

/* This thread's connection to the library, opened on its first request. NULL with err set. */
static cli_db *worker_db(server *s, cdb_error *err) {
  cli_db *db = pthread_getspecific(s->db_key);
  if (db) return db;
  if (!(db = calloc(1, sizeof *db))) {
    cdb_error_set(err, "out of memory");
    return NULL;
  }
  clip_model *model;
  if (cli_db_open(s->ctx, s->local ? "." : NULL, false, db, err) != 0 ||
      cli_db_model(db, &model, err) != 0) {
    close_worker_db(db);
    return NULL;
  }
  pthread_setspecific(s->db_key, db);
  return db;
}

/* ---- responses ---- */

static __thread double request_start; /* g_get_monotonic_time of this thread's request, in us */

/* Server-Timing: the time spent on this request in the server (benchmarks read it). */
static void add_server_timing(struct MHD_Response *r) {
  char value[48];
  snprintf(value, sizeof value, "app;dur=%.3f", (g_get_monotonic_time() - request_start) / 1e3);
  MHD_add_response_header(r, "Server-Timing", value);
}

static enum MHD_Result send_buffer(struct MHD_Connection *c, unsigned status, const void *data,
                                   size_t len, const char *type, const char *cache) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data,
                                                           MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Cache-Control", cache);
  MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
  add_server_timing(r);
  enum MHD_Result ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_object *o) {
  const char *s = json_object_to_json_string_ext(o, CLI_JSON_FLAGS);
  enum MHD_Result ret = send_buffer(c, status, s, strlen(s), "application/json", "no-store");
  json_object_put(o);
  return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *msg) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "error", json_object_new_string(msg));
  return send_json(c, status, o);
}

/* A failure inside the server: logged whole, answered without its details (paths). */
static enum MHD_Result send_internal(struct MHD_Connection *c, const cdb_error *err) {
  fprintf(stderr, "clipdb: serve: %s\n", err->msg);
  return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error (see the server's log)");
}

/* ---- parameters ---- */

static const char *arg(struct MHD_Connection *c, const char *name) {
  return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

static bool utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    int n = *p < 0x80 ? 0 : (*p >> 5) == 6 ? 1 : (*p >> 4) == 14 ? 2 : (*p >> 3) == 30 ? 3 : -1;
    if (n < 0 || (n == 1 && *p < 0xc2) || (n == 3 && *p > 0xf4)) return false;
    for (int i = 1; i <= n; i++)
      if ((p[i] & 0xc0) != 0x80) return false;
    if (n == 2 && ((*p == 0xe0 && p[1] < 0xa0) || (*p == 0xed && p[1] >= 0xa0))) return false;
    if (n == 3 && ((*p == 0xf0 && p[1] < 0x90) || (*p == 0xf4 && p[1] >= 0x90))) return false;
    p += n + 1;
  }
  return true;
}

/* k, after, before from the query string into opts; a message for the client when invalid. */
static const char *search_opts(struct MHD_Connection *c, cli_search_opts *opts) {
  long k = 24;
  const char *ks = arg(c, "k");
  if (ks && !cli_parse_int(ks, 1, MAX_K, &k)) return "k must be a whole number from 1 to 1000";
  *opts = (cli_search_opts){(int)k, arg(c, "after"), arg(c, "before"), -INFINITY, 0, NULL};
  const char *folder = arg(c, "folder");
  if (folder && *folder) opts->folder = folder;
  if (folder && (strlen(folder) > 4096 || !utf8_valid(folder) || (*folder && *folder != '/')))
    return "folder must be an absolute folder path";
  if (opts->after && !*opts->after) opts->after = NULL;
  if (opts->before && !*opts->before) opts->before = NULL;
  if ((opts->after && cli_check_date(opts->after) != 0) ||
      (opts->before && cli_check_date(opts->before) != 0))
    return "after/before must be dates YYYY[-MM[-DD[ HH:MM[:SS]]]]";
  return NULL;
}

static bool parse_id(struct MHD_Connection *c, int64_t *id) {
  long v;
  const char *s = arg(c, "id");
  if (!s || !cli_parse_int(s, 1, INT64_MAX, &v)) return false;
  *id = v;
  return true;
}

/* ---- API ---- */

static enum MHD_Result send_hits(struct MHD_Connection *c, cli_hit *hits, int n) {
  json_object *arr = json_object_new_array();
  for (int i = 0; i < n; i++) {
    json_object *h = json_object_new_object();
    json_object_object_add(h, "id", json_object_new_int64(hits[i].rowid));
    output_json_path(h, "path", hits[i].path);
    json_object_object_add(h, "score", json_object_new_double(hits[i].score));
    json_object_object_add(h, "date", hits[i].date ? output_json_text(hits[i].date) : NULL);
    json_object_object_add(h, "width", json_object_new_int(hits[i].width));
    json_object_object_add(h, "height", json_object_new_int(hits[i].height));
    json_object_object_add(h, "t", hits[i].t >= 0 ? json_object_new_double(hits[i].t) : NULL);
    json_object_array_add(arr, h);
  }
  cli_hits_free(hits, n);
  json_object *o = json_object_new_object();
  json_object_object_add(o, "results", arr);
  return send_json(c, MHD_HTTP_OK, o);
}

/* A video is one result: its best frame's row (id) and time t. */
static enum MHD_Result run_search(struct MHD_Connection *c, cli_db *db, const cli_query *q,
                                  const cli_search_opts *opts, const char *exclude_video) {
  cdb_error err = {{0}};
  cli_hit *hits;
  int n;
  if (cli_db_search_videos(db, q, opts, exclude_video, &hits, &n, &err) != 0)
    return send_internal(c, &err);
  return send_hits(c, hits, n);
}

/* GET /api/search?q=QUERY&k=&after=&before=: the CLI's query arithmetic, text terms only (a
 * path in a query from the network would read the server's files). */
static enum MHD_Result api_search(struct MHD_Connection *c, cli_db *db) {
  const char *text = arg(c, "q");
  cli_search_opts opts;
  const char *bad = search_opts(c, &opts);
  if (bad) return send_error(c, MHD_HTTP_BAD_REQUEST, bad);
  if (!text || !*text) return send_error(c, MHD_HTTP_BAD_REQUEST, "q (the query) is empty");
  if (strlen(text) > MAX_QUERY_BYTES)
    return send_error(c, MHD_HTTP_BAD_REQUEST, "q is longer than 4096 bytes");
  if (!utf8_valid(text)) return send_error(c, MHD_HTTP_BAD_REQUEST, "q is not valid UTF-8");
  cdb_error err = {{0}};
  query q;
  if (query_parse(text, &q, &err) != 0) return send_error(c, MHD_HTTP_BAD_REQUEST, err.msg);
  for (size_t i = 0; i < q.n; i++) q.terms[i].is_image = false; /* always text here */
  float *vec = NULL;
  int dim = 0;
  bool one_text = q.n == 1 && q.terms[0].weight > 0;
  enum MHD_Result ret;
  if (!one_text && query_vector(db, &q, &vec, &dim, &err) != 0) {
    ret = send_error(c, MHD_HTTP_BAD_REQUEST, "the query's terms cancel out or cannot be embedded");
  } else {
    cli_query cq = {one_text ? q.terms[0].text : NULL, vec, dim};
    ret = run_search(c, db, &cq, &opts, NULL);
  }
  free(vec);
  query_free(&q);
  return ret;
}

/* The path and hash of a library row: 0, 1 when there is no such row, -1 on error. */
static int photo_path(cli_db *db, int64_t id, char **path, char **hash, cdb_error *err) {
  sqlite3_stmt *st;
  if (cli_db_prepare(db, "SELECT path, hash FROM " CLI_TABLE " WHERE rowid = ?1", &st, err) != 0)
    return -1;
  sqlite3_bind_int64(st, 1, id);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    const char *p = (const char *)sqlite3_column_text(st, 0);
    const char *h = (const char *)sqlite3_column_text(st, 1);
    *path = strdup(p ? p : "");
    *hash = strdup(h ? h : "");
    rc = *path && *hash ? 0 : cdb_error_set(err, "out of memory");
  } else {
    rc = rc == SQLITE_DONE ? 1 : cli_db_fail(db, "photo", err);
  }
  sqlite3_finalize(st);
  return rc;
}

/* A row's time in its video (*t), or -1 for a photo. 0, or -1 on error. */
static int frame_time(cli_db *db, int64_t id, double *t, cdb_error *err) {
  *t = -1;
  if (!cli_db_has_frames(db)) return 0;
  sqlite3_stmt *st;
  if (cli_db_prepare(db, "SELECT t FROM " CLI_FRAMES_TABLE " WHERE rowid = ?1", &st, err) != 0)
    return -1;
  sqlite3_bind_int64(st, 1, id);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) *t = sqlite3_column_double(st, 0);
  sqlite3_finalize(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : cli_db_fail(db, "frame", err);
}

/* GET /api/similar?id=ROWID&k=&after=&before=: the photos nearest to a library photo. */
static enum MHD_Result api_similar(struct MHD_Connection *c, cli_db *db) {
  int64_t id, self;
  cli_search_opts opts;
  const char *bad = search_opts(c, &opts);
  if (bad) return send_error(c, MHD_HTTP_BAD_REQUEST, bad);
  if (!parse_id(c, &id)) return send_error(c, MHD_HTTP_BAD_REQUEST, "id must be a photo id");
  cdb_error err = {{0}};
  char *path = NULL, *hash = NULL;
  float *vec = NULL;
  int dim = 0;
  double t = -1; /* a video frame: the video is left out of its results */
  int rc = photo_path(db, id, &path, &hash, &err);
  if (rc == 0) rc = frame_time(db, id, &t, &err);
  if (rc == 0 && t >= 0) rc = cli_db_frame_vector(db, path, t, &vec, &dim, &self, &err);
  else if (rc == 0) rc = cli_db_vector_of_path(db, path, &vec, &dim, &self, &err);
  free(hash);
  if (rc != 0) free(path);
  if (rc == 1) return send_error(c, MHD_HTTP_NOT_FOUND, "no photo with that id");
  if (rc != 0) return send_internal(c, &err);
  opts.exclude_rowid = self;
  cli_query q = {NULL, vec, dim};
  enum MHD_Result ret = run_search(c, db, &q, &opts, t >= 0 ? path : NULL);
  free(path);
  free(vec);
  return ret;
}

/* POST /api/search_image?k=&after=&before= with the image's bytes as the body: embedded in
 * memory, never stored. */
static enum MHD_Result api_search_image(struct MHD_Connection *c, cli_db *db, request *req) {
  cli_search_opts opts;
  const char *bad = search_opts(c, &opts);
  if (bad) return send_error(c, MHD_HTTP_BAD_REQUEST, bad);
  if (req->too_big)
    return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "the image is larger than 20 MiB");
  if (req->len == 0) return send_error(c, MHD_HTTP_BAD_REQUEST, "the body (an image) is empty");
  cdb_error err = {{0}};
  photo_meta meta;
  if (meta_read(req->body, req->len, &meta, &err) != 0)
    return send_error(c, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
                      "the body is not an image clipdb can read");
  if ((double)meta.width * meta.height > MAX_UPLOAD_PIXELS)
    return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "the image has more than 100 million pixels");
  clip_model *m;
  if (cli_db_model(db, &m, &err) != 0) return send_internal(c, &err);
  int dim = clip_model_dim(m);
  float *vec = malloc(sizeof(float) * (size_t)dim);
  const void *bufs[1] = {req->body};
  if (!vec) return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
  enum MHD_Result ret;
  if (clip_embed_image_buffers(m, bufs, &req->len, 1, vec, &err) != 0) {
    ret = send_error(c, MHD_HTTP_UNPROCESSABLE_CONTENT, "the image could not be decoded");
  } else {
    cli_query q = {NULL, vec, dim};
    ret = run_search(c, db, &q, &opts, NULL);
  }
  free(vec);
  return ret;
}

static void add_column(json_object *o, sqlite3_stmt *st, int col) {
  const char *name = sqlite3_column_name(st, col);
  switch (sqlite3_column_type(st, col)) {
    case SQLITE_INTEGER:
      json_object_object_add(o, name, json_object_new_int64(sqlite3_column_int64(st, col)));
      break;
    case SQLITE_TEXT:
      if (strcmp(name, "path") == 0)
        output_json_path(o, name, (const char *)sqlite3_column_text(st, col));
      else
        json_object_object_add(o, name,
                               output_json_text((const char *)sqlite3_column_text(st, col)));
      break;
    default: json_object_object_add(o, name, NULL);
  }
}

/* GET /api/photo?id=ROWID: the row's metadata. */
static enum MHD_Result api_photo(struct MHD_Connection *c, cli_db *db) {
  int64_t id;
  if (!parse_id(c, &id)) return send_error(c, MHD_HTTP_BAD_REQUEST, "id must be a photo id");
  cdb_error err = {{0}};
  sqlite3_stmt *st;
  if (cli_db_prepare(db,
                     "SELECT rowid AS id, path, size, mtime, hash, taken_at, date, width, height,"
                     " format FROM " CLI_TABLE " WHERE rowid = ?1",
                     &st, &err) != 0)
    return send_internal(c, &err);
  sqlite3_bind_int64(st, 1, id);
  int rc = sqlite3_step(st);
  json_object *o = json_object_new_object();
  for (int i = 0; rc == SQLITE_ROW && i < sqlite3_column_count(st); i++) add_column(o, st, i);
  sqlite3_finalize(st);
  double t;
  if (rc == SQLITE_ROW && frame_time(db, id, &t, &err) != 0) {
    json_object_put(o);
    return send_internal(c, &err);
  }
  if (rc == SQLITE_ROW) json_object_object_add(o, "t", t >= 0 ? json_object_new_double(t) : NULL);
  if (rc == SQLITE_ROW) return send_json(c, MHD_HTTP_OK, o);
  json_object_put(o);
  if (rc == SQLITE_DONE) return send_error(c, MHD_HTTP_NOT_FOUND, "no photo with that id");
  cli_db_fail(db, "photo", &err);
  return send_internal(c, &err);
}

static int add_scalar(cli_db *db, json_object *o, const char *key, const char *sql) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db->db, sql, -1, &st, NULL) != SQLITE_OK) return -1;
  int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : -1;
  if (rc == 0) add_column(o, st, 0);
  if (rc == 0 && strcmp(key, sqlite3_column_name(st, 0)) != 0) rc = -1;
  sqlite3_finalize(st);
  return rc;
}

/* GET /api/status: photos, model, index state. */
static enum MHD_Result api_status(struct MHD_Connection *c, cli_db *db) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "version", json_object_new_string(CLIPDB_VERSION));
  const char *slash = strrchr(db->model, '/'); /* a model folder: its name, not the server's path */
  json_object_object_add(o, "model", output_json_text(db->model[0] == '/' ? slash + 1 : db->model));
  int rc = add_scalar(db, o, "photos", "SELECT count(*) AS photos FROM " CLI_TABLE "_rows");
  if (rc == 0)
    rc = add_scalar(db, o, "index", "SELECT clip_index_info('" CLI_TABLE "') AS \"index\"");
  if (rc == 0) {
    json_object *raw = NULL;
    json_object_object_get_ex(o, "index", &raw);
    const char *s = raw ? json_object_get_string(raw) : NULL;
    json_object *parsed = s ? json_tokener_parse(s) : NULL;
    if (parsed) json_object_object_del(parsed, "model");
    if (parsed) json_object_object_add(o, "index", parsed);
  }
  if (rc == 0) return send_json(c, MHD_HTTP_OK, o);
  json_object_put(o);
  cdb_error err = {{0}};
  cli_db_fail(db, "status", &err);
  return send_internal(c, &err);
}

/* ---- files ---- */

static enum MHD_Result send_fd(struct MHD_Connection *c, int fd, const char *type,
                               const char *etag) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return send_error(c, MHD_HTTP_NOT_FOUND, "the photo's file is not readable");
  }
  struct MHD_Response *r = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
  if (!r) {
    close(fd);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Cache-Control", "private, max-age=86400");
  if (etag) MHD_add_response_header(r, "ETag", etag);
  add_server_timing(r);
  enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ret;
}

/* A library photo's path and hash for ?id=, or a sent 4xx/5xx (then returns false). */
static bool lookup_photo(struct MHD_Connection *c, cli_db *db, char **path, char **hash,
                         enum MHD_Result *ret) {
  int64_t id;
  cdb_error err = {{0}};
  int rc = parse_id(c, &id) ? photo_path(db, id, path, hash, &err) : 2;
  if (rc == 0) return true;
  if (rc == 2) *ret = send_error(c, MHD_HTTP_BAD_REQUEST, "id must be a photo id");
  else if (rc == 1) *ret = send_error(c, MHD_HTTP_NOT_FOUND, "no photo with that id");
  else *ret = send_internal(c, &err);
  return false;
}

static const char *image_type(const char *path) {
  const char *dot = strrchr(path, '.');
  static const char *const types[][2] = {{".jpg", "image/jpeg"},  {".jpeg", "image/jpeg"},
                                         {".png", "image/png"},   {".webp", "image/webp"},
                                         {".gif", "image/gif"},   {".tif", "image/tiff"},
                                         {".tiff", "image/tiff"}, {".heic", "image/heic"},
                                         {".avif", "image/avif"}};
  for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
    if (strcasecmp(dot, types[i][0]) == 0) return types[i][1];
  return "application/octet-stream";
}

/* GET /api/image?id=ROWID: the photo's file, streamed. */
static enum MHD_Result api_image(struct MHD_Connection *c, cli_db *db) {
  char *path = NULL, *hash = NULL;
  enum MHD_Result ret = MHD_NO;
  if (!lookup_photo(c, db, &path, &hash, &ret)) return ret;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ret = fd >= 0 ? send_fd(c, fd, image_type(path), NULL)
                : send_error(c, MHD_HTTP_NOT_FOUND, "the photo's file is not readable");
  free(path);
  free(hash);
  return ret;
}

/* Saves img as the cached JPEG thumbnail, written whole then renamed; unrefs img. */
static int save_thumb(VipsImage *img, const char *cache_path) {
  void *buf = NULL;
  size_t len = 0;
  int rc = img ? vips_jpegsave_buffer(img, &buf, &len, "Q", 80, "strip", TRUE, NULL) : -1;
  if (img) g_object_unref(img);
  if (rc != 0) {
    vips_error_clear();
    return -1;
  }
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.%ld.tmp", cache_path, (long)pthread_self());
  FILE *f = fopen(tmp, "wb");
  bool ok = f && fwrite(buf, 1, len, f) == len;
  if (f && fclose(f) != 0) ok = false;
  if (ok && rename(tmp, cache_path) != 0) ok = false;
  if (!ok) unlink(tmp);
  g_free(buf);
  return ok ? 0 : -1;
}

/* ---- videos: the file with HTTP Range requests, so that the browser can seek ---- */

static const char *video_type(const char *path) {
  const char *dot = strrchr(path, '.');
  static const char *const types[][2] = {{".mp4", "video/mp4"},        {".m4v", "video/mp4"},
                                         {".mov", "video/quicktime"},  {".webm", "video/webm"},
                                         {".mkv", "video/x-matroska"}, {".avi", "video/x-msvideo"}};
  for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
    if (strcasecmp(dot, types[i][0]) == 0) return types[i][1];
  return "application/octet-stream";
}

/* A Range header against a file of size bytes: 1 with [*from, *to] (inclusive) for one
 * satisfiable "bytes=A-B", "bytes=A-" or "bytes=-N"; -1 when it is unsatisfiable; 0 when it is
 * absent, malformed or asks several ranges (the whole file is sent, as RFC 9110 allows). */
static int parse_range(const char *h, int64_t size, int64_t *from, int64_t *to) {
  if (!h || strncmp(h, "bytes=", 6) != 0 || strchr(h, ',')) return 0;
  const char *p = h + 6, *dash = strchr(p, '-');
  long long a = -1, b = -1;
  char *end;
  if (!dash) return 0;
  if (dash > p) {
    a = strtoll(p, &end, 10);
    if (end != dash || a < 0 || *p == '+' || *p == '-') return 0;
  }
  if (dash[1]) {
    b = strtoll(dash + 1, &end, 10);
    if (*end || b < 0 || dash[1] == '+' || dash[1] == '-') return 0;
  }
  if (a < 0 && b < 0) return 0;
  if (a < 0) { /* the last b bytes */
    if (b == 0 || size == 0) return -1;
    *from = b >= size ? 0 : size - b;
    *to = size - 1;
    return 1;
  }
  if (b >= 0 && b < a) return 0;
  if (a >= size) return -1;
  *from = a;
  *to = b < 0 || b >= size ? size - 1 : b;
  return 1;
}

static enum MHD_Result send_range(struct MHD_Connection *c, int fd, const char *type) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return send_error(c, MHD_HTTP_NOT_FOUND, "the video's file is not readable");
  }
  int64_t size = st.st_size, from = 0, to = size - 1;
  const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
  int ranged = parse_range(h, size, &from, &to);
  char content_range[96];
  if (ranged < 0) {
    close(fd);
    snprintf(content_range, sizeof content_range, "bytes */%lld", (long long)size);
    struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Range", content_range);
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_RANGE_NOT_SATISFIABLE, r);
    MHD_destroy_response(r);
    return ret;
  }
  struct MHD_Response *r =
      MHD_create_response_from_fd_at_offset64((uint64_t)(size ? to - from + 1 : 0), fd,
                                              (uint64_t)from);
  if (!r) {
    close(fd);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Accept-Ranges", "bytes");
  MHD_add_response_header(r, "Cache-Control", "private, max-age=3600");
  if (ranged) {
    snprintf(content_range, sizeof content_range, "bytes %lld-%lld/%lld", (long long)from,
             (long long)to, (long long)size);
    MHD_add_response_header(r, "Content-Range", content_range);
  }
  add_server_timing(r);
  enum MHD_Result ret = MHD_queue_response(c, ranged ? MHD_HTTP_PARTIAL_CONTENT : MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ret;
}

/* GET /api/video?id=ROWID (a row of a video's frame): the video's file, with Range requests. */
static enum MHD_Result api_video(struct MHD_Connection *c, cli_db *db) {
  char *path = NULL, *hash = NULL;
  enum MHD_Result ret = MHD_NO;
  if (!lookup_photo(c, db, &path, &hash, &ret)) return ret;
  int64_t id = 0;
  double t = -1;
  cdb_error err = {{0}};
  int fd = -1;
  if (!parse_id(c, &id) || frame_time(db, id, &t, &err) != 0) ret = send_internal(c, &err);
  else if (t < 0) ret = send_error(c, MHD_HTTP_NOT_FOUND, "that id is not a video's frame");
  else if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
    ret = send_error(c, MHD_HTTP_NOT_FOUND, "the video's file is not readable");
  else ret = send_range(c, fd, video_type(path));
  free(path);
  free(hash);
  return ret;
}

/* Makes the thumbnail (libvips shrink-on-load) into cache_path. */
static int make_thumb(const char *path, const char *cache_path) {
  VipsImage *img = NULL;
  if (vips_thumbnail(path, &img, THUMB_PX, "height", THUMB_PX, NULL) != 0) {
    vips_error_clear();
    return -1;
  }
  return save_thumb(img, cache_path);
}

/* A video's frame at t (the first sample at or after it, else the last) as the thumbnail:
 * scaled by libswscale to a short side of FRAME_THUMB_PX while decoding. */
static int make_frame_thumb(const char *path, double t, const char *cache_path) {
  clip_image_spec spec = {.resize_shortest = FRAME_THUMB_PX,
                          .crop_height = FRAME_THUMB_PX,
                          .crop_width = FRAME_THUMB_PX};
  clip_video_params params = clip_video_default_params();
  params.interval = t > 0 ? t : 1.0;
  params.max_samples = 0;
  cdb_error err = {{0}};
  clip_video *v = clip_video_open_spec(&spec, path, &params, &err);
  clip_video_frame f;
  uint8_t *rgb = NULL;
  int w = 0, h = 0;
  while (v && clip_video_next(v, &f, &err) > 0) {
    uint8_t *grown = realloc(rgb, (size_t)f.width * f.height * 3);
    if (!grown) break;
    rgb = grown;
    memcpy(rgb, f.rgb, (size_t)f.width * f.height * 3);
    w = f.width, h = f.height;
    if (f.t + 1e-3 >= t) break;
  }
  clip_video_close(v);
  VipsImage *img = rgb && w > 0 ? vips_image_new_from_memory(rgb, (size_t)w * h * 3, w, h, 3,
                                                              VIPS_FORMAT_UCHAR)
                                : NULL;
  int rc = img ? save_thumb(img, cache_path) : -1; /* saved before rgb is freed */
  free(rgb);
  return rc;
}

/* The cache key of a frame's thumbnail: SHA-256 of the video's path, size, mtime and t (hex,
 * 64 digits, into key[65]); -1 when the file is gone. */
static int frame_thumb_key(const char *path, double t, char key[65]) {
  struct stat st;
  if (stat(path, &st) != 0) return -1;
  char *text = g_strdup_printf("%s\n%lld\n%lld\n%.3f", path, (long long)st.st_size,
                               (long long)st.st_mtime, t);
  char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, text, -1);
  snprintf(key, 65, "%s", sum ? sum : "");
  g_free(text);
  g_free(sum);
  return sum ? 0 : -1;
}

/* GET /api/thumb?id=ROWID: a JPEG at most 320 px, cached by the file's hash. */
static enum MHD_Result api_thumb(struct MHD_Connection *c, server *s, cli_db *db) {
  char *path = NULL, *hash = NULL;
  enum MHD_Result ret = MHD_NO;
  if (!lookup_photo(c, db, &path, &hash, &ret)) return ret;
  int64_t id = 0;
  double t = -1; /* a video frame's thumbnail is cached by its own key */
  cdb_error err = {{0}};
  char key[65];
  if (parse_id(c, &id) && frame_time(db, id, &t, &err) == 0 && t >= 0 &&
      frame_thumb_key(path, t, key) == 0) {
    free(hash);
    hash = strdup(key);
  }
  if (!hash) {
    free(path);
    return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
  }
  char cache_path[4096], etag[80];
  bool hashed = strlen(hash) == 64 && strspn(hash, "0123456789abcdef") == 64;
  snprintf(cache_path, sizeof cache_path, "%s/%s-%d.jpg", s->cache_dir, hashed ? hash : "x",
           THUMB_PX);
  snprintf(etag, sizeof etag, "\"%s\"", hash);
  const char *inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-None-Match");
  int fd = hashed ? open(cache_path, O_RDONLY | O_CLOEXEC) : -1;
  if (fd >= 0 && inm && strcmp(inm, etag) == 0) {
    close(fd);
    ret = send_buffer(c, MHD_HTTP_NOT_MODIFIED, "", 0, "image/jpeg", "private, max-age=86400");
  } else if (fd >= 0) {
    ret = send_fd(c, fd, "image/jpeg", etag);
  } else if (hashed &&
             (t >= 0 ? make_frame_thumb(path, t, cache_path) : make_thumb(path, cache_path)) == 0 &&
             (fd = open(cache_path, O_RDONLY | O_CLOEXEC)) >= 0) {
    ret = send_fd(c, fd, "image/jpeg", etag);
  } else {
    ret = send_error(c, MHD_HTTP_NOT_FOUND, "no thumbnail could be made of that photo");
  }
  free(path);
  free(hash);
  return ret;
}

/* Adds "ids": the rowid of each of "paths" to every group (the page asks thumbnails by id). */
static int add_group_ids(cli_db *db, json_object *groups, cdb_error *err) {
  sqlite3_stmt *st;
  if (cli_db_prepare(db, "SELECT rowid FROM " CLI_TABLE " WHERE path = ?1", &st, err) != 0)
    return -1;
  int rc = 0;
  for (size_t g = 0; rc == 0 && g < json_object_array_length(groups); g++) {
    json_object *group = json_object_array_get_idx(groups, g), *paths, *bytes = NULL;
    json_object_object_get_ex(group, "paths", &paths);
    json_object_object_get_ex(group, "paths_bytes", &bytes);
    json_object *ids = json_object_new_array();
    for (size_t i = 0; rc == 0 && i < json_object_array_length(paths); i++) {
      /* a path that is not UTF-8 is exact only in paths_bytes */
      gsize len = 0;
      guchar *raw =
          bytes ? g_base64_decode(json_object_get_string(json_object_array_get_idx(bytes, i)), &len)
                : NULL;
      const char *path = json_object_get_string(json_object_array_get_idx(paths, i));
      sqlite3_bind_text(st, 1, raw ? (const char *)raw : path, raw ? (int)len : -1,
                        SQLITE_TRANSIENT);
      g_free(raw);
      int step = sqlite3_step(st);
      if (step == SQLITE_ROW)
        json_object_array_add(ids, json_object_new_int64(sqlite3_column_int64(st, 0)));
      else if (step == SQLITE_DONE) json_object_array_add(ids, NULL); /* removed since */
      else rc = cli_db_fail(db, "dedup", err);
      sqlite3_reset(st);
    }
    json_object_object_add(group, "ids", ids);
  }
  sqlite3_finalize(st);
  return rc;
}

/* GET /api/dedup?threshold=S (default 0.95): dedup's groups of near-duplicate photos. */
static enum MHD_Result api_dedup(struct MHD_Connection *c, cli_db *db) {
  double threshold = 0.95;
  const char *ts = arg(c, "threshold");
  if (ts && (!cli_parse_float(ts, &threshold) || threshold < 0 || threshold > 1))
    return send_error(c, MHD_HTTP_BAD_REQUEST, "threshold must be a number from 0 to 1");
  cdb_error err = {{0}};
  json_object *groups;
  if (cli_dedup_groups(db, threshold, &groups, &err) != 0) return send_internal(c, &err);
  if (add_group_ids(db, groups, &err) != 0) {
    json_object_put(groups);
    return send_internal(c, &err);
  }
  json_object *o = json_object_new_object();
  json_object_object_add(o, "groups", groups);
  return send_json(c, MHD_HTTP_OK, o);
}

/* Splits "cat, dog,bird" into at most MAX_LABELS trimmed, non-empty labels (in place). */
static int split_labels(char *s, char **labels) {
  int n = 0;
  for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
    while (*tok == ' ') tok++;
    char *end = tok + strlen(tok);
    while (end > tok && end[-1] == ' ') *--end = '\0';
    if (!*tok) continue;
    if (n == MAX_LABELS) return -1;
    labels[n++] = tok;
  }
  return n;
}

/* GET /api/classify?id=ROWID&labels=cat,dog: zero-shot probabilities, most likely first. */
static enum MHD_Result api_classify(struct MHD_Connection *c, cli_db *db) {
  const char *given = arg(c, "labels");
  if (!given || strlen(given) > MAX_LABELS_BYTES || !utf8_valid(given))
    return send_error(c, MHD_HTTP_BAD_REQUEST, "labels must be comma-separated UTF-8 text");
  char *copy = strdup(given), *labels[MAX_LABELS];
  int n = copy ? split_labels(copy, labels) : -1;
  if (n < 2) {
    free(copy);
    return send_error(c, MHD_HTTP_BAD_REQUEST, "labels must name 2 to 64 labels");
  }
  char *path = NULL, *hash = NULL, *dir = NULL, *scores = NULL;
  enum MHD_Result ret = MHD_NO;
  cdb_error err = {{0}};
  if (lookup_photo(c, db, &path, &hash, &ret)) {
    dir = cdb_model_resolve(db->model, &err);
    scores = dir ? cli_classify_sql(db->db, dir, path, labels, n, CLIPDB_CLASSIFY_TEMPLATE, &err)
                 : NULL;
    json_object *arr = scores ? json_tokener_parse(scores) : NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "labels", arr);
    ret = arr ? send_json(c, MHD_HTTP_OK, o) : (json_object_put(o), send_internal(c, &err));
  }
  free(copy);
  free(path);
  free(hash);
  free(dir);
  free(scores);
  return ret;
}

/* ---- dispatch ---- */

static bool token_ok(struct MHD_Connection *c, const server *s) {
  if (!s->token[0]) return true;
  const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
  const char *given = auth && strncmp(auth, "Bearer ", 7) == 0 ? auth + 7 : arg(c, "token");
  if (!given || strlen(given) != strlen(s->token)) return false;
  unsigned char diff = 0; /* constant time */
  for (size_t i = 0; given[i]; i++) diff |= (unsigned char)(given[i] ^ s->token[i]);
  return diff == 0;
}

static enum MHD_Result send_page(struct MHD_Connection *c, const char *url) {
  for (size_t i = 0; i < SERVE_WEB_N; i++) {
    if (strcmp(url, SERVE_WEB[i].url) != 0) continue;
    return send_buffer(c, MHD_HTTP_OK, SERVE_WEB[i].data, SERVE_WEB[i].len, SERVE_WEB[i].type,
                       "no-cache");
  }
  return send_error(c, MHD_HTTP_NOT_FOUND, "no such page");
}

static enum MHD_Result route(struct MHD_Connection *c, server *s, const char *url,
                             const char *method, request *req) {
  request_start = (double)g_get_monotonic_time();
  if (!token_ok(c, s))
    return send_error(c, MHD_HTTP_UNAUTHORIZED, "a token is required (Authorization: Bearer T)");
  bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
  if (strncmp(url, "/api/", 5) != 0) {
    if (!get) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET here");
    return send_page(c, url);
  }
  bool post_route = strcmp(url, "/api/search_image") == 0;
  if (post_route ? strcmp(method, "POST") != 0 : !get)
    return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, post_route ? "POST an image" : "only GET");
  cdb_error err = {{0}};
  cli_db *db = worker_db(s, &err);
  if (!db) return send_internal(c, &err);
  if (strcmp(url, "/api/status") == 0) return api_status(c, db);
  if (strcmp(url, "/api/search") == 0) return api_search(c, db);
  if (strcmp(url, "/api/similar") == 0) return api_similar(c, db);
  if (strcmp(url, "/api/photo") == 0) return api_photo(c, db);
  if (strcmp(url, "/api/thumb") == 0) return api_thumb(c, s, db);
  if (strcmp(url, "/api/image") == 0) return api_image(c, db);
  if (strcmp(url, "/api/video") == 0) return api_video(c, db);
  if (strcmp(url, "/api/dedup") == 0) return api_dedup(c, db);
  if (strcmp(url, "/api/classify") == 0) return api_classify(c, db);
  if (post_route) return api_search_image(c, db, req);
  return send_error(c, MHD_HTTP_NOT_FOUND, "no such API endpoint");
}

/* Collects a POST body (at most MAX_UPLOAD_BYTES; the rest is read and dropped), then routes. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **state) {
  (void)version;
  request *req = *state;
  if (!req) {
    if (!(req = calloc(1, sizeof *req))) return MHD_NO;
    *state = req;
    /* before any body is read: an upload without the token is refused unread */
    return token_ok(c, cls) ? MHD_YES : route(c, cls, url, method, req);
  }
  if (*upload_size) {
    if (req->len + *upload_size > MAX_UPLOAD_BYTES) req->too_big = true;
    char *grown = req->too_big ? NULL : realloc(req->body, req->len + *upload_size);
    if (grown) {
      memcpy(grown + req->len, upload_data, *upload_size);
      req->body = grown;
      req->len += *upload_size;
    } else {
      req->too_big = true;
    }
    *upload_size = 0;
    return MHD_YES;
  }
  return route(c, cls, url, method, req);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)c, (void)toe;
  request *req = *state;
  if (req) free(req->body);
  free(req);
  *state = NULL;
}

/* ---- setup ---- */

static int parse_listen(const char *s, struct sockaddr_in *addr) {
  const char *colon = strrchr(s, ':');
  long port;
  char host[64];
  if (!colon || (size_t)(colon - s) >= sizeof host || !cli_parse_int(colon + 1, 0, 65535, &port))
    return -1;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  *addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  return inet_pton(AF_INET, host, &addr->sin_addr) == 1 ? 0 : -1;
}

static int make_token(char out[65]) {
  unsigned char raw[16];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) return -1;
  for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", raw[i]);
  return 0;
}

/* $XDG_CACHE_HOME/clipdb/thumbs (~/.cache/clipdb/thumbs), made when missing. malloc'd. */
static char *thumb_cache_dir(void) {
  const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  char *dir = xdg && *xdg
                  ? g_build_filename(xdg, "clipdb", "thumbs", NULL)
                  : g_build_filename(home ? home : "/tmp", ".cache", "clipdb", "thumbs", NULL);
  if (g_mkdir_with_parents(dir, 0700) != 0) {
    g_free(dir);
    return NULL;
  }
  char *out = strdup(dir);
  g_free(dir);
  return out;
}

typedef struct serve_args {
  const char *listen, *token;
  long threads;
  bool local;
} serve_args;

static int parse_args(int argc, char **argv, serve_args *a) {
  static const struct option opts[] = {{"listen", required_argument, 0, 'l'},
                                       {"token", required_argument, 0, 't'},
                                       {"threads", required_argument, 0, 'j'},
                                       {"local", no_argument, 0, 'L'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  *a = (serve_args){"127.0.0.1:8765", NULL, 4, false};
  int c;
  while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
    if (c == 'l') a->listen = optarg;
    else if (c == 't') a->token = optarg;
    else if (c == 'L') a->local = true;
    else if (c == 'j' && !cli_parse_int(optarg, 1, 64, &a->threads))
      return cli_usage_error("serve", "--threads must be from 1 to 64");
    else if (c == 'h') {
      fputs(USAGE, stdout);
      return -1;
    } else if (c != 'j') return cli_option_error("serve", c, argv);
  }
  if (optind != argc) return cli_usage_error("serve", "unexpected argument \"%s\"", argv[optind]);
  if (a->token && (!*a->token || strlen(a->token) > 64 || !utf8_valid(a->token)))
    return cli_usage_error("serve", "--token must be 1 to 64 bytes");
  return 0;
}

/* Opens the library once up front, so a missing library is reported before listening. */
static int check_library(server *s) {
  cdb_error err = {{0}};
  cli_db *db = worker_db(s, &err);
  if (!db) cli_error("serve: %s", err.msg);
  return db ? 0 : -1;
}

static int run_daemon(server *s, const struct sockaddr_in *addr, long threads) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, NULL); /* the workers inherit it; this thread waits */
  struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL,
                                          NULL, on_request, s, MHD_OPTION_SOCK_ADDR, addr,
                                          MHD_OPTION_THREAD_POOL_SIZE, (unsigned)threads,
                                          MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                          MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536,
                                          MHD_OPTION_CONNECTION_TIMEOUT, 60u,
                                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS,
                                          MHD_OPTION_END);
  if (!d) {
    cli_error("serve: cannot listen on that address (%s)", strerror(errno));
    return CLI_FAIL;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  char host[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &addr->sin_addr, host, sizeof host);
  printf("clipdb: serving on http://%s:%u/%s%s\n", host, info ? info->port : 0,
         s->token[0] ? "?token=" : "", s->token);
  fflush(stdout);
  int sig;
  sigwait(&stop, &sig);
  MHD_stop_daemon(d);
  fprintf(stderr, "clipdb: serve: stopped\n");
  return CLI_OK;
}

int cmd_serve(int argc, char **argv, const cli_ctx *ctx) {
  serve_args a;
  int prc = parse_args(argc, argv, &a);
  if (prc != 0) return prc < 0 ? CLI_OK : prc;
  struct sockaddr_in addr;
  if (parse_listen(a.listen, &addr) != 0)
    return cli_usage_error("serve", "--listen must be IPv4ADDR:PORT, e.g. 127.0.0.1:8765");
  server s = {.ctx = ctx, .local = a.local};
  bool loopback = (ntohl(addr.sin_addr.s_addr) >> 24) == 127;
  if (a.token) snprintf(s.token, sizeof s.token, "%s", a.token);
  else if (!loopback && make_token(s.token) != 0)
    return cli_error("serve: no random token"), CLI_FAIL;
  if (clip_vips_start() != 0 || !(s.cache_dir = thumb_cache_dir())) {
    cli_error("serve: cannot start libvips or make the thumbnail cache folder");
    return CLI_FAIL;
  }
  pthread_key_create(&s.db_key, close_worker_db);
  int rc = check_library(&s) == 0 ? run_daemon(&s, &addr, a.threads) : CLI_FAIL;
  cli_db *mine = pthread_getspecific(s.db_key);
  if (mine) close_worker_db(mine);
  pthread_key_delete(s.db_key);
  free(s.cache_dir);
  return rc;
}
