/* file.c: whole-file reads, read-only memory maps and paths. */
#include "src/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

char *cdb_file_read(const char *path, size_t max_bytes, size_t *len_out, cdb_error *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    cdb_error_set(err, "%s: %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    cdb_error_set(err, "%s: not a regular file", path);
    close(fd);
    return NULL;
  }
  if ((size_t)st.st_size > max_bytes) {
    cdb_error_set(err, "%s: file is %lld bytes, more than the %zu allowed", path,
                  (long long)st.st_size, max_bytes);
    close(fd);
    return NULL;
  }
  size_t size = (size_t)st.st_size;
  char *buf = malloc(size + 1);
  if (!buf) {
    cdb_error_set(err, "%s: out of memory", path);
    close(fd);
    return NULL;
  }
  size_t got = 0;
  while (got < size) {
    ssize_t n = read(fd, buf + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd);
  if (got != size) {
    free(buf);
    cdb_error_set(err, "%s: short read (%zu of %zu bytes)", path, got, size);
    return NULL;
  }
  buf[size] = '\0';
  if (len_out) *len_out = size;
  return buf;
}

int cdb_mmap_open(const char *path, cdb_mmap *map, cdb_error *err) {
  map->data = NULL;
  map->size = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return cdb_error_set(err, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return cdb_error_set(err, "%s: not a regular file", path);
  }
  if (st.st_size == 0) {
    close(fd);
    return cdb_error_set(err, "%s: file is empty", path);
  }
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return cdb_error_set(err, "%s: mmap: %s", path, strerror(errno));
  map->data = p;
  map->size = (size_t)st.st_size;
  return 0;
}

void cdb_mmap_close(cdb_mmap *map) {
  if (map->data) munmap((void *)map->data, map->size);
  map->data = NULL;
  map->size = 0;
}

char *cdb_path_join(const char *dir, const char *name) {
  size_t dl = strlen(dir);
  while (dl > 1 && dir[dl - 1] == '/') dl--;
  size_t nl = strlen(name);
  char *out = malloc(dl + nl + 2);
  if (!out) return NULL;
  memcpy(out, dir, dl);
  out[dl] = '/';
  memcpy(out + dl + 1, name, nl + 1);
  return out;
}

bool cdb_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
