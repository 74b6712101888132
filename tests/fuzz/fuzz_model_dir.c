/* fuzz_model_dir.c: libFuzzer target for loading a whole model directory through the public
 * entry, clip_model_load() (embed/clip.h): config.json, preprocessor_config.json, the
 * safetensors header and its tensor table checked against the config's shapes and dtypes, the
 * tokenizer files and, for a model that loads, the binding of both towers' weights.
 *
 * The harness keeps a temporary model folder whose files link to the real tiny model
 * (tests/data/clip-tiny-shapes); each input replaces one of them. Byte 0 picks which (value % 5):
 *   0: config.json is the rest of the input;
 *   1: preprocessor_config.json is the rest of the input;
 *   2, 3, 4: the safetensors header JSON (its length prefix rewritten, the real tensor data
 *      after it), vocab.json, merges.txt: the real one with the rest spliced in at the offset
 *      of bytes 1-3 (scaled to its length); with bit 0x80 of byte 0 it ends there.
 * A model that loads must tokenize and embed a text and an image into unit vectors of its
 * dimension; a model that does not must say why. XDG_CACHE_HOME points into the temporary
 * folder, so weight digests are cached there. At exit the harness prints how many inputs
 * loaded and how many bound the weights (FUZZ_VERBOSE=1: why the others did not). */
#include <errno.h>
#include <math.h>
#include <sys/stat.h>

#include "embed/clip.h"
#include "tests/fuzz/fuzz_common.h"

static const char *const model_files[] = {"config.json", "preprocessor_config.json",
                                          "model.safetensors", "vocab.json", "merges.txt"};
#define N_FILES 5

static char real_dir[4096], tmp_dir[64], model_dir[128], cache_dir[128];
static uint8_t *real_st, *real_vocab, *real_merges;
static size_t real_st_len, real_vocab_len, real_merges_len, real_header_end;
static unsigned long inputs, loaded, text_bound, vision_bound;

static void model_path(const char *name, char *out, size_t cap) {
  snprintf(out, cap, "%s/%s", model_dir, name);
}

/* Points the temporary folder's copy of `name` back at the real file. */
static void restore_link(const char *name) {
  char link[256], target[4200];
  model_path(name, link, sizeof link);
  snprintf(target, sizeof target, "%s/%s", real_dir, name);
  unlink(link);
  if (symlink(target, link) != 0) {
    perror("symlink");
    abort();
  }
}

static void write_file(const char *name, const void *a, size_t alen, const void *b, size_t blen) {
  char path[256];
  model_path(name, path, sizeof path);
  unlink(path);
  FILE *f = fopen(path, "wb");
  if (!f || (alen && fwrite(a, 1, alen, f) != alen) || (blen && fwrite(b, 1, blen, f) != blen) ||
      fclose(f) != 0) {
    perror("write model file");
    abort();
  }
}

static void remove_cache_entries(void) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s/clipdb'", cache_dir);
  if (system(cmd) != 0) abort();
}

static void report(void) {
  fprintf(stderr,
          "fuzz_model_dir: %lu inputs, %lu loaded, %lu embedded a text, %lu embedded an image\n",
          inputs, loaded, text_bound, vision_bound);
  remove_cache_entries();
  for (int i = 0; i < N_FILES; i++) {
    char path[256];
    model_path(model_files[i], path, sizeof path);
    unlink(path);
  }
  rmdir(model_dir);
  rmdir(cache_dir);
  rmdir(tmp_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_data_path("clip-tiny-shapes", real_dir, sizeof real_dir);
  if (real_dir[0] != '/') {
    char cwd[2048];
    if (!getcwd(cwd, sizeof cwd)) abort();
    char rel[4096];
    snprintf(rel, sizeof rel, "%s", real_dir);
    snprintf(real_dir, sizeof real_dir, "%s/%s", cwd, rel);
  }
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/fuzz_model_dir.XXXXXX");
  if (!mkdtemp(tmp_dir)) abort();
  snprintf(model_dir, sizeof model_dir, "%s/model", tmp_dir);
  snprintf(cache_dir, sizeof cache_dir, "%s/cache", tmp_dir);
  if (mkdir(model_dir, 0700) != 0 || mkdir(cache_dir, 0700) != 0) abort();
  setenv("XDG_CACHE_HOME", cache_dir, 1);
  for (int i = 0; i < N_FILES; i++) restore_link(model_files[i]);
  real_st = fuzz_read_data("clip-tiny-shapes/model.safetensors", &real_st_len);
  real_vocab = fuzz_read_data("clip-tiny-shapes/vocab.json", &real_vocab_len);
  real_merges = fuzz_read_data("clip-tiny-shapes/merges.txt", &real_merges_len);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; i--) header_len = header_len << 8 | real_st[i];
  real_header_end = 8 + (size_t)header_len;
  if (real_header_end > real_st_len) abort();
  atexit(report);
  return 0;
}

/* The real file with data[0..size) written over it from the offset in the first 3 bytes. */
static void splice_into(const char *name, const uint8_t *real, size_t real_len, const uint8_t *data,
                        size_t size, int truncate) {
  if (size < 3) return;
  size_t at = (size_t)((uint64_t)(data[0] << 16 | data[1] << 8 | data[2]) * real_len >> 24);
  data += 3, size -= 3;
  size_t end = at + size, total = truncate || end > real_len ? end : real_len;
  uint8_t *buf = malloc(total);
  if (!buf) abort();
  memcpy(buf, real, at);
  memcpy(buf + at, data, size);
  if (total > end) memcpy(buf + end, real + end, total - end);
  write_file(name, buf, total, NULL, 0);
  free(buf);
}

/* model.safetensors: the real header JSON with the bytes spliced in (as splice_into), its length
 * prefix rewritten, then the real tensor data. */
static void splice_header(const uint8_t *data, size_t size, int truncate) {
  const uint8_t *header = real_st + 8;
  size_t header_len = real_header_end - 8;
  if (size < 3) return;
  size_t at = (size_t)((uint64_t)(data[0] << 16 | data[1] << 8 | data[2]) * header_len >> 24);
  data += 3, size -= 3;
  size_t end = at + size, total = truncate || end > header_len ? end : header_len;
  uint8_t *buf = malloc(8 + total);
  if (!buf) abort();
  for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)total >> (8 * i));
  memcpy(buf + 8, header, at);
  memcpy(buf + 8 + at, data, size);
  if (total > end) memcpy(buf + 8 + end, header + end, total - end);
  write_file(model_files[2], buf, 8 + total, real_st + real_header_end,
             real_st_len - real_header_end);
  free(buf);
}

static void replace_file(unsigned which, const uint8_t *data, size_t size) {
  switch (which % N_FILES) {
    case 0:
    case 1: write_file(model_files[which % N_FILES], data, size, NULL, 0); break;
    case 2: splice_header(data, size, which & 0x80); break;
    case 3:
      splice_into(model_files[3], real_vocab, real_vocab_len, data, size, which & 0x80);
      break;
    case 4:
      splice_into(model_files[4], real_merges, real_merges_len, data, size, which & 0x80);
      break;
  }
}

static void check_unit_rows(const float *v, int n, int dim) {
  for (int r = 0; r < n; r++) {
    double s = 0;
    for (int i = 0; i < dim; i++) {
      FUZZ_CHECK(isfinite(v[(size_t)r * dim + i]));
      s += (double)v[(size_t)r * dim + i] * v[(size_t)r * dim + i];
    }
    FUZZ_CHECK(fabs(s - 1.0) < 1e-3 || s == 0.0);
  }
}

/* Tokenizes and embeds one text and one grey image, which binds both towers' weights. */
static void use_model(clip_model *m) {
  int dim = clip_model_dim(m), ctx = clip_model_context_length(m), size = clip_model_image_size(m);
  FUZZ_CHECK(dim >= 1 && ctx >= 2 && size >= 1);
  cdb_error err = {{0}};
  int32_t *ids = calloc((size_t)ctx, sizeof *ids);
  float *vec = calloc((size_t)dim, sizeof *vec);
  float *pixels = calloc((size_t)3 * size * size, sizeof *pixels);
  if (!ids || !vec || !pixels) abort();
  int n = clip_tokenize(m, "a red circle", 12, ids, &err);
  FUZZ_CHECK(n == -1 ? err.msg[0] != 0 : n >= 2 && n <= ctx);
  const char *text = "a red circle";
  int text_rc = clip_embed_texts(m, &text, 1, vec, &err);
  if (text_rc == 0) check_unit_rows(vec, 1, dim);
  else FUZZ_CHECK(err.msg[0]);
  if (text_rc != 0 && getenv("FUZZ_VERBOSE")) fprintf(stderr, "no text: %s\n", err.msg);
  int image_rc = clip_embed_pixels(m, pixels, 1, vec, &err);
  if (image_rc == 0) check_unit_rows(vec, 1, dim);
  else FUZZ_CHECK(err.msg[0]);
  text_bound += text_rc == 0;
  vision_bound += image_rc == 0;
  free(ids);
  free(vec);
  free(pixels);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  unsigned which = data[0];
  inputs++;
  replace_file(which, data + 1, size - 1);
  cdb_error err = {{0}};
  clip_model *m = clip_model_load(model_dir, NULL, &err);
  if (m) {
    loaded++;
    use_model(m);
    clip_model_free(m);
  } else {
    FUZZ_CHECK(err.msg[0]);
    if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "not loaded: %s\n", err.msg);
  }
  restore_link(model_files[which % N_FILES]);
  if (inputs % 4096 == 0) remove_cache_entries();
  return 0;
}
