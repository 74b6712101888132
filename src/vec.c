/* vec.c: dot products, L2 normalisation and finite / unit-length checks for float32 vectors. */
#include "src/vec.h"

#include <math.h>

double cdb_vec_dot(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

size_t cdb_vec_first_nonfinite(const float *v, size_t n) {
  size_t i = 0;
  while (i < n && isfinite(v[i])) i++;
  return i;
}

double cdb_vec_normalise(float *v, size_t n) {
  double s = cdb_vec_dot(v, v, n);
  if (!(s > 0) || !isfinite(s)) return s;
  /* In double: for tiny (denormal) inputs a float reciprocal overflows or loses the precision
   * that makes the result unit length. */
  double norm = sqrt(s);
  for (size_t i = 0; i < n; i++) v[i] = (float)((double)v[i] / norm);
  return s;
}

int cdb_vec_is_unit(const float *v, size_t n) {
  double s = cdb_vec_dot(v, v, n); /* NaN or inf in v make s NaN or inf: not unit */
  return fabs(s - 1.0) <= CDB_VEC_UNIT_TOLERANCE;
}
