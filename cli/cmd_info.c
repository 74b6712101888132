/* cmd_info.c: `clipdb info`: what the library holds: rows, index type and parameters, size on
 * disk, model. Reads the clip table's documented config shadow table (photos_config). */
#include <getopt.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/db.h"
#include "cli/moments.h"
#include "cli/output.h"
#include "src/json.h"

static const char USAGE[] =
    "usage: clipdb info [--json] [--local]\n"
    "Shows the library: database path and size on disk, the counts of photos, videos and their\n"
    "frames (rows: photos + frames), vector dimensions, index\n"
    "type with nlist/nprobe (0 = chosen automatically), and the model.\n";

static int64_t file_size(const char *path, const char *suffix) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s%s", path, suffix);
  struct stat st;
  return stat(buf, &st) == 0 ? (int64_t)st.st_size : 0;
}

static int add_scalar(cli_db *db, json_object *o, const char *key, const char *sql,
                      cdb_error *err) {
  sqlite3_stmt *st;
  if (cli_db_prepare(db, sql, &st, err) != 0) return -1;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    json_object_object_add(o, key, json_object_new_int64(sqlite3_column_int64(st, 0)));
  sqlite3_finalize(st);
  return rc == SQLITE_ROW ? 0 : cli_db_fail(db, key, err);
}

/* photos, videos and their frames (rows counts both photos and frames). */
static int add_video_counts(cli_db *db, json_object *o, cdb_error *err) {
  bool frames = cli_db_has_frames(db);
  int rc = 0;
  if (frames)
    rc = add_scalar(db, o, "frames", "SELECT count(*) FROM " CLI_FRAMES_TABLE, err) ||
         add_scalar(db, o, "videos",
                    "SELECT count(DISTINCT p.path) FROM " CLI_FRAMES_TABLE " AS f JOIN " CLI_TABLE
                    " AS p ON p.rowid = f.rowid",
                    err);
  if (rc != 0) return -1;
  json_object *v;
  int64_t rows = json_object_object_get_ex(o, "rows", &v) ? json_object_get_int64(v) : 0;
  int64_t n_frames =
      frames && json_object_object_get_ex(o, "frames", &v) ? json_object_get_int64(v) : 0;
  if (!frames) {
    json_object_object_add(o, "videos", json_object_new_int64(0));
    json_object_object_add(o, "frames", json_object_new_int64(0));
  }
  json_object_object_add(o, "photos", json_object_new_int64(rows - n_frames));
  return 0;
}

static int add_config(cli_db *db, json_object *o, cdb_error *err) {
  sqlite3_stmt *st;
  if (cli_db_prepare(db,
                     "SELECT key, value FROM " CLI_TABLE "_config WHERE key IN "
                     "('dims', 'index_type', 'nlist', 'nprobe')",
                     &st, err) != 0)
    return -1;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *key = (const char *)sqlite3_column_text(st, 0);
    json_object *v = sqlite3_column_type(st, 1) == SQLITE_INTEGER
                         ? json_object_new_int64(sqlite3_column_int64(st, 1))
                         : json_object_new_string((const char *)sqlite3_column_text(st, 1) ?: "");
    json_object_object_add(o, key, v);
  }
  sqlite3_finalize(st);
  return rc == SQLITE_DONE ? 0 : cli_db_fail(db, "config", err);
}

/* The live index as the extension reports it (clip_index_info): kind, nlist, nprobe in use;
 * and the table's record of its model (name and identity), shown at the top level. */
static int add_index_state(cli_db *db, json_object *o, cdb_error *err) {
  sqlite3_stmt *st;
  if (cli_db_prepare(db, "SELECT clip_index_info('" CLI_TABLE "')", &st, err) != 0) return -1;
  int rc = sqlite3_step(st);
  json_object *state = NULL;
  if (rc == SQLITE_ROW) {
    const char *text = (const char *)sqlite3_column_text(st, 0);
    state = text ? cdb_json_parse(text, strlen(text), "clip_index_info", err) : NULL;
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW) return cli_db_fail(db, "index state", err);
  if (!state) return -1;
  json_object *v;
  if (json_object_object_get_ex(state, "model", &v))
    json_object_object_add(o, "model", json_object_get(v));
  if (json_object_object_get_ex(state, "model_identity", &v))
    json_object_object_add(o, "model_identity", json_object_get(v));
  json_object_object_add(o, "index_state", state);
  return 0;
}

static void print_index_state(json_object *o) {
  json_object *s, *kind, *factory, *nlist, *nprobe, *count, *mapped;
  if (!json_object_object_get_ex(o, "index_state", &s) ||
      !json_object_object_get_ex(s, "kind", &kind) ||
      !json_object_object_get_ex(s, "factory", &factory) ||
      !json_object_object_get_ex(s, "nlist", &nlist) ||
      !json_object_object_get_ex(s, "nprobe", &nprobe) ||
      !json_object_object_get_ex(s, "count", &count) ||
      !json_object_object_get_ex(s, "mapped", &mapped))
    return;
  if (strcmp(json_object_get_string(kind), "flat") == 0) {
    printf("%-14s exact search over %lld vectors (IVF once trained)\n", "index now",
           (long long)json_object_get_int64(count));
    return;
  }
  printf("%-14s %s, nlist %d, nprobe %d, %lld vectors%s\n", "index now",
         json_object_get_string(factory), json_object_get_int(nlist), json_object_get_int(nprobe),
         (long long)json_object_get_int64(count),
         json_object_get_boolean(mapped) ? ", memory-mapped" : "");
}

static void print_text(json_object *o) {
  static const char *const order[][2] = {{"database", "database"},
                                         {"size_bytes", "size on disk"},
                                         {"photos", "photos"},
                                         {"videos", "videos"},
                                         {"frames", "video frames"},
                                         {"dims", "dimensions"},
                                         {"index_type", "index"},
                                         {"nlist", "nlist"},
                                         {"nprobe", "nprobe"},
                                         {"model", "model"},
                                         {"model_identity", "model id"},
                                         {"oldest", "oldest photo"},
                                         {"newest", "newest photo"}};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
    json_object *v;
    if (!json_object_object_get_ex(o, order[i][0], &v) || !v) continue;
    bool is_auto = (strcmp(order[i][0], "nlist") == 0 || strcmp(order[i][0], "nprobe") == 0) &&
                   json_object_get_int64(v) == 0; /* 0: the index picks it from the size */
    if (strcmp(order[i][0], "size_bytes") == 0)
      printf("%-14s %.1f MB\n", order[i][1], (double)json_object_get_int64(v) / 1e6);
    else if (is_auto) printf("%-14s auto\n", order[i][1]);
    else printf("%-14s %s\n", order[i][1], json_object_get_string(v));
    if (strcmp(order[i][0], "nprobe") == 0) print_index_state(o);
  }
}

int cmd_info(int argc, char **argv, const cli_ctx *ctx) {
  static const struct option longopts[] = {{"json", no_argument, 0, 'j'},
                                           {"local", no_argument, 0, 'l'},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  bool json = false, local = false;
  int c;
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': return fputs(USAGE, stdout), CLI_OK;
      case 'j': json = true; break;
      case 'l': local = true; break;
      default: return cli_option_error("info", c, argv);
    }
  }
  if (optind != argc) return cli_usage_error("info", "unexpected argument \"%s\"", argv[optind]);
  cdb_error err = {{0}};
  cli_db db = {0};
  json_object *o = json_object_new_object();
  int rc = cli_db_open(ctx, local ? "." : NULL, false, &db, &err);
  if (rc == 0) {
    output_json_path(o, "database", db.path);
    json_object_object_add(o, "size_bytes",
                           json_object_new_int64(file_size(db.path, "") +
                                                 file_size(db.path, "-wal")));
    rc = add_scalar(&db, o, "rows", "SELECT count(*) FROM " CLI_TABLE "_rows", &err);
  }
  if (rc == 0) rc = add_video_counts(&db, o, &err);
  if (rc == 0) rc = add_config(&db, o, &err);
  if (rc == 0) rc = add_index_state(&db, o, &err);
  if (rc == 0) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db.db, "SELECT min(date), max(date) FROM " CLI_TABLE, -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0)) {
      json_object_object_add(o, "oldest",
                             json_object_new_string((const char *)sqlite3_column_text(st, 0)));
      json_object_object_add(o, "newest",
                             json_object_new_string((const char *)sqlite3_column_text(st, 1)));
    }
    sqlite3_finalize(st);
  }
  if (rc == 0 && json) puts(json_object_to_json_string_ext(o, CLI_JSON_FLAGS));
  else if (rc == 0) print_text(o);
  else cli_error("info: %s", err.msg);
  json_object_put(o);
  cli_db_close(&db);
  return rc == 0 ? CLI_OK : CLI_FAIL;
}
