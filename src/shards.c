/* shards.c: reading and checking model.safetensors.index.json (see shards.h). */
#include "src/shards.h"

#include <stdlib.h>
#include <string.h>

#include "src/json.h"

/* Real indexes are tens of KB (one line per tensor). */
#define INDEX_MAX_BYTES (16u << 20)

/* A shard must be a file directly in the model folder: nothing that leads elsewhere. */
static int is_plain_file_name(const char *s, size_t len) {
  return len > 0 && strlen(s) == len && !strchr(s, '/') && strcmp(s, ".") != 0 &&
         strcmp(s, "..") != 0;
}

static int find_file(const cdb_shard_index *idx, const char *name) {
  for (int i = 0; i < idx->n_files; i++)
    if (strcmp(idx->files[i], name) == 0) return i;
  return -1;
}

/* The shard's position in idx->files, adding it when new; -1 when out of memory. */
static int add_file(cdb_shard_index *idx, const char *name) {
  int at = find_file(idx, name);
  if (at >= 0) return at;
  char *copy = strdup(name);
  if (!copy) return -1;
  idx->files[idx->n_files] = copy;
  return idx->n_files++;
}

static int add_tensor(cdb_shard_index *idx, const char *path, const char *tensor,
                      struct json_object *shard, cdb_error *err) {
  if (!json_object_is_type(shard, json_type_string))
    return cdb_error_set(err, "%s: weight_map[\"%s\"] is not a file name (a JSON string)", path,
                         tensor);
  const char *name = json_object_get_string(shard);
  if (!is_plain_file_name(name, (size_t)json_object_get_string_len(shard)))
    return cdb_error_set(err,
                         "%s: weight_map[\"%s\"] = \"%s\" is not a file name in the model folder "
                         "(no '/', \".\" or \"..\")",
                         path, tensor, name);
  int file = add_file(idx, name);
  char *copy = file >= 0 ? strdup(tensor) : NULL;
  if (!copy) return cdb_error_set(err, "%s: out of memory", path);
  idx->tensors[idx->n_tensors] = copy;
  idx->tensor_file[idx->n_tensors++] = file;
  return 0;
}

static int fill_index(cdb_shard_index *idx, const char *path, struct json_object *root,
                      cdb_error *err) {
  struct json_object *map;
  if (!json_object_is_type(root, json_type_object) ||
      !json_object_object_get_ex(root, "weight_map", &map) ||
      !json_object_is_type(map, json_type_object))
    return cdb_error_set(err, "%s: needs a \"weight_map\" object {tensor name: shard file}",
                         path);
  size_t n = (size_t)json_object_object_length(map);
  if (n == 0) return cdb_error_set(err, "%s: the weight_map names no tensor", path);
  idx->files = calloc(n, sizeof *idx->files);
  idx->tensors = calloc(n, sizeof *idx->tensors);
  idx->tensor_file = calloc(n, sizeof *idx->tensor_file);
  if (!idx->files || !idx->tensors || !idx->tensor_file)
    return cdb_error_set(err, "%s: out of memory", path);
  json_object_object_foreach(map, tensor, shard) {
    if (add_tensor(idx, path, tensor, shard, err) != 0) return -1;
  }
  return 0;
}

int cdb_shard_index_load(const char *path, cdb_shard_index *idx, cdb_error *err) {
  memset(idx, 0, sizeof *idx);
  struct json_object *root = cdb_json_load_file(path, INDEX_MAX_BYTES, err);
  if (!root) return -1;
  int rc = fill_index(idx, path, root, err);
  json_object_put(root);
  if (rc != 0) cdb_shard_index_free(idx);
  return rc;
}

void cdb_shard_index_free(cdb_shard_index *idx) {
  for (int i = 0; i < idx->n_files; i++) free(idx->files[i]);
  for (int i = 0; i < idx->n_tensors; i++) free(idx->tensors[i]);
  free(idx->files);
  free(idx->tensors);
  free(idx->tensor_file);
  memset(idx, 0, sizeof *idx);
}
