/* video.c: clip_video_frames(path [, interval [, model]]), an eponymous table-valued function
 * that yields a video's sampled frames as rows (frame, t): frame is PNG bytes of the frame at the
 * size the model resizes images to before its centre crop (lossless, so a clip table embeds it
 * exactly as the frame's pixels), t its time in seconds. Sampling and decoding are embed/'s
 * (clip_video_open); every sampled frame is yielded, the scene-change filter being the CLI's.
 * It reads files, so it is direct-only: triggers and views stored in a database cannot use it. */
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/internal.h"

enum { V_FRAME, V_T, V_PATH, V_INTERVAL, V_MODEL, V_SCENE };
#define V_ARGS 4

typedef struct video_vtab {
  sqlite3_vtab base;
  cdbx_conn *conn;
} video_vtab;

typedef struct video_cursor {
  sqlite3_vtab_cursor base;
  clip_video *video;
  void *png;
  size_t png_len;
  double t;
  sqlite3_value *args[V_ARGS]; /* path, interval, model, scene: as given */
  clip_model *model;
  double scene; /* > 0: keep a frame only when its cosine to the last kept one is below */
  float *pixels, *vec, *last;
  int have_last;
  int eof;
  int64_t row;
} video_cursor;

static int v_connect(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                     char **errmsg) {
  (void)argc, (void)argv, (void)errmsg;
  int rc = sqlite3_declare_vtab(db, "CREATE TABLE x(frame, t, path HIDDEN, interval HIDDEN, "
                                    "model HIDDEN, scene HIDDEN)");
  /* It opens the files it is given: not from a trigger or view stored in a database file. */
  if (rc == SQLITE_OK) rc = sqlite3_vtab_config(db, SQLITE_VTAB_DIRECTONLY);
  if (rc != SQLITE_OK) return rc;
  video_vtab *v = sqlite3_malloc(sizeof *v);
  if (!v) return SQLITE_NOMEM;
  memset(v, 0, sizeof *v);
  v->conn = aux;
  *out = &v->base;
  return SQLITE_OK;
}

static int v_disconnect(sqlite3_vtab *vt) {
  sqlite3_free(vt);
  return SQLITE_OK;
}

/* idxNum bit (col - V_PATH) says the argument is present; argv follows column order. */
static int v_best_index(sqlite3_vtab *vt, sqlite3_index_info *info) {
  (void)vt;
  int where[V_ARGS] = {-1, -1, -1, -1};
  for (int i = 0; i < info->nConstraint; i++) {
    const struct sqlite3_index_constraint *c = &info->aConstraint[i];
    if (c->iColumn < V_PATH || c->op != SQLITE_INDEX_CONSTRAINT_EQ) continue;
    if (!c->usable) return SQLITE_CONSTRAINT;
    where[c->iColumn - V_PATH] = i;
  }
  int argv_i = 0;
  info->idxNum = 0;
  for (int j = 0; j < V_ARGS; j++) {
    if (where[j] < 0) continue;
    info->idxNum |= 1 << j;
    info->aConstraintUsage[where[j]].argvIndex = ++argv_i;
    info->aConstraintUsage[where[j]].omit = 1;
  }
  info->estimatedCost = 1e6;
  info->estimatedRows = 100;
  return SQLITE_OK;
}

static int v_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out) {
  (void)vt;
  video_cursor *c = sqlite3_malloc(sizeof *c);
  if (!c) return SQLITE_NOMEM;
  memset(c, 0, sizeof *c);
  c->eof = 1;
  *out = &c->base;
  return SQLITE_OK;
}

static void reset(video_cursor *c) {
  clip_video_close(c->video);
  c->video = NULL;
  g_free(c->png);
  c->png = NULL;
  for (int j = 0; j < V_ARGS; j++) sqlite3_value_free(c->args[j]);
  memset(c->args, 0, sizeof c->args);
  sqlite3_free(c->pixels);
  sqlite3_free(c->vec);
  c->pixels = c->vec = c->last = NULL;
  c->have_last = 0;
  c->scene = 0;
  c->eof = 1;
  c->row = 0;
}

/* Scene filter: 1 when the frame differs enough from the last kept one (and is then kept). */
static int scene_changed(video_cursor *c, const clip_video_frame *f, cdb_error *err) {
  int dim = clip_model_dim(c->model);
  if (clip_video_frame_pixels(c->model, f, c->pixels, err) < 0 ||
      clip_embed_pixels(c->model, c->pixels, 1, c->vec, err) < 0)
    return -1;
  double sim = 0;
  for (int i = 0; c->have_last && i < dim; i++) sim += (double)c->vec[i] * c->last[i];
  if (c->have_last && sim >= c->scene) return 0;
  memcpy(c->last, c->vec, sizeof(float) * dim);
  c->have_last = 1;
  return 1;
}

static int v_close(sqlite3_vtab_cursor *cur) {
  reset((video_cursor *)cur);
  sqlite3_free(cur);
  return SQLITE_OK;
}

static int v_error(sqlite3_vtab *vt, const char *msg) {
  sqlite3_free(vt->zErrMsg);
  vt->zErrMsg = sqlite3_mprintf("clip_video_frames: %s", msg);
  return SQLITE_ERROR;
}

/* Decodes the next sample into the cursor's PNG. */
static int advance(video_cursor *c) {
  clip_video_frame f;
  cdb_error err = {0};
  g_free(c->png);
  c->png = NULL;
  int got, keep = 0;
  while ((got = clip_video_next(c->video, &f, &err)) > 0 && !keep) {
    keep = c->scene > 0 ? scene_changed(c, &f, &err) : 1;
    if (keep < 0) got = -1;
    if (keep != 0) break;
  }
  if (got > 0 && clip_video_frame_png(&f, &c->png, &c->png_len, &err) < 0) got = -1;
  if (got < 0) {
    c->eof = 1;
    return v_error(c->base.pVtab, err.msg);
  }
  c->eof = got == 0;
  c->t = f.t;
  return SQLITE_OK;
}

static int v_filter(sqlite3_vtab_cursor *cur, int idx_num, const char *idx_str, int argc,
                    sqlite3_value **argv) {
  (void)idx_str;
  video_cursor *c = (video_cursor *)cur;
  video_vtab *v = (video_vtab *)cur->pVtab;
  sqlite3_value *args[V_ARGS] = {NULL, NULL, NULL, NULL};
  for (int j = 0, a = 0; j < V_ARGS && a < argc; j++)
    if (idx_num & (1 << j)) args[j] = argv[a++];
  reset(c);
  for (int j = 0; j < V_ARGS; j++)
    if (args[j] && !(c->args[j] = sqlite3_value_dup(args[j]))) return SQLITE_NOMEM;
  if (!args[0] || sqlite3_value_type(args[0]) != SQLITE_TEXT)
    return v_error(cur->pVtab,
                   "usage: clip_video_frames(path TEXT [, interval [, model [, scene]]])");
  clip_video_params params = clip_video_default_params();
  if (args[1] && sqlite3_value_type(args[1]) != SQLITE_NULL) {
    int type = sqlite3_value_type(args[1]);
    params.interval = sqlite3_value_double(args[1]);
    if ((type != SQLITE_INTEGER && type != SQLITE_FLOAT) || !(params.interval > 0))
      return v_error(cur->pVtab, "interval must be a positive number of seconds");
  }
  cdb_error err = {0};
  const char *model_name = args[2] ? (const char *)sqlite3_value_text(args[2]) : NULL;
  clip_model *model = cdbx_conn_model(v->conn, model_name, &err);
  if (model && args[3] && sqlite3_value_type(args[3]) != SQLITE_NULL) {
    c->scene = sqlite3_value_double(args[3]);
    if (!(c->scene > 0 && c->scene <= 1))
      return v_error(cur->pVtab, "scene must be a cosine similarity in (0, 1]");
    size_t dim = clip_model_dim(model), size = clip_model_image_size(model);
    c->pixels = sqlite3_malloc64(sizeof(float) * 3 * size * size);
    c->vec = sqlite3_malloc64(sizeof(float) * 2 * dim);
    if (!c->pixels || !c->vec) return SQLITE_NOMEM;
    c->last = c->vec + dim;
  }
  c->model = model;
  if (model)
    c->video = clip_video_open(model, (const char *)sqlite3_value_text(args[0]), &params, &err);
  if (!c->video) return v_error(cur->pVtab, err.msg);
  return advance(c);
}

static int v_next(sqlite3_vtab_cursor *cur) {
  video_cursor *c = (video_cursor *)cur;
  c->row++;
  return advance(c);
}

static int v_eof(sqlite3_vtab_cursor *cur) { return ((video_cursor *)cur)->eof; }

static int v_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col) {
  video_cursor *c = (video_cursor *)cur;
  if (col == V_FRAME) sqlite3_result_blob(ctx, c->png, (int)c->png_len, SQLITE_TRANSIENT);
  else if (col == V_T) sqlite3_result_double(ctx, c->t);
  else if (c->args[col - V_PATH]) sqlite3_result_value(ctx, c->args[col - V_PATH]);
  return SQLITE_OK;
}

static int v_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid) {
  *rowid = ((video_cursor *)cur)->row;
  return SQLITE_OK;
}

static const sqlite3_module video_module = {
    .iVersion = 1,
    .xCreate = NULL, /* eponymous only */
    .xConnect = v_connect,
    .xBestIndex = v_best_index,
    .xDisconnect = v_disconnect,
    .xDestroy = v_disconnect,
    .xOpen = v_open,
    .xClose = v_close,
    .xFilter = v_filter,
    .xNext = v_next,
    .xEof = v_eof,
    .xColumn = v_column,
    .xRowid = v_rowid,
};

int cdbx_register_video(sqlite3 *db, cdbx_conn *conn) {
  return sqlite3_create_module(db, "clip_video_frames", &video_module, conn);
}
