// faiss_assign.cpp: IndexIVF::add_core for lists assigned by the caller (faiss_assign.h).
#include "faiss_assign.h"

#include <exception>
#include <stdexcept>

#include <faiss/IndexIVF.h>
#include <faiss/c_api/error_impl.h>

extern "C" {

int cdb_faiss_IndexIVF_add_preassigned(FaissIndexIVF *index, int64_t n, const float *x,
                                       const int64_t *ids, const int64_t *lists) {
  try {
    auto *ivf = reinterpret_cast<faiss::IndexIVF *>(index);
    for (int64_t i = 0; i < n; i++)
      if (lists[i] < 0 || lists[i] >= (int64_t)ivf->nlist)
        throw std::invalid_argument("IndexIVF add_preassigned: list number out of range");
    ivf->add_core(n, x, ids, lists);
    return 0;
  } catch (...) {
    faiss_last_exception = std::current_exception();
    return -2;
  }
}

} // extern "C"
