/* idset.h (internal to index/): an open-addressing hash set of int64 ids, so that adds can tell
 * replacements from new ids in O(batch) instead of a pass over the whole index. */
#ifndef CDB_INDEX_IDSET_H
#define CDB_INDEX_IDSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct cdb_idset {
  int64_t *keys;
  unsigned char *used;
  size_t cap; /* power of two, or 0 */
  size_t n;
} cdb_idset;

void cdb_idset_free(cdb_idset *s);
/* Makes room for `total` ids without rehashing; 0 or -1 (out of memory). */
int cdb_idset_reserve(cdb_idset *s, size_t total);
int cdb_idset_has(const cdb_idset *s, int64_t id);
/* 1: inserted, 0: was present, -1: out of memory. */
int cdb_idset_put(cdb_idset *s, int64_t id);
/* 1: removed, 0: absent. */
int cdb_idset_del(cdb_idset *s, int64_t id);
int cdb_idset_copy(cdb_idset *dst, const cdb_idset *src);

#endif
