// search_params_c.cpp: clipdb's implementation of upstream FAISS C API functions for search
// parameters (declared in faiss_c_extra.h), for FAISS 1.7.3 whose C API lacks them. Errors are
// reported like the rest of the C API: -2 and faiss_get_last_error().
#include "faiss_c_extra.h"

#include <faiss/Index.h>
#include <faiss/IndexIVF.h>
#include <faiss/impl/IDSelector.h>

#include "error_impl.h"
#include "macros_impl.h"

namespace {
faiss::IDSelector* as_selector(FaissIDSelector* sel) {
    return reinterpret_cast<faiss::IDSelector*>(sel);
}
} // namespace

extern "C" {

void faiss_SearchParameters_free(FaissSearchParameters* obj) {
    delete reinterpret_cast<faiss::SearchParameters*>(obj);
}

int faiss_SearchParameters_new(FaissSearchParameters** p_sp, FaissIDSelector* sel) {
    try {
        auto* sp = new faiss::SearchParameters();
        sp->sel = as_selector(sel);
        *p_sp = reinterpret_cast<FaissSearchParameters*>(sp);
        return 0;
    }
    CATCH_AND_HANDLE
}

int faiss_Index_search_with_params(
        const FaissIndex* index,
        idx_t n,
        const float* x,
        idx_t k,
        const FaissSearchParameters* params,
        float* distances,
        idx_t* labels) {
    try {
        reinterpret_cast<const faiss::Index*>(index)->search(
                n, x, k, distances, labels,
                reinterpret_cast<const faiss::SearchParameters*>(params));
        return 0;
    }
    CATCH_AND_HANDLE
}

void faiss_SearchParametersIVF_free(FaissSearchParametersIVF* obj) {
    delete reinterpret_cast<faiss::SearchParametersIVF*>(obj);
}

int faiss_SearchParametersIVF_new(FaissSearchParametersIVF** p_sp) {
    try {
        *p_sp = reinterpret_cast<FaissSearchParametersIVF*>(new faiss::SearchParametersIVF());
        return 0;
    }
    CATCH_AND_HANDLE
}

int faiss_SearchParametersIVF_new_with(
        FaissSearchParametersIVF** p_sp,
        FaissIDSelector* sel,
        size_t nprobe,
        size_t max_codes) {
    try {
        auto* sp = new faiss::SearchParametersIVF();
        sp->sel = as_selector(sel);
        sp->nprobe = nprobe;
        sp->max_codes = max_codes;
        *p_sp = reinterpret_cast<FaissSearchParametersIVF*>(sp);
        return 0;
    }
    CATCH_AND_HANDLE
}

const FaissIDSelector* faiss_SearchParametersIVF_sel(const FaissSearchParametersIVF* obj) {
    return reinterpret_cast<const FaissIDSelector*>(
            reinterpret_cast<const faiss::SearchParametersIVF*>(obj)->sel);
}

size_t faiss_SearchParametersIVF_nprobe(const FaissSearchParametersIVF* obj) {
    return reinterpret_cast<const faiss::SearchParametersIVF*>(obj)->nprobe;
}

void faiss_SearchParametersIVF_set_nprobe(FaissSearchParametersIVF* obj, size_t nprobe) {
    reinterpret_cast<faiss::SearchParametersIVF*>(obj)->nprobe = nprobe;
}

size_t faiss_SearchParametersIVF_max_codes(const FaissSearchParametersIVF* obj) {
    return reinterpret_cast<const faiss::SearchParametersIVF*>(obj)->max_codes;
}

void faiss_SearchParametersIVF_set_max_codes(FaissSearchParametersIVF* obj, size_t max_codes) {
    reinterpret_cast<faiss::SearchParametersIVF*>(obj)->max_codes = max_codes;
}

} // extern "C"
