/* idset.c: linear-probing int64 hash set with backward-shift deletion (no tombstones). */
#include "index/idset.h"

#include <stdlib.h>
#include <string.h>

static size_t home_slot(int64_t id, size_t cap) {
  uint64_t x = (uint64_t)id;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return (size_t)x & (cap - 1);
}

void cdb_idset_free(cdb_idset *s) {
  free(s->keys);
  free(s->used);
  memset(s, 0, sizeof *s);
}

static void insert_new(cdb_idset *s, int64_t id) {
  size_t i = home_slot(id, s->cap);
  while (s->used[i]) i = (i + 1) & (s->cap - 1);
  s->used[i] = 1;
  s->keys[i] = id;
  s->n++;
}

int cdb_idset_reserve(cdb_idset *s, size_t total) {
  size_t cap = 16;
  while (cap < total * 2) cap *= 2;
  if (cap <= s->cap) return 0;
  cdb_idset bigger = {malloc(cap * sizeof(int64_t)), calloc(cap, 1), cap, 0};
  if (!bigger.keys || !bigger.used) {
    cdb_idset_free(&bigger);
    return -1;
  }
  for (size_t i = 0; i < s->cap; i++)
    if (s->used[i]) insert_new(&bigger, s->keys[i]);
  cdb_idset_free(s);
  *s = bigger;
  return 0;
}

static size_t find_slot(const cdb_idset *s, int64_t id, int *found) {
  size_t i = home_slot(id, s->cap);
  while (s->used[i]) {
    if (s->keys[i] == id) {
      *found = 1;
      return i;
    }
    i = (i + 1) & (s->cap - 1);
  }
  *found = 0;
  return i;
}

int cdb_idset_has(const cdb_idset *s, int64_t id) {
  int found = 0;
  if (s->cap) find_slot(s, id, &found);
  return found;
}

int cdb_idset_put(cdb_idset *s, int64_t id) {
  if (cdb_idset_has(s, id)) return 0;
  if (cdb_idset_reserve(s, s->n + 1) < 0) return -1;
  insert_new(s, id);
  return 1;
}

int cdb_idset_del(cdb_idset *s, int64_t id) {
  int found = 0;
  if (!s->cap) return 0;
  size_t hole = find_slot(s, id, &found);
  if (!found) return 0;
  s->used[hole] = 0;
  s->n--;
  /* Shift later members of the probe run back into the hole when their home allows it. */
  for (size_t j = (hole + 1) & (s->cap - 1); s->used[j]; j = (j + 1) & (s->cap - 1)) {
    size_t home = home_slot(s->keys[j], s->cap);
    size_t dist_j = (j - home) & (s->cap - 1);
    size_t dist_hole = (hole - home) & (s->cap - 1);
    if (dist_hole < dist_j) {
      s->keys[hole] = s->keys[j];
      s->used[hole] = 1;
      s->used[j] = 0;
      hole = j;
    }
  }
  return 1;
}

int cdb_idset_copy(cdb_idset *dst, const cdb_idset *src) {
  memset(dst, 0, sizeof *dst);
  if (!src->cap) return 0;
  dst->keys = malloc(src->cap * sizeof(int64_t));
  dst->used = malloc(src->cap);
  if (!dst->keys || !dst->used) {
    cdb_idset_free(dst);
    return -1;
  }
  memcpy(dst->keys, src->keys, src->cap * sizeof(int64_t));
  memcpy(dst->used, src->used, src->cap);
  dst->cap = src->cap;
  dst->n = src->n;
  return 0;
}
