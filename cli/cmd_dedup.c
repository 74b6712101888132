/* cmd_dedup.c: `clipdb dedup`: groups of near-duplicate photos. Each photo's vector is sent as a
 * range query (distance <= 1 - threshold) to the clip table; every pair found joins two groups
 * (union-find), so chains of near-copies end up in one group. */
#include <getopt.h>
#include <glib.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/db.h"
#include "cli/output.h"
#include "cli/progress.h"

/* Re-encoded or resized copies of one photo score above this; different photos of one scene
 * rarely do. */
#define DEFAULT_THRESHOLD 0.95
/* IVF lists probed per photo: a near-copy's vector is almost the photo's own, so it sits in the
 * same or a neighbouring list; 8 probes are ~6x faster than the table's recall-tuned default on
 * 100k photos. Ignored by exact (small) indexes. */
#define DEFAULT_NPROBE 8
#define MAX_NPROBE 65536

static const char USAGE[] =
    "usage: clipdb dedup [--threshold S] [--json] [--nprobe N] [--local]\n"
    "Lists groups of near-duplicate photos (re-encoded, resized or lightly edited copies):\n"
    "photos whose vectors have a cosine similarity >= S (default 0.95) are grouped, transitively.\n"
    "  --threshold S  similarity from 0 to 1; higher finds only closer copies\n"
    "  --json         [{\"paths\": [...], \"similarity\": highest pair score}, ...]\n"
    "  --nprobe N     IVF lists searched per photo (default 8; more finds looser copies in\n"
    "                 large libraries, slower)\n"
    "  --local        use ./.clipdb instead of the default library\n";

typedef struct photo {
  int64_t rowid;
  char *path;
  int parent;  /* union-find */
  double best; /* highest similarity to another member */
} photo;

static int find(photo *p, int i) {
  while (p[i].parent != i) i = p[i].parent = p[p[i].parent].parent;
  return i;
}

static void unite(photo *p, int a, int b) {
  a = find(p, a);
  b = find(p, b);
  if (a != b) p[a > b ? a : b].parent = a < b ? a : b; /* the smaller index leads the group */
}

static int load_photos(cli_db *db, photo **out, int *n, cdb_error *err) {
  sqlite3_stmt *st;
  if (cli_db_prepare(db, "SELECT rowid, path FROM " CLI_TABLE " ORDER BY path", &st, err) != 0)
    return -1;
  GArray *arr = g_array_new(FALSE, TRUE, sizeof(photo));
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *path = (const char *)sqlite3_column_text(st, 1);
    photo p = {sqlite3_column_int64(st, 0), g_strdup(path ? path : ""), (int)arr->len, 0};
    g_array_append_val(arr, p);
  }
  sqlite3_finalize(st);
  *n = (int)arr->len;
  *out = (photo *)g_array_free(arr, FALSE);
  return rc == SQLITE_DONE ? 0 : cli_db_fail(db, "reading the library", err);
}

/* Links every photo with its neighbours within the threshold. */
static int link_neighbours(cli_db *db, photo *p, int n, double threshold, long nprobe, bool tty,
                           cdb_error *err) {
  progress prog;
  progress_start(&prog, "comparing", (size_t)n, tty);
  GHashTable *index_of = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, NULL);
  for (int i = 0; i < n; i++) g_hash_table_insert(index_of, &p[i].rowid, GINT_TO_POINTER(i + 1));
  sqlite3_stmt *get = NULL, *near = NULL;
  int rc = cli_db_prepare(db, "SELECT embedding FROM " CLI_TABLE " WHERE rowid = ?1", &get, err);
  if (rc == 0)
    rc = cli_db_prepare(db,
                        "SELECT rowid, distance FROM " CLI_TABLE " WHERE " CLI_TABLE
                        " MATCH ?1 AND distance <= ?2 AND nprobe = ?3",
                        &near, err);
  for (int i = 0; rc == 0 && i < n; i++) {
    sqlite3_bind_int64(get, 1, p[i].rowid);
    if (sqlite3_step(get) != SQLITE_ROW) {
      rc = cli_db_fail(db, "reading a vector", err);
      break;
    }
    sqlite3_bind_blob(near, 1, sqlite3_column_blob(get, 0), sqlite3_column_bytes(get, 0),
                      SQLITE_TRANSIENT);
    sqlite3_reset(get);
    sqlite3_bind_double(near, 2, 1.0 - threshold);
    sqlite3_bind_int64(near, 3, nprobe);
    int step;
    while ((step = sqlite3_step(near)) == SQLITE_ROW) {
      int64_t other = sqlite3_column_int64(near, 0);
      int j = GPOINTER_TO_INT(g_hash_table_lookup(index_of, &other)) - 1;
      if (j < 0 || j == i) continue;
      double sim = 1.0 - sqlite3_column_double(near, 1);
      if (sim > p[i].best) p[i].best = sim;
      unite(p, i, j);
    }
    if (step != SQLITE_DONE) rc = cli_db_fail(db, "range search", err);
    sqlite3_reset(near);
    progress_update(&prog, (size_t)i + 1);
  }
  progress_finish(&prog);
  sqlite3_finalize(get);
  sqlite3_finalize(near);
  g_hash_table_destroy(index_of);
  return rc;
}

/* The groups, each photo chained to the next member of its group (in path order): built in one
 * pass, so that printing stays linear in the library's size. */
typedef struct groups {
  int *next;    /* next member, or -1 */
  int *members; /* per lead: how many */
  double *best; /* per lead: the highest similarity of a member */
} groups;

static groups make_groups(photo *p, int n) {
  groups g = {g_new(int, n > 0 ? n : 1), g_new0(int, n > 0 ? n : 1),
              g_new0(double, n > 0 ? n : 1)};
  int *last = g_new(int, n > 0 ? n : 1);
  for (int i = 0; i < n; i++) {
    int lead = find(p, i);
    g.next[i] = -1;
    if (g.members[lead]++ > 0) g.next[last[lead]] = i;
    last[lead] = i;
    if (p[i].best > g.best[lead]) g.best[lead] = p[i].best;
  }
  g_free(last);
  return g;
}

static void free_groups(groups *g) {
  g_free(g->next);
  g_free(g->members);
  g_free(g->best);
}

/* The group's paths' exact bytes in base64, in the order of "paths". */
static json_object *group_path_bytes(photo *p, const groups *g, int lead) {
  json_object *arr = json_object_new_array();
  for (int i = lead; i >= 0; i = g->next[i]) {
    char *b64 = g_base64_encode((const guchar *)p[i].path, strlen(p[i].path));
    json_object_array_add(arr, json_object_new_string(b64));
    g_free(b64);
  }
  return arr;
}

/* [{"paths": [...], "paths_bytes"?: [...], "similarity"}, ...] (see --json). */
static json_object *groups_json(photo *p, int n) {
  groups g = make_groups(p, n);
  json_object *arr = json_object_new_array();
  for (int lead = 0; lead < n; lead++) {
    if (find(p, lead) != lead || g.members[lead] < 2) continue;
    json_object *paths = json_object_new_array();
    json_object *bytes = NULL; /* base64 of each path, only in a group with a non-UTF-8 one */
    for (int i = lead; i >= 0; i = g.next[i]) {
      json_object_array_add(paths, output_json_text(p[i].path));
      if (!bytes && !g_utf8_validate(p[i].path, -1, NULL)) bytes = group_path_bytes(p, &g, lead);
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "paths", paths);
    if (bytes) json_object_object_add(o, "paths_bytes", bytes);
    json_object_object_add(o, "similarity", json_object_new_double(g.best[lead]));
    json_object_array_add(arr, o);
  }
  free_groups(&g);
  return arr;
}

static void print_groups(photo *p, int n, bool json) {
  if (json) {
    json_object *arr = groups_json(p, n);
    puts(json_object_to_json_string_ext(arr, CLI_JSON_FLAGS));
    json_object_put(arr);
    return;
  }
  groups g = make_groups(p, n);
  int printed = 0;
  for (int lead = 0; lead < n; lead++) {
    if (find(p, lead) != lead || g.members[lead] < 2) continue;
    if (printed) putchar('\n');
    printf("# group %d: %d photos, similarity up to %.4f\n", printed + 1, g.members[lead],
           g.best[lead]);
    for (int i = lead; i >= 0; i = g.next[i]) output_path_line(stdout, "", p[i].path);
    printed++;
  }
  free_groups(&g);
}

int cli_dedup_groups(cli_db *db, double threshold, json_object **out, cdb_error *err) {
  photo *p = NULL;
  int n = 0;
  int rc = load_photos(db, &p, &n, err);
  if (rc == 0) rc = link_neighbours(db, p, n, threshold, DEFAULT_NPROBE, false, err);
  *out = rc == 0 ? groups_json(p, n) : NULL;
  for (int i = 0; i < n; i++) g_free(p[i].path);
  g_free(p);
  return rc;
}

int cmd_dedup(int argc, char **argv, const cli_ctx *ctx) {
  static const struct option longopts[] = {{"threshold", required_argument, 0, 't'},
                                           {"json", no_argument, 0, 'j'},
                                           {"local", no_argument, 0, 'l'},
                                           {"nprobe", required_argument, 0, 'p'},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  double threshold = DEFAULT_THRESHOLD;
  bool json = false, local = false;
  long nprobe = DEFAULT_NPROBE;
  int c;
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': return fputs(USAGE, stdout), CLI_OK;
      case 't':
        if (!cli_parse_float(optarg, &threshold) || threshold < 0 || threshold > 1)
          return cli_usage_error("dedup", "--threshold wants a number from 0 to 1");
        break;
      case 'j': json = true; break;
      case 'l': local = true; break;
      case 'p':
        if (!cli_parse_int(optarg, 1, MAX_NPROBE, &nprobe))
          return cli_usage_error("dedup", "--nprobe wants a number from 1 to %d", MAX_NPROBE);
        break;
      default: return cli_option_error("dedup", c, argv);
    }
  }
  if (optind != argc) return cli_usage_error("dedup", "unexpected argument \"%s\"", argv[optind]);
  cdb_error err = {{0}};
  cli_db db = {0};
  photo *p = NULL;
  int n = 0;
  int rc = cli_db_open(ctx, local ? "." : NULL, false, &db, &err);
  if (rc == 0) rc = load_photos(&db, &p, &n, &err);
  if (rc == 0) rc = link_neighbours(&db, p, n, threshold, nprobe, ctx->stderr_tty, &err);
  if (rc == 0) print_groups(p, n, json);
  else cli_error("dedup: %s", err.msg);
  for (int i = 0; i < n; i++) g_free(p[i].path);
  g_free(p);
  cli_db_close(&db);
  return rc == 0 ? CLI_OK : CLI_FAIL;
}
