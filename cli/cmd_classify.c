/* cmd_classify.c: `clipdb classify IMAGE LABEL...`: zero-shot classification with the library's
 * model (or --model's; no library needed): the extension's clip_classify_templates, i.e.
 * softmax over exp(logit_scale) * cosine(image, "a photo of a LABEL."), the prompt and JSON
 * keys SQL's clip_classify uses. */
#include <getopt.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/db.h"
#include "sqlite-ext/clipdb.h"
#include "src/json.h"
#include "src/model_path.h"

#define DEFAULT_TEMPLATE CLIPDB_CLASSIFY_TEMPLATE
#define MAX_LABEL_BYTES 1000

static const char USAGE[] =
    "usage: clipdb classify [--model NAME] [--template T] [--json] IMAGE LABEL...\n"
    "Zero-shot classification: the probability that IMAGE shows each LABEL.\n"
    "  --template T   prompt for each label, \"{}\" stands for the label\n"
    "                 (default \"" DEFAULT_TEMPLATE "\"; \"{}\" uses the bare label)\n"
    "  --json         print [{\"label\": ..., \"probability\": ...}, ...], most likely first\n";

/* The extension's clip_classify_templates, with model_dir registered as db's default model
 * (declared in db.h):
 * one implementation of CLIP's zero-shot scoring for SQL and the CLI. Returns its JSON
 * [{"label","probability"}, ...], most likely first, malloc'd. */
char *cli_classify_sql(sqlite3 *db, const char *model_dir, const char *image, char **labels, int n,
                       const char *tmpl, cdb_error *err) {
  sqlite3_stmt *st = NULL;
  char *json = NULL;
  sqlite3_str *sql = sqlite3_str_new(NULL);
  sqlite3_str_appendall(sql, "SELECT clip_classify_templates(?1, json_array(?2)");
  for (int i = 0; i < n; i++) sqlite3_str_appendf(sql, ", ?%d", i + 3);
  sqlite3_str_appendall(sql, ")");
  char *text = sqlite3_str_finish(sql);
  if (sqlite3_prepare_v2(db, "SELECT clip_model('default', ?1)", -1, &st, NULL) != SQLITE_OK)
    goto sql_error;
  sqlite3_bind_text(st, 1, model_dir, -1, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_ROW) goto sql_error;
  sqlite3_finalize(st);
  st = NULL;
  if (!text || sqlite3_prepare_v2(db, text, -1, &st, NULL) != SQLITE_OK) goto sql_error;
  sqlite3_bind_text(st, 1, image, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, tmpl, -1, SQLITE_STATIC);
  for (int i = 0; i < n; i++) sqlite3_bind_text(st, i + 3, labels[i], -1, SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_ROW || !sqlite3_column_text(st, 0)) goto sql_error;
  json = strdup((const char *)sqlite3_column_text(st, 0));
  goto done;
sql_error:
  cdb_error_set(err, "%s", sqlite3_errmsg(db));
done:
  sqlite3_finalize(st);
  sqlite3_free(text);
  return json;
}

/* The connection to classify on and the model directory to register there: the library's when
 * there is one and no --model (its model loaded and identity checked first, so the directory
 * registered is that same instance), else an in-memory connection with --model / $CLIPDB_MODEL /
 * the default. */
static char *classify_with_model(const cli_ctx *ctx, const char *image, char **labels, int n,
                                 const char *tmpl, cdb_error *err) {
  cli_db lib = {0};
  clip_model *model = NULL;
  sqlite3 *mem = NULL;
  char *dir = NULL, *scores = NULL, *msg = NULL;
  if (cli_db_library_model(ctx, &lib, &model, err) != 0) return NULL;
  dir = model ? cdb_model_resolve(lib.model, err) : cli_model_dir(ctx, err);
  if (dir && !model &&
      (sqlite3_open(":memory:", &mem) != SQLITE_OK || clipdb_register(mem, &msg) != SQLITE_OK)) {
    cdb_error_set(err, "%s", msg ? msg : sqlite3_errmsg(mem));
  } else if (dir) {
    scores = cli_classify_sql(model ? lib.db : mem, dir, image, labels, n, tmpl, err);
  }
  sqlite3_free(msg);
  sqlite3_close(mem);
  free(dir);
  cli_db_close(&lib);
  return scores;
}

/* Prints the scores as "probability  label" lines, or as JSON with "probability" keys. */
static int print_results(const char *scores_json, bool as_json, cdb_error *err) {
  json_object *arr = cdb_json_parse(scores_json, strlen(scores_json), "clip_classify", err);
  if (!arr) return -1;
  json_object *out = json_object_new_array();
  for (size_t i = 0; i < json_object_array_length(arr); i++) {
    json_object *item = json_object_array_get_idx(arr, i), *label, *score;
    if (!json_object_object_get_ex(item, "label", &label) ||
        !json_object_object_get_ex(item, "probability", &score))
      continue;
    if (!as_json)
      printf("%.4f  %s\n", json_object_get_double(score), json_object_get_string(label));
    json_object *o = json_object_new_object();
    json_object_object_add(o, "label", json_object_get(label));
    json_object_object_add(o, "probability", json_object_get(score)); /* printed as SQL did */
    json_object_array_add(out, o);
  }
  if (as_json) puts(json_object_to_json_string_ext(out, CLI_JSON_FLAGS));
  json_object_put(out);
  json_object_put(arr);
  return 0;
}

int cmd_classify(int argc, char **argv, const cli_ctx *ctx) {
  static const struct option longopts[] = {{"template", required_argument, 0, 't'},
                                           {"json", no_argument, 0, 'j'},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  const char *tmpl = DEFAULT_TEMPLATE;
  bool json = false;
  int c;
  while ((c = getopt_long(argc, argv, ":ht:j", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': return fputs(USAGE, stdout), CLI_OK;
      case 't': tmpl = optarg; break;
      case 'j': json = true; break;
      default: return cli_option_error("classify", c, argv);
    }
  }
  if (argc - optind < 3)
    return cli_usage_error("classify", "expected IMAGE and at least two LABELs");
  const char *image = argv[optind];
  char **labels = argv + optind + 1;
  int n = argc - optind - 1;
  if (!strstr(tmpl, "{}"))
    return cli_usage_error("classify", "--template must contain \"{}\" where the label goes");
  for (int i = 0; i < n; i++)
    if (strlen(labels[i]) > MAX_LABEL_BYTES)
      return cli_usage_error("classify", "label %d is longer than %d bytes", i + 1,
                             MAX_LABEL_BYTES);
  cdb_error err = {{0}};
  char *scores = classify_with_model(ctx, image, labels, n, tmpl, &err);
  int rc = scores && print_results(scores, json, &err) == 0 ? CLI_OK : CLI_FAIL;
  if (rc != CLI_OK) cli_error("%s", err.msg);
  free(scores);
  return rc;
}
