/* hub.c: the model cache's layout and pulls from the Hugging Face hub (see hub.h). */
#include "src/hub.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "src/digest.h"
#include "src/fetch.h"
#include "src/file.h"
#include "src/json.h"
#include "src/shards.h"

#define DEFAULT_ENDPOINT "https://huggingface.co"
#define DEFAULT_REVISION "main"
#define PULL_RECORD ".clipdb-pull.json"  /* what pull wrote: source, revision, files, digests */
#define STAGING_SOURCE ".clipdb-staging" /* endpoint + revision a staging folder belongs to */
#define RECORD_MAX_BYTES (1u << 20)

typedef struct hub_file {
  const char *name;
  bool required;
  bool large;           /* stored with LFS on the hub, which names its SHA-256: worth reusing */
  bool sharded_instead; /* when absent, a sharded checkpoint may stand in for it */
} hub_file;

/* The small files, pulled first so that a wrong name or revision fails before the weights. */
static const hub_file HUB_FILES[] = {
    {"config.json", true, false, false},
    {"preprocessor_config.json", true, false, false},
    {"tokenizer_config.json", false, false, false},
    {"special_tokens_map.json", false, false, false},
    {"vocab.json", true, false, false},
    {"merges.txt", true, false, false},
};
enum { N_HUB_FILES = sizeof HUB_FILES / sizeof HUB_FILES[0] };

/* The weights: model.safetensors, else the index of a sharded checkpoint and its shards. */
static const hub_file SINGLE_WEIGHTS = {CDB_SINGLE_WEIGHTS, true, true, true};
static const hub_file SHARD_INDEX = {CDB_SHARD_INDEX, true, false, false};
enum { PULL_ABSENT = 1 }; /* pull_file: a file with sharded_instead is not in the repository */

/* ---- the cache layout ---- */

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

char *cdb_hub_cache_dir(void) {
  const char *xdg = getenv("XDG_CACHE_HOME");
  if (xdg && xdg[0] == '/') return cdb_path_join(xdg, "clipdb/models");
  const char *home = getenv("HOME");
  return cdb_path_join(home && home[0] ? home : "/tmp", ".cache/clipdb/models");
}

static int safe_name_part(const char *s, size_t n) {
  if (n == 0 || n > 96 || s[0] == '.') return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '-' || c == '_' || c == '.';
    if (!ok) return 0;
  }
  return 1;
}

char *cdb_hub_model_dir(const char *hub_name, cdb_error *err) {
  const char *slash = hub_name ? strchr(hub_name, '/') : NULL;
  if (!slash || strchr(slash + 1, '/') || !safe_name_part(hub_name, (size_t)(slash - hub_name)) ||
      !safe_name_part(slash + 1, strlen(slash + 1))) {
    cdb_error_set(err, "model name \"%s\" is not of the form ORG/NAME", hub_name ? hub_name : "");
    return NULL;
  }
  char folder[200];
  snprintf(folder, sizeof folder, "%.*s--%s", (int)(slash - hub_name), hub_name, slash + 1);
  char *cache = cdb_hub_cache_dir();
  if (!cache) return NULL;
  char *path = cdb_path_join(cache, folder);
  free(cache);
  return path;
}

/* The Hugging Face tools' home, as huggingface_hub finds it: $HF_HOME, else
 * $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface. g_free'd. */
static char *hf_home(void) {
  const char *home = getenv("HF_HOME"), *xdg = getenv("XDG_CACHE_HOME"), *user = getenv("HOME");
  if (home && home[0]) return g_strdup(home);
  if (xdg && xdg[0] == '/') return g_build_filename(xdg, "huggingface", NULL);
  return g_build_filename(user && user[0] ? user : "/tmp", ".cache", "huggingface", NULL);
}

/* The hub cache: $HF_HUB_CACHE, else HF home's hub/. g_free'd. */
static char *hf_cache_dir(void) {
  const char *hub = getenv("HF_HUB_CACHE");
  if (hub && hub[0]) return g_strdup(hub);
  char *home = hf_home(), *dir = g_build_filename(home, "hub", NULL);
  g_free(home);
  return dir;
}

/* The access token: $HF_TOKEN, else the one `huggingface-cli login` saved ($HF_TOKEN_PATH, else
 * HF home's token file), first line, blanks stripped. g_free'd; NULL when there is none. */
static char *hf_token(void) {
  const char *env = getenv("HF_TOKEN"), *path_env = getenv("HF_TOKEN_PATH");
  if (env && env[0]) return g_strdup(env);
  char *home = hf_home(), *text = NULL;
  char *path = path_env && path_env[0] ? g_strdup(path_env) : g_build_filename(home, "token", NULL);
  if (g_file_get_contents(path, &text, NULL, NULL)) {
    char *eol = strchr(text, '\n');
    if (eol) *eol = '\0';
    g_strstrip(text);
  }
  g_free(path);
  g_free(home);
  if (text && !text[0]) g_clear_pointer(&text, g_free);
  return text;
}

static bool is_file_in(const char *dir, const char *name) {
  char *path = g_build_filename(dir, name, NULL);
  bool ok = g_file_test(path, G_FILE_TEST_IS_REGULAR);
  g_free(path);
  return ok;
}

/* model.safetensors, or a readable shard index and every shard it names. */
static bool has_weights(const char *dir) {
  if (is_file_in(dir, CDB_SINGLE_WEIGHTS)) return true;
  char *path = g_build_filename(dir, CDB_SHARD_INDEX, NULL);
  cdb_shard_index idx;
  bool ok = is_file_in(dir, CDB_SHARD_INDEX) && cdb_shard_index_load(path, &idx, NULL) == 0;
  if (ok) {
    for (int i = 0; ok && i < idx.n_files; i++) ok = is_file_in(dir, idx.files[i]);
    cdb_shard_index_free(&idx);
  }
  g_free(path);
  return ok;
}

static bool has_required_files(const char *dir) {
  for (int i = 0; i < N_HUB_FILES; i++)
    if (HUB_FILES[i].required && !is_file_in(dir, HUB_FILES[i].name)) return false;
  return has_weights(dir);
}

/* The snapshot of hub_name's main revision in the Hugging Face cache
 * (models--ORG--NAME/refs/main names the commit; snapshots/COMMIT/ holds links into blobs/)
 * when it holds every file clipdb needs, else NULL. malloc'd. */
static char *hf_cache_snapshot(const char *hub_name) {
  char *org = g_strndup(hub_name, (size_t)(strchr(hub_name, '/') - hub_name));
  char *cache = hf_cache_dir();
  char *repo = g_strdup_printf("%s/models--%s--%s", cache, org, strchr(hub_name, '/') + 1);
  char *ref = g_build_filename(repo, "refs", DEFAULT_REVISION, NULL), *commit = NULL;
  char *found = NULL;
  if (g_file_get_contents(ref, &commit, NULL, NULL)) {
    g_strstrip(commit);
    bool safe = commit[0] && safe_name_part(commit, strlen(commit));
    char *snap = safe ? g_build_filename(repo, "snapshots", commit, NULL) : NULL;
    if (snap && has_required_files(snap)) found = strdup(snap);
    g_free(snap);
  }
  g_free(commit);
  g_free(ref);
  g_free(repo);
  g_free(cache);
  g_free(org);
  return found;
}

char *cdb_hub_find(const char *hub_name, cdb_error *err) {
  char *path = cdb_hub_model_dir(hub_name, err);
  if (!path || cdb_is_dir(path)) return path;
  char *snapshot = hf_cache_snapshot(hub_name);
  if (!snapshot)
    cdb_error_set(err,
                  "model \"%s\" is not in the cache (%s) nor in the Hugging Face cache; run "
                  "`clipdb model pull %s`",
                  hub_name, path, hub_name);
  free(path);
  return snapshot;
}

json_object *cdb_hub_pull_record(const char *model_dir) {
  char *path = g_build_filename(model_dir, PULL_RECORD, NULL);
  json_object *rec = g_file_test(path, G_FILE_TEST_IS_REGULAR)
                         ? cdb_json_load_file(path, RECORD_MAX_BYTES, NULL)
                         : NULL;
  g_free(path);
  return rec;
}

/* rec[key] when it is a string, else NULL. */
static const char *record_string(json_object *rec, const char *key) {
  const char *s = NULL;
  if (rec) cdb_json_get_string(rec, key, "pull record", &s, NULL);
  return s;
}

/* "ORG--NAME" (with any suffix) -> "ORG/NAME" (g_free). */
static char *hub_name_of_folder(const char *folder) {
  char *name = g_strdup(folder);
  char *suffix = strstr(name, ".tmp-");
  if (suffix) *suffix = '\0';
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
    if (g_str_has_prefix(entry, prefix))
      g_ptr_array_add(found, g_build_filename(cache, entry, NULL));
  g_dir_close(d); /* collect first: fn may delete entries */
  for (guint i = 0; i < found->len; i++)
    if (cdb_is_dir(found->pdata[i])) fn(found->pdata[i], arg);
  g_ptr_array_free(found, TRUE);
  g_free(prefix);
}

/* ---- list and remove ---- */

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A cache entry that names a model (or its interrupted pull): ORG--NAME[.tmp-*], a folder. */
static bool fill_entry(const char *cache, const char *folder, cdb_hub_entry *e) {
  char *dir = g_build_filename(cache, folder, NULL);
  if (!cdb_is_dir(dir) || !strstr(folder, "--") || strstr(folder, ".old-")) {
    g_free(dir);
    return false;
  }
  *e = (cdb_hub_entry){.name = hub_name_of_folder(folder),
                       .dir = dir,
                       .bytes = folder_bytes(dir),
                       .interrupted = strstr(folder, ".tmp-") != NULL};
  json_object *rec = e->interrupted ? NULL : cdb_hub_pull_record(dir);
  const char *rev = record_string(rec, "revision");
  e->revision = rev ? g_strdup(rev) : NULL;
  json_object_put(rec);
  return true;
}

cdb_hub_entry *cdb_hub_list(size_t *n) {
  char *cache = cdb_hub_cache_dir();
  GDir *d = g_dir_open(cache, 0, NULL);
  GPtrArray *folders = g_ptr_array_new_with_free_func(g_free);
  const char *entry;
  while (d && (entry = g_dir_read_name(d))) g_ptr_array_add(folders, g_strdup(entry));
  if (d) g_dir_close(d);
  g_ptr_array_sort(folders, compare_strings);
  cdb_hub_entry *entries = g_new0(cdb_hub_entry, folders->len + 1);
  *n = 0;
  for (guint i = 0; i < folders->len; i++)
    if (fill_entry(cache, folders->pdata[i], &entries[*n])) (*n)++;
  g_ptr_array_free(folders, TRUE);
  free(cache);
  return entries;
}

void cdb_hub_list_free(cdb_hub_entry *entries, size_t n) {
  for (size_t i = 0; entries && i < n; i++) {
    g_free(entries[i].name);
    g_free(entries[i].dir);
    g_free(entries[i].revision);
  }
  g_free(entries);
}

static void remove_staging(const char *path, void *arg) {
  (void)arg;
  remove_tree(path);
}

int cdb_hub_remove(const char *hub_name, cdb_error *err) {
  char *dir = cdb_hub_model_dir(hub_name, err);
  if (!dir) return -1;
  char *cache = cdb_hub_cache_dir();
  char *folder = g_path_get_basename(dir);
  for_each_staging(cache, folder, remove_staging, NULL);
  int rc = 0;
  if (!cdb_is_dir(dir)) rc = cdb_error_set(err, "%s is not in the cache (%s)", hub_name, dir);
  else if (remove_tree(dir) != 0) rc = cdb_error_set(err, "removing %s: %s", dir, strerror(errno));
  char *lock = g_strdup_printf("%s.lock", dir);
  unlink(lock);
  g_free(lock);
  g_free(folder);
  free(cache);
  free(dir);
  return rc;
}

/* ---- pull ---- */

typedef struct pull_job {
  const char *hub_name;
  const char *revision;
  const cdb_hub_pull_opts *opts;
  char *endpoint;        /* without a trailing slash */
  char *cache;           /* cache root */
  char *folder;          /* ORG--NAME */
  char *final_dir;       /* <cache>/ORG--NAME */
  char *staging;         /* <cache>/ORG--NAME.tmp-XXXXXX */
  cdb_download_opts dl;  /* opts->download with the token */
  json_object *files;    /* the pull record's file list */
  json_object *previous; /* the cached model's pull record, or NULL */
  char commit[41];       /* the commit the revision resolved to, when the hub said (or "") */
  cdb_error *err;
} pull_job;

static void note(const pull_job *job, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void note(const pull_job *job, const char *fmt, ...) {
  if (!job->opts->on_note) return;
  va_list ap;
  va_start(ap, fmt);
  char *line = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  job->opts->on_note(job->opts->arg, line);
  g_free(line);
}

static void report_file(const pull_job *job, const char *file, long long bytes,
                        cdb_hub_file_state state) {
  if (job->opts->on_file) job->opts->on_file(job->opts->arg, file, bytes, state);
}

static bool env_true(const char *name) {
  const char *v = getenv(name);
  return v && (g_ascii_strcasecmp(v, "1") == 0 || g_ascii_strcasecmp(v, "true") == 0 ||
               g_ascii_strcasecmp(v, "yes") == 0 || g_ascii_strcasecmp(v, "on") == 0);
}

static char *endpoint_from_env(void) {
  const char *env = getenv("HF_ENDPOINT");
  char *endpoint = g_strdup(env && env[0] ? env : DEFAULT_ENDPOINT);
  size_t n = strlen(endpoint);
  while (n > 0 && endpoint[n - 1] == '/') endpoint[--n] = '\0';
  return endpoint;
}

static void pick_staging(const char *path, void *arg) {
  pull_job *job = arg;
  char *want = g_strdup_printf("%s\n%s\n", job->endpoint, job->revision);
  char *have = NULL;
  char *source = g_build_filename(path, STAGING_SOURCE, NULL);
  bool same = g_file_get_contents(source, &have, NULL, NULL) && strcmp(have, want) == 0;
  if (same && !job->staging) {
    job->staging = g_strdup(path);
  } else if (remove_tree(path) != 0) {
    note(job, "cannot remove the stale staging folder %s: %s", path, strerror(errno));
  }
  g_free(source);
  g_free(have);
  g_free(want);
}

/* Reuses the staging folder of an interrupted pull of the same source, or makes a new one. */
static int open_staging(pull_job *job) {
  for_each_staging(job->cache, job->folder, pick_staging, job);
  if (job->staging) {
    note(job, "continuing an interrupted pull in %s", job->staging);
    return 0;
  }
  char *templ = g_strdup_printf("%s/%s.tmp-XXXXXX", job->cache, job->folder);
  if (!mkdtemp(templ)) {
    cdb_error_set(job->err, "cannot create %s: %s", templ, strerror(errno));
    g_free(templ);
    return -1;
  }
  job->staging = templ;
  char *source = g_build_filename(templ, STAGING_SOURCE, NULL);
  char *text = g_strdup_printf("%s\n%s\n", job->endpoint, job->revision);
  GError *gerr = NULL;
  int rc = g_file_set_contents(source, text, -1, &gerr) ? 0 : -1;
  if (rc) cdb_error_set(job->err, "%s", gerr->message);
  g_clear_error(&gerr);
  g_free(text);
  g_free(source);
  return rc;
}

static char *file_url(const pull_job *job, const char *file) {
  const char *slash = strchr(job->hub_name, '/');
  char *rev = g_uri_escape_string(job->revision, NULL, FALSE);
  char *name = g_uri_escape_string(file, NULL, FALSE); /* shard names come from the index */
  char *url = g_strdup_printf("%s/%.*s/%s/resolve/%s/%s", job->endpoint,
                              (int)(slash - job->hub_name), job->hub_name, slash + 1, rev, name);
  g_free(name);
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
  /* The model's identity covers the weights' digest: remembered, it is not computed again. */
  char *path = g_build_filename(job->staging, name, NULL);
  if (g_str_has_suffix(name, ".safetensors")) cdb_file_sha256_remember(path, sha256);
  g_free(path);
}

/* A file already in the staging folder was renamed there only once complete and verified. */
static int keep_staged_file(pull_job *job, const hub_file *f, const char *dest) {
  char sha[65];
  struct stat st;
  if (stat(dest, &st) != 0) return cdb_error_set(job->err, "%s: %s", dest, strerror(errno));
  if (cdb_sha256_file(dest, sha, job->err) != 0) return -1;
  record_file(job, f->name, st.st_size, sha, false);
  report_file(job, f->name, st.st_size, CDB_HUB_FILE_STAGED);
  return 0;
}

/* The SHA-256 a pull record lists for a file, or NULL. */
static const char *recorded_sha256(json_object *rec, const char *name) {
  json_object *files = NULL;
  if (!rec || !json_object_object_get_ex(rec, "files", &files) ||
      !json_object_is_type(files, json_type_array))
    return NULL;
  for (size_t i = 0; i < json_object_array_length(files); i++) {
    json_object *f = json_object_array_get_idx(files, i);
    const char *n = record_string(f, "name");
    if (n && strcmp(n, name) == 0) return record_string(f, "sha256");
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
    report_file(job, f->name, st.st_size, CDB_HUB_FILE_UNCHANGED);
  }
  g_free(cached);
  return reused;
}

static int download_file(pull_job *job, const hub_file *f, const char *url, const char *dest) {
  cdb_download_opts opts = job->dl;
  opts.label = f->name;
  cdb_download_info info;
  cdb_error why = {{0}};
  int got = cdb_download(url, dest, &opts, &info, &why);
  if (got == 0) {
    if (info.repo_commit[0]) memcpy(job->commit, info.repo_commit, sizeof job->commit);
    record_file(job, f->name, info.bytes, info.sha256, info.verified);
    report_file(job, f->name, info.bytes,
                info.verified  ? CDB_HUB_FILE_VERIFIED
                : info.resumed ? CDB_HUB_FILE_RESUMED
                               : CDB_HUB_FILE_DOWNLOADED);
    return 0;
  }
  if (got == CDB_DOWNLOAD_NOT_FOUND && f->sharded_instead) return PULL_ABSENT;
  if (got == CDB_DOWNLOAD_NOT_FOUND && !f->required) {
    report_file(job, f->name, -1, CDB_HUB_FILE_ABSENT);
    return 0;
  }
  if (got == CDB_DOWNLOAD_NOT_FOUND)
    return cdb_error_set(job->err,
                         "%s revision %s has no %s (%s); is it a CLIP model in Hugging "
                         "Face format, and are the name and revision right?",
                         job->hub_name, job->revision,
                         f == &SHARD_INDEX ? CDB_SINGLE_WEIGHTS " nor " CDB_SHARD_INDEX : f->name,
                         why.msg);
  return cdb_error_set(job->err, "%s", why.msg);
}

static int pull_file(pull_job *job, const hub_file *f) {
  char *dest = g_build_filename(job->staging, f->name, NULL);
  char *url = NULL;
  int rc = 0;
  if (g_file_test(dest, G_FILE_TEST_IS_REGULAR)) {
    rc = keep_staged_file(job, f, dest);
  } else {
    url = file_url(job, f->name);
    if (!reuse_cached_file(job, f, url, dest)) rc = download_file(job, f, url, dest);
  }
  g_free(url);
  g_free(dest);
  return rc;
}

/* Every shard the staged index names. An index that cannot be used is deleted from the staging
 * folder, so that the next pull fetches it again. */
static int pull_shards(pull_job *job, const char *index_path) {
  cdb_shard_index idx;
  if (cdb_shard_index_load(index_path, &idx, job->err) != 0) {
    unlink(index_path);
    return cdb_error_prefix(job->err, "%s revision %s", job->hub_name, job->revision);
  }
  int rc = 0;
  for (int i = 0; rc == 0 && i < idx.n_files; i++) {
    hub_file shard = {idx.files[i], true, true, false};
    rc = pull_file(job, &shard);
  }
  cdb_shard_index_free(&idx);
  return rc;
}

/* model.safetensors, or when the repository has none, its shard index and then every shard. */
static int pull_weights(pull_job *job) {
  char *index = g_build_filename(job->staging, CDB_SHARD_INDEX, NULL);
  bool staged_index = g_file_test(index, G_FILE_TEST_IS_REGULAR); /* an interrupted pull */
  int rc = staged_index ? PULL_ABSENT : pull_file(job, &SINGLE_WEIGHTS);
  if (rc == PULL_ABSENT) rc = pull_file(job, &SHARD_INDEX);
  if (rc == 0 && g_file_test(index, G_FILE_TEST_IS_REGULAR)) rc = pull_shards(job, index);
  g_free(index);
  return rc;
}

/* The staged files must form a usable model, or nothing replaces the cached model. */
static int check_staged_model(const pull_job *job) {
  cdb_error why = {{0}};
  if (job->opts->check_model(job->staging, job->opts->arg, &why) == 0) return 0;
  return cdb_error_set(job->err, "the downloaded files of %s do not form a usable model: %s",
                       job->hub_name, why.msg);
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
  if (job->commit[0]) json_object_object_add(rec, "commit", json_object_new_string(job->commit));
  json_object_object_add(rec, "pulled_at", json_object_new_string(when));
  json_object_object_add(rec, "files", json_object_get(job->files));
  char *path = g_build_filename(job->staging, PULL_RECORD, NULL);
  int rc = json_object_to_file_ext(path, rec, JSON_C_TO_STRING_PRETTY);
  if (rc != 0) cdb_error_set(job->err, "cannot write %s", path);
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
    cdb_error_set(job->err, "cannot move %s aside: %s", job->final_dir, strerror(errno));
  } else if (rename(job->staging, job->final_dir) != 0) {
    cdb_error_set(job->err, "cannot rename %s: %s", job->staging, strerror(errno));
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

static char *lock_path(const pull_job *job) {
  return g_strdup_printf("%s/%s.lock", job->cache, job->folder);
}

/* Holds <cache>/ORG--NAME.lock for the whole pull; returns its descriptor or -1. The pull that
 * holds it removes it when done, so a lock taken on a file that was meanwhile removed is taken
 * again on the new one. */
static int lock_model(const pull_job *job) {
  char *path = lock_path(job);
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
    struct stat held, named;
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      cdb_error_set(job->err, "%s: %s", path, strerror(errno));
      break;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      cdb_error_set(job->err, "another `clipdb model pull %s` is running (%s is locked)",
                    job->hub_name, path);
      close(fd);
      fd = -1;
      break;
    }
    bool same = fstat(fd, &held) == 0 && stat(path, &named) == 0 && held.st_dev == named.st_dev &&
                held.st_ino == named.st_ino;
    if (!same) {
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0 && !job->err->msg[0])
    cdb_error_set(job->err, "%s keeps being replaced; is another pull running?", path);
  g_free(path);
  return fd;
}

/* Removes the lock file (while still holding it) and releases it. */
static void unlock_model(const pull_job *job, int fd) {
  char *path = lock_path(job);
  unlink(path);
  close(fd);
  g_free(path);
}

/* After a failure: a staging folder worth resuming is kept (and named in res), else removed. */
static void keep_or_drop_staging(const pull_job *job, cdb_hub_pull_result *res) {
  if (!job->staging || !cdb_is_dir(job->staging)) return;
  if (has_payload(job->staging)) res->kept_staging = g_strdup(job->staging);
  else remove_tree(job->staging);
}

static int run_pull(pull_job *job, cdb_hub_pull_result *res) {
  if (g_mkdir_with_parents(job->cache, 0755) != 0)
    return cdb_error_set(job->err, "cannot create the model cache %s: %s", job->cache,
                         strerror(errno));
  int lock = lock_model(job);
  if (lock < 0) return -1;
  char shown[512];
  cdb_url_redact(job->endpoint, shown, sizeof shown);
  note(job, "pulling %s (revision %s) from %s", job->hub_name, job->revision, shown);
  int rc = open_staging(job);
  for (int i = 0; rc == 0 && i < N_HUB_FILES; i++) rc = pull_file(job, &HUB_FILES[i]);
  if (rc == 0) rc = pull_weights(job);
  if (rc == 0 && check_staged_model(job) != 0) {
    remove_tree(job->staging); /* a bad download is not worth resuming */
    rc = -1;
  }
  if (rc == 0) rc = write_pull_record(job);
  if (rc == 0) rc = swap_in(job);
  if (rc == 0) res->bytes = folder_bytes(job->final_dir);
  if (rc == 0) memcpy(res->commit, job->commit, sizeof res->commit);
  else keep_or_drop_staging(job, res);
  unlock_model(job, lock);
  return rc;
}

int cdb_hub_pull(const char *hub_name, const cdb_hub_pull_opts *opts, cdb_hub_pull_result *res,
                 cdb_error *err) {
  *res = (cdb_hub_pull_result){.revision = opts->revision ? opts->revision : DEFAULT_REVISION};
  res->dir = cdb_hub_model_dir(hub_name, err);
  if (!res->dir) return -1;
  if (opts->offline || env_true("HF_HUB_OFFLINE"))
    return cdb_error_set(err,
                         "offline mode (HF_HUB_OFFLINE or --offline) forbids downloading %s; "
                         "unset HF_HUB_OFFLINE, or copy the model folder to %s",
                         hub_name, res->dir);
  pull_job job = {.hub_name = hub_name,
                  .revision = res->revision,
                  .opts = opts,
                  .final_dir = res->dir,
                  .dl = opts->download,
                  .err = err};
  job.endpoint = endpoint_from_env();
  int rc = -1;
  if (!cdb_is_url(job.endpoint)) {
    cdb_error_set(err, "HF_ENDPOINT must be an http:// or https:// address");
  } else {
    job.cache = cdb_hub_cache_dir();
    job.folder = g_path_get_basename(job.final_dir);
    char *token = hf_token();
    job.dl.bearer_token = token;
    job.files = json_object_new_array();
    job.previous = cdb_hub_pull_record(job.final_dir);
    rc = run_pull(&job, res);
    if (token) memset(token, 0, strlen(token));
    g_free(token);
    json_object_put(job.files);
    json_object_put(job.previous);
  }
  free(job.cache);
  g_free(job.folder);
  g_free(job.staging);
  g_free(job.endpoint);
  return rc;
}

void cdb_hub_pull_result_free(cdb_hub_pull_result *res) {
  free(res->dir);
  g_free(res->kept_staging);
  *res = (cdb_hub_pull_result){0};
}
