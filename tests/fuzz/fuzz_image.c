/* fuzz_image.c: libFuzzer target for image bytes through preprocessing (embed/image.h):
 * libvips decoding (any format it knows), orientation, colour conversion, resize, crop,
 * normalisation, with the tiny model's spec (64x64) and a 4-megapixel bomb guard.
 * Invariants on success: every output value is finite and inside the range that [0, 1] pixels
 * map to under the mean/std; on failure a message. */
#include <math.h>

#include "embed/image.h"
#include "tests/fuzz/fuzz_common.h"

enum { SIDE = 64 };
static const clip_image_spec spec = FUZZ_CLIP_IMAGE_SPEC(SIDE);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static float out[3 * SIDE * SIDE];
  cdb_error err = {{0}};
  if (clip_image_preprocess_buffer(&spec, data, size, out, &err) != 0) {
    FUZZ_CHECK(err.msg[0] != '\0');
    return 0;
  }
  for (int c = 0; c < 3; c++) {
    float lo = (0.0f - spec.mean[c]) / spec.std[c] - 0.01f;
    float hi = (1.0f - spec.mean[c]) / spec.std[c] + 0.01f;
    for (int i = 0; i < SIDE * SIDE; i++) {
      float v = out[c * SIDE * SIDE + i];
      FUZZ_CHECK(isfinite(v) && v >= lo && v <= hi);
    }
  }
  return 0;
}
