/* vec.h: float32 vector arithmetic every layer shares: dot products, L2 normalisation and the
 * checks (finite, unit length) that index/ makes of the vectors it is given. */
#ifndef CDB_VEC_H
#define CDB_VEC_H

#include <stddef.h>

/* How far a squared norm may stray from 1 for the vector to count as unit length: float32
 * rounding of a normalised vector stays far below it. */
#define CDB_VEC_UNIT_TOLERANCE 1e-3

/* The dot product, summed in double (squared norms of finite floats can exceed float range). */
double cdb_vec_dot(const float *a, const float *b, size_t n);

/* The index of the first NaN or infinite element, or n when all are finite. */
size_t cdb_vec_first_nonfinite(const float *v, size_t n);

/* Scales v to unit length and returns its squared norm before; a vector whose squared norm is
 * zero or overflows (not in (0, inf)) is left as it is: the caller reports it. */
double cdb_vec_normalise(float *v, size_t n);

/* 1 when |v|^2 is within CDB_VEC_UNIT_TOLERANCE of 1 (so every element is finite), else 0. */
int cdb_vec_is_unit(const float *v, size_t n);

#endif
