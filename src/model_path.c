/* models.c: model references -> directories (explicit path, CLIPDB_MODEL, or the cache). */
#include "src/model_path.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "src/file.h"

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *cdb_model_cache_dir(void) {
  const char *xdg = getenv("XDG_CACHE_HOME");
  if (xdg && xdg[0] == '/') return cdb_path_join(xdg, "clipdb/models");
  const char *home = getenv("HOME");
  char *base = cdb_path_join(home && home[0] ? home : "/tmp", ".cache/clipdb/models");
  return base;
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

char *cdb_model_cache_path(const char *hub_name, cdb_error *err) {
  const char *slash = hub_name ? strchr(hub_name, '/') : NULL;
  if (!slash || strchr(slash + 1, '/') || !safe_name_part(hub_name, (size_t)(slash - hub_name)) ||
      !safe_name_part(slash + 1, strlen(slash + 1))) {
    cdb_error_set(err, "model name \"%s\" is not of the form ORG/NAME", hub_name ? hub_name : "");
    return NULL;
  }
  char folder[200];
  snprintf(folder, sizeof folder, "%.*s--%s", (int)(slash - hub_name), hub_name, slash + 1);
  char *cache = cdb_model_cache_dir();
  if (!cache) return NULL;
  char *path = cdb_path_join(cache, folder);
  free(cache);
  return path;
}

char *cdb_model_resolve(const char *name_or_path, cdb_error *err) {
  const char *ref = name_or_path;
  if (!ref || !ref[0]) ref = getenv("CLIPDB_MODEL");
  if (!ref || !ref[0]) ref = CDB_DEFAULT_MODEL;
  if (is_dir(ref)) return strdup(ref);
  if (ref[0] == '/' || ref[0] == '.' || !strchr(ref, '/')) {
    cdb_error_set(err, "model \"%s\": no such directory", ref);
    return NULL;
  }
  char *path = cdb_model_cache_path(ref, err);
  if (!path) return NULL;
  if (!is_dir(path)) {
    cdb_error_set(err, "model \"%s\" is not in the cache (%s); run `clipdb model pull %s`", ref,
                  path, ref);
    free(path);
    return NULL;
  }
  return path;
}
