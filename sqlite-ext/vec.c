/* vec.c: vectors as SQL values (float32 BLOBs): parsing with clear errors, norms, dot products. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/internal.h"

float *cdbx_vec_from_value(sqlite3_value *value, const char *what, int *n, cdb_error *err) {
  if (sqlite3_value_type(value) != SQLITE_BLOB) {
    cdb_error_set(err, "%s must be a float32 vector BLOB, not %s", what,
                  sqlite3_value_type(value) == SQLITE_NULL ? "NULL" : "TEXT or a number");
    return NULL;
  }
  int bytes = sqlite3_value_bytes(value);
  if (bytes == 0 || bytes % 4 != 0 || bytes / 4 > CDB_INDEX_MAX_DIM) {
    cdb_error_set(err, "%s: a vector BLOB holds 1 to %d float32 values, got %d bytes", what,
                  CDB_INDEX_MAX_DIM, bytes);
    return NULL;
  }
  float *v = malloc((size_t)bytes);
  if (!v) {
    cdb_error_set(err, "out of memory");
    return NULL;
  }
  memcpy(v, sqlite3_value_blob(value), (size_t)bytes);
  if (cdbx_vec_check_finite(v, bytes / 4, what, err) != 0) {
    free(v);
    return NULL;
  }
  *n = bytes / 4;
  return v;
}

int cdbx_vec_check_finite(const float *v, int n, const char *what, cdb_error *err) {
  for (int i = 0; i < n; i++) {
    if (!isfinite(v[i])) return cdb_error_set(err, "%s: element %d is not finite", what, i);
  }
  return 0;
}

double cdbx_vec_dot(const float *a, const float *b, int n) {
  double s = 0; /* double: squared norms of finite float vectors can exceed float range */
  for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

int cdbx_vec_normalize(float *v, int n, const char *what, cdb_error *err) {
  double s = 0;
  for (int i = 0; i < n; i++) s += (double)v[i] * v[i];
  if (!(s > 0) || !isfinite(s)) {
    return cdb_error_set(err, "%s: %s vector cannot be normalised", what,
                         s > 0 ? "an overflowing" : "a zero");
  }
  /* In double: for tiny (denormal) inputs a float reciprocal overflows or loses the precision
   * that makes the result unit length. */
  double norm = sqrt(s);
  for (int i = 0; i < n; i++) v[i] = (float)((double)v[i] / norm);
  return 0;
}

int cdbx_value_is_vector(sqlite3_value *value, int dims) {
  return sqlite3_value_type(value) == SQLITE_BLOB && dims > 0 &&
         sqlite3_value_bytes(value) == dims * 4;
}
