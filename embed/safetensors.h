/* safetensors.h (internal to embed/): a validated, memory-mapped view of a .safetensors file.
 *
 * st_open checks everything before any tensor is used: header length bounds, well-formed JSON,
 * dtype/shape/byte-size agreement, offsets inside the file and no two tensors overlapping.
 * Data stays in the mapping; st_tensor.data points into it. A sharded checkpoint
 * (src/shards.h) opens as one st_file whose tensors span all its shards' mappings. */
#ifndef CLIP_SAFETENSORS_H
#define CLIP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "src/err.h"
#include "src/file.h"

#define ST_MAX_DIMS 8

typedef enum st_dtype { ST_F32, ST_F16, ST_BF16, ST_OTHER } st_dtype;

typedef struct st_tensor {
  char *name;
  st_dtype dtype;
  char dtype_name[16];
  int ndim;
  int64_t shape[ST_MAX_DIMS];
  int64_t numel;
  const unsigned char *data; /* inside the mapping */
  size_t nbytes;
} st_tensor;

typedef struct st_file {
  char *path;
  cdb_mmap map;
  const unsigned char *header; /* the 8-byte length plus the JSON header */
  size_t header_bytes;
  st_tensor *tensors;
  int n_tensors;
  struct st_file *shards; /* a sharded checkpoint's files, each checked as above; else NULL */
  int n_shards;
} st_file;

int st_open(const char *path, st_file *f, cdb_error *err);
/* Same checks on a buffer the caller keeps alive (used by tests and fuzzers). */
int st_parse(const unsigned char *data, size_t size, const char *path, st_file *f, cdb_error *err);
void st_close(st_file *f);

/* The checkpoint that a model.safetensors.index.json names: every shard opened (from the
 * index's own folder) and checked, each tensor the index names present in its shard, no tensor in
 * two shards. f->path is the index's path; f->header is NULL. */
int st_open_index(const char *index_path, st_file *f, cdb_error *err);

const st_tensor *st_find(const st_file *f, const char *name);

/* The named float tensor (F32/F16/BF16) with exactly this shape, or NULL with an error naming
 * the file and the tensor. */
const st_tensor *st_expect(const st_file *f, const char *name, int ndim, const int64_t *shape,
                           cdb_error *err);

#endif
