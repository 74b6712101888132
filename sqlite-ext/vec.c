/* vec.c: vectors as SQL values (float32 BLOBs): parsing and normalising with clear errors (the
 * arithmetic is src/vec.h's). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite-ext/internal.h"
#include "src/vec.h"

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
  size_t bad = cdb_vec_first_nonfinite(v, (size_t)n);
  return bad < (size_t)n ? cdb_error_set(err, "%s: element %zu is not finite", what, bad) : 0;
}

int cdbx_vec_normalize(float *v, int n, const char *what, cdb_error *err) {
  double s = cdb_vec_normalise(v, (size_t)n);
  if (!(s > 0) || !isfinite(s)) {
    return cdb_error_set(err, "%s: %s vector cannot be normalised", what,
                         s > 0 ? "an overflowing" : "a zero");
  }
  return 0;
}

int cdbx_value_is_vector(sqlite3_value *value, int dims) {
  return sqlite3_value_type(value) == SQLITE_BLOB && dims > 0 &&
         sqlite3_value_bytes(value) == dims * 4;
}
