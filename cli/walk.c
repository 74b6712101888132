/* walk.c: recursive directory listing for `clipdb index` (opendir/fstatat, fnmatch excludes,
 * hidden entries skipped unless asked for). */
#include "cli/walk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* Deeper trees are almost certainly a loop through bind mounts; stop there. */
#define MAX_DEPTH 64

static const char *const IMAGE_EXTENSIONS[] = {"jpg",  "jpeg", "jpe",  "png",  "webp", "gif", "tif",
                                               "tiff", "bmp",  "heic", "heif", "avif", "jxl", "jp2",
                                               "pgm",  "ppm",  "pnm",  "exr",  "hdr",  NULL};

int walk_is_image_name(const char *name) {
  const char *dot = strrchr(name, '.');
  if (!dot || dot == name) return 0;
  for (const char *const *e = IMAGE_EXTENSIONS; *e; e++)
    if (strcasecmp(dot + 1, *e) == 0) return 1;
  return 0;
}

static const char *const VIDEO_EXTENSIONS[] = {"mp4", "mov", "m4v", "mkv", "webm", "avi", NULL};

static int has_extension(const char *name, const char *const *extensions) {
  const char *dot = strrchr(name, '.');
  if (!dot || dot == name) return 0;
  for (const char *const *e = extensions; *e; e++)
    if (strcasecmp(dot + 1, *e) == 0) return 1;
  return 0;
}

int walk_is_video_name(const char *name) { return has_extension(name, VIDEO_EXTENSIONS); }

bool walk_is_hidden_name(const char *name) {
  return name[0] == '.' || strcmp(name, "@eaDir") == 0; /* "._x": macOS; @eaDir: Synology */
}

static int add_problem_kind(walk_result *res, const char *path, const char *reason, int unlisted) {
  if (res->n_problems == res->cap_problems) {
    size_t cap = res->cap_problems ? 2 * res->cap_problems : 16;
    walk_problem *p = realloc(res->problems, cap * sizeof *p);
    if (!p) return -1;
    res->problems = p;
    res->cap_problems = cap;
  }
  walk_problem *p = &res->problems[res->n_problems];
  p->path = strdup(path);
  p->reason = strdup(reason);
  if (!p->path || !p->reason) {
    free(p->path);
    free(p->reason);
    return -1;
  }
  p->unlisted = unlisted;
  res->n_problems++;
  res->n_unlisted += unlisted != 0;
  return 0;
}

static int add_problem(walk_result *res, const char *path, const char *reason) {
  return add_problem_kind(res, path, reason, 0);
}

static int add_unlisted(walk_result *res, const char *path, const char *reason) {
  return add_problem_kind(res, path, reason, 1);
}

static int add_file(walk_result *res, const char *path, const struct stat *st) {
  if (res->n_files == res->cap_files) {
    size_t cap = res->cap_files ? 2 * res->cap_files : 256;
    walk_file *f = realloc(res->files, cap * sizeof *f);
    if (!f) return -1;
    res->files = f;
    res->cap_files = cap;
  }
  char *copy = strdup(path);
  if (!copy) return -1;
  res->files[res->n_files++] = (walk_file){copy, (int64_t)st->st_size, (int64_t)st->st_mtim.tv_sec,
                                           (int64_t)st->st_mtim.tv_nsec};
  return 0;
}

static int excluded(const char *rel, const char *base, char *const *ex, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (fnmatch(ex[i], rel, FNM_PATHNAME) == 0 || fnmatch(ex[i], base, 0) == 0 ||
        fnmatch(ex[i], rel, 0) == 0)
      return 1;
  return 0;
}

typedef struct walker {
  bool include_hidden;
  char *const *excludes;
  size_t n_excludes;
  size_t root_len; /* where the relative path starts in an absolute one */
  walk_result *res;
} walker;

static int walk_dir(walker *w, const char *dir, int depth);

static int visit(walker *w, const char *path, const char *name, int depth) {
  const char *rel = path + w->root_len + (path[w->root_len] == '/');
  if (!w->include_hidden && walk_is_hidden_name(name)) return 0;
  if (excluded(rel, name, w->excludes, w->n_excludes)) return 0;
  struct stat st;
  if (lstat(path, &st) != 0) /* gone since readdir: nothing to keep; else unknown */
    return errno == ENOENT ? 0 : add_unlisted(w->res, path, strerror(errno));
  if (S_ISLNK(st.st_mode)) {
    if (stat(path, &st) != 0)
      return errno == ENOENT || errno == ELOOP ? add_problem(w->res, path, "broken symbolic link")
                                               : add_unlisted(w->res, path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return 0; /* symlinked folders could loop */
  }
  if (S_ISDIR(st.st_mode)) return walk_dir(w, path, depth + 1);
  if (!S_ISREG(st.st_mode)) return 0;
  if (!walk_is_image_name(name) && !(w->res->with_videos && walk_is_video_name(name))) {
    w->res->n_ignored++;
    return 0;
  }
  return add_file(w->res, path, &st);
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int walk_dir(walker *w, const char *dir, int depth) {
  if (depth > MAX_DEPTH) return add_unlisted(w->res, dir, "folders nested too deep");
  DIR *d = opendir(dir);
  if (!d) return add_unlisted(w->res, dir, strerror(errno));
  char **names = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  struct dirent *e;
  for (;;) {
    errno = 0;
    if (rc != 0 || !(e = readdir(d))) break;
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      char **p = realloc(names, cap * sizeof *p);
      if (!p) rc = -1;
      else names = p;
    }
    if (rc == 0 && !(names[n++] = strdup(e->d_name))) rc = -1, n--;
  }
  if (rc == 0 && errno != 0) rc = add_unlisted(w->res, dir, strerror(errno)); /* listed in part */
  closedir(d);
  if (rc == 0 && n > 1) qsort(names, n, sizeof *names, by_name); /* a stable, readable order */
  for (size_t i = 0; i < n; i++) {
    if (rc == 0) {
      size_t len = strlen(dir) + strlen(names[i]) + 2;
      char *path = malloc(len);
      if (!path) rc = -1;
      else {
        snprintf(path, len, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", names[i]);
        rc = visit(w, path, names[i], depth);
        free(path);
      }
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

int walk_tree(const char *root, char *const *excludes, size_t n_excludes, walk_result *res) {
  return walk_tree_hidden(root, excludes, n_excludes, false, res);
}

int walk_tree_hidden(const char *root, char *const *excludes, size_t n_excludes,
                     bool include_hidden, walk_result *res) {
  char abs[PATH_MAX];
  if (!realpath(root, abs)) return add_unlisted(res, root, strerror(errno));
  struct stat st;
  if (stat(abs, &st) != 0) return add_unlisted(res, root, strerror(errno));
  walker w = {include_hidden, excludes, n_excludes, strlen(abs), res};
  if (S_ISDIR(st.st_mode)) return walk_dir(&w, abs, 0);
  if (!S_ISREG(st.st_mode)) return add_problem(res, root, "not a regular file or folder");
  const char *base = strrchr(abs, '/');
  base = base ? base + 1 : abs;
  if (excluded(base, base, excludes, n_excludes)) return 0;
  return add_file(res, abs, &st); /* an explicitly named file is taken whatever its extension */
}

void walk_result_free(walk_result *res) {
  for (size_t i = 0; i < res->n_files; i++) free(res->files[i].path);
  for (size_t i = 0; i < res->n_problems; i++) {
    free(res->problems[i].path);
    free(res->problems[i].reason);
  }
  free(res->files);
  free(res->problems);
  *res = (walk_result){0};
}
