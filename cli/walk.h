/* walk.h (cli-internal): recursive listing of the image files under folders, for `index`. */
#ifndef CLI_WALK_H
#define CLI_WALK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct walk_file {
  char *path;    /* absolute, malloc'd */
  int64_t size;  /* bytes */
  int64_t mtime; /* seconds since the epoch */
  int64_t mtime_ns;
} walk_file;

typedef struct walk_problem {
  char *path;   /* malloc'd */
  char *reason; /* malloc'd */
  int unlisted; /* path could not be listed or examined: what is under it is unknown */
} walk_problem;

typedef struct walk_result {
  walk_file *files;
  size_t n_files, cap_files;
  walk_problem *problems; /* folders or files that could not be read */
  size_t n_unlisted;      /* problems with unlisted set */
  size_t n_problems, cap_problems;
  size_t n_ignored; /* files whose extension is not an image format */
  int with_videos;  /* set by the caller: video files are listed too */
} walk_result;

/* True for the extensions `index` considers images (case-insensitive). */
int walk_is_image_name(const char *name);

/* True for the video extensions `index` considers (mp4, mov, m4v, mkv, webm, avi). */
int walk_is_video_name(const char *name);

/* Appends every image file (and video file when res->with_videos is set) under root (a folder
 * or a single file) to res, following no symlinked folders. Hidden files and folders below root
 * (walk_is_hidden_name) are left out. Paths matching an exclude pattern (fnmatch against the
 * path relative to root and against the base name) are left out, folders included. Returns -1 only
 * on out of memory; unreadable entries become problems: a folder that cannot be opened or read to
 * the end, or an entry that cannot be examined, is `unlisted` (the caller must not conclude that
 * the files it held are gone); a broken symbolic link is a plain problem. */
int walk_tree(const char *root, char *const *excludes, size_t n_excludes, walk_result *res);

/* walk_tree, choosing whether hidden entries below root are listed (walk_tree leaves them out).
 * root itself is walked even when hidden: naming it is asking for it. */
int walk_tree_hidden(const char *root, char *const *excludes, size_t n_excludes,
                     bool include_hidden, walk_result *res);

/* True for names left out unless --include-hidden: dot files and folders (macOS's "._x" ones
 * included) and Synology's "@eaDir" thumbnail folders. */
bool walk_is_hidden_name(const char *name);

void walk_result_free(walk_result *res);

#endif
