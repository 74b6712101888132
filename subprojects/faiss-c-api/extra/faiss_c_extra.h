/* faiss_c_extra.h: C API declarations that FAISS 1.7.3 lacks and later upstream releases have
 * (SearchParameters, SearchParametersIVF, faiss_Index_search_with_params), with upstream's
 * names and signatures. Implemented in search_params_c.cpp (this project's own code).
 *
 * Include this only when the installed <faiss/c_api/Index_c.h> does not declare them: the
 * clipdb build defines CLIPDB_FAISS_C_HAS_SEARCH_PARAMS when it does (a newer system
 * libfaiss_c), and then this header is a no-op and upstream's own headers are used. */
#ifndef CLIPDB_FAISS_C_EXTRA_H
#define CLIPDB_FAISS_C_EXTRA_H

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>

#ifndef CLIPDB_FAISS_C_HAS_SEARCH_PARAMS

#ifdef __cplusplus
extern "C" {
#endif

/* Index_c.h (upstream) */
FAISS_DECLARE_CLASS(SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParameters)

int faiss_SearchParameters_new(FaissSearchParameters** p_sp, FaissIDSelector* sel);

int faiss_Index_search_with_params(
        const FaissIndex* index,
        idx_t n,
        const float* x,
        idx_t k,
        const FaissSearchParameters* params,
        float* distances,
        idx_t* labels);

/* IndexIVF_c.h (upstream) */
FAISS_DECLARE_CLASS_INHERITED(SearchParametersIVF, SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParametersIVF)

int faiss_SearchParametersIVF_new(FaissSearchParametersIVF** p_sp);
int faiss_SearchParametersIVF_new_with(
        FaissSearchParametersIVF** p_sp,
        FaissIDSelector* sel,
        size_t nprobe,
        size_t max_codes);

FAISS_DECLARE_GETTER(SearchParametersIVF, const FaissIDSelector*, sel)
FAISS_DECLARE_GETTER_SETTER(SearchParametersIVF, size_t, nprobe)
FAISS_DECLARE_GETTER_SETTER(SearchParametersIVF, size_t, max_codes)

#ifdef __cplusplus
}
#endif

#endif /* CLIPDB_FAISS_C_HAS_SEARCH_PARAMS */
#endif
