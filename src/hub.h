/* hub.h: models from the Hugging Face hub and the model cache that keeps them.
 *
 * Every path inside the cache is computed in hub.c; nothing else knows the layout. Under
 * cdb_hub_cache_dir():
 *   ORG--NAME/             a pulled model: the repository's files and .clipdb-pull.json (what the
 *                          pull fetched: source, revision and its commit, files, SHA-256s)
 *   ORG--NAME.tmp-XXXXXX/  the staging folder of a pull in progress or interrupted
 *   ORG--NAME.lock         held (flock) by a pull for its whole run
 *
 * A pull downloads {HF_ENDPOINT or https://huggingface.co}/ORG/NAME/resolve/REVISION/FILE for each
 * file a CLIP model needs (model.safetensors, or a sharded checkpoint's index and every shard it
 * names: src/shards.h) into a staging folder (src/download.h: resume, SHA-256 check, retries),
 * has the caller check that the files form a usable model, and only then swaps the staging folder
 * in for ORG--NAME: a failed pull leaves the cached model untouched. An interrupted pull leaves its
 * staging folder; the next pull of the same name, endpoint and revision continues it.
 *
 * The hub's environment is read here: HF_ENDPOINT (the hub's address), HF_TOKEN or the token file
 * `huggingface-cli login` saves (HF_TOKEN_PATH, HF_HOME/token; sent as a bearer token, never
 * shown), HF_HUB_OFFLINE (forbids downloads), HF_HUB_CACHE / HF_HOME (the hub cache, read); the
 * cache root is $XDG_CACHE_HOME/clipdb/models, default ~/.cache/clipdb/models. */
#ifndef CDB_HUB_H
#define CDB_HUB_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "src/download.h"
#include "src/err.h"

/* The cache root, malloc'd. */
char *cdb_hub_cache_dir(void);

/* The folder a pull of a hub name ("ORG/NAME") writes, whether or not it is there, malloc'd.
 * NULL (err set) when the name is not of the form ORG/NAME with safe characters. */
char *cdb_hub_model_dir(const char *hub_name, cdb_error *err);

/* The folder a cached model is loaded from, malloc'd: every lookup of a hub name by a reader
 * (src/model_path.h) comes here. clipdb's own cache first, then the Hugging Face hub cache that
 * transformers and open_clip fill ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub:
 * models--ORG--NAME/refs/main -> snapshots/COMMIT/, used in place when it holds every file
 * clipdb needs, for a sharded checkpoint the index and all its shards). NULL (err set, telling how to pull it) when the name is invalid or the model is
 * in neither. Pulls write clipdb's cache only (verified, recorded, swapped in whole). */
char *cdb_hub_find(const char *hub_name, cdb_error *err);

/* What the pull that wrote a model folder recorded ({name, endpoint, revision, pulled_at,
 * files: [{name, bytes, sha256, verified}]}), or NULL (not pulled, or unreadable). */
json_object *cdb_hub_pull_record(const char *model_dir);

/* ---- list and remove ---- */

typedef struct cdb_hub_entry {
  char *name;       /* ORG/NAME */
  char *dir;        /* its folder (the staging folder for an interrupted pull) */
  char *revision;   /* as the pull record names it, or NULL */
  long long bytes;  /* size of the files in the folder */
  bool interrupted; /* an interrupted pull, which the same pull resumes */
} cdb_hub_entry;

/* The cached models and interrupted pulls, sorted by folder name; *n gets the count (0 when the
 * cache does not exist). Free with cdb_hub_list_free. */
cdb_hub_entry *cdb_hub_list(size_t *n);
void cdb_hub_list_free(cdb_hub_entry *entries, size_t n);

/* Deletes a cached model, its staging folders and its lock file. -1 (err set) when the name is
 * invalid, the model is not cached or cannot be removed. */
int cdb_hub_remove(const char *hub_name, cdb_error *err);

/* ---- pull ---- */

/* How a pull got each file. */
typedef enum cdb_hub_file_state {
  CDB_HUB_FILE_DOWNLOADED, /* downloaded */
  CDB_HUB_FILE_VERIFIED,   /* downloaded, and its SHA-256 matched the one the hub names */
  CDB_HUB_FILE_RESUMED,    /* an interrupted download of it was continued */
  CDB_HUB_FILE_STAGED,     /* downloaded by an earlier, interrupted pull */
  CDB_HUB_FILE_UNCHANGED,  /* the hub names the SHA-256 of the cached copy: kept (hard link) */
  CDB_HUB_FILE_ABSENT,     /* optional and not in the repository */
} cdb_hub_file_state;

typedef struct cdb_hub_pull_opts {
  const char *revision;       /* branch, tag or commit; NULL: main */
  bool offline;               /* forbid downloading (as HF_HUB_OFFLINE does) */
  cdb_download_opts download; /* attempts, timeouts, progress bar (the token comes from HF_TOKEN) */
  /* Checks that the staged files in dir form a usable model: 0, or -1 with err set. Required. */
  int (*check_model)(const char *dir, void *arg, cdb_error *err);
  /* Progress, each may be NULL: a line of news (what is pulled from where, a resumed staging
   * folder, a stale one that could not be removed), and each file as it is done. */
  void (*on_note)(void *arg, const char *line);
  void (*on_file)(void *arg, const char *file, long long bytes, cdb_hub_file_state state);
  void *arg;
} cdb_hub_pull_opts;

typedef struct cdb_hub_pull_result {
  const char *revision; /* the revision pulled (the option, or main) */
  char commit[41];      /* the commit it resolved to (the hub's X-Repo-Commit), or "" */
  char *dir;            /* the model's folder in the cache, malloc'd */
  long long bytes;      /* its size after a successful pull */
  char *kept_staging;   /* after a failure: the staging folder kept for a resume, or NULL */
} cdb_hub_pull_result;

/* Pulls hub_name into the cache (see above). 0, or -1 with err set; free res with
 * cdb_hub_pull_result_free either way. */
int cdb_hub_pull(const char *hub_name, const cdb_hub_pull_opts *opts, cdb_hub_pull_result *res,
                 cdb_error *err);
void cdb_hub_pull_result_free(cdb_hub_pull_result *res);

#endif
