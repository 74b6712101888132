/* faiss_assign.h (internal to index/): adding vectors to an IndexIVF whose inverted lists were
 * already chosen by the caller (kmeans.h's assignment), and installing trained centroids. Same
 * conventions as faiss_ext.h: 0 on success, negative with faiss_get_last_error() on error. */
#ifndef CDB_INDEX_FAISS_ASSIGN_H
#define CDB_INDEX_FAISS_ASSIGN_H

#include <stdint.h>

#include <faiss/c_api/IndexIVF_c.h>

#ifdef __cplusplus
extern "C" {
#endif

/* IndexIVF::add_core: n vectors with their ids, vector i into list lists[i] (encoded by the
 * index's own encoder, any encoding). */
int cdb_faiss_IndexIVF_add_preassigned(FaissIndexIVF *index, int64_t n, const float *x,
                                       const int64_t *ids, const int64_t *lists);

#ifdef __cplusplus
}
#endif

#endif
