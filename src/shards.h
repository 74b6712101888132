/* shards.h: the index of a sharded safetensors checkpoint (model.safetensors.index.json).
 *
 * Large Hugging Face checkpoints split their tensors over several files and name them in an index
 * {"metadata": {...}, "weight_map": {"TENSOR": "SHARD FILE", ...}}. Loading (embed/) and pulls
 * and the Hugging Face cache (src/hub.c) read it through here, so every reader checks it alike:
 * each shard is a plain file name in the model's own folder (no '/', not "." or ".."). */
#ifndef CDB_SHARDS_H
#define CDB_SHARDS_H

#include "src/err.h"

#define CDB_SHARD_INDEX "model.safetensors.index.json"
#define CDB_SINGLE_WEIGHTS "model.safetensors"

typedef struct cdb_shard_index {
  char **files; /* the distinct shard file names, in the order the index first names them */
  int n_files;
  char **tensors;   /* every tensor the weight map names */
  int *tensor_file; /* for each tensor, its shard: an index into files */
  int n_tensors;
} cdb_shard_index;

/* Reads and checks the index at path. 0, or -1 with err naming the file and the problem. */
int cdb_shard_index_load(const char *path, cdb_shard_index *idx, cdb_error *err);
void cdb_shard_index_free(cdb_shard_index *idx);

#endif
