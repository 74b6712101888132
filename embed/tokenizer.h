/* tokenizer.h (internal to embed/): CLIP's byte-level BPE tokenizer with the reference's text
 * cleanup (ftfy-style fixes, HTML unescape twice, whitespace collapse, lower-case). */
#ifndef CLIP_TOKENIZER_H
#define CLIP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "src/err.h"

#define CLIP_TOKEN_SOT 49406
#define CLIP_TOKEN_EOT 49407

typedef struct clip_tokenizer clip_tokenizer;

/* vocab.json + merges.txt (the first `max_merges` merges; 0 = the CLIP count 48894). */
clip_tokenizer *clip_tokenizer_load(const char *vocab_path, const char *merges_path, int max_merges,
                                    cdb_error *err);
void clip_tokenizer_free(clip_tokenizer *tok);

/* Writes exactly ctx_len ids (SOT, tokens, EOT, zero padding; truncated with EOT kept last).
 * Invalid UTF-8 is an error. Returns the count of real ids (SOT..EOT), or -1.
 * Thread-safe for concurrent calls on one tokenizer. */
int clip_tokenizer_encode(const clip_tokenizer *tok, const char *text, size_t len, int32_t *ids,
                          int ctx_len, cdb_error *err);

#endif
