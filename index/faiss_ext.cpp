// faiss_ext.cpp: clipdb's own C wrappers over FAISS C++ for what no FAISS C API offers (see
// faiss_ext.h). Every entry point catches C++ exceptions and stores them where
// faiss_get_last_error() finds them, as FAISS's own C API does.
#include "faiss_ext.h"

#include <atomic>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <vector>

#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_io.h>
#include <faiss/invlists/OnDiskInvertedLists.h>

#include <faiss/c_api/error_impl.h>

#include "index/checksum.h"

namespace {

struct IDSelectorCallback : faiss::IDSelector {
  int (*fn)(void *, int64_t);
  void *ctx;
  IDSelectorCallback(int (*fn)(void *, int64_t), void *ctx) : fn(fn), ctx(ctx) {}
  bool is_member(int64_t id) const override { return fn(ctx, id) != 0; }
};

// XXH64 over a list as FAISS writes it: its codes, then its ids.
uint64_t list_hash(const faiss::InvertedLists *il, size_t list_no) {
  size_t n = il->list_size(list_no);
  cdb_hash h;
  cdb_hash_init(&h, list_no);
  if (n > 0) {
    faiss::InvertedLists::ScopedCodes codes(il, list_no);
    faiss::InvertedLists::ScopedIds ids(il, list_no);
    cdb_hash_update(&h, codes.get(), n * il->code_size);
    cdb_hash_update(&h, ids.get(), n * sizeof(faiss::InvertedLists::idx_t));
  }
  return cdb_hash_final(&h);
}

// Memory-mapped lists checked against their expected hashes on first touch. A damaged list
// reads as empty (list_size is the first call of every FAISS scan) and is remembered in
// first_bad, which the caller checks after each operation.
struct CheckedLists : faiss::ReadOnlyInvertedLists {
  std::unique_ptr<faiss::OnDiskInvertedLists> base;
  std::vector<uint64_t> expected;
  std::unique_ptr<std::atomic<uint8_t>[]> state; // 0 unchecked, 1 good, 2 damaged
  mutable std::atomic<int64_t> first_bad{-1};

  CheckedLists(faiss::OnDiskInvertedLists *il, const uint64_t *hashes)
      : faiss::ReadOnlyInvertedLists(il->nlist, il->code_size),
        base(il),
        expected(hashes, hashes + il->nlist),
        state(new std::atomic<uint8_t>[il->nlist]) {
    for (size_t i = 0; i < nlist; i++) {
      state[i] = 0;
    }
  }

  bool good(size_t list_no) const {
    uint8_t s = state[list_no].load(std::memory_order_acquire);
    if (s == 0) {
      s = list_hash(base.get(), list_no) == expected[list_no] ? 1 : 2;
      state[list_no].store(s, std::memory_order_release);
      int64_t none = -1;
      if (s == 2) {
        first_bad.compare_exchange_strong(none, (int64_t)list_no);
      }
    }
    return s == 1;
  }

  const faiss::InvertedLists *checked(size_t list_no) const {
    if (list_no >= nlist || !good(list_no)) {
      throw std::runtime_error("cache file damaged: inverted list checksum mismatch");
    }
    return base.get();
  }

  size_t list_size(size_t list_no) const override {
    return list_no < nlist && good(list_no) ? base->list_size(list_no) : 0;
  }
  const uint8_t *get_codes(size_t list_no) const override {
    return checked(list_no)->get_codes(list_no);
  }
  const faiss::InvertedLists::idx_t *get_ids(size_t list_no) const override {
    return checked(list_no)->get_ids(list_no);
  }
  faiss::InvertedLists::idx_t get_single_id(size_t list_no, size_t offset) const override {
    return checked(list_no)->get_single_id(list_no, offset);
  }
  const uint8_t *get_single_code(size_t list_no, size_t offset) const override {
    return checked(list_no)->get_single_code(list_no, offset);
  }
};

const faiss::OnDiskInvertedLists *mapped_lists(const faiss::IndexIVF *ivf) {
  if (auto *checked = dynamic_cast<const CheckedLists *>(ivf->invlists)) {
    return checked->base.get();
  }
  return dynamic_cast<const faiss::OnDiskInvertedLists *>(ivf->invlists);
}

int fail_with_current_exception() {
  faiss_last_exception = std::current_exception();
  return -2;
}

} // namespace

extern "C" {

int cdb_faiss_IDSelectorCallback_new(FaissIDSelector **p_sel, int (*is_member)(void *, int64_t),
                                     void *ctx) {
  try {
    if (!is_member) {
      throw std::invalid_argument("IDSelectorCallback: null callback");
    }
    *p_sel = reinterpret_cast<FaissIDSelector *>(new IDSelectorCallback(is_member, ctx));
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_Index_range_search_with_params(const FaissIndex *index, idx_t n, const float *x,
                                             float radius, const FaissSearchParameters *params,
                                             FaissRangeSearchResult *result) {
  try {
    reinterpret_cast<const faiss::Index *>(index)->range_search(
        n, x, radius, reinterpret_cast<faiss::RangeSearchResult *>(result),
        reinterpret_cast<const faiss::SearchParameters *>(params));
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_list_get(const FaissIndexIVF *index, size_t list_no, size_t offset,
                                size_t n, idx_t *ids, float *vectors) {
  try {
    auto *ivf = reinterpret_cast<const faiss::IndexIVF *>(index);
    if (list_no >= ivf->nlist) {
      throw std::out_of_range("IndexIVF list_get: list number out of range");
    }
    if (offset > ivf->invlists->list_size(list_no) ||
        n > ivf->invlists->list_size(list_no) - offset) {
      throw std::out_of_range("IndexIVF list_get: entries out of range");
    }
    faiss::InvertedLists::ScopedIds list_ids(ivf->invlists, list_no);
    // Lists mapped from a cache file need not be 8-byte aligned: copy bytes.
    std::memcpy(ids, list_ids.get() + offset, n * sizeof(idx_t));
    for (size_t i = 0; i < n; i++) {
      ivf->reconstruct_from_offset(list_no, offset + i, vectors + i * ivf->d);
    }
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_set_kmeans(FaissIndexIVF *index, int niter, int min_points_per_centroid) {
  try {
    auto *ivf = reinterpret_cast<faiss::IndexIVF *>(index);
    ivf->cp.niter = niter;
    ivf->cp.min_points_per_centroid = min_points_per_centroid;
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_prepare_mapped(FaissIndexIVF *index) {
  try {
    auto *ivf = reinterpret_cast<faiss::IndexIVF *>(index);
    auto *ondisk = dynamic_cast<faiss::OnDiskInvertedLists *>(ivf->invlists);
    if (!ondisk) {
      return 0;
    }
    ondisk->prefetch_nthread = 0;
    return 1;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_mapped_view(const FaissIndexIVF *index, const unsigned char **data,
                                   size_t *size, size_t *lists_start, size_t *lists_end) {
  try {
    auto *od = mapped_lists(reinterpret_cast<const faiss::IndexIVF *>(index));
    if (!od) {
      return 0;
    }
    *data = od->ptr;
    *size = od->totsize;
    *lists_start = od->nlist ? od->lists[0].offset : 0;
    *lists_end = *lists_start;
    for (const auto &l : od->lists) {
      *lists_end += l.size * (od->code_size + sizeof(faiss::InvertedLists::idx_t));
    }
    return 1;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_list_hashes(const FaissIndexIVF *index, uint64_t *hashes,
                                   size_t *list_bytes) {
  try {
    auto *ivf = reinterpret_cast<const faiss::IndexIVF *>(index);
    *list_bytes = 0;
    for (size_t l = 0; l < ivf->nlist; l++) {
      hashes[l] = list_hash(ivf->invlists, l);
      *list_bytes += ivf->invlists->list_size(l) *
                     (ivf->code_size + sizeof(faiss::InvertedLists::idx_t));
    }
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_check_lists(FaissIndexIVF *index, const uint64_t *hashes) {
  try {
    auto *ivf = reinterpret_cast<faiss::IndexIVF *>(index);
    auto *od = dynamic_cast<faiss::OnDiskInvertedLists *>(ivf->invlists);
    if (!od || !ivf->own_invlists) {
      throw std::invalid_argument("IndexIVF check_lists: lists are not memory-mapped");
    }
    ivf->own_invlists = false; // the checked lists own them from here
    try {
      ivf->replace_invlists(new CheckedLists(od, hashes), true);
    } catch (...) {
      ivf->own_invlists = true;
      throw;
    }
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int64_t cdb_faiss_IndexIVF_verify_lists(const FaissIndexIVF *index, int all) {
  auto *ivf = reinterpret_cast<const faiss::IndexIVF *>(index);
  auto *checked = dynamic_cast<const CheckedLists *>(ivf->invlists);
  if (!checked) {
    return -1;
  }
  for (size_t l = 0; all && l < checked->nlist; l++) {
    checked->good(l);
  }
  return checked->first_bad.load();
}

int cdb_faiss_IndexIVF_write_without_lists(FaissIndexIVF *index, FILE *f) {
  auto ivf = reinterpret_cast<faiss::IndexIVF *>(index);
  faiss::InvertedLists *lists = ivf->invlists;
  faiss::Index::idx_t ntotal = ivf->ntotal;
  try {
    faiss::ArrayInvertedLists empty(ivf->nlist, ivf->code_size);
    ivf->invlists = &empty;
    ivf->ntotal = 0;
    faiss::write_index(ivf, f);
    ivf->invlists = lists;
    ivf->ntotal = ntotal;
    return 0;
  } catch (...) {
    ivf->invlists = lists;
    ivf->ntotal = ntotal;
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_add_to_list(FaissIndexIVF *index, size_t list_no, size_t n, const idx_t *ids,
                                   const float *vectors) {
  try {
    auto ivf = reinterpret_cast<faiss::IndexIVF *>(index);
    if (list_no >= ivf->nlist) {
      throw std::invalid_argument("IndexIVF add_to_list: list number out of range");
    }
    if (ivf->code_size == ivf->d * sizeof(float)) {
      ivf->invlists->add_entries(list_no, n, ids, reinterpret_cast<const uint8_t *>(vectors));
    } else {
      std::vector<faiss::Index::idx_t> list_nos(n, (faiss::Index::idx_t)list_no);
      std::vector<uint8_t> codes(n * ivf->code_size);
      ivf->encode_vectors(n, vectors, list_nos.data(), codes.data());
      ivf->invlists->add_entries(list_no, n, ids, codes.data());
    }
    ivf->ntotal += n;
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_is_flat(const FaissIndexIVF *index) {
  auto ivf = reinterpret_cast<const faiss::IndexIVF *>(index);
  return ivf->code_size == ivf->d * sizeof(float);
}

int cdb_faiss_IndexIVF_layout(const FaissIndexIVF *index, cdb_faiss_ivf_layout *layout) {
  try {
    auto *ivf = reinterpret_cast<const faiss::IndexIVF *>(index);
    *layout = cdb_faiss_ivf_layout{CDB_FAISS_CODES_OTHER, 0, ivf->code_size, nullptr, nullptr,
                                   nullptr};
    auto *flat = dynamic_cast<const faiss::IndexFlat *>(ivf->quantizer);
    if (!flat || flat->ntotal != (faiss::Index::idx_t)ivf->nlist) {
      return 0;
    }
    layout->centroids = flat->get_xb();
    if (ivf->code_size == ivf->d * sizeof(float)) {
      layout->kind = CDB_FAISS_CODES_FLOAT;
      return 0;
    }
    auto *sq = dynamic_cast<const faiss::IndexIVFScalarQuantizer *>(ivf);
    if (sq && sq->sq.qtype == faiss::ScalarQuantizer::QT_8bit && sq->code_size == (size_t)ivf->d &&
        sq->sq.trained.size() == 2 * (size_t)ivf->d) {
      layout->kind = CDB_FAISS_CODES_SQ8;
      layout->by_residual = sq->by_residual;
      layout->vmin = sq->sq.trained.data();
      layout->vdiff = sq->sq.trained.data() + ivf->d;
    }
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

int cdb_faiss_IndexIVF_list_view(const FaissIndexIVF *index, size_t list_no, size_t *n,
                                 const uint8_t **codes, const void **ids) {
  try {
    auto *ivf = reinterpret_cast<const faiss::IndexIVF *>(index);
    if (list_no >= ivf->nlist) {
      throw std::out_of_range("IndexIVF list_view: list number out of range");
    }
    *codes = nullptr;
    *ids = nullptr;
    *n = ivf->invlists->list_size(list_no);
    if (*n > 0) {
      *codes = ivf->invlists->get_codes(list_no);
      *ids = ivf->invlists->get_ids(list_no);
    }
    return 0;
  } catch (...) {
    return fail_with_current_exception();
  }
}

void cdb_faiss_IndexIVF_list_release(const FaissIndexIVF *index, size_t list_no,
                                     const uint8_t *codes, const void *ids) {
  auto *ivf = reinterpret_cast<const faiss::IndexIVF *>(index);
  if (codes) {
    ivf->invlists->release_codes(list_no, codes);
  }
  if (ids) {
    ivf->invlists->release_ids(list_no, static_cast<const faiss::InvertedLists::idx_t *>(ids));
  }
}

} // extern "C"
