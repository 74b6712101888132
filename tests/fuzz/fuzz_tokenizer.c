/* fuzz_tokenizer.c: libFuzzer target for the CLIP tokenizer on arbitrary bytes
 * (embed/tokenizer.h, the real vocabulary and merges of the tiny model, loaded once).
 *
 * Invariants on success: SOT first, EOT last of the real ids, zero padding after, every id
 * inside the vocabulary, truncation keeps EOT; on failure (invalid UTF-8) a message. */
#include "embed/tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

enum { VOCAB = 49408 };
static clip_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  char vocab[4096], merges[4096];
  cdb_error err = {{0}};
  tok = clip_tokenizer_load(fuzz_data_path("clip-tiny-shapes/vocab.json", vocab, sizeof vocab),
                            fuzz_data_path("clip-tiny-shapes/merges.txt", merges, sizeof merges), 0,
                            &err);
  if (!tok) {
    fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
    abort();
  }
  return 0;
}

static void encode(const uint8_t *data, size_t size, int ctx) {
  int32_t ids[77];
  cdb_error err = {{0}};
  int n = clip_tokenizer_encode(tok, (const char *)data, size, ids, ctx, &err);
  if (n < 0) {
    FUZZ_CHECK(err.msg[0] != '\0');
    return;
  }
  FUZZ_CHECK(n >= 2 && n <= ctx);
  FUZZ_CHECK(ids[0] == CLIP_TOKEN_SOT && ids[n - 1] == CLIP_TOKEN_EOT);
  /* "<|startoftext|>" inside the text maps to SOT, as in the reference: no check for it */
  for (int i = 1; i < n - 1; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < VOCAB);
  for (int i = n; i < ctx; i++) FUZZ_CHECK(ids[i] == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  encode(data, size, 77);
  encode(data, size, 4); /* truncation path */
  return 0;
}
