/* cmd_model.c: `clipdb model pull|list|info|rm`: options and output around src/hub.h (the hub
 * and the model cache) and the check that pulled files load as a model (embed/clip.h). */
#include <getopt.h>
#include <glib.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "embed/clip.h"
#include "src/file.h"
#include "src/hub.h"
#include "src/json.h"
#include "src/model_path.h"

#define CONFIG_MAX_BYTES (1u << 20)

static const char MODEL_USAGE[] =
    "usage: clipdb model pull ORG/NAME [--revision REV] [--offline] [--retries N] [--timeout S]\n"
    "       clipdb model list\n"
    "       clipdb model info [NAME|DIR]\n"
    "       clipdb model rm ORG/NAME...\n"
    "\n"
    "pull     download a CLIP model from the Hugging Face hub into the model cache\n"
    "         (HF_ENDPOINT overrides the hub address, HF_TOKEN is sent for gated models,\n"
    "         HF_HUB_OFFLINE=1 or --offline forbids network access); an interrupted pull\n"
    "         resumes where it stopped; a failed pull leaves the cached model untouched;\n"
    "         progress is a live line on a terminal, plain lines otherwise\n"
    "         --revision REV  branch, tag or commit (default main)\n"
    "         --retries N     attempts per file (default 5; the waits between them, a\n"
    "                         server's Retry-After included, total at most 60 s)\n"
    "         --timeout S     give up a transfer that stalls for S seconds (default 30)\n"
    "list     the cached models\n"
    "info     a model's files, sizes, source and configuration\n"
    "rm       delete cached models\n";

static void format_size(long long bytes, char *out, size_t cap) {
  if (bytes < 1000) snprintf(out, cap, "%lld B", bytes);
  else if (bytes < 1000 * 1000) snprintf(out, cap, "%.1f kB", bytes / 1e3);
  else if (bytes < 1000LL * 1000 * 1000) snprintf(out, cap, "%.1f MB", bytes / 1e6);
  else snprintf(out, cap, "%.2f GB", bytes / 1e9);
}

/* ---- pull ---- */

static void print_note(void *arg, const char *line) {
  (void)arg;
  fprintf(stderr, "%s\n", line);
}

static void print_file(void *arg, const char *file, long long bytes, cdb_hub_file_state state) {
  static const char *const HOW[] = {
      [CDB_HUB_FILE_DOWNLOADED] = "done",
      [CDB_HUB_FILE_VERIFIED] = "sha256 verified",
      [CDB_HUB_FILE_RESUMED] = "resumed",
      [CDB_HUB_FILE_STAGED] = "(downloaded earlier)",
      [CDB_HUB_FILE_UNCHANGED] = "unchanged, kept from the cache",
      [CDB_HUB_FILE_ABSENT] = "(not in the repository; optional)",
  };
  (void)arg;
  char size[32] = "-";
  if (bytes >= 0) format_size(bytes, size, sizeof size);
  fprintf(stderr, "  %-26s %10s  %s\n", file, size, HOW[state]);
}

/* The staged files must load as a model and tokenize. */
static int check_model(const char *dir, void *arg, cdb_error *err) {
  (void)arg;
  clip_model *model = clip_model_load(dir, NULL, err);
  int32_t ids[1024];
  int ok = model && clip_model_context_length(model) <= (int)(sizeof ids / sizeof ids[0]) &&
           clip_tokenize(model, "a photo", 7, ids, err) > 0;
  if (model && !ok && !err->msg[0]) cdb_error_set(err, "context length too large");
  clip_model_free(model);
  return ok ? 0 : -1;
}

static int pull(const char *hub_name, cdb_hub_pull_opts *opts) {
  cdb_hub_pull_result res;
  cdb_error err = {{0}};
  int rc = cdb_hub_pull(hub_name, opts, &res, &err);
  if (rc == 0) {
    char size[32];
    format_size(res.bytes, size, sizeof size);
    if (res.commit[0])
      printf("pulled %s (revision %s, commit %s, %s) into %s\n", hub_name, res.revision, res.commit,
             size, res.dir);
    else printf("pulled %s (revision %s, %s) into %s\n", hub_name, res.revision, size, res.dir);
  } else {
    cli_error("model pull: %s", err.msg);
    if (res.kept_staging)
      fprintf(stderr, "clipdb: partial download kept in %s; run the same pull again to resume\n",
              res.kept_staging);
  }
  cdb_hub_pull_result_free(&res);
  return rc == 0 ? CLI_OK : CLI_FAIL;
}

static int cmd_pull(int argc, char **argv, const cli_ctx *ctx) {
  static const struct option longopts[] = {{"revision", required_argument, NULL, 'r'},
                                           {"offline", no_argument, NULL, 'o'},
                                           {"retries", required_argument, NULL, 'n'},
                                           {"timeout", required_argument, NULL, 't'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  cdb_hub_pull_opts opts = {.download = cdb_download_default_opts(),
                            .check_model = check_model,
                            .on_note = print_note,
                            .on_file = print_file};
  long v;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, ":r:h", longopts, NULL)) != -1) {
    switch (c) {
      case 'r': opts.revision = optarg; break;
      case 'o': opts.offline = true; break;
      case 'n':
        if (!cli_parse_int(optarg, 1, 100, &v))
          return cli_usage_error("model pull", "--retries takes a number from 1 to 100");
        opts.download.max_attempts = (int)v;
        break;
      case 't':
        if (!cli_parse_int(optarg, 1, 3600, &v))
          return cli_usage_error("model pull", "--timeout takes seconds from 1 to 3600");
        opts.download.stall_timeout_s = v;
        break;
      case 'h': fputs(MODEL_USAGE, stdout); return CLI_OK;
      default: return cli_option_error("model pull", c, argv);
    }
  }
  if (optind != argc - 1)
    return cli_usage_error("model pull", "give one model name, e.g. clipdb model pull %s",
                           CDB_DEFAULT_MODEL);
  if (opts.revision && !opts.revision[0])
    return cli_usage_error("model pull", "--revision is empty");
  const char *hub_name = argv[optind];
  cdb_error err = {{0}};
  char *dir = cdb_hub_model_dir(hub_name, &err);
  if (!dir) return cli_usage_error("model pull", "%s", err.msg);
  /* A model transformers or open_clip already fetched is used where it is, not fetched again. */
  char *found = opts.revision || cdb_is_dir(dir) ? NULL : cdb_hub_find(hub_name, &err);
  free(dir);
  if (found) {
    printf("%s is already in the Hugging Face cache: %s (nothing pulled)\n", hub_name, found);
    free(found);
    return CLI_OK;
  }
  opts.download.show_progress = true;
  opts.download.plain_progress = !ctx->stderr_tty; /* lines for a log, a pipe or TERM=dumb */
  return pull(hub_name, &opts);
}

/* ---- list ---- */

static int cmd_list(int argc, char **argv) {
  (void)argv;
  if (argc > 1) return cli_usage_error("model list", "list takes no arguments");
  size_t n = 0;
  cdb_hub_entry *models = cdb_hub_list(&n);
  int shown = 0;
  for (size_t i = 0; i < n; i++) {
    const cdb_hub_entry *m = &models[i];
    char size[32];
    format_size(m->bytes, size, sizeof size);
    if (m->interrupted) {
      printf("%-44s %10s  (interrupted pull; `clipdb model pull %s` resumes it)\n", m->name, size,
             m->name);
    } else {
      printf("%-44s %10s  %-12s %s\n", m->name, size, m->revision ? m->revision : "-", m->dir);
      shown++;
    }
  }
  cdb_hub_list_free(models, n);
  if (shown == 0) {
    char *cache = cdb_hub_cache_dir();
    fprintf(stderr, "no models in %s; get one with `clipdb model pull %s`\n", cache,
            CDB_DEFAULT_MODEL);
    free(cache);
  }
  return CLI_OK;
}

/* ---- info ---- */

static const char *record_string(json_object *rec, const char *key) {
  json_object *v;
  return rec && json_object_object_get_ex(rec, key, &v) && json_object_is_type(v, json_type_string)
             ? json_object_get_string(v)
             : NULL;
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void print_config_part(json_object *obj, const char *title, const char *const *keys) {
  if (!obj || !json_object_is_type(obj, json_type_object)) return;
  printf("  %-8s", title);
  for (int i = 0; keys[i]; i++) {
    json_object *v;
    if (json_object_object_get_ex(obj, keys[i], &v) &&
        (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_string) ||
         json_object_is_type(v, json_type_double)))
      printf(" %s=%s", keys[i], json_object_get_string(v));
  }
  printf("\n");
}

static void print_config(const char *dir) {
  static const char *const top_keys[] = {"projection_dim", "logit_scale_init_value", NULL};
  static const char *const vision_keys[] = {"image_size",          "patch_size",
                                            "hidden_size",         "num_hidden_layers",
                                            "num_attention_heads", "intermediate_size",
                                            "hidden_act",          NULL};
  static const char *const text_keys[] = {"hidden_size",
                                          "num_hidden_layers",
                                          "num_attention_heads",
                                          "intermediate_size",
                                          "max_position_embeddings",
                                          "vocab_size",
                                          "hidden_act",
                                          NULL};
  char *path = g_build_filename(dir, "config.json", NULL);
  cdb_error err = {{0}};
  json_object *cfg = cdb_json_load_file(path, CONFIG_MAX_BYTES, &err);
  g_free(path);
  if (!cfg) {
    printf("config:   unreadable (%s)\n", err.msg);
    return;
  }
  json_object *vision = NULL, *text = NULL;
  json_object_object_get_ex(cfg, "vision_config", &vision);
  json_object_object_get_ex(cfg, "text_config", &text);
  printf("config:\n");
  print_config_part(cfg, "model", top_keys);
  print_config_part(vision, "vision", vision_keys);
  print_config_part(text, "text", text_keys);
  json_object_put(cfg);
}

static void print_files(const char *dir, json_object *rec) {
  json_object *files = NULL;
  if (rec) json_object_object_get_ex(rec, "files", &files);
  GDir *d = g_dir_open(dir, 0, NULL);
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  const char *entry;
  while (d && (entry = g_dir_read_name(d)))
    if (entry[0] != '.') g_ptr_array_add(names, g_strdup(entry));
  if (d) g_dir_close(d);
  g_ptr_array_sort(names, compare_strings);
  printf("files:\n");
  for (guint i = 0; i < names->len; i++) {
    char *path = g_build_filename(dir, names->pdata[i], NULL);
    struct stat st;
    char size[32] = "?";
    if (stat(path, &st) == 0) format_size(st.st_size, size, sizeof size);
    const char *sha = NULL;
    for (size_t j = 0; files && j < json_object_array_length(files); j++) {
      json_object *f = json_object_array_get_idx(files, j);
      const char *n = record_string(f, "name");
      if (n && strcmp(n, names->pdata[i]) == 0) sha = record_string(f, "sha256");
    }
    printf("  %-26s %10s%s%s\n", (char *)names->pdata[i], size, sha ? "  sha256 " : "",
           sha ? sha : "");
    g_free(path);
  }
  g_ptr_array_free(names, TRUE);
}

static int cmd_info_model(int argc, char **argv, const cli_ctx *ctx) {
  if (argc > 2) return cli_usage_error("model info", "give one model name or folder");
  cdb_error err = {{0}};
  char *dir = argc == 2 ? cdb_model_resolve(argv[1], &err) : cli_model_dir(ctx, &err);
  if (!dir) {
    cli_error("model info: %s", err.msg);
    return CLI_FAIL;
  }
  json_object *rec = cdb_hub_pull_record(dir);
  printf("path:     %s\n", dir);
  if (rec)
    printf("source:   %s from %s, revision %s, pulled %s\n", record_string(rec, "name"),
           record_string(rec, "endpoint"), record_string(rec, "revision"),
           record_string(rec, "pulled_at"));
  print_files(dir, rec);
  print_config(dir);
  json_object_put(rec);
  clip_model *model = clip_model_load(dir, NULL, &err);
  int rc = CLI_OK;
  if (model) {
    printf("loads:    yes (embedding dim %d, image %d px, context %d tokens)\n",
           clip_model_dim(model), clip_model_image_size(model), clip_model_context_length(model));
    printf("identity: %s\n", clip_model_identity(model));
    clip_model_free(model);
  } else {
    printf("loads:    no\n");
    cli_error("model info: %s", err.msg);
    rc = CLI_FAIL;
  }
  free(dir);
  return rc;
}

/* ---- rm ---- */

static int remove_cached(const char *name) {
  cdb_error err = {{0}};
  char *dir = cdb_hub_model_dir(name, &err);
  if (!dir) {
    cli_error("model rm: %s (rm deletes cached models only; delete your own folders yourself)",
              err.msg);
    return CLI_FAIL;
  }
  int rc = CLI_OK;
  if (cdb_hub_remove(name, &err) != 0) {
    cli_error("model rm: %s", err.msg);
    rc = CLI_FAIL;
  } else {
    printf("removed %s (%s)\n", name, dir);
  }
  free(dir);
  return rc;
}

static int cmd_rm(int argc, char **argv) {
  if (argc < 2) return cli_usage_error("model rm", "give the model names to delete (ORG/NAME)");
  int rc = CLI_OK;
  for (int i = 1; i < argc; i++)
    if (remove_cached(argv[i]) != CLI_OK) rc = CLI_FAIL;
  return rc;
}

int cmd_model(int argc, char **argv, const cli_ctx *ctx) {
  if (argc < 2 || cli_is_help(argv[1])) {
    fputs(MODEL_USAGE, argc < 2 ? stderr : stdout);
    return argc < 2 ? CLI_USAGE : CLI_OK;
  }
  const char *sub = argv[1];
  if (argc > 2 && cli_is_help(argv[2])) {
    fputs(MODEL_USAGE, stdout);
    return CLI_OK;
  }
  if (strcmp(sub, "pull") == 0) return cmd_pull(argc - 1, argv + 1, ctx);
  if (strcmp(sub, "list") == 0 || strcmp(sub, "ls") == 0) return cmd_list(argc - 1, argv + 1);
  if (strcmp(sub, "info") == 0) return cmd_info_model(argc - 1, argv + 1, ctx);
  if (strcmp(sub, "rm") == 0) return cmd_rm(argc - 1, argv + 1);
  return cli_usage_error("model", "unknown subcommand \"%s\" (pull, list, info, rm)", sub);
}
