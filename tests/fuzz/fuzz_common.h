/* fuzz_common.h: small helpers shared by the libFuzzer targets in tests/fuzz/.
 *
 * - fuzz_data_path(): files under tests/data (CLIPDB_TEST_DATA, else the source tree the
 *   target was built from), for targets that load the tiny model once at start-up.
 * - fuzz_memfile: an in-memory file (memfd) with a path ("/proc/self/fd/N") so that loaders
 *   taking a path can be fed fuzzer bytes without touching the disk on every run.
 * - fuzz_reader: consumes the fuzzer's input as a stream of small integers and byte strings,
 *   which is how the SQL targets turn bytes into statements and arguments. */
#ifndef CLIPDB_FUZZ_COMMON_H
#define CLIPDB_FUZZ_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* An invariant of the code under test (independent of NDEBUG): a violation is a finding. */
#define FUZZ_CHECK(cond)                                                             \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      abort();                                                                       \
    }                                                                                \
  } while (0)

/* Initialiser of a clip_image_spec (embed/image.h) like the tiny model's: CLIP's mean and std,
 * a SIDE x SIDE crop and a 4-megapixel bomb guard. */
#define FUZZ_CLIP_IMAGE_SPEC(SIDE)                                                 \
  {                                                                                \
    .resize_shortest = (SIDE), .crop_height = (SIDE), .crop_width = (SIDE),        \
    .mean = {0.48145466f, 0.4578275f, 0.40821073f},                                \
    .std = {0.26862954f, 0.26130258f, 0.27577711f}, .max_pixels = 4 * 1000 * 1000, \
  }

#ifndef FUZZ_SOURCE_ROOT
#define FUZZ_SOURCE_ROOT "."
#endif

/* Path of a file under tests/data; static buffer (call once per file at start-up). */
static inline const char *fuzz_data_path(const char *rel, char *buf, size_t cap) {
  const char *data = getenv("CLIPDB_TEST_DATA");
  if (data && *data) snprintf(buf, cap, "%s/%s", data, rel);
  else snprintf(buf, cap, "%s/tests/data/%s", FUZZ_SOURCE_ROOT, rel);
  return buf;
}

/* The whole of a file under tests/data, malloc'd; aborts when it cannot be read (a broken setup).
 */
static inline uint8_t *fuzz_read_data(const char *rel, size_t *len) {
  char path[4096];
  FILE *f = fopen(fuzz_data_path(rel, path, sizeof path), "rb");
  if (!f || fseek(f, 0, SEEK_END) != 0) abort();
  long n = ftell(f);
  uint8_t *buf = malloc((size_t)n);
  rewind(f);
  if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) abort();
  fclose(f);
  *len = (size_t)n;
  return buf;
}

typedef struct fuzz_memfile {
  int fd;
  char path[64];
} fuzz_memfile;

/* Creates the memfd once; aborts (a harness error, not a finding) when it cannot. */
static inline void fuzz_memfile_init(fuzz_memfile *f, const char *name) {
  f->fd = memfd_create(name, MFD_CLOEXEC);
  if (f->fd < 0) {
    perror("memfd_create");
    abort();
  }
  snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
}

/* Replaces the file's content with data[0..size). */
static inline void fuzz_memfile_set(fuzz_memfile *f, const void *data, size_t size) {
  if (ftruncate(f->fd, 0) != 0 || (size && pwrite(f->fd, data, size, 0) != (ssize_t)size)) {
    perror("memfd write");
    abort();
  }
}

typedef struct fuzz_reader {
  const uint8_t *p;
  size_t left;
} fuzz_reader;

static inline unsigned fuzz_u8(fuzz_reader *r) {
  if (!r->left) return 0;
  r->left--;
  return *r->p++;
}

static inline uint32_t fuzz_u32(fuzz_reader *r) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v = v << 8 | fuzz_u8(r);
  return v;
}

/* A byte string: one length byte (capped by what is left), then that many bytes. */
static inline const uint8_t *fuzz_bytes(fuzz_reader *r, size_t *len) {
  size_t n = fuzz_u8(r);
  if (n == 255) n = fuzz_u32(r) % 65536; /* occasionally long */
  if (n > r->left) n = r->left;
  const uint8_t *out = r->p;
  r->p += n;
  r->left -= n;
  *len = n;
  return out;
}

/* Splits data at the first occurrence of sep (a separator that never appears in seeds'
 * payloads): part 1 is [0, i), part 2 is after the separator; without it, part 2 is empty. */
static inline void fuzz_split(const uint8_t *data, size_t size, const char *sep, size_t *len1,
                              const uint8_t **part2, size_t *len2) {
  size_t sl = strlen(sep);
  const uint8_t *hit = sl <= size ? memmem(data, size, sep, sl) : NULL;
  if (!hit) {
    *len1 = size;
    *part2 = data + size;
    *len2 = 0;
    return;
  }
  *len1 = (size_t)(hit - data);
  *part2 = hit + sl;
  *len2 = size - *len1 - sl;
}

#endif
