/* ipkernel.h (internal to index/): the nearest centroid by inner product for blocks of vectors,
 * the one dense kernel of k-means training and of assigning vectors to inverted lists.
 *
 * FAISS does this through BLAS sgemm; Debian's OpenBLAS picks old SSE3 kernels on recent CPUs
 * and then spends most of a bulk-load COMMIT there. These kernels compute the same dot products
 * with AVX-512, AVX2+FMA or plain C, chosen at run time (CLIPDB_ISA=generic|avx2|avx512 forces
 * one, as for the encoder's kernels; an unsupported choice falls back to the best available). */
#ifndef CDB_INDEX_IPKERNEL_H
#define CDB_INDEX_IPKERNEL_H

#include <stdint.h>

typedef enum { CDB_IP_GENERIC, CDB_IP_AVX2, CDB_IP_AVX512, CDB_IP_ISA_COUNT } cdb_ip_isa;

/* For each row i of x (n x d): arg[i] = the j in 0..k-1 maximising <x_i, c_j> (the lowest j on
 * ties), best[i] = that inner product. c is k x d, row-major. */
typedef void (*cdb_ip_argmax_fn)(const float *x, int64_t n, const float *c, int k, int d,
                                 int32_t *arg, float *best);

int cdb_ip_isa_supported(cdb_ip_isa isa);
/* The kernel for isa, or NULL when this CPU lacks it. */
cdb_ip_argmax_fn cdb_ip_argmax_for(cdb_ip_isa isa);
/* The best supported kernel, or the one CLIPDB_ISA names. */
cdb_ip_argmax_fn cdb_ip_argmax_best(void);
/* The instruction set cdb_ip_argmax_best's kernel uses: the other index kernels (scan.c) follow
 * the same choice. */
cdb_ip_isa cdb_ip_isa_chosen(void);

#endif
