/* cmd_index.c: `clipdb index DIR...`: incremental indexing of photo folders.
 *
 * 1. Walk the folders (walk.c) and compare with the rows already stored: a path with the same
 *    size and mtime is skipped; everything else becomes a job.
 * 2. Decoder threads (one per core) take jobs: read the file, hash it (SHA-256), and either find
 *    a stored row with that hash (a moved or copied photo: its vector is reused) or read the
 *    header metadata and decode + preprocess the pixels (clip_image_load_buffer).
 * 3. The main thread batches decoded images through clip_embed_pixels (which itself uses every
 *    core; a batch is cut short instead of waiting for the decoders) and inserts rows with
 *    precomputed embeddings through SQL, committing every COMMIT_EVERY photos so an interrupted
 *    run keeps its progress and the next run resumes.
 * 4. Rows whose files are gone (under the indexed folders) and the old rows of changed files are
 *    deleted at the end, so a moved photo can still reuse its old row's vector. A folder that
 *    could not be listed hides nothing: the rows under it are kept, and the run exits with
 *    CLI_INCOMPLETE.
 * One run at a time per library: cli_db_open takes the library's writer lock for the run. */
#include <getopt.h>
#include <glib.h>
#include <json-c/json.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vips/vips.h>

#include "cli/cli.h"
#include "cli/db.h"
#include "cli/meta.h"
#include "cli/moments.h"
#include "cli/output.h"
#include "cli/progress.h"
#include "cli/walk.h"
#include "embed/clip.h"
#include "src/file.h"
#include "src/pool.h"

#define COMMIT_EVERY 256 /* photos per transaction: progress kept on interruption, few fsyncs */
#define MAX_COMMIT_EVERY 1000000
#define EMBED_BATCH 16 /* images per clip_embed_pixels call */
#define QUEUE_CAP 48   /* decoded images waiting for the encoder (~600 KB each at 224 px) */
#define MAX_DECODERS 64
/* A video frame is kept when its cosine to the last kept frame is below this (a scene change):
 * a static shot costs one row. */
#define VIDEO_SCENE 0.95f

static const char USAGE[] =
    "usage: clipdb index [--local] [--exclude GLOB]... [--no-videos] [--include-hidden] [--json]\n"
    "                    [--threads N] DIR...\n"
    "Adds the photos and videos under each DIR (recursively) to the library; run it again to\n"
    "pick up changes: unchanged files (same size and mtime) are skipped, moved or copied\n"
    "photos reuse their vector (same SHA-256), deleted files are removed. A video (mp4, mov,\n"
    "m4v, mkv, webm, avi) is sampled every 2 s and a frame is stored when the scene changed:\n"
    "each becomes a row with the video's path and its time t. Unreadable files are listed and\n"
    "skipped. A folder that cannot be listed keeps its photos in the library and makes the\n"
    "exit status 3. Progress is committed every 256 photos: an interrupted run resumes.\n"
    "Another `index` of the same library at the same time is refused.\n"
    "  --local          keep the library in DIR/.clipdb (the first DIR) instead of the default\n"
    "  --exclude GLOB   skip files and folders matching GLOB (fnmatch; against the base name\n"
    "                   and the path relative to DIR); repeatable\n"
    "  --no-videos      leave videos out (those already in the library are kept)\n"
    "  --include-hidden also index hidden files and folders (names starting with '.', macOS\n"
    "                   ._* files, Synology @eaDir folders), skipped by default; a run\n"
    "                   without it removes the hidden photos an earlier run added\n"
    "  --json           print the summary as JSON (counts and the failures)\n"
    "  --threads N      decoder threads (default: one per core)\n"
    "  --commit-every N photos per transaction (default 256)\n"
    "  --quiet          no progress output\n";

static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig) {
  (void)sig;
  interrupted = 1;
}

/* ---- stored rows ---- */

typedef struct stored_row {
  int64_t rowid, size, mtime;
  bool seen;      /* the file still exists unchanged, or was re-indexed */
  GArray *frames; /* a video: the rowids of its frames (int64_t; rowid is the first) */
} stored_row;

typedef struct job {
  const walk_file *file;
  int64_t old_rowid;        /* the row of the previous version of this path, or 0 */
  const GArray *old_frames; /* a video's previous frames (rowids), or NULL */
  bool is_video;
} job;

/* A video's decoder thread sends RESULT_FRAME for each sample, then RESULT_VIDEO_END (or
 * RESULT_FAILED): its frames are written when the whole video has been read. */
typedef enum {
  RESULT_FAILED,
  RESULT_REUSE,
  RESULT_PIXELS,
  RESULT_FRAME,
  RESULT_VIDEO_END
} result_kind;

typedef struct result {
  result_kind kind;
  const job *job;
  char hash[META_HASH_HEX];
  photo_meta meta;
  int64_t reuse_rowid;
  float *pixels;
  double t;    /* RESULT_FRAME: seconds from the start of the video */
  char *error; /* RESULT_FAILED */
} result;

/* ---- the decoder side ---- */

typedef struct pipeline {
  clip_model *model;
  const job *jobs;
  size_t n_jobs;
  atomic_size_t next_job;
  atomic_int stop;
  _Atomic long long decode_ns; /* summed over decoder threads (hash + header + decode) */
  size_t pixel_floats;
  clip_video_params video_params;
  /* hash -> rowid of a stored row with those bytes; shared with the main thread */
  GHashTable *by_hash;
  pthread_mutex_t hash_lock;
  /* bounded queue of results */
  result *queue[QUEUE_CAP];
  size_t q_head, q_len, producers_left;
  pthread_mutex_t lock;
  pthread_cond_t not_empty, not_full;
} pipeline;

static void queue_push(pipeline *pl, result *r) {
  pthread_mutex_lock(&pl->lock);
  while (pl->q_len == QUEUE_CAP) pthread_cond_wait(&pl->not_full, &pl->lock);
  pl->queue[(pl->q_head + pl->q_len++) % QUEUE_CAP] = r;
  pthread_cond_signal(&pl->not_empty);
  pthread_mutex_unlock(&pl->lock);
}

/* NULL when every decoder has finished and the queue is empty. */
static result *queue_pop(pipeline *pl) {
  pthread_mutex_lock(&pl->lock);
  while (pl->q_len == 0 && pl->producers_left > 0) pthread_cond_wait(&pl->not_empty, &pl->lock);
  result *r = NULL;
  if (pl->q_len > 0) {
    r = pl->queue[pl->q_head];
    pl->q_head = (pl->q_head + 1) % QUEUE_CAP;
    pl->q_len--;
    pthread_cond_signal(&pl->not_full);
  }
  pthread_mutex_unlock(&pl->lock);
  return r;
}

/* True when no decoded image is waiting but decoders are still at work. */
static bool queue_starved(pipeline *pl) {
  pthread_mutex_lock(&pl->lock);
  bool starved = pl->q_len == 0 && pl->producers_left > 0;
  pthread_mutex_unlock(&pl->lock);
  return starved;
}

static int64_t lookup_hash(pipeline *pl, const char *hash) {
  pthread_mutex_lock(&pl->hash_lock);
  gpointer v = g_hash_table_lookup(pl->by_hash, hash);
  pthread_mutex_unlock(&pl->hash_lock);
  return v ? *(int64_t *)v : 0;
}

static void remember_hash(pipeline *pl, const char *hash, int64_t rowid) {
  int64_t *v = g_new(int64_t, 1);
  *v = rowid;
  pthread_mutex_lock(&pl->hash_lock);
  if (!g_hash_table_contains(pl->by_hash, hash))
    g_hash_table_insert(pl->by_hash, g_strdup(hash), v);
  else g_free(v);
  pthread_mutex_unlock(&pl->hash_lock);
}

static void process_job(pipeline *pl, const job *j, result *r) {
  cdb_error err = {{0}};
  cdb_mmap map = {0};
  r->job = j;
  r->kind = RESULT_FAILED;
  if (j->file->size == 0) {
    r->error = strdup("empty file");
    return;
  }
  if (cdb_mmap_open(j->file->path, &map, &err) != 0) {
    r->error = strdup(err.msg);
    return;
  }
  meta_hash(map.data, map.size, r->hash);
  if ((r->reuse_rowid = lookup_hash(pl, r->hash)) != 0) {
    r->kind = RESULT_REUSE;
  } else if (meta_read(map.data, map.size, &r->meta, &err) != 0) {
    r->error = strdup(err.msg);
  } else if (!(r->pixels = malloc(pl->pixel_floats * sizeof(float)))) {
    r->error = strdup("out of memory");
  } else if (clip_image_load_buffer(pl->model, map.data, map.size, r->pixels, &err) != 0) {
    r->error = strdup(err.msg);
    free(r->pixels);
    r->pixels = NULL;
  } else {
    r->kind = RESULT_PIXELS;
  }
  cdb_mmap_close(&map);
  if (r->kind == RESULT_FAILED && !r->error) r->error = strdup("failed");
}

/* "video: PATH: reason" -> "reason" (the summary names the file already). */
static const char *without_path(const char *msg, const char *path) {
  static const char prefix[] = "video: ";
  size_t n = strlen(prefix), len = strlen(path);
  if (strncmp(msg, prefix, n) == 0 && strncmp(msg + n, path, len) == 0 &&
      strncmp(msg + n + len, ": ", 2) == 0)
    return msg + n + len + 2;
  return msg;
}

/* Samples a video on this thread, queueing each frame's pixels, then the end (or the failure):
 * the encoder batches these frames with the photos'. */
static void process_video(pipeline *pl, const job *j, result *end) {
  cdb_error err = {{0}};
  end->job = j;
  clip_video *v = j->file->size == 0
                      ? NULL
                      : clip_video_open(pl->model, j->file->path, &pl->video_params, &err);
  if (j->file->size == 0) cdb_error_set(&err, "empty file"); /* as for a photo */
  int rc = v ? 0 : -1;
  if (v) clip_video_source_size(v, &end->meta.width, &end->meta.height);
  clip_video_frame f;
  while (rc == 0) {
    if (atomic_load(&pl->stop) || interrupted) {
      rc = cdb_error_set(&err, "interrupted");
      break;
    }
    int got = clip_video_next(v, &f, &err);
    if (got <= 0) {
      rc = got;
      break;
    }
    result *r = calloc(1, sizeof *r);
    float *pixels = malloc(pl->pixel_floats * sizeof(float));
    if (!r || !pixels || clip_video_frame_pixels(pl->model, &f, pixels, &err) != 0) {
      if (!r || !pixels) cdb_error_set(&err, "out of memory");
      free(r);
      free(pixels);
      rc = -1;
      break;
    }
    *r = (result){.kind = RESULT_FRAME, .job = j, .pixels = pixels, .t = f.t};
    queue_push(pl, r);
  }
  clip_video_close(v);
  end->kind = rc == 0 ? RESULT_VIDEO_END : RESULT_FAILED;
  if (rc != 0) end->error = strdup(without_path(err.msg, j->file->path));
}

static void *decoder_main(void *arg) {
  pipeline *pl = arg;
  for (;;) {
    size_t i = atomic_fetch_add(&pl->next_job, 1);
    if (i >= pl->n_jobs || atomic_load(&pl->stop) || interrupted) break;
    result *r = calloc(1, sizeof *r);
    if (!r) break; /* the main thread notices the missing results as unprocessed */
    double t = progress_now();
    if (pl->jobs[i].is_video) process_video(pl, &pl->jobs[i], r);
    else process_job(pl, &pl->jobs[i], r);
    atomic_fetch_add(&pl->decode_ns, (long long)((progress_now() - t) * 1e9));
    queue_push(pl, r);
  }
  pthread_mutex_lock(&pl->lock);
  pl->producers_left--;
  pthread_cond_broadcast(&pl->not_empty);
  pthread_mutex_unlock(&pl->lock);
  vips_thread_shutdown();
  return NULL;
}

static void result_free(result *r) {
  if (!r) return;
  free(r->pixels);
  free(r->error);
  free(r);
}

/* ---- the writer side ---- */

typedef struct counts {
  size_t added, updated, reused, skipped, removed, failed, embedded;
  size_t frames;     /* video frames stored (kept by the scene filter) */
  size_t duplicates; /* extra rows of one path (left by concurrent runs of older versions) */
} counts;

/* Wall seconds of the main thread per stage, and decoder-thread seconds (for bench/cli). */
typedef struct stage_times {
  double decode_thread_s, wait_s, encode_s, sqlite_s;
} stage_times;

typedef struct indexer {
  cli_db db;
  sqlite3_stmt *insert, *read_row;
  GHashTable *stored; /* path -> stored_row */
  GArray *stale;      /* rowids to delete at the end (int64_t) */
  GHashTable *videos; /* job -> video_frames: the kept frames of videos being read */
  sqlite3_stmt *insert_t, *delete_row, *delete_t;
  counts c;
  stage_times times;
  json_object *failures, *unlisted; /* [{"path", "error"}] */
  progress prog;
  bool quiet;
  size_t in_txn; /* photos written since the last commit */
  size_t commit_every;
} indexer;

static void report_failure(indexer *ix, const char *path, const char *reason) {
  ix->c.failed++;
  json_object *o = json_object_new_object();
  output_json_path(o, "path", path);
  json_object_object_add(o, "error", output_json_text(reason));
  json_object_array_add(ix->failures, o);
  progress_message(ix->quiet ? NULL : &ix->prog, "clipdb: skipped %s: %s", path, reason);
}

/* A folder (or entry) whose content is unknown: its rows are kept (delete_stale). */
static void report_unlisted(indexer *ix, const char *path, const char *reason) {
  json_object *o = json_object_new_object();
  output_json_path(o, "path", path);
  json_object_object_add(o, "error", output_json_text(reason));
  json_object_array_add(ix->unlisted, o);
  progress_message(ix->quiet ? NULL : &ix->prog,
                   "clipdb: cannot list %s: %s; its photos in the library are kept", path, reason);
}

static void format_date(int64_t mtime, char out[20]) {
  time_t t = (time_t)mtime;
  struct tm tm;
  if (!localtime_r(&t, &tm) || strftime(out, 20, "%Y-%m-%d %H:%M:%S", &tm) == 0) out[0] = '\0';
}

static int bind_text_or_null(sqlite3_stmt *st, int i, const char *s) {
  return s && *s ? sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

/* INSERT INTO photos(image, path, size, mtime, hash, taken_at, date, width, height, format,
 * embedding): image holds the path too, so the table reads naturally from SQL. */
static int insert_row(indexer *ix, const walk_file *f, const char *hash, const photo_meta *m,
                      const void *vec, int vec_bytes, int64_t *rowid, cdb_error *err) {
  sqlite3_stmt *st = ix->insert;
  char date[20];
  if (m->taken_at[0]) memcpy(date, m->taken_at, sizeof date);
  else format_date(f->mtime, date);
  sqlite3_reset(st);
  sqlite3_bind_text(st, 1, f->path, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, f->path, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, f->size);
  sqlite3_bind_int64(st, 4, f->mtime);
  sqlite3_bind_text(st, 5, hash, -1, SQLITE_STATIC);
  bind_text_or_null(st, 6, m->taken_at);
  bind_text_or_null(st, 7, date);
  sqlite3_bind_int(st, 8, m->width);
  sqlite3_bind_int(st, 9, m->height);
  bind_text_or_null(st, 10, m->format);
  sqlite3_bind_blob(st, 11, vec, vec_bytes, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) return cli_db_fail(&ix->db, "insert", err);
  *rowid = sqlite3_last_insert_rowid(ix->db.db);
  return 0;
}

static int commit_if_due(indexer *ix, bool force, cdb_error *err) {
  if (ix->in_txn == 0 || (!force && ix->in_txn < ix->commit_every)) return 0;
  if (cli_db_exec(&ix->db, "COMMIT; BEGIN", err) != 0) return -1;
  ix->in_txn = 0;
  return 0;
}

static void mark_done(indexer *ix, const job *j) {
  if (j->old_rowid) {
    g_array_append_val(ix->stale, j->old_rowid);
    ix->c.updated++;
  }
}

/* A file whose bytes are already stored: copy that row's vector and metadata. */
static int write_reused(indexer *ix, result *r, cdb_error *err) {
  sqlite3_stmt *st = ix->read_row;
  sqlite3_reset(st);
  sqlite3_bind_int64(st, 1, r->reuse_rowid);
  if (sqlite3_step(st) != SQLITE_ROW) {
    sqlite3_reset(st);
    return cli_db_fail(&ix->db, "reading a stored row", err);
  }
  photo_meta m = {0};
  const char *taken = (const char *)sqlite3_column_text(st, 0);
  const char *format = (const char *)sqlite3_column_text(st, 3);
  if (taken) g_strlcpy(m.taken_at, taken, sizeof m.taken_at);
  if (format) g_strlcpy(m.format, format, sizeof m.format);
  m.width = sqlite3_column_int(st, 1);
  m.height = sqlite3_column_int(st, 2);
  int64_t rowid;
  int rc = insert_row(ix, r->job->file, r->hash, &m, sqlite3_column_blob(st, 4),
                      sqlite3_column_bytes(st, 4), &rowid, err);
  sqlite3_reset(st);
  if (rc != 0) return -1;
  if (!r->job->old_rowid) ix->c.reused++;
  mark_done(ix, r->job);
  ix->in_txn++;
  return commit_if_due(ix, false, err);
}

/* ---- videos: frames kept by the scene filter, written when the video ends ---- */

typedef struct video_frames {
  GArray *t;    /* double */
  GArray *vecs; /* float, dim per frame */
} video_frames;

static void video_frames_free(gpointer p) {
  video_frames *v = p;
  g_array_free(v->t, TRUE);
  g_array_free(v->vecs, TRUE);
  g_free(v);
}

static float dot(const float *a, const float *b, int dim) {
  float s = 0;
  for (int i = 0; i < dim; i++) s += a[i] * b[i];
  return s;
}

/* An embedded frame: kept when it differs enough from the last kept one (a scene change). */
static int keep_frame(indexer *ix, const result *r, const float *vec, int dim) {
  video_frames *v = g_hash_table_lookup(ix->videos, r->job);
  if (!v) {
    v = g_new0(video_frames, 1);
    v->t = g_array_new(FALSE, FALSE, sizeof(double));
    v->vecs = g_array_new(FALSE, FALSE, sizeof(float));
    g_hash_table_insert(ix->videos, (gpointer)r->job, v);
  }
  ix->c.embedded++;
  size_t n = v->t->len;
  if (n > 0 && dot(vec, &g_array_index(v->vecs, float, (n - 1) * (size_t)dim), dim) >= VIDEO_SCENE)
    return 0;
  g_array_append_val(v->t, r->t);
  g_array_append_vals(v->vecs, vec, (guint)dim);
  return 0;
}

static int delete_rowid(indexer *ix, int64_t rowid, cdb_error *err) {
  sqlite3_stmt *sts[2] = {ix->delete_row, ix->delete_t};
  for (int i = 0; i < 2; i++) {
    sqlite3_bind_int64(sts[i], 1, rowid);
    int rc = sqlite3_step(sts[i]);
    sqlite3_reset(sts[i]);
    if (rc != SQLITE_DONE) return cli_db_fail(&ix->db, "delete", err);
  }
  return 0;
}

/* The rows of a video's previous version, to go at the end (a failed or vanished video). */
static void stale_video(indexer *ix, const job *j) {
  if (j->old_frames) g_array_append_vals(ix->stale, j->old_frames->data, j->old_frames->len);
}

/* Replaces a video's previous frames by the kept ones, between two commits: a reader sees the
 * old frames or the new ones, never a mix. */
static int write_video(indexer *ix, const job *j, video_frames *v, int width, int height,
                       cdb_error *err) {
  int dim = (int)(v->vecs->len / (v->t->len ? v->t->len : 1));
  int rc = 0;
  for (guint i = 0; rc == 0 && j->old_frames && i < j->old_frames->len; i++)
    rc = delete_rowid(ix, g_array_index(j->old_frames, int64_t, i), err);
  photo_meta m = {.width = width, .height = height};
  const char *dot_ext = strrchr(j->file->path, '.');
  g_strlcpy(m.format, dot_ext ? dot_ext + 1 : "", sizeof m.format);
  for (guint i = 0; rc == 0 && i < v->t->len; i++) {
    int64_t rowid;
    rc = insert_row(ix, j->file, NULL, &m, &g_array_index(v->vecs, float, (size_t)i *dim),
                    dim * (int)sizeof(float), &rowid, err);
    if (rc != 0) break;
    sqlite3_bind_int64(ix->insert_t, 1, rowid);
    sqlite3_bind_double(ix->insert_t, 2, g_array_index(v->t, double, i));
    if (sqlite3_step(ix->insert_t) != SQLITE_DONE) rc = cli_db_fail(&ix->db, "insert", err);
    sqlite3_reset(ix->insert_t);
  }
  if (rc != 0) return -1;
  ix->c.frames += v->t->len;
  if (j->old_rowid) ix->c.updated++;
  else ix->c.added++;
  ix->in_txn += v->t->len;
  return commit_if_due(ix, false, err);
}

/* The end of a video (RESULT_VIDEO_END, or RESULT_FAILED with the reason). */
static int finish_video(indexer *ix, const result *r, cdb_error *err) {
  video_frames *v = g_hash_table_lookup(ix->videos, r->job);
  int rc = 0;
  if (r->kind == RESULT_FAILED || !v) {
    report_failure(ix, r->job->file->path, r->error ? r->error : "no frame");
    stale_video(ix, r->job);
  } else {
    rc = write_video(ix, r->job, v, r->meta.width, r->meta.height, err);
  }
  g_hash_table_remove(ix->videos, r->job);
  return rc;
}

typedef struct batch {
  result *items[EMBED_BATCH];
  int n;
  float *pixels; /* EMBED_BATCH * pixel_floats */
  float *vecs;   /* EMBED_BATCH * dim */
} batch;

static int flush_batch(indexer *ix, pipeline *pl, batch *b, int dim, cdb_error *err) {
  if (b->n == 0) return 0;
  for (int i = 0; i < b->n; i++)
    memcpy(b->pixels + (size_t)i * pl->pixel_floats, b->items[i]->pixels,
           pl->pixel_floats * sizeof(float));
  double t = progress_now();
  int rc = clip_embed_pixels(pl->model, b->pixels, b->n, b->vecs, err);
  double t2 = progress_now();
  ix->times.encode_s += t2 - t;
  for (int i = 0; rc == 0 && i < b->n; i++) {
    result *r = b->items[i];
    if (r->kind == RESULT_FRAME) {
      rc = keep_frame(ix, r, b->vecs + (size_t)i * dim, dim);
      continue;
    }
    int64_t rowid;
    rc = insert_row(ix, r->job->file, r->hash, &r->meta, b->vecs + (size_t)i * dim,
                    dim * (int)sizeof(float), &rowid, err);
    if (rc != 0) break;
    remember_hash(pl, r->hash, rowid);
    if (!r->job->old_rowid) ix->c.added++;
    ix->c.embedded++;
    mark_done(ix, r->job);
    ix->in_txn++;
    rc = commit_if_due(ix, false, err); /* every commit_every photos exactly */
  }
  ix->times.sqlite_s += progress_now() - t2;
  for (int i = 0; i < b->n; i++) result_free(b->items[i]);
  b->n = 0;
  return rc;
}

static bool batch_has_hash(const batch *b, const char *hash) {
  for (int i = 0; i < b->n; i++)
    if (strcmp(b->items[i]->hash, hash) == 0) return true;
  return false;
}

/* A decoded photo joins the batch, unless a byte-identical file decoded at the same time was
 * stored already: then it reuses that vector instead of being embedded twice. */
static int add_decoded(indexer *ix, pipeline *pl, batch *b, result *r, int dim, cdb_error *err) {
  if (r->kind == RESULT_FRAME) {
    b->items[b->n++] = r;
    return b->n == EMBED_BATCH ? flush_batch(ix, pl, b, dim, err) : 0;
  }
  if (batch_has_hash(b, r->hash) && flush_batch(ix, pl, b, dim, err) != 0) {
    result_free(r);
    return -1;
  }
  if ((r->reuse_rowid = lookup_hash(pl, r->hash)) != 0) {
    int rc = write_reused(ix, r, err);
    result_free(r);
    return rc;
  }
  b->items[b->n++] = r;
  return b->n == EMBED_BATCH ? flush_batch(ix, pl, b, dim, err) : 0;
}

/* Consumes every decoder result; returns -1 on a database or encoder error. */
static int run_writer(indexer *ix, pipeline *pl, int dim, cdb_error *err) {
  batch b = {0};
  b.pixels = malloc(EMBED_BATCH * pl->pixel_floats * sizeof(float));
  b.vecs = malloc((size_t)EMBED_BATCH * dim * sizeof(float));
  if (!b.pixels || !b.vecs) {
    free(b.pixels);
    free(b.vecs);
    return cdb_error_set(err, "out of memory");
  }
  size_t done = 0;
  int rc = 0;
  result *r;
  double t = progress_now();
  for (;;) {
    /* Rather than wait for a full batch, encode what has arrived: the encoder's cost per image
     * barely depends on the batch size, and the first call prepares the vision tower while the
     * decoders carry on. */
    if (rc == 0 && !interrupted && b.n > 0 && queue_starved(pl)) {
      if ((rc = flush_batch(ix, pl, &b, dim, err)) != 0) atomic_store(&pl->stop, 1);
      t = progress_now();
    }
    if (!(r = queue_pop(pl))) break;
    double t2 = progress_now();
    ix->times.wait_s += t2 - t;
    if (rc != 0 || interrupted) {
      result_free(r); /* drain so the decoders can finish; the next run redoes these */
      continue;
    }
    if (r->kind != RESULT_FRAME) done++;
    if (r->job->is_video && r->kind != RESULT_FRAME) {
      rc = flush_batch(ix, pl, &b, dim, err); /* the video's last frames */
      if (rc == 0) rc = finish_video(ix, r, err);
      result_free(r);
    } else if (r->kind == RESULT_FAILED) {
      report_failure(ix, r->job->file->path, r->error);
      if (r->job->old_rowid) g_array_append_val(ix->stale, r->job->old_rowid);
      result_free(r);
    } else if (r->kind == RESULT_REUSE) {
      rc = write_reused(ix, r, err);
      ix->times.sqlite_s += progress_now() - t2;
      result_free(r);
    } else {
      rc = add_decoded(ix, pl, &b, r, dim, err);
    }
    double t3 = progress_now();
    if (rc == 0) rc = commit_if_due(ix, false, err);
    ix->times.sqlite_s += progress_now() - t3;
    if (rc != 0) atomic_store(&pl->stop, 1);
    if (!ix->quiet) progress_update(&ix->prog, done);
    t = progress_now();
  }
  if (rc == 0 && !interrupted) rc = flush_batch(ix, pl, &b, dim, err);
  else
    for (int i = 0; i < b.n; i++) result_free(b.items[i]);
  if (!ix->quiet) progress_update(&ix->prog, done);
  free(b.pixels);
  free(b.vecs);
  return rc;
}

/* ---- planning ---- */

static bool under_roots(const char *path, char **roots, int n) {
  for (int i = 0; i < n; i++) {
    size_t len = strlen(roots[i]);
    if (strncmp(path, roots[i], len) == 0 &&
        (path[len] == '/' || path[len] == '\0' || (len > 0 && roots[i][len - 1] == '/')))
      return true;
  }
  return false;
}

static void stored_row_free(gpointer p) {
  stored_row *row = p;
  if (row->frames) g_array_free(row->frames, TRUE);
  g_free(row);
}

/* A video frame's row: joins the video's stored_row (true), or starts one (false). */
static bool add_stored_frame(indexer *ix, const char *path, int64_t rowid, stored_row **row) {
  stored_row *video = g_hash_table_lookup(ix->stored, path);
  if (video && video->frames) {
    g_array_append_val(video->frames, rowid);
    return true;
  }
  (*row)->frames = g_array_new(FALSE, FALSE, sizeof(int64_t));
  g_array_append_val((*row)->frames, rowid);
  return false;
}

static int load_stored(indexer *ix, GHashTable *by_hash, cdb_error *err) {
  sqlite3_stmt *st;
  /* frame times whose row SQL deleted go first: a new row may get that rowid */
  if (cli_db_exec(&ix->db,
                  "DELETE FROM " CLI_FRAMES_TABLE
                  " WHERE rowid NOT IN (SELECT rowid FROM " CLI_TABLE ")",
                  err) != 0 ||
      cli_db_prepare(&ix->db,
                     "SELECT p.rowid, p.path, p.size, p.mtime, p.hash, f.t IS NOT NULL"
                     " FROM " CLI_TABLE " AS p LEFT JOIN " CLI_FRAMES_TABLE
                     " AS f ON f.rowid = p.rowid ORDER BY p.rowid",
                     &st, err) != 0)
    return -1;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *path = (const char *)sqlite3_column_text(st, 1);
    const char *hash = (const char *)sqlite3_column_text(st, 4);
    stored_row *row = g_new0(stored_row, 1);
    row->rowid = sqlite3_column_int64(st, 0);
    row->size = sqlite3_column_int64(st, 2);
    row->mtime = sqlite3_column_int64(st, 3);
    if (path && sqlite3_column_int(st, 5) && add_stored_frame(ix, path, row->rowid, &row)) {
      g_free(row);
    } else if (path) {
      stored_row *older = g_hash_table_lookup(ix->stored, path);
      if (older) { /* two rows for one path: keep the newest */
        if (older->frames) g_array_append_vals(ix->stale, older->frames->data, older->frames->len);
        else g_array_append_val(ix->stale, older->rowid);
        ix->c.duplicates++;
      }
      g_hash_table_replace(ix->stored, g_strdup(path), row);
    } else {
      g_free(row);
    }
    if (hash && !g_hash_table_contains(by_hash, hash)) {
      int64_t *v = g_new(int64_t, 1);
      *v = sqlite3_column_int64(st, 0);
      g_hash_table_insert(by_hash, g_strdup(hash), v);
    }
  }
  sqlite3_finalize(st);
  return rc == SQLITE_DONE ? 0 : cli_db_fail(&ix->db, "reading the library", err);
}

/* Jobs for new and changed files; unchanged ones are marked seen and counted as skipped. */
static job *plan_jobs(indexer *ix, const walk_result *w, size_t *n_jobs) {
  job *jobs = calloc(w->n_files ? w->n_files : 1, sizeof *jobs);
  if (!jobs) return NULL;
  size_t n = 0;
  GHashTable *planned = g_hash_table_new(g_str_hash, g_str_equal); /* overlapping roots */
  for (size_t i = 0; i < w->n_files; i++) {
    const walk_file *f = &w->files[i];
    if (!g_hash_table_add(planned, f->path)) continue;
    stored_row *row = g_hash_table_lookup(ix->stored, f->path);
    if (row) row->seen = true;
    if (row && row->size == f->size && row->mtime == f->mtime) {
      ix->c.skipped++;
      continue;
    }
    bool video = walk_is_video_name(f->path) && !walk_is_image_name(f->path);
    jobs[n++] = (job){f, row ? row->rowid : 0, row ? row->frames : NULL, video};
  }
  g_hash_table_destroy(planned);
  *n_jobs = n;
  return jobs;
}

/* Rows of files that no longer exist: under an indexed folder, and not under one that could not
 * be listed. */
static bool is_gone(const char *path, const stored_row *row, char **roots, int n_roots,
                    const walk_result *w) {
  if (row->seen || !under_roots(path, roots, n_roots)) return false;
  if (!w->with_videos && walk_is_video_name(path)) return false; /* --no-videos: kept */
  for (size_t i = 0; i < w->n_problems; i++)
    if (w->problems[i].unlisted && under_roots(path, &w->problems[i].path, 1)) return false;
  return true;
}

static int delete_stale(indexer *ix, char **roots, int n_roots, const walk_result *w, bool complete,
                        cdb_error *err) {
  int rc = 0;
  GHashTableIter it;
  gpointer key, value;
  if (complete) { /* rows of files that no longer exist under the indexed folders */
    g_hash_table_iter_init(&it, ix->stored);
    while (g_hash_table_iter_next(&it, &key, &value)) {
      stored_row *row = value;
      if (!is_gone(key, row, roots, n_roots, w)) continue;
      if (row->frames) g_array_append_vals(ix->stale, row->frames->data, row->frames->len);
      else g_array_append_val(ix->stale, row->rowid);
      ix->c.removed++;
    }
  }
  for (guint i = 0; rc == 0 && i < ix->stale->len; i++)
    rc = delete_rowid(ix, g_array_index(ix->stale, int64_t, i), err);
  return rc;
}

/* ---- the command ---- */

static int start_decoders(pipeline *pl, pthread_t *threads, int n) {
  pl->producers_left = (size_t)n;
  for (int i = 0; i < n; i++) {
    if (pthread_create(&threads[i], NULL, decoder_main, pl) != 0) {
      pthread_mutex_lock(&pl->lock);
      pl->producers_left -= (size_t)(n - i);
      pthread_mutex_unlock(&pl->lock);
      return i;
    }
  }
  return n;
}

static void print_summary(const indexer *ix, bool json, double seconds, bool was_interrupted) {
  const counts *c = &ix->c;
  if (json) {
    json_object *o = json_object_new_object();
    output_json_path(o, "database", ix->db.path);
    json_object_object_add(o, "added", json_object_new_int64((int64_t)c->added));
    json_object_object_add(o, "updated", json_object_new_int64((int64_t)c->updated));
    json_object_object_add(o, "reused", json_object_new_int64((int64_t)c->reused));
    json_object_object_add(o, "skipped", json_object_new_int64((int64_t)c->skipped));
    json_object_object_add(o, "removed", json_object_new_int64((int64_t)c->removed));
    json_object_object_add(o, "duplicates_removed", json_object_new_int64((int64_t)c->duplicates));
    json_object_object_add(o, "failed", json_object_new_int64((int64_t)c->failed));
    json_object_object_add(o, "embedded", json_object_new_int64((int64_t)c->embedded));
    json_object_object_add(o, "frames", json_object_new_int64((int64_t)c->frames));
    json_object_object_add(o, "seconds", json_object_new_double(seconds));
    json_object_object_add(o, "interrupted", json_object_new_boolean(was_interrupted));
    json_object *st = json_object_new_object();
    json_object_object_add(st, "decode_thread_seconds",
                           json_object_new_double(ix->times.decode_thread_s));
    json_object_object_add(st, "wait_for_decode_seconds", json_object_new_double(ix->times.wait_s));
    json_object_object_add(st, "encode_seconds", json_object_new_double(ix->times.encode_s));
    json_object_object_add(st, "sqlite_seconds", json_object_new_double(ix->times.sqlite_s));
    json_object_object_add(o, "stages", st);
    json_object_object_add(o, "failures", json_object_get(ix->failures));
    json_object_object_add(o, "not_listed", json_object_get(ix->unlisted));
    puts(json_object_to_json_string_ext(o, CLI_JSON_FLAGS));
    json_object_put(o);
    return;
  }
  printf("%s%zu added, %zu updated, %zu reused, %zu skipped, %zu removed, %zu failed",
         was_interrupted ? "interrupted, progress kept: " : "", c->added, c->updated, c->reused,
         c->skipped, c->removed, c->failed);
  if (c->duplicates) printf(", %zu duplicate rows removed", c->duplicates);
  if (c->frames) printf(", %zu video frames stored", c->frames);
  size_t unlisted = json_object_array_length(ix->unlisted);
  if (unlisted) printf(", %zu not listed (photos kept)", unlisted);
  printf(" (%zu embedded in %.1f s, %.1f images/s)\n", c->embedded, seconds,
         seconds > 0 ? (double)c->embedded / seconds : 0.0);
}

typedef struct index_opts {
  bool local, json, quiet, no_videos, include_hidden;
  long threads, commit_every;
  char **excludes;
  size_t n_excludes;
} index_opts;

static int parse_opts(int argc, char **argv, index_opts *o) {
  static const struct option longopts[] = {{"local", no_argument, 0, 'l'},
                                           {"exclude", required_argument, 0, 'x'},
                                           {"json", no_argument, 0, 'j'},
                                           {"threads", required_argument, 0, 't'},
                                           {"quiet", no_argument, 0, 'q'},
                                           {"help", no_argument, 0, 'h'},
                                           {"commit-every", required_argument, 0, 'c'},
                                           {"no-videos", no_argument, 0, 'V'},
                                           {"include-hidden", no_argument, 0, 'H'},
                                           {0, 0, 0, 0}};
  o->excludes = calloc((size_t)argc, sizeof *o->excludes);
  if (!o->excludes) return cli_usage_error(NULL, "out of memory");
  int c;
  while ((c = getopt_long(argc, argv, ":hx:jt:q", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': return fputs(USAGE, stdout), -1;
      case 'l': o->local = true; break;
      case 'x': o->excludes[o->n_excludes++] = optarg; break;
      case 'j': o->json = true; break;
      case 'q': o->quiet = true; break;
      case 'V': o->no_videos = true; break;
      case 'H': o->include_hidden = true; break;
      case 't':
        if (!cli_parse_int(optarg, 1, MAX_DECODERS, &o->threads))
          return cli_usage_error("index", "--threads wants a number from 1 to %d", MAX_DECODERS);
        break;
      case 'c':
        if (!cli_parse_int(optarg, 1, MAX_COMMIT_EVERY, &o->commit_every))
          return cli_usage_error("index", "--commit-every wants a number from 1 to %d",
                                 MAX_COMMIT_EVERY);
        break;
      default: return cli_option_error("index", c, argv);
    }
  }
  if (optind == argc) return cli_usage_error("index", "expected at least one DIR");
  return 0;
}

static int prepare_video_statements(indexer *ix, cdb_error *err) {
  if (cli_db_prepare(&ix->db, "INSERT INTO " CLI_FRAMES_TABLE "(rowid, t) VALUES (?1, ?2)",
                     &ix->insert_t, err) != 0 ||
      cli_db_prepare(&ix->db, "DELETE FROM " CLI_TABLE " WHERE rowid = ?1", &ix->delete_row, err) !=
          0 ||
      cli_db_prepare(&ix->db, "DELETE FROM " CLI_FRAMES_TABLE " WHERE rowid = ?1", &ix->delete_t,
                     err) != 0)
    return -1;
  return 0;
}

static int index_run(indexer *ix, const cli_ctx *ctx, const index_opts *o, char **roots,
                     int n_roots, walk_result *w, double t0, cdb_error *err) {
  clip_model *model;
  if (cli_db_model(&ix->db, &model, err) != 0) return -1;
  int dim = clip_model_dim(model), side = clip_model_image_size(model);
  GHashTable *by_hash = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  size_t n_jobs = 0;
  job *jobs = NULL;
  int rc = load_stored(ix, by_hash, err);
  if (rc == 0 && !(jobs = plan_jobs(ix, w, &n_jobs))) rc = cdb_error_set(err, "out of memory");
  if (rc == 0)
    rc = cli_db_prepare(&ix->db,
                        "INSERT INTO " CLI_TABLE "(image, path, size, mtime, hash, taken_at, "
                        "date, width, height, format, embedding) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        &ix->insert, err);
  if (rc == 0)
    rc = cli_db_prepare(&ix->db,
                        "SELECT taken_at, width, height, format, embedding FROM " CLI_TABLE
                        " WHERE rowid = ?1",
                        &ix->read_row, err);
  if (rc == 0) rc = prepare_video_statements(ix, err);
  if (rc == 0) rc = cli_db_exec(&ix->db, "BEGIN", err);
  if (rc == 0) {
    pipeline pl = {.model = model,
                   .jobs = jobs,
                   .n_jobs = n_jobs,
                   .by_hash = by_hash,
                   .pixel_floats = (size_t)3 * side * side,
                   .video_params = clip_video_default_params()};
    pthread_mutex_init(&pl.lock, NULL);
    pthread_mutex_init(&pl.hash_lock, NULL);
    pthread_cond_init(&pl.not_empty, NULL);
    pthread_cond_init(&pl.not_full, NULL);
    int want = o->threads ? (int)o->threads : cdb_pool_threads();
    if ((size_t)want > n_jobs) want = n_jobs ? (int)n_jobs : 1;
    pthread_t threads[MAX_DECODERS];
    int started = start_decoders(&pl, threads, want);
    if (!ix->quiet) progress_start(&ix->prog, "indexing", n_jobs, ctx->stderr_tty);
    rc = started > 0 || n_jobs == 0 ? run_writer(ix, &pl, dim, err)
                                    : cdb_error_set(err, "cannot start decoder threads");
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    if (!ix->quiet) progress_finish(&ix->prog);
    bool complete = rc == 0 && !interrupted && atomic_load(&pl.next_job) >= n_jobs;
    double t = progress_now();
    if (rc == 0) rc = delete_stale(ix, roots, n_roots, w, complete, err);
    if (rc == 0) rc = cli_db_exec(&ix->db, "COMMIT", err);
    else sqlite3_exec(ix->db.db, "COMMIT", NULL, NULL, NULL); /* keep the photos written */
    ix->times.sqlite_s += progress_now() - t;
    ix->times.decode_thread_s = (double)atomic_load(&pl.decode_ns) * 1e-9;
    pthread_cond_destroy(&pl.not_full);
    pthread_cond_destroy(&pl.not_empty);
    pthread_mutex_destroy(&pl.hash_lock);
    pthread_mutex_destroy(&pl.lock);
  }
  if (rc == 0) print_summary(ix, o->json, progress_now() - t0, interrupted);
  free(jobs);
  g_hash_table_destroy(by_hash);
  return rc;
}

int cmd_index(int argc, char **argv, const cli_ctx *ctx) {
  index_opts o = {0};
  int prc = parse_opts(argc, argv, &o);
  if (prc != 0) {
    free(o.excludes);
    return prc < 0 ? CLI_OK : prc;
  }
  char **roots = argv + optind;
  int n_roots = argc - optind;
  struct sigaction sa = {.sa_handler = on_interrupt}; /* stop cleanly, keeping what is done */
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  double t0 = progress_now();
  indexer ix = {.quiet = o.quiet,
                .failures = json_object_new_array(),
                .unlisted = json_object_new_array(),
                .commit_every = o.commit_every ? (size_t)o.commit_every : COMMIT_EVERY};
  ix.stored = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, stored_row_free);
  ix.videos = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, video_frames_free);
  ix.stale = g_array_new(FALSE, FALSE, sizeof(int64_t));
  walk_result w = {.with_videos = !o.no_videos};
  char **abs_roots = calloc((size_t)n_roots, sizeof *abs_roots);
  cdb_error err = {{0}};
  int rc = abs_roots ? 0 : cdb_error_set(&err, "out of memory");
  for (int i = 0; rc == 0 && i < n_roots; i++) {
    if (walk_tree_hidden(roots[i], o.excludes, o.n_excludes, o.include_hidden, &w) != 0)
      rc = cdb_error_set(&err, "out of memory");
    abs_roots[i] = realpath(roots[i], NULL);
    if (!abs_roots[i]) abs_roots[i] = strdup(roots[i]);
  }
  if (rc == 0 && w.n_files == 0 && w.n_problems == (size_t)n_roots && n_roots == 1)
    rc = cdb_error_set(&err, "%s: %s", w.problems[0].path, w.problems[0].reason);
  if (rc == 0) rc = cli_db_open(ctx, o.local ? abs_roots[0] : NULL, true, &ix.db, &err);
  if (rc == 0) {
    for (size_t i = 0; i < w.n_problems; i++) {
      if (w.problems[i].unlisted) report_unlisted(&ix, w.problems[i].path, w.problems[i].reason);
      else report_failure(&ix, w.problems[i].path, w.problems[i].reason);
    }
    if (clip_vips_start() != 0) rc = cdb_error_set(&err, "libvips failed to start");
    else vips_concurrency_set(1); /* parallelism comes from the decoder threads */
    if (rc == 0) rc = index_run(&ix, ctx, &o, abs_roots, n_roots, &w, t0, &err);
  }
  if (rc != 0) cli_error("index: %s", err.msg);
  sqlite3_finalize(ix.insert);
  sqlite3_finalize(ix.read_row);
  sqlite3_finalize(ix.insert_t);
  sqlite3_finalize(ix.delete_row);
  sqlite3_finalize(ix.delete_t);
  if (rc != 0) cli_db_close_discarding_empty(&ix.db);
  else cli_db_close(&ix.db);
  for (int i = 0; abs_roots && i < n_roots; i++) free(abs_roots[i]);
  free(abs_roots);
  size_t w_unlisted = w.n_unlisted;
  walk_result_free(&w);
  g_hash_table_destroy(ix.stored);
  g_array_free(ix.stale, TRUE);
  g_hash_table_destroy(ix.videos);
  json_object_put(ix.failures);
  json_object_put(ix.unlisted);
  free(o.excludes);
  if (rc != 0) return CLI_FAIL;
  if (interrupted) return 130;
  if (w_unlisted) {
    cli_error("index: incomplete: %zu folder(s) could not be listed; nothing under them was "
              "added, updated or removed",
              w_unlisted);
    return CLI_INCOMPLETE;
  }
  return CLI_OK;
}
