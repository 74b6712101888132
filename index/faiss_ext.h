/* faiss_ext.h (internal to index/): the few FAISS operations clipdb needs that no FAISS C API
 * release offers, as C functions over the C API's opaque types. Implemented in faiss_ext.cpp;
 * like the C API they return 0 on success and a negative value on error, with the message in
 * faiss_get_last_error(). */
#ifndef CDB_INDEX_FAISS_EXT_H
#define CDB_INDEX_FAISS_EXT_H

#include <stdint.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/IndexIVF_c.h>
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
int cdbx_IDSelectorCallback_new(FaissIDSelector **p_sel, int (*is_member)(void *ctx, int64_t id),
                                void *ctx);

/* Index::range_search with search parameters (selector, IVF nprobe). */
int cdbx_Index_range_search_with_params(const FaissIndex *index, idx_t n, const float *x,
                                        float radius, const FaissSearchParameters *params,
                                        FaissRangeSearchResult *result);

/* Decodes inverted list list_no: ids and (reconstructed) vectors, list_size entries each. */
int cdbx_IndexIVF_list_get(const FaissIndexIVF *index, size_t list_no, idx_t *ids,
                           float *vectors);

/* Iterations of the coarse quantizer's k-means (FAISS's default is 25). */
int cdbx_IndexIVF_set_kmeans_iterations(FaissIndexIVF *index, int niter);

/* 1 when the inverted lists are memory-mapped (read with IO_FLAG_MMAP), else 0. For mapped lists
 * it also turns off FAISS's per-query prefetch threads (useless when pages are cached). */
int cdbx_IndexIVF_prepare_mapped(FaissIndexIVF *index);

#ifdef __cplusplus
}
#endif

#endif
