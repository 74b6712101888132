/* fuzz_tokenizer_files.c: libFuzzer target for loading vocab.json + merges.txt
 * (embed/tokenizer.h). Byte 0 picks what the fuzzer's bytes (the rest) become:
 *   0: both files, separated by "\n#SPLIT#\n" (parser errors: a vocabulary must hold all
 *      49,408 entries, more than an input can);
 *   1: merges.txt with the model's real vocab.json, loading as many merges as the input's
 *      first two bytes say (1..4096), so fuzzed merges load and encode;
 *   2: the real vocab.json with the bytes spliced in (4-byte offset, 2-byte length replaced),
 *      real merges.txt;
 *   3: the real merges.txt with the bytes spliced in the same way, real vocab.json.
 * Loading must refuse bad files with a message; a tokenizer that loads must encode texts
 * within bounds: SOT first, EOT last, ids inside the vocabulary, zero padding. */
#include "embed/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

#define VOCAB_SIZE 49408
#define SOT 49406
#define EOT 49407

static fuzz_memfile vocab, merges;
static uint8_t *real_vocab, *real_merges, *scratch;
static size_t real_vocab_len, real_merges_len;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_memfile_init(&vocab, "vocab.json");
  fuzz_memfile_init(&merges, "merges.txt");
  real_vocab = fuzz_read_data("clip-tiny-shapes/vocab.json", &real_vocab_len);
  real_merges = fuzz_read_data("clip-tiny-shapes/merges.txt", &real_merges_len);
  size_t big = real_vocab_len > real_merges_len ? real_vocab_len : real_merges_len;
  scratch = malloc(big + 65536 + 16);
  if (!scratch) abort();
  return 0;
}

/* file := real[0, off) + the input's remaining bytes + real[off + cut, end) */
static void splice_into(fuzz_memfile *f, const uint8_t *real, size_t real_len, fuzz_reader *r) {
  size_t off = fuzz_u32(r) % (real_len + 1);
  size_t cut = (fuzz_u8(r) << 8 | fuzz_u8(r)) % (real_len - off + 1);
  memcpy(scratch, real, off);
  memcpy(scratch + off, r->p, r->left);
  memcpy(scratch + off + r->left, real + off + cut, real_len - off - cut);
  fuzz_memfile_set(f, scratch, real_len - cut + r->left);
}

static void check_encodings(clip_tokenizer *tok) {
  static const char *const texts[] = {"a photo of a cat",
                                      "abc ab ba",
                                      "naïve café 日本",
                                      "",
                                      "<|startoftext|><|endoftext|>",
                                      "   x  ",
                                      "the quick brown fox jumps over the lazy dog 1234567890"};
  cdb_error err = {{0}};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    int32_t ids[16];
    int n = clip_tokenizer_encode(tok, texts[i], strlen(texts[i]), ids, 16, &err);
    if (n < 0) continue;
    FUZZ_CHECK(n >= 2 && n <= 16);
    FUZZ_CHECK(ids[0] == SOT && ids[n - 1] == EOT);
    for (int j = 0; j < n; j++) FUZZ_CHECK(ids[j] >= 0 && ids[j] < VOCAB_SIZE);
    for (int j = n; j < 16; j++) FUZZ_CHECK(ids[j] == 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_reader r = {data, size};
  unsigned mode = fuzz_u8(&r) % 4;
  int max_merges = 0; /* the default: all 48,894 */
  if (mode == 0) {
    size_t n1, n2;
    const uint8_t *part2;
    fuzz_split(r.p, r.left, "\n#SPLIT#\n", &n1, &part2, &n2);
    fuzz_memfile_set(&vocab, r.p, n1);
    fuzz_memfile_set(&merges, part2, n2);
  } else if (mode == 1) {
    max_merges = 1 + (int)((fuzz_u8(&r) << 8 | fuzz_u8(&r)) % 4096);
    fuzz_memfile_set(&vocab, real_vocab, real_vocab_len);
    fuzz_memfile_set(&merges, r.p, r.left);
  } else if (mode == 2) {
    splice_into(&vocab, real_vocab, real_vocab_len, &r);
    fuzz_memfile_set(&merges, real_merges, real_merges_len);
  } else {
    fuzz_memfile_set(&vocab, real_vocab, real_vocab_len);
    splice_into(&merges, real_merges, real_merges_len, &r);
  }
  cdb_error err = {{0}};
  clip_tokenizer *tok = clip_tokenizer_load(vocab.path, merges.path, max_merges, &err);
  if (!tok) {
    FUZZ_CHECK(err.msg[0] != '\0');
    return 0;
  }
  check_encodings(tok);
  clip_tokenizer_free(tok);
  return 0;
}
