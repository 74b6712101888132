/* cmd_model.c: `clipdb model pull|list|info|rm`, the model cache (src/models.h) and the hub.
 *
 * pull downloads a Hugging Face CLIPModel repository's files from
 * {HF_ENDPOINT or https://huggingface.co}/{org}/{name}/resolve/{revision}/{file} into a staging
 * folder <cache>/ORG--NAME.tmp-XXXXXX (src/download.h: resume, SHA-256 check, retries), checks
 * that the files load as a model, and only then swaps the staging folder in for
 * <cache>/ORG--NAME. An interrupted pull leaves its staging folder; the next pull of the same
 * name and revision continues it. A lock file keeps two pulls of one model apart. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <glib.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "embed/clip.h"
#include "src/download.h"
#include "src/fetch.h"
#include "src/json.h"
#include "src/model_path.h"

#define DEFAULT_ENDPOINT "https://huggingface.co"
#define DEFAULT_REVISION "main"
#define PULL_RECORD ".clipdb-pull.json" /* what pull wrote: source, revision, files, digests */
#define STAGING_SOURCE ".clipdb-staging"  /* endpoint + revision a staging folder belongs to */
#define CONFIG_MAX_BYTES (1u << 20)

typedef struct hub_file {
  const char *name;
  bool required;
  bool large; /* stored with LFS on the hub, which names its SHA-256: worth reusing */
} hub_file;

/* Small files first, so that a wrong name or revision fails before the large download. */
static const hub_file HUB_FILES[] = {
    {"config.json", true, false},           {"preprocessor_config.json", true, false},
    {"tokenizer_config.json", false, false}, {"special_tokens_map.json", false, false},
    {"vocab.json", true, false},            {"merges.txt", true, false},
    {"model.safetensors", true, true},
};
enum { N_HUB_FILES = sizeof HUB_FILES / sizeof HUB_FILES[0] };

static const char MODEL_USAGE[] =
    "usage: clipdb model pull ORG/NAME [--revision REV] [--offline] [--retries N] [--timeout S]\n"
    "       clipdb model list\n"
    "       clipdb model info [NAME|DIR]\n"
    "       clipdb model rm ORG/NAME...\n"
    "\n"
    "pull     download a CLIP model from the Hugging Face hub into the model cache\n"
    "         (HF_ENDPOINT overrides the hub address, HF_TOKEN is sent for gated models,\n"
    "         HF_HUB_OFFLINE=1 or --offline forbids network access); an interrupted pull\n"
    "         resumes where it stopped; a failed pull leaves the cached model untouched\n"
    "         --revision REV  branch, tag or commit (default main)\n"
    "         --retries N     attempts per file (default 5)\n"
    "         --timeout S     give up a transfer that stalls for S seconds (default 30)\n"
    "list     the cached models\n"
    "info     a model's files, sizes, source and configuration\n"
    "rm       delete cached models\n";

/* ---- small helpers ---- */

static bool env_true(const char *name) {
  const char *v = getenv(name);
  return v && (g_ascii_strcasecmp(v, "1") == 0 || g_ascii_strcasecmp(v, "true") == 0 ||
               g_ascii_strcasecmp(v, "yes") == 0 || g_ascii_strcasecmp(v, "on") == 0);
}

static bool is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* Deletes a folder and everything in it (without following symbolic links). */
static int remove_tree(const char *path) {
  return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void format_size(long long bytes, char *out, size_t cap) {
  if (bytes < 1000)
    snprintf(out, cap, "%lld B", bytes);
  else if (bytes < 1000 * 1000)
    snprintf(out, cap, "%.1f kB", bytes / 1e3);
  else if (bytes < 1000LL * 1000 * 1000)
    snprintf(out, cap, "%.1f MB", bytes / 1e6);
  else
    snprintf(out, cap, "%.2f GB", bytes / 1e9);
}

/* "ORG--NAME" -> "ORG/NAME" (g_free). */
static char *hub_name_of_folder(const char *folder) {
  char *name = g_strdup(folder);
  char *sep = strstr(name, "--");
  if (sep) {
    sep[0] = '/';
    memmove(sep + 1, sep + 2, strlen(sep + 2) + 1);
  }
  return name;
}

static long long folder_bytes(const char *dir) {
  long long total = 0;
  GDir *d = g_dir_open(dir, 0, NULL);
  if (!d) return 0;
  const char *entry;
  while ((entry = g_dir_read_name(d))) {
    char *path = g_build_filename(dir, entry, NULL);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) total += st.st_size;
    g_free(path);
  }
  g_dir_close(d);
  return total;
}

/* Calls fn for each staging folder (ORG--NAME.tmp-*) of folder in the cache. */
static void for_each_staging(const char *cache, const char *folder,
                             void (*fn)(const char *path, void *arg), void *arg) {
  GDir *d = g_dir_open(cache, 0, NULL);
  if (!d) return;
  char *prefix = g_strconcat(folder, ".tmp-", NULL);
  const char *entry;
  GPtrArray *found = g_ptr_array_new_with_free_func(g_free);
  while ((entry = g_dir_read_name(d)))
    if (g_str_has_prefix(entry, prefix)) g_ptr_array_add(found, g_build_filename(cache, entry, NULL));
  g_dir_close(d); /* collect first: fn may delete entries */
  for (guint i = 0; i < found->len; i++)
    if (is_dir(found->pdata[i])) fn(found->pdata[i], arg);
  g_ptr_array_free(found, TRUE);
  g_free(prefix);
}

/* ---- pull ---- */

static json_object *load_pull_record(const char *dir);

typedef struct pull_job {
  const char *hub_name;
  const char *revision;
  char *endpoint;  /* without a trailing slash */
  char *cache;     /* cache root */
  char *folder;    /* ORG--NAME */
  char *final_dir; /* <cache>/ORG--NAME */
  char *staging;   /* <cache>/ORG--NAME.tmp-XXXXXX */
  cdb_download_opts dl;
  json_object *files;    /* the pull record's file list */
  json_object *previous; /* the cached model's pull record, or NULL */
} pull_job;

static void pick_staging(const char *path, void *arg) {
  pull_job *job = arg;
  char *want = g_strdup_printf("%s\n%s\n", job->endpoint, job->revision);
  char *have = NULL;
  char *source = g_build_filename(path, STAGING_SOURCE, NULL);
  bool same = g_file_get_contents(source, &have, NULL, NULL) && strcmp(have, want) == 0;
  if (same && !job->staging) {
    job->staging = g_strdup(path);
  } else if (remove_tree(path) != 0) {
    cli_error("model pull: cannot remove the stale staging folder %s: %s", path, strerror(errno));
  }
  g_free(source);
  g_free(have);
  g_free(want);
}

/* Reuses the staging folder of an interrupted pull of the same source, or makes a new one. */
static int open_staging(pull_job *job) {
  for_each_staging(job->cache, job->folder, pick_staging, job);
  if (job->staging) {
    fprintf(stderr, "continuing an interrupted pull in %s\n", job->staging);
    return 0;
  }
  char *templ = g_strdup_printf("%s/%s.tmp-XXXXXX", job->cache, job->folder);
  if (!mkdtemp(templ)) {
    cli_error("model pull: cannot create %s: %s", templ, strerror(errno));
    g_free(templ);
    return -1;
  }
  job->staging = templ;
  char *source = g_build_filename(templ, STAGING_SOURCE, NULL);
  char *text = g_strdup_printf("%s\n%s\n", job->endpoint, job->revision);
  GError *gerr = NULL;
  int rc = g_file_set_contents(source, text, -1, &gerr) ? 0 : -1;
  if (rc) cli_error("model pull: %s", gerr->message);
  g_clear_error(&gerr);
  g_free(text);
  g_free(source);
  return rc;
}

static char *file_url(const pull_job *job, const char *file) {
  const char *slash = strchr(job->hub_name, '/');
  char *rev = g_uri_escape_string(job->revision, NULL, FALSE);
  char *url = g_strdup_printf("%s/%.*s/%s/resolve/%s/%s", job->endpoint,
                              (int)(slash - job->hub_name), job->hub_name, slash + 1, rev, file);
  g_free(rev);
  return url;
}

static void record_file(pull_job *job, const char *name, long long bytes, const char *sha256,
                        bool verified) {
  json_object *f = json_object_new_object();
  json_object_object_add(f, "name", json_object_new_string(name));
  json_object_object_add(f, "bytes", json_object_new_int64(bytes));
  json_object_object_add(f, "sha256", json_object_new_string(sha256));
  json_object_object_add(f, "verified", json_object_new_boolean(verified));
  json_object_array_add(job->files, f);
}

static void report_file(const char *name, long long bytes, const char *how) {
  char size[32];
  format_size(bytes, size, sizeof size);
  fprintf(stderr, "  %-26s %10s  %s\n", name, size, how);
}

/* A file already in the staging folder was renamed there only once complete and verified. */
static int keep_staged_file(pull_job *job, const hub_file *f, const char *dest) {
  cdb_error err = {{0}};
  char sha[65];
  struct stat st;
  if (stat(dest, &st) != 0 || cdb_sha256_file(dest, sha, &err) != 0) {
    cli_error("model pull: %s", err.msg[0] ? err.msg : strerror(errno));
    return -1;
  }
  record_file(job, f->name, st.st_size, sha, false);
  report_file(f->name, st.st_size, "(downloaded earlier)");
  return 0;
}

/* The SHA-256 a pull record lists for a file, or NULL. */
static const char *recorded_sha256(json_object *rec, const char *name) {
  json_object *files = NULL;
  if (!rec || !json_object_object_get_ex(rec, "files", &files) ||
      !json_object_is_type(files, json_type_array))
    return NULL;
  for (size_t i = 0; i < json_object_array_length(files); i++) {
    json_object *f = json_object_array_get_idx(files, i), *v;
    if (json_object_object_get_ex(f, "name", &v) && strcmp(json_object_get_string(v), name) == 0 &&
        json_object_object_get_ex(f, "sha256", &v))
      return json_object_get_string(v);
  }
  return NULL;
}

/* When the hub still names the SHA-256 that the cached model's copy of a large file has, the copy
 * is hard-linked into the staging folder instead of downloaded again. True when reused. */
static bool reuse_cached_file(pull_job *job, const hub_file *f, const char *url, const char *dest) {
  const char *recorded = recorded_sha256(job->previous, f->name);
  if (!f->large || !recorded) return false;
  char *cached = g_build_filename(job->final_dir, f->name, NULL);
  char announced[65], actual[65];
  cdb_error err = {{0}};
  struct stat st;
  bool reused = stat(cached, &st) == 0 && S_ISREG(st.st_mode) &&
                cdb_download_probe(url, &job->dl, announced, &err) == 0 &&
                strcmp(announced, recorded) == 0 && cdb_sha256_file(cached, actual, &err) == 0 &&
                strcmp(actual, announced) == 0 && link(cached, dest) == 0;
  if (reused) {
    record_file(job, f->name, st.st_size, actual, true);
    report_file(f->name, st.st_size, "unchanged, kept from the cache");
  }
  g_free(cached);
  return reused;
}

static int pull_file(pull_job *job, const hub_file *f) {
  char *dest = g_build_filename(job->staging, f->name, NULL);
  int rc = 0;
  if (g_file_test(dest, G_FILE_TEST_IS_REGULAR)) {
    rc = keep_staged_file(job, f, dest);
    g_free(dest);
    return rc;
  }
  char *url = file_url(job, f->name);
  if (reuse_cached_file(job, f, url, dest)) {
    g_free(url);
    g_free(dest);
    return 0;
  }
  cdb_download_opts opts = job->dl;
  opts.label = f->name;
  cdb_download_info info;
  cdb_error err = {{0}};
  int got = cdb_download(url, dest, &opts, &info, &err);
  if (got == 0) {
    record_file(job, f->name, info.bytes, info.sha256, info.verified);
    report_file(f->name, info.bytes,
                info.verified ? "sha256 verified" : (info.resumed ? "resumed" : "done"));
  } else if (got == CDB_DOWNLOAD_NOT_FOUND && !f->required) {
    fprintf(stderr, "  %-26s %10s  (not in the repository; optional)\n", f->name, "-");
  } else if (got == CDB_DOWNLOAD_NOT_FOUND) {
    cli_error("model pull: %s revision %s has no %s (%s); is it a CLIP model in Hugging Face "
              "format, and are the name and revision right?",
              job->hub_name, job->revision, f->name, err.msg);
    rc = -1;
  } else {
    cli_error("model pull: %s", err.msg);
    rc = -1;
  }
  g_free(url);
  g_free(dest);
  return rc;
}

/* The staged files must load as a model and tokenize, or nothing replaces the cached model. */
static int check_staged_model(const pull_job *job) {
  cdb_error err = {{0}};
  clip_model *model = clip_model_load(job->staging, NULL, &err);
  int32_t ids[1024];
  int ok = model && clip_model_context_length(model) <= (int)(sizeof ids / sizeof ids[0]) &&
           clip_tokenize(model, "a photo", 7, ids, &err) > 0;
  clip_model_free(model);
  if (ok) return 0;
  cli_error("model pull: the downloaded files of %s do not form a usable model: %s", job->hub_name,
            err.msg[0] ? err.msg : "context length too large");
  return -1;
}

static int write_pull_record(const pull_job *job) {
  char shown[512], when[32];
  cdb_url_redact(job->endpoint, shown, sizeof shown);
  time_t now = time(NULL);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  json_object *rec = json_object_new_object();
  json_object_object_add(rec, "name", json_object_new_string(job->hub_name));
  json_object_object_add(rec, "endpoint", json_object_new_string(shown));
  json_object_object_add(rec, "revision", json_object_new_string(job->revision));
  json_object_object_add(rec, "pulled_at", json_object_new_string(when));
  json_object_object_add(rec, "files", json_object_get(job->files));
  char *path = g_build_filename(job->staging, PULL_RECORD, NULL);
  int rc = json_object_to_file_ext(path, rec, JSON_C_TO_STRING_PRETTY);
  if (rc != 0) cli_error("model pull: cannot write %s", path);
  g_free(path);
  json_object_put(rec);
  return rc == 0 ? 0 : -1;
}

/* Puts the staging folder at final_dir; an existing model there is replaced atomically where the
 * filesystem allows (RENAME_EXCHANGE), otherwise moved aside first and restored on failure. */
static int swap_in(pull_job *job) {
  char *source = g_build_filename(job->staging, STAGING_SOURCE, NULL);
  unlink(source);
  g_free(source);
  if (renameat2(AT_FDCWD, job->staging, AT_FDCWD, job->final_dir, RENAME_NOREPLACE) == 0) return 0;
  if (errno == EEXIST &&
      renameat2(AT_FDCWD, job->staging, AT_FDCWD, job->final_dir, RENAME_EXCHANGE) == 0) {
    remove_tree(job->staging); /* now the old model */
    return 0;
  }
  char *old = g_strdup_printf("%s.old-%ld", job->final_dir, (long)getpid());
  int rc = -1;
  if (rename(job->final_dir, old) != 0 && errno != ENOENT) {
    cli_error("model pull: cannot move %s aside: %s", job->final_dir, strerror(errno));
  } else if (rename(job->staging, job->final_dir) != 0) {
    cli_error("model pull: cannot rename %s: %s", job->staging, strerror(errno));
    rename(old, job->final_dir);
  } else {
    remove_tree(old);
    rc = 0;
  }
  g_free(old);
  return rc;
}

/* True when a staging folder holds any downloaded byte (a file or .part besides its label). */
static bool has_payload(const char *staging) {
  GDir *d = g_dir_open(staging, 0, NULL);
  bool found = false;
  const char *entry;
  while (d && !found && (entry = g_dir_read_name(d))) {
    char *path = g_build_filename(staging, entry, NULL);
    struct stat st;
    found = strcmp(entry, STAGING_SOURCE) != 0 && stat(path, &st) == 0 && st.st_size > 0;
    g_free(path);
  }
  if (d) g_dir_close(d);
  return found;
}

/* Holds <cache>/ORG--NAME.lock for the whole pull; returns its descriptor or -1. */
static int lock_model(const pull_job *job) {
  char *path = g_strdup_printf("%s/%s.lock", job->cache, job->folder);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    cli_error("model pull: %s: %s", path, strerror(errno));
  } else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    cli_error("model pull: another `clipdb model pull %s` is running (%s is locked)",
              job->hub_name, path);
    close(fd);
    fd = -1;
  }
  g_free(path);
  return fd;
}

static int run_pull(pull_job *job) {
  if (g_mkdir_with_parents(job->cache, 0755) != 0) {
    cli_error("model pull: cannot create the model cache %s: %s", job->cache, strerror(errno));
    return CLI_FAIL;
  }
  int lock = lock_model(job);
  if (lock < 0) return CLI_FAIL;
  char shown[512];
  cdb_url_redact(job->endpoint, shown, sizeof shown);
  fprintf(stderr, "pulling %s (revision %s) from %s\n", job->hub_name, job->revision, shown);
  int rc = open_staging(job);
  for (int i = 0; rc == 0 && i < N_HUB_FILES; i++) rc = pull_file(job, &HUB_FILES[i]);
  if (rc == 0 && check_staged_model(job) != 0) {
    remove_tree(job->staging); /* a bad download is not worth resuming */
    rc = -1;
  }
  if (rc == 0) rc = write_pull_record(job);
  if (rc == 0) rc = swap_in(job);
  if (rc == 0) {
    char size[32];
    format_size(folder_bytes(job->final_dir), size, sizeof size);
    printf("pulled %s (revision %s, %s) into %s\n", job->hub_name, job->revision, size,
           job->final_dir);
  } else if (job->staging && is_dir(job->staging) && !has_payload(job->staging)) {
    remove_tree(job->staging); /* nothing worth resuming */
  } else if (job->staging && is_dir(job->staging)) {
    fprintf(stderr, "clipdb: partial download kept in %s; run the same pull again to resume\n",
            job->staging);
  }
  close(lock);
  return rc == 0 ? CLI_OK : CLI_FAIL;
}

static char *endpoint_from_env(void) {
  const char *env = getenv("HF_ENDPOINT");
  char *endpoint = g_strdup(env && env[0] ? env : DEFAULT_ENDPOINT);
  size_t n = strlen(endpoint);
  while (n > 0 && endpoint[n - 1] == '/') endpoint[--n] = '\0';
  return endpoint;
}

static int cmd_pull(int argc, char **argv, const cli_ctx *ctx) {
  static const struct option longopts[] = {{"revision", required_argument, NULL, 'r'},
                                           {"offline", no_argument, NULL, 'o'},
                                           {"retries", required_argument, NULL, 'n'},
                                           {"timeout", required_argument, NULL, 't'},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  const char *revision = DEFAULT_REVISION;
  bool offline = env_true("HF_HUB_OFFLINE");
  cdb_download_opts dl = cdb_download_default_opts();
  long v;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "r:h", longopts, NULL)) != -1) {
    switch (c) {
      case 'r':
        revision = optarg;
        break;
      case 'o':
        offline = true;
        break;
      case 'n':
        if (!cli_parse_int(optarg, 1, 100, &v))
          return cli_usage_error("model pull", "--retries takes a number from 1 to 100");
        dl.max_attempts = (int)v;
        break;
      case 't':
        if (!cli_parse_int(optarg, 1, 3600, &v))
          return cli_usage_error("model pull", "--timeout takes seconds from 1 to 3600");
        dl.stall_timeout_s = v;
        break;
      case 'h':
        fputs(MODEL_USAGE, stdout);
        return CLI_OK;
      default:
        return cli_usage_error("model pull", "unknown option (see clipdb model --help)");
    }
  }
  if (optind != argc - 1)
    return cli_usage_error("model pull", "give one model name, e.g. clipdb model pull %s",
                           CDB_DEFAULT_MODEL);
  if (!revision[0]) return cli_usage_error("model pull", "--revision is empty");
  pull_job job = {.hub_name = argv[optind], .revision = revision, .dl = dl};
  cdb_error err = {{0}};
  job.final_dir = cdb_model_cache_path(job.hub_name, &err);
  if (!job.final_dir) return cli_usage_error("model pull", "%s", err.msg);
  if (offline) {
    cli_error("model pull: offline mode (HF_HUB_OFFLINE or --offline) forbids downloading %s; "
              "unset HF_HUB_OFFLINE, or copy the model folder to %s",
              job.hub_name, job.final_dir);
    free(job.final_dir);
    return CLI_FAIL;
  }
  job.endpoint = endpoint_from_env();
  int rc = CLI_FAIL;
  if (!cdb_is_url(job.endpoint)) {
    cli_error("model pull: HF_ENDPOINT must be an http:// or https:// address");
  } else {
    job.cache = cdb_model_cache_dir();
    job.folder = g_path_get_basename(job.final_dir);
    const char *token = getenv("HF_TOKEN");
    job.dl.bearer_token = token && token[0] ? token : NULL;
    job.dl.show_progress = ctx->stderr_tty;
    job.files = json_object_new_array();
    job.previous = load_pull_record(job.final_dir);
    rc = run_pull(&job);
    json_object_put(job.files);
    json_object_put(job.previous);
  }
  free(job.final_dir);
  free(job.cache);
  g_free(job.folder);
  g_free(job.staging);
  g_free(job.endpoint);
  return rc;
}

/* ---- list ---- */

static json_object *load_pull_record(const char *dir) {
  char *path = g_build_filename(dir, PULL_RECORD, NULL);
  json_object *rec = g_file_test(path, G_FILE_TEST_IS_REGULAR)
                         ? cdb_json_load_file(path, CONFIG_MAX_BYTES, NULL)
                         : NULL;
  g_free(path);
  return rec;
}

static const char *record_string(json_object *rec, const char *key) {
  json_object *v;
  return rec && json_object_object_get_ex(rec, key, &v) && json_object_is_type(v, json_type_string)
             ? json_object_get_string(v)
             : NULL;
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmd_list(int argc, char **argv) {
  (void)argv;
  if (argc > 1) return cli_usage_error("model list", "list takes no arguments");
  char *cache = cdb_model_cache_dir();
  GDir *d = g_dir_open(cache, 0, NULL);
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  const char *entry;
  while (d && (entry = g_dir_read_name(d)))
    g_ptr_array_add(names, g_strdup(entry));
  if (d) g_dir_close(d);
  g_ptr_array_sort(names, compare_strings);
  int shown = 0;
  for (guint i = 0; i < names->len; i++) {
    const char *folder = names->pdata[i];
    char *dir = g_build_filename(cache, folder, NULL);
    bool staging = strstr(folder, ".tmp-") != NULL;
    if (is_dir(dir) && strstr(folder, "--") && !strstr(folder, ".old-")) {
      char *name = hub_name_of_folder(folder);
      char size[32];
      format_size(folder_bytes(dir), size, sizeof size);
      if (staging) {
        *strstr(name, ".tmp-") = '\0';
        printf("%-44s %10s  (interrupted pull; `clipdb model pull %s` resumes it)\n", name, size,
               name);
      } else {
        json_object *rec = load_pull_record(dir);
        const char *rev = record_string(rec, "revision");
        printf("%-44s %10s  %-12s %s\n", name, size, rev ? rev : "-", dir);
        json_object_put(rec);
        shown++;
      }
      g_free(name);
    }
    g_free(dir);
  }
  if (shown == 0)
    fprintf(stderr, "no models in %s; get one with `clipdb model pull %s`\n", cache,
            CDB_DEFAULT_MODEL);
  g_ptr_array_free(names, TRUE);
  free(cache);
  return CLI_OK;
}

/* ---- info ---- */

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
  static const char *const vision_keys[] = {"image_size", "patch_size", "hidden_size",
                                            "num_hidden_layers", "num_attention_heads",
                                            "intermediate_size", "hidden_act", NULL};
  static const char *const text_keys[] = {"hidden_size", "num_hidden_layers",
                                          "num_attention_heads", "intermediate_size",
                                          "max_position_embeddings", "vocab_size", "hidden_act",
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
  json_object *rec = load_pull_record(dir);
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

static void remove_staging(const char *path, void *arg) {
  (void)arg;
  remove_tree(path);
}

static int remove_cached(const char *name) {
  cdb_error err = {{0}};
  char *dir = cdb_model_cache_path(name, &err);
  if (!dir) {
    cli_error("model rm: %s (rm deletes cached models only; delete your own folders yourself)",
              err.msg);
    return CLI_FAIL;
  }
  char *cache = cdb_model_cache_dir();
  char *folder = g_path_get_basename(dir);
  for_each_staging(cache, folder, remove_staging, NULL);
  int rc = CLI_OK;
  if (!is_dir(dir)) {
    cli_error("model rm: %s is not in the cache (%s)", name, dir);
    rc = CLI_FAIL;
  } else if (remove_tree(dir) != 0) {
    cli_error("model rm: removing %s: %s", dir, strerror(errno));
    rc = CLI_FAIL;
  } else {
    printf("removed %s (%s)\n", name, dir);
  }
  char *lock = g_strdup_printf("%s.lock", dir);
  unlink(lock);
  g_free(lock);
  g_free(folder);
  free(cache);
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
