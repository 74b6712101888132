/* checksum.c: XXH64 (Yann Collet's xxHash, 64-bit variant), streamed over 32-byte stripes.
 * Little-endian reads, as the cache files it checks are native little-endian anyway. */
#include "index/checksum.h"

#include <string.h>

#define P1 11400714785074694791ULL
#define P2 14029467366897019727ULL
#define P3 1609587929392839161ULL
#define P4 9650029242287828579ULL
#define P5 2870177450012600261ULL

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t read64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

static uint32_t read32(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

static uint64_t round64(uint64_t acc, uint64_t input) {
  acc += input * P2;
  return rotl(acc, 31) * P1;
}

static uint64_t merge_round(uint64_t h, uint64_t acc) {
  h ^= round64(0, acc);
  return h * P1 + P4;
}

static void stripe(uint64_t acc[4], const unsigned char *p) {
  acc[0] = round64(acc[0], read64(p));
  acc[1] = round64(acc[1], read64(p + 8));
  acc[2] = round64(acc[2], read64(p + 16));
  acc[3] = round64(acc[3], read64(p + 24));
}

void cdb_hash_init(cdb_hash *h, uint64_t seed) {
  memset(h, 0, sizeof *h);
  h->seed = seed;
  h->acc[0] = seed + P1 + P2;
  h->acc[1] = seed + P2;
  h->acc[2] = seed;
  h->acc[3] = seed - P1;
}

void cdb_hash_update(cdb_hash *h, const void *data, size_t len) {
  const unsigned char *p = data;
  h->total += len;
  if (h->buf_len) {
    size_t take = 32 - h->buf_len < len ? 32 - h->buf_len : len;
    memcpy(h->buf + h->buf_len, p, take);
    h->buf_len += take;
    p += take;
    len -= take;
    if (h->buf_len < 32) return;
    stripe(h->acc, h->buf);
    h->buf_len = 0;
  }
  uint64_t acc[4] = {h->acc[0], h->acc[1], h->acc[2], h->acc[3]};
  for (; len >= 32; p += 32, len -= 32) stripe(acc, p);
  memcpy(h->acc, acc, sizeof acc);
  memcpy(h->buf, p, len);
  h->buf_len = len;
}

uint64_t cdb_hash_final(const cdb_hash *h) {
  uint64_t r;
  if (h->total >= 32) {
    const uint64_t *a = h->acc;
    r = rotl(a[0], 1) + rotl(a[1], 7) + rotl(a[2], 12) + rotl(a[3], 18);
    for (int i = 0; i < 4; i++) r = merge_round(r, a[i]);
  } else {
    r = h->seed + P5;
  }
  r += h->total;
  const unsigned char *p = h->buf;
  size_t len = h->buf_len;
  for (; len >= 8; p += 8, len -= 8) r = rotl(r ^ round64(0, read64(p)), 27) * P1 + P4;
  if (len >= 4) {
    r = rotl(r ^ (uint64_t)read32(p) * P1, 23) * P2 + P3;
    p += 4;
    len -= 4;
  }
  for (; len > 0; p++, len--) r = rotl(r ^ *p * P5, 11) * P1;
  r ^= r >> 33;
  r *= P2;
  r ^= r >> 29;
  r *= P3;
  return r ^ (r >> 32);
}

uint64_t cdb_hash64(const void *data, size_t len, uint64_t seed) {
  cdb_hash h;
  cdb_hash_init(&h, seed);
  cdb_hash_update(&h, data, len);
  return cdb_hash_final(&h);
}
