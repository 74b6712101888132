/* fuzz_video.c: libFuzzer target for video files through embed/video.c: demuxing (the
 * containers clip_video_open accepts), decoding, sampling, seeking and scaling, with the tiny
 * model's spec (64x64), a 4-megapixel frame limit and small budgets (2 s, 300 decoded frames,
 * 20 samples) so that no input runs long. The input is written to a file, as libavformat reads
 * one. Invariants: a sample is the resized size with times that never go back; a failure has a
 * message. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "embed/clip_internal.h"
#include "tests/fuzz/fuzz_common.h"

enum { SIDE = 64 };
static const clip_image_spec spec = FUZZ_CLIP_IMAGE_SPEC(SIDE);

static void sample_all(const char *path) {
  clip_video_params params = {.interval = 0.5,
                              .max_samples = 20,
                              .max_seconds = 2,
                              .max_decoded_frames = 300,
                              .max_pixels = spec.max_pixels};
  cdb_error err = {{0}};
  clip_video *v = clip_video_open_spec(&spec, path, &params, &err);
  if (!v) {
    FUZZ_CHECK(err.msg[0] != '\0');
    return;
  }
  clip_video_frame f;
  int got, n = 0;
  while ((got = clip_video_next(v, &f, &err)) > 0) {
    FUZZ_CHECK(f.width >= SIDE && f.height >= SIDE && (f.width == SIDE || f.height == SIDE));
    FUZZ_CHECK(f.t >= 0);
    n++;
  }
  FUZZ_CHECK(n <= params.max_samples);
  FUZZ_CHECK(got == 0 || err.msg[0] != '\0');
  clip_video_close(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[] = "/tmp/fuzz_video_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return 0;
  FILE *f = fdopen(fd, "wb");
  if (!f) close(fd);
  bool written = f && fwrite(data, 1, size, f) == size;
  if (f && fclose(f) == 0 && written) sample_all(path);
  unlink(path);
  return 0;
}
