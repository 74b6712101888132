/* file.h: whole-file reads, read-only memory maps and paths, with errors naming the path. */
#ifndef CDB_FILE_H
#define CDB_FILE_H

#include <stdbool.h>
#include <stddef.h>

#include "src/err.h"

/* Reads a whole file into a NUL-terminated malloc'd buffer (caller frees). Refuses files larger
 * than max_bytes. *len_out (optional) gets the length without the NUL. */
char *cdb_file_read(const char *path, size_t max_bytes, size_t *len_out, cdb_error *err);

/* A read-only mapping of a whole file. */
typedef struct cdb_mmap {
  const unsigned char *data;
  size_t size;
} cdb_mmap;

int cdb_mmap_open(const char *path, cdb_mmap *map, cdb_error *err);
void cdb_mmap_close(cdb_mmap *map);

/* Joins dir and name with one '/', malloc'd. */
char *cdb_path_join(const char *dir, const char *name);

/* True when path names a folder (following symbolic links). */
bool cdb_is_dir(const char *path);

#endif
