/* ivf_internal.h (internal to index/): the cdb_index structure and the helpers that ivf.c
 * (index life cycle, add/remove, search, training) shares with serialize.c (pieces, cache
 * files). */
#ifndef CDB_IVF_INTERNAL_H
#define CDB_IVF_INTERNAL_H

#include <stdint.h>
#include <stdio.h>

#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>

#include "index/idset.h"
#include "index/ivf.h"

/* FAISS 1.7.3's C++ IO_FLAG_MMAP (IO_FLAG_SKIP_IVF_DATA | 0x646f0000). The C header's
 * FAISS_IO_FLAG_MMAP (1) is stale and means nothing to 1.7.3's read_index. */
#define FAISS_CXX_IO_FLAG_MMAP 0x646f0008

#define FILE_MAGIC "CDBIVF01"
#define FILE_VERSION 1u     /* snapshot pieces: FAISS's index with its vectors */
#define FILE_VERSION_IDS 2u /* snapshot pieces of IVF<n>,Flat: lists' ids, vectors the caller's */
#define FILE_VERSION_IDS_CODED 3u /* the same for compressed encodings: codes rebuilt on load */
#define CACHE_VERSION_FLAT 2u     /* cache files of raw vectors (still read) */
#define CACHE_VERSION 3u          /* cache files (any encoding): FAISS's part, a cache_trailer */
#define TRAILER_MAGIC "CDBSUM01"

struct cdb_index {
  int dim;
  char type[64];     /* "auto", "flat", "IVF,<enc>" or "IVF<n>,<enc>" */
  char encoding[40]; /* factory text after "IVF<n>," */
  int fixed_nlist;   /* from the type string, else 0 */
  int nlist_param;
  int nprobe_param;
  int nprobe; /* default for the current index */
  int64_t trained_at;
  char factory[64];
  FaissIndex *faiss; /* always an IndexIVF */
  FaissIndexIVF *ivf;
  size_t nlist;
  cdb_idset ids;
  int ids_valid;          /* 0 while mapped: built on the first write */
  FILE *mapped;           /* the cache file while mapped */
  cdb_vector_fetch fetch; /* exact vectors for relisting codes (cdb_index_set_vector_fetch) */
  void *fetch_ctx;
  long faiss_offset; /* where FAISS's data starts in it */
};

/* The fixed-size header before FAISS's own serialisation (native byte order, like FAISS's). */
typedef struct file_header {
  char magic[8];
  uint32_t version;
  uint32_t dim;
  uint64_t generation;
  uint64_t payload_bytes; /* FAISS's bytes after the header (cache files; 0 in pieces) */
  int64_t trained_at;
  int32_t nlist_param;
  int32_t nprobe_param;
  int32_t nprobe;
  int32_t reserved;
  char type[64];
} file_header;

/* The end of a cache file: nlist uint64 list hashes come before it. `hash` covers those and
 * the fields before it; prefix_hash covers the file's bytes before lists_start. */
typedef struct cache_trailer {
  uint64_t nlist;
  uint64_t lists_start;
  uint64_t prefix_hash;
  uint64_t hash;
  char magic[8];
} cache_trailer;

/* Sets err from FAISS's last error ("index: <what>: <message>"); returns -1. */
int ivf_faiss_fail(cdb_error *err, const char *what);
/* 0 when v is unit length, else -1 with err naming `what` i and the fault (NaN/Inf, zero, norm). */
int ivf_check_unit(const float *v, int dim, const char *what, int64_t i, cdb_error *err);
/* A cdb_index with parsed params and no FAISS index yet. */
cdb_index *ivf_alloc_index(int dim, const cdb_index_params *params, cdb_error *err);
/* Installs fi (an IndexIVF) as the index's FAISS object, with its nlist and nprobe. */
void ivf_set_faiss(cdb_index *idx, FaissIndex *fi);
/* Rebuilds the id set from the lists. */
int ivf_rebuild_idset(cdb_index *idx, cdb_error *err);
/* 1 when the index holds raw vectors (a Flat encoding, as before training), else 0. */
int ivf_is_flat(const cdb_index *idx);
/* Reads a memory-mapped index fully into memory before a write. */
int ivf_make_writable(cdb_index *idx, cdb_error *err);

#endif
