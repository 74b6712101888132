/* checksum.h (internal to index/): XXH64, a fast 64-bit non-cryptographic hash, in one call or
 * streamed. It guards the cache file's bytes against damage (not against tampering). */
#ifndef CDB_INDEX_CHECKSUM_H
#define CDB_INDEX_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cdb_hash {
  uint64_t acc[4];
  uint64_t total;
  uint64_t seed;
  unsigned char buf[32];
  size_t buf_len;
} cdb_hash;

void cdb_hash_init(cdb_hash *h, uint64_t seed);
void cdb_hash_update(cdb_hash *h, const void *data, size_t len);
uint64_t cdb_hash_final(const cdb_hash *h);
uint64_t cdb_hash64(const void *data, size_t len, uint64_t seed);

#ifdef __cplusplus
}
#endif

#endif
