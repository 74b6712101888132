/* fuzz_config.c: libFuzzer target for config.json and preprocessor_config.json loading
 * (embed/config.h). The first byte picks the loader (even: config.json, odd:
 * preprocessor_config.json with an image size from the second byte); the rest is the file.
 * Accepted configs must respect the documented bounds (no absurd sizes get through). */
#include "embed/config.h"
#include "tests/fuzz/fuzz_common.h"

static fuzz_memfile file;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_memfile_init(&file, "config.json");
  return 0;
}

static void check_tower(const clip_tower_config *t) {
  FUZZ_CHECK(t->hidden >= 1 && t->hidden <= 8192 && t->heads >= 1 && t->hidden % t->heads == 0);
  FUZZ_CHECK(t->layers >= 1 && t->intermediate >= 1 && t->ln_eps > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  unsigned which = data[0], image_size = 1u + data[1] * 2u;
  fuzz_memfile_set(&file, data + 2, size - 2);
  cdb_error err = {{0}};
  if (which % 2 == 0) {
    clip_config cfg;
    if (clip_config_load(file.path, &cfg, &err) == 0) {
      check_tower(&cfg.text);
      check_tower(&cfg.vision);
      FUZZ_CHECK(cfg.projection_dim >= 1 && cfg.vocab_size >= 1 && cfg.context_length >= 2);
      FUZZ_CHECK(cfg.patch_size >= 1 && cfg.image_size % cfg.patch_size == 0);
    } else {
      FUZZ_CHECK(err.msg[0]);
    }
  } else {
    clip_image_spec spec;
    memset(&spec, 0, sizeof spec);
    if (clip_preprocess_config_load(file.path, (int)image_size, &spec, &err) == 0) {
      FUZZ_CHECK(spec.crop_height == (int)image_size && spec.crop_width == (int)image_size);
      FUZZ_CHECK(spec.resize_shortest >= (int)image_size);
      for (int i = 0; i < 3; i++) FUZZ_CHECK(spec.std[i] > 0);
    } else {
      FUZZ_CHECK(err.msg[0]);
    }
  }
  return 0;
}
