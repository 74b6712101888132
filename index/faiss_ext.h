/* faiss_ext.h (internal to index/): the few FAISS operations clipdb needs that no FAISS C API
 * release offers, as C functions over the C API's opaque types. Implemented in faiss_ext.cpp;
 * like the C API they return 0 on success and a negative value on error, with the message in
 * faiss_get_last_error(). */
#ifndef CDB_INDEX_FAISS_EXT_H
#define CDB_INDEX_FAISS_EXT_H

#include <stdint.h>
#include <stdio.h>

#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>

#ifdef CLIPDB_FAISS_C_HAS_SEARCH_PARAMS
typedef struct FaissSearchParameters_H FaissSearchParameters;
#else
#include "faiss_c_extra.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* An IDSelector that asks a C callback (non-zero: member). Free with faiss_IDSelector_free. */
int cdb_faiss_IDSelectorCallback_new(FaissIDSelector **p_sel,
                                     int (*is_member)(void *ctx, int64_t id), void *ctx);

/* Index::range_search with search parameters (selector, IVF nprobe). */
int cdb_faiss_Index_range_search_with_params(const FaissIndex *index, idx_t n, const float *x,
                                             float radius, const FaissSearchParameters *params,
                                             FaissRangeSearchResult *result);

/* Decodes entries offset..offset+n-1 of inverted list list_no: ids and (reconstructed)
 * vectors. */
int cdb_faiss_IndexIVF_list_get(const FaissIndexIVF *index, size_t list_no, size_t offset,
                                size_t n, idx_t *ids, float *vectors);

/* Iterations of the coarse quantizer's k-means (FAISS's default is 25) and the fewest training
 * points per centroid below which FAISS prints a warning (its default is 39). */
int cdb_faiss_IndexIVF_set_kmeans(FaissIndexIVF *index, int niter, int min_points_per_centroid);

/* 1 when the inverted lists are memory-mapped (read with IO_FLAG_MMAP), else 0. For mapped lists
 * it also turns off FAISS's per-query prefetch threads (useless when pages are cached). */
int cdb_faiss_IndexIVF_prepare_mapped(FaissIndexIVF *index);

/* Memory-mapped lists: the mapping (the whole file), and where the list data starts and ends in
 * it. Returns 1 for mapped lists, 0 for others. */
int cdb_faiss_IndexIVF_mapped_view(const FaissIndexIVF *index, const unsigned char **data,
                                   size_t *size, size_t *lists_start, size_t *lists_end);

/* hashes[l]: XXH64 (seeded with l) over list l's codes then ids, the bytes FAISS writes for it;
 * *list_bytes: how many bytes all lists take in FAISS's format. */
int cdb_faiss_IndexIVF_list_hashes(const FaissIndexIVF *index, uint64_t *hashes,
                                   size_t *list_bytes);

/* Wraps memory-mapped lists so that each is checked against hashes[list_no] on first touch; a
 * damaged list then reads as empty and is reported by cdb_faiss_IndexIVF_verify_lists. */
int cdb_faiss_IndexIVF_check_lists(FaissIndexIVF *index, const uint64_t *hashes);

/* The first damaged list found so far (-1: none, or the lists are not checked); with all != 0
 * every list not yet checked is checked first. */
int64_t cdb_faiss_IndexIVF_verify_lists(const FaissIndexIVF *index, int all);

/* Writes the index in FAISS's format with every inverted list empty (quantizer and encoder
 * only) to f. The index itself is unchanged. */
int cdb_faiss_IndexIVF_write_without_lists(FaissIndexIVF *index, FILE *f);

/* Appends n entries to list list_no: ids, and the vectors as codes (raw floats for a Flat
 * encoding, else encoded relative to the list's centroid as FAISS's add would). */
int cdb_faiss_IndexIVF_add_to_list(FaissIndexIVF *index, size_t list_no, size_t n, const idx_t *ids,
                                   const float *vectors);

/* 1 when the lists hold the vectors as raw floats (a Flat encoding), else 0. */
int cdb_faiss_IndexIVF_is_flat(const FaissIndexIVF *index);

/* What clipdb's own list scan (scan.h) needs of an index. kind: CDB_FAISS_CODES_FLOAT (raw
 * float32 vectors), CDB_FAISS_CODES_SQ8 (FAISS's 8-bit non-uniform scalar codes: component i
 * decodes to vmin[i] + (code + 0.5) / 255 * vdiff[i], added to the list's centroid when
 * by_residual) or CDB_FAISS_CODES_OTHER (FAISS searches it). centroids: the flat quantizer's
 * nlist x d vectors (NULL for another quantizer, then kind is OTHER). Pointers stay valid while
 * the index is unchanged. */
enum { CDB_FAISS_CODES_OTHER, CDB_FAISS_CODES_FLOAT, CDB_FAISS_CODES_SQ8 };
typedef struct cdb_faiss_ivf_layout {
  int kind;
  int by_residual;
  size_t code_size;
  const float *centroids;
  const float *vmin, *vdiff;
} cdb_faiss_ivf_layout;
int cdb_faiss_IndexIVF_layout(const FaissIndexIVF *index, cdb_faiss_ivf_layout *layout);

/* List list_no in place: its size, codes and ids (the ids need not be 8-byte aligned: read them
 * with memcpy). Hand both back with cdb_faiss_IndexIVF_list_release. A damaged list of a checked
 * cache file reads as empty. */
int cdb_faiss_IndexIVF_list_view(const FaissIndexIVF *index, size_t list_no, size_t *n,
                                 const uint8_t **codes, const void **ids);
void cdb_faiss_IndexIVF_list_release(const FaissIndexIVF *index, size_t list_no,
                                     const uint8_t *codes, const void *ids);

#ifdef __cplusplus
}
#endif

#endif
