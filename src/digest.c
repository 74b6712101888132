/* digest.c: SHA-256 of files, remembered by file identity (see digest.h). */
#include "src/digest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/download.h"
#include "src/file.h"

/* $XDG_CACHE_HOME/clipdb/digests, else ~/.cache/clipdb/digests; NULL without a home. */
static char *digest_dir(void) {
  const char *xdg = getenv("XDG_CACHE_HOME");
  if (xdg && xdg[0] == '/') return cdb_path_join(xdg, "clipdb/digests");
  const char *home = getenv("HOME");
  return home && home[0] == '/' ? cdb_path_join(home, ".cache/clipdb/digests") : NULL;
}

/* The cache entry's name for this version of a file. */
static void entry_name(const struct stat *st, char *out, size_t n) {
  snprintf(out, n, "%llx-%llx-%llx-%lld.%09ld-%lld.%09ld.sha256", (unsigned long long)st->st_dev,
           (unsigned long long)st->st_ino, (unsigned long long)st->st_size,
           (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec,
           st->st_ctim.tv_nsec);
}

static char *entry_path(const struct stat *st) {
  char *dir = digest_dir();
  char name[160];
  entry_name(st, name, sizeof name);
  char *path = dir ? cdb_path_join(dir, name) : NULL;
  free(dir);
  return path;
}

static int is_hex_digest(const char *s, size_t len) {
  if (len != 64) return 0;
  for (size_t i = 0; i < len; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

static int lookup(const struct stat *st, char hex[65]) {
  char *path = entry_path(st);
  size_t len = 0;
  char *text = path ? cdb_file_read(path, 128, &len, NULL) : NULL;
  int found = text && len >= 64 && is_hex_digest(text, 64);
  if (found) {
    memcpy(hex, text, 64);
    hex[64] = '\0';
  }
  free(text);
  free(path);
  return found;
}

/* mkdir -p for the cache folder (two levels below an existing home or cache root at most). */
static void make_dirs(const char *dir) {
  char *copy = strdup(dir);
  for (char *p = copy ? copy + 1 : NULL; p && *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    mkdir(copy, 0700);
    *p = '/';
  }
  if (copy) mkdir(copy, 0700);
  free(copy);
}

/* Written to a temporary name and renamed, so a reader sees a whole entry or none. */
static void store(const struct stat *st, const char *hex) {
  char *dir = digest_dir();
  char *path = dir ? entry_path(st) : NULL;
  char *tmp = path ? malloc(strlen(path) + 8) : NULL;
  if (tmp) {
    make_dirs(dir);
    sprintf(tmp, "%s.XXXXXX", path);
    int fd = mkstemp(tmp);
    int ok = fd >= 0 && write(fd, hex, 64) == 64 && write(fd, "\n", 1) == 1;
    if (fd >= 0 && close(fd) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) unlink(tmp);
  }
  free(tmp);
  free(path);
  free(dir);
}

static int same_version(const struct stat *a, const struct stat *b) {
  return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
         a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
         a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

int cdb_file_sha256_cached(const char *path, char hex[65], cdb_error *err) {
  struct stat before, after;
  if (stat(path, &before) != 0) return cdb_error_set(err, "%s: %s", path, strerror(errno));
  if (lookup(&before, hex)) return 0;
  if (cdb_sha256_file(path, hex, err) != 0) return -1;
  if (stat(path, &after) == 0 && same_version(&before, &after)) store(&before, hex);
  return 0;
}

void cdb_file_sha256_remember(const char *path, const char *hex) {
  struct stat st;
  if (hex && is_hex_digest(hex, strlen(hex)) && stat(path, &st) == 0) store(&st, hex);
}
