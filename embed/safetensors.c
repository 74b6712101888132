/* safetensors.c: mmap + strict validation of the safetensors format
 * (8-byte little-endian header length, JSON header, raw little-endian tensor data). */
#include "embed/safetensors.h"

#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/file.h"
#include "src/json.h"
#include "src/shards.h"

/* Real headers are a few tens of KB; the format's own reference refuses above 100 MB. */
#define ST_MAX_HEADER (100u * 1024 * 1024)

static const struct {
  const char *name;
  int size;
  st_dtype dtype;
} st_dtypes[] = {
    {"F32", 4, ST_F32},    {"F16", 2, ST_F16},       {"BF16", 2, ST_BF16},     {"F64", 8, ST_OTHER},
    {"I64", 8, ST_OTHER},  {"I32", 4, ST_OTHER},     {"I16", 2, ST_OTHER},     {"I8", 1, ST_OTHER},
    {"U64", 8, ST_OTHER},  {"U32", 4, ST_OTHER},     {"U16", 2, ST_OTHER},     {"U8", 1, ST_OTHER},
    {"BOOL", 1, ST_OTHER}, {"F8_E4M3", 1, ST_OTHER}, {"F8_E5M2", 1, ST_OTHER},
};

static int dtype_lookup(const char *name, st_dtype *dtype) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (strcmp(st_dtypes[i].name, name) == 0) {
      *dtype = st_dtypes[i].dtype;
      return st_dtypes[i].size;
    }
  return 0;
}

static uint64_t read_le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static int get_int64_array(struct json_object *arr, int max, int64_t *out, int *n) {
  if (!json_object_is_type(arr, json_type_array)) return -1;
  size_t len = json_object_array_length(arr);
  if ((int)len > max) return -1;
  for (size_t i = 0; i < len; i++) {
    struct json_object *v = json_object_array_get_idx(arr, i);
    if (!json_object_is_type(v, json_type_int)) return -1;
    out[i] = json_object_get_int64(v);
    if (out[i] < 0) return -1;
  }
  *n = (int)len;
  return 0;
}

/* Fills t from one header entry; data_size is the size of the data section. */
static int parse_entry(const st_file *f, const char *name, struct json_object *val,
                       const unsigned char *data, uint64_t data_size, st_tensor *t,
                       cdb_error *err) {
  struct json_object *jd, *js, *jo;
  if (!json_object_is_type(val, json_type_object) ||
      !json_object_object_get_ex(val, "dtype", &jd) ||
      !json_object_object_get_ex(val, "shape", &js) ||
      !json_object_object_get_ex(val, "data_offsets", &jo) ||
      !json_object_is_type(jd, json_type_string))
    return cdb_error_set(err,
                         "safetensors: %s: tensor %s: entry needs dtype, shape and data_offsets",
                         f->path, name);
  const char *dname = json_object_get_string(jd);
  snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dname);
  int esize = dtype_lookup(dname, &t->dtype);
  if (esize == 0) t->dtype = ST_OTHER; /* unknown type: kept, never used as a weight */
  if (get_int64_array(js, ST_MAX_DIMS, t->shape, &t->ndim) != 0)
    return cdb_error_set(err, "safetensors: %s: tensor %s: bad shape", f->path, name);
  int64_t offs[2];
  int n_offs = 0;
  if (get_int64_array(jo, 2, offs, &n_offs) != 0 || n_offs != 2 || offs[0] > offs[1])
    return cdb_error_set(err, "safetensors: %s: tensor %s: bad data_offsets", f->path, name);
  if ((uint64_t)offs[1] > data_size)
    return cdb_error_set(err,
                         "safetensors: %s: tensor %s: data_offsets [%lld, %lld] past the end of "
                         "the data (%llu bytes; file truncated?)",
                         f->path, name, (long long)offs[0], (long long)offs[1],
                         (unsigned long long)data_size);
  uint64_t numel = 1;
  for (int i = 0; i < t->ndim; i++) {
    if (t->shape[i] != 0 && numel > UINT64_MAX / 16 / (uint64_t)t->shape[i])
      return cdb_error_set(err, "safetensors: %s: tensor %s: shape too large", f->path, name);
    numel *= (uint64_t)t->shape[i];
  }
  t->numel = (int64_t)numel;
  t->nbytes = (size_t)(offs[1] - offs[0]);
  if (esize && numel * (uint64_t)esize != t->nbytes)
    return cdb_error_set(err,
                         "safetensors: %s: tensor %s: %llu bytes of data for %s shape with %llu "
                         "elements",
                         f->path, name, (unsigned long long)t->nbytes, dname,
                         (unsigned long long)numel);
  t->data = data + offs[0];
  t->name = strdup(name);
  return t->name ? 0 : cdb_error_set(err, "safetensors: out of memory");
}

static int by_offset(const void *a, const void *b) {
  const st_tensor *x = a, *y = b;
  if (x->data != y->data) return x->data < y->data ? -1 : 1;
  return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int check_overlaps(st_file *f, cdb_error *err) {
  st_tensor *sorted = malloc(sizeof *sorted * (size_t)(f->n_tensors ? f->n_tensors : 1));
  if (!sorted) return cdb_error_set(err, "safetensors: out of memory");
  memcpy(sorted, f->tensors, sizeof *sorted * (size_t)f->n_tensors);
  qsort(sorted, (size_t)f->n_tensors, sizeof *sorted, by_offset);
  int rc = 0;
  for (int i = 1; i < f->n_tensors && rc == 0; i++) {
    const st_tensor *a = &sorted[i - 1], *b = &sorted[i];
    if (a->nbytes && b->nbytes && a->data + a->nbytes > b->data)
      rc = cdb_error_set(err, "safetensors: %s: tensors %s and %s overlap", f->path, a->name,
                         b->name);
  }
  free(sorted);
  return rc;
}

int st_parse(const unsigned char *data, size_t size, const char *path, st_file *f, cdb_error *err) {
  if (!f->path) {
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return cdb_error_set(err, "safetensors: out of memory");
  }
  if (size < 8)
    return cdb_error_set(err, "safetensors: %s: file too short (%zu bytes) for a header", path,
                         size);
  uint64_t hlen = read_le64(data);
  if (hlen > size - 8 || hlen > ST_MAX_HEADER)
    return cdb_error_set(err,
                         "safetensors: %s: header length %llu exceeds the file size %zu (truncated "
                         "or not a safetensors file)",
                         path, (unsigned long long)hlen, size);
  f->header = data;
  f->header_bytes = 8 + (size_t)hlen;
  char what[1100];
  snprintf(what, sizeof what, "safetensors: %s: header", path);
  struct json_object *root = cdb_json_parse((const char *)data + 8, (size_t)hlen, what, err);
  if (!root) return -1;
  if (!json_object_is_type(root, json_type_object)) {
    json_object_put(root);
    return cdb_error_set(err, "safetensors: %s: header is not a JSON object", path);
  }
  int cap = json_object_object_length(root);
  f->tensors = calloc((size_t)(cap ? cap : 1), sizeof *f->tensors);
  if (!f->tensors) {
    json_object_put(root);
    return cdb_error_set(err, "safetensors: out of memory");
  }
  const unsigned char *tensor_data = data + 8 + hlen;
  uint64_t data_size = size - 8 - hlen;
  int rc = 0;
  json_object_object_foreach(root, key, val) {
    if (strcmp(key, "__metadata__") == 0) continue;
    rc = parse_entry(f, key, val, tensor_data, data_size, &f->tensors[f->n_tensors], err);
    if (rc != 0) break;
    f->n_tensors++;
  }
  json_object_put(root);
  if (rc == 0) rc = check_overlaps(f, err);
  return rc;
}

int st_open(const char *path, st_file *f, cdb_error *err) {
  memset(f, 0, sizeof *f);
  f->path = strdup(path);
  if (!f->path) return cdb_error_set(err, "safetensors: out of memory");
  if (cdb_mmap_open(path, &f->map, err) != 0 ||
      st_parse(f->map.data, f->map.size, path, f, err) != 0) {
    st_close(f);
    return -1;
  }
  return 0;
}

void st_close(st_file *f) {
  for (int i = 0; i < f->n_shards; i++) st_close(&f->shards[i]);
  free(f->shards);
  for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
  free(f->tensors);
  free(f->path);
  cdb_mmap_close(&f->map);
  memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
  for (int i = 0; i < f->n_tensors; i++)
    if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
  return NULL;
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t used = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ndim && used < cap; i++)
    used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (used < cap) snprintf(buf + used, cap - used, "]");
}

const st_tensor *st_expect(const st_file *f, const char *name, int ndim, const int64_t *shape,
                           cdb_error *err) {
  const st_tensor *t = st_find(f, name);
  if (!t) {
    cdb_error_set(err, "safetensors: %s: missing tensor %s", f->path, name);
    return NULL;
  }
  if (t->dtype == ST_OTHER) {
    cdb_error_set(err,
                  "safetensors: %s: tensor %s has unsupported dtype %s (F32, F16 or BF16 needed)",
                  f->path, name, t->dtype_name);
    return NULL;
  }
  int same = t->ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
  if (!same) {
    char want[128], got[128];
    format_shape(want, sizeof want, ndim, shape);
    format_shape(got, sizeof got, t->ndim, t->shape);
    cdb_error_set(err, "safetensors: %s: tensor %s has shape %s but the config needs %s", f->path,
                  name, got, want);
    return NULL;
  }
  return t;
}

/* ---- sharded checkpoints ---- */

static int open_shards(st_file *f, const char *dir, const cdb_shard_index *idx, cdb_error *err) {
  f->shards = calloc((size_t)idx->n_files, sizeof *f->shards);
  if (!f->shards) return cdb_error_set(err, "safetensors: out of memory");
  for (int i = 0; i < idx->n_files; i++) {
    char *path = cdb_path_join(dir, idx->files[i]);
    if (!path) return cdb_error_set(err, "safetensors: out of memory");
    int rc = st_open(path, &f->shards[i], err);
    free(path);
    if (rc != 0)
      return cdb_error_prefix(err, "safetensors: %s names the shard %s", f->path, idx->files[i]);
    f->n_shards++;
  }
  return 0;
}

/* Each tensor the index names must be in the shard it names. */
static int check_index_against_shards(const st_file *f, const cdb_shard_index *idx,
                                      cdb_error *err) {
  for (int i = 0; i < idx->n_tensors; i++) {
    const st_file *shard = &f->shards[idx->tensor_file[i]];
    if (!st_find(shard, idx->tensors[i]))
      return cdb_error_set(err, "safetensors: %s puts tensor %s in %s, which does not hold it",
                           f->path, idx->tensors[i], shard->path);
  }
  return 0;
}

typedef struct named_tensor {
  const char *name;
  const char *shard;
} named_tensor;

static int by_name(const void *a, const void *b) {
  return strcmp(((const named_tensor *)a)->name, ((const named_tensor *)b)->name);
}

/* A tensor held by two shards would make lookups depend on the order of the files. */
static int check_no_tensor_twice(const st_file *f, int total, cdb_error *err) {
  named_tensor *all = malloc(sizeof *all * (size_t)(total ? total : 1));
  if (!all) return cdb_error_set(err, "safetensors: out of memory");
  int n = 0, rc = 0;
  for (int s = 0; s < f->n_shards; s++)
    for (int i = 0; i < f->shards[s].n_tensors; i++)
      all[n++] = (named_tensor){f->shards[s].tensors[i].name, f->shards[s].path};
  qsort(all, (size_t)n, sizeof *all, by_name);
  for (int i = 1; i < n && rc == 0; i++)
    if (strcmp(all[i - 1].name, all[i].name) == 0)
      rc = cdb_error_set(err, "safetensors: %s: tensor %s is in two shards, %s and %s", f->path,
                         all[i].name, all[i - 1].shard, all[i].shard);
  free(all);
  return rc;
}

/* f->tensors: copies of every shard's tensors (names duplicated; data stays in their mappings). */
static int merge_tensors(st_file *f, cdb_error *err) {
  int total = 0;
  for (int s = 0; s < f->n_shards; s++) total += f->shards[s].n_tensors;
  if (check_no_tensor_twice(f, total, err) != 0) return -1;
  f->tensors = calloc((size_t)(total ? total : 1), sizeof *f->tensors);
  if (!f->tensors) return cdb_error_set(err, "safetensors: out of memory");
  for (int s = 0; s < f->n_shards; s++)
    for (int i = 0; i < f->shards[s].n_tensors; i++) {
      st_tensor *t = &f->tensors[f->n_tensors];
      *t = f->shards[s].tensors[i];
      if (!(t->name = strdup(t->name))) return cdb_error_set(err, "safetensors: out of memory");
      f->n_tensors++;
    }
  return 0;
}

int st_open_index(const char *index_path, st_file *f, cdb_error *err) {
  memset(f, 0, sizeof *f);
  cdb_shard_index idx;
  if (cdb_shard_index_load(index_path, &idx, err) != 0)
    return cdb_error_prefix(err, "safetensors");
  char *dir = g_path_get_dirname(index_path);
  f->path = strdup(index_path);
  int rc = !dir || !f->path ? cdb_error_set(err, "safetensors: out of memory") : 0;
  if (rc == 0) rc = open_shards(f, dir, &idx, err);
  if (rc == 0) rc = check_index_against_shards(f, &idx, err);
  if (rc == 0) rc = merge_tensors(f, err);
  if (rc != 0) st_close(f);
  g_free(dir);
  cdb_shard_index_free(&idx);
  return rc;
}
