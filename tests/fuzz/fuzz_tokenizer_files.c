/* fuzz_tokenizer_files.c: libFuzzer target for loading vocab.json + merges.txt
 * (embed/tokenizer.h). The input is both files separated by "\n#SPLIT#\n". Loading must
 * refuse bad files with a message; a tokenizer that loads must encode a few texts safely. */
#include "embed/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

static fuzz_memfile vocab, merges;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_memfile_init(&vocab, "vocab.json");
  fuzz_memfile_init(&merges, "merges.txt");
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t n1, n2;
  const uint8_t *part2;
  fuzz_split(data, size, "\n#SPLIT#\n", &n1, &part2, &n2);
  fuzz_memfile_set(&vocab, data, n1);
  fuzz_memfile_set(&merges, part2, n2);
  cdb_error err = {{0}};
  clip_tokenizer *tok = clip_tokenizer_load(vocab.path, merges.path, 0, &err);
  if (!tok) {
    FUZZ_CHECK(err.msg[0] != '\0');
    return 0;
  }
  static const char *const texts[] = {"a photo of a cat", "abc ab ba", "naïve café 日本", "",
                                      "<|startoftext|><|endoftext|>", "   x  "};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    int32_t ids[16];
    int n = clip_tokenizer_encode(tok, texts[i], strlen(texts[i]), ids, 16, &err);
    FUZZ_CHECK(n < 0 || (n >= 2 && n <= 16));
  }
  clip_tokenizer_free(tok);
  return 0;
}
