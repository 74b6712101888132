// faiss_ext.cpp: clipdb's own C wrappers over FAISS C++ for what no FAISS C API offers (see
// faiss_ext.h). Every entry point catches C++ exceptions and stores them where
// faiss_get_last_error() finds them, as FAISS's own C API does.
#include "faiss_ext.h"

#include <exception>
#include <stdexcept>

#include <faiss/Index.h>
#include <faiss/IndexIVF.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/invlists/OnDiskInvertedLists.h>

#include <faiss/c_api/error_impl.h>

namespace {

struct IDSelectorCallback : faiss::IDSelector {
    int (*fn)(void*, int64_t);
    void* ctx;
    IDSelectorCallback(int (*fn)(void*, int64_t), void* ctx) : fn(fn), ctx(ctx) {}
    bool is_member(int64_t id) const override {
        return fn(ctx, id) != 0;
    }
};

int fail_with_current_exception() {
    faiss_last_exception = std::current_exception();
    return -2;
}

} // namespace

extern "C" {

int cdbx_IDSelectorCallback_new(FaissIDSelector** p_sel, int (*is_member)(void*, int64_t),
                                void* ctx) {
    try {
        if (!is_member) {
            throw std::invalid_argument("IDSelectorCallback: null callback");
        }
        *p_sel = reinterpret_cast<FaissIDSelector*>(new IDSelectorCallback(is_member, ctx));
        return 0;
    } catch (...) {
        return fail_with_current_exception();
    }
}

int cdbx_Index_range_search_with_params(const FaissIndex* index, idx_t n, const float* x,
                                        float radius, const FaissSearchParameters* params,
                                        FaissRangeSearchResult* result) {
    try {
        reinterpret_cast<const faiss::Index*>(index)->range_search(
                n, x, radius, reinterpret_cast<faiss::RangeSearchResult*>(result),
                reinterpret_cast<const faiss::SearchParameters*>(params));
        return 0;
    } catch (...) {
        return fail_with_current_exception();
    }
}

int cdbx_IndexIVF_list_get(const FaissIndexIVF* index, size_t list_no, idx_t* ids,
                           float* vectors) {
    try {
        auto* ivf = reinterpret_cast<const faiss::IndexIVF*>(index);
        if (list_no >= ivf->nlist) {
            throw std::out_of_range("IndexIVF list_get: list number out of range");
        }
        size_t n = ivf->invlists->list_size(list_no);
        faiss::InvertedLists::ScopedIds list_ids(ivf->invlists, list_no);
        for (size_t i = 0; i < n; i++) {
            ids[i] = list_ids[i];
            ivf->reconstruct_from_offset(list_no, i, vectors + i * ivf->d);
        }
        return 0;
    } catch (...) {
        return fail_with_current_exception();
    }
}

int cdbx_IndexIVF_set_kmeans_iterations(FaissIndexIVF* index, int niter) {
    try {
        reinterpret_cast<faiss::IndexIVF*>(index)->cp.niter = niter;
        return 0;
    } catch (...) {
        return fail_with_current_exception();
    }
}

int cdbx_IndexIVF_prepare_mapped(FaissIndexIVF* index) {
    try {
        auto* ivf = reinterpret_cast<faiss::IndexIVF*>(index);
        auto* ondisk = dynamic_cast<faiss::OnDiskInvertedLists*>(ivf->invlists);
        if (!ondisk) {
            return 0;
        }
        ondisk->prefetch_nthread = 0;
        return 1;
    } catch (...) {
        return fail_with_current_exception();
    }
}

} // extern "C"
