/* fuzz_safetensors.c: libFuzzer target for the safetensors header parser (embed/safetensors.h).
 *
 * The input is a whole .safetensors file. Whatever st_parse accepts must be safe to use:
 * every tensor's data range is read end to end (ASan catches a range outside the input), and
 * lookups by name and st_expect with the tensor's own and a wrong shape must agree. */
#include "embed/safetensors.h"
#include "tests/fuzz/fuzz_common.h"

static unsigned touch(const st_tensor *t) {
  unsigned sum = 0;
  for (size_t i = 0; i < t->nbytes; i += 61) sum += t->data[i];
  if (t->nbytes) sum += t->data[t->nbytes - 1];
  return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_file f = {0};
  cdb_error err = {{0}};
  volatile unsigned sink = 0;
  if (st_parse(data, size, "fuzz.safetensors", &f, &err) == 0) {
    for (int i = 0; i < f.n_tensors; i++) {
      const st_tensor *t = &f.tensors[i];
      sink += touch(t);
      const st_tensor *found = st_find(&f, t->name);
      FUZZ_CHECK(found != NULL);
      if (t->dtype != ST_OTHER) {
        cdb_error e2 = {{0}};
        FUZZ_CHECK(st_expect(&f, t->name, t->ndim, t->shape, &e2) != NULL);
        int64_t wrong[ST_MAX_DIMS + 1] = {0};
        for (int d = 0; d < t->ndim; d++) wrong[d] = t->shape[d] + 1;
        int nd = t->ndim ? t->ndim : 1;
        if (!t->ndim) wrong[0] = 1;
        FUZZ_CHECK(st_expect(&f, t->name, nd, wrong, &e2) == NULL && e2.msg[0]);
      }
    }
  } else {
    FUZZ_CHECK(err.msg[0] != '\0'); /* every refusal says why */
  }
  st_close(&f);
  (void)sink;
  return 0;
}
