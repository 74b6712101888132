/* tokenizer.c: CLIP's byte-level BPE tokenizer, identical to the reference (OpenAI CLIP's
 * simple_tokenizer, which HF CLIPTokenizer copies) including its text cleanup:
 *
 *   ftfy.fix_text (6.x defaults) -> html.unescape twice -> whitespace collapse + strip ->
 *   str.lower() -> the pre-tokenizer regex -> BPE over the first 48,894 merges.
 *
 * ftfy: HTML entities (only on lines before the first one containing '<', as ftfy's "auto"
 * mode does, repeated to a fixed point), C1 controls read as Windows-1252, Latin ligatures,
 * full/half-width forms, curly quotes, terminal escapes, control characters and BOMs, NFC.
 * Not implemented: mojibake repair (fix_encoding), which only acts on text that was already
 * decoded wrongly. HTML: all 2231 HTML5 entity names, legacy names without ';' (longest
 * prefix), numeric references with CPython's replacements for invalid ones, and ftfy's
 * upper-cased names. str.lower(): full mapping (U+0130 -> "i\u0307") and final sigma.
 *
 * Text is processed in chunks (one line, or a run ending at an ASCII space once a chunk is
 * long) and tokenization stops as soon as the context is full, so a 1 MB input costs about as
 * much as its first few hundred bytes. Every step of the cleanup is local (no step looks
 * across a space or a newline), so chunking does not change the result. Whitespace collapse
 * and strip are not performed: whitespace only separates pre-tokens, so they cannot change
 * the ids. Limits that only hostile input reaches: ftfy's fixed point is cut after 16 rounds
 * (16 levels of "&amp;amp;..."), and a single word over 2 KB is merged in 2 KB windows.
 *
 * Unicode data comes from GLib (categories, validation, NFC) and utf8proc (case mapping);
 * HTML5 entity names from tokenizer_entities.inc, generated from CPython's html module. */
#include "embed/tokenizer.h"

#include <glib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "src/file.h"

#include "embed/tokenizer_entities.inc"

#define CLIP_VOCAB_SIZE 49408
#define CLIP_DEFAULT_MERGES 48894
#define MAX_VOCAB_BYTES (64u << 20)
#define MAX_MERGES_BYTES (64u << 20)
/* A chunk may end at an ASCII space once it is this long (bytes). */
#define CHUNK_SOFT_LIMIT 1024
/* Words longer than this (bytes) are merged in windows (see bpe_long_word). */
#define BPE_WINDOW 2048
/* ftfy repeats its fixes until nothing changes; nested "&amp;amp;..." needs one round per
 * level. Bounded so that hostile input stays linear. */
#define FTFY_MAX_ROUNDS 16

/* ---- merge table: (left id, right id) -> (rank, merged id), open addressing ---- */

typedef struct merge_slot {
  uint64_t key; /* ((left << 32) | right) + 1; 0 = empty */
  int32_t rank;
  int32_t merged;
} merge_slot;

struct clip_tokenizer {
  int32_t byte_id[256];     /* id of the symbol for one byte */
  int32_t byte_end_id[256]; /* id of that symbol + "</w>" (last symbol of a word) */
  int32_t sot_id, eot_id;
  size_t max_symbol_bytes; /* longest vocab entry: bounds the bytes one token covers */
  merge_slot *slots;
  size_t mask;
};

static inline uint64_t pair_key(int32_t a, int32_t b) {
  return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static inline size_t pair_hash(uint64_t key) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  return (size_t)key;
}

static const merge_slot *merge_find(const clip_tokenizer *tok, int32_t a, int32_t b) {
  uint64_t key = pair_key(a, b);
  for (size_t i = pair_hash(key) & tok->mask;; i = (i + 1) & tok->mask) {
    if (tok->slots[i].key == key) return &tok->slots[i];
    if (tok->slots[i].key == 0) return NULL;
  }
}

/* A later duplicate overwrites the rank, as the reference's dict(zip(merges, range)) does. */
static void merge_insert(clip_tokenizer *tok, int32_t a, int32_t b, int32_t rank, int32_t merged) {
  uint64_t key = pair_key(a, b);
  size_t i = pair_hash(key) & tok->mask;
  while (tok->slots[i].key != 0 && tok->slots[i].key != key) i = (i + 1) & tok->mask;
  tok->slots[i] = (merge_slot){key, rank, merged};
}

/* ---- loading ---- */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others are
 * mapped to U+0100.. in byte order. */
static gunichar byte_to_unicode(int b) {
  if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
    return (gunichar)b;
  int n = 0;
  for (int i = 0; i < b; i++)
    if (!((i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF))) n++;
  return 256 + (gunichar)n;
}

/* vocab.json's symbols, indexed for the 150,000 look-ups that loading merges.txt needs. A
 * compact table (8-byte slots; key text copied into one arena in id order) is several times
 * faster than json-c's object look-up, which matters as loading is on a query's path. */
typedef struct symtab {
  uint64_t *slot; /* (hash << 32) | (id + 1); 0 = empty */
  size_t mask, max_len;
  char *arena;      /* every key, NUL-terminated, in id order */
  uint32_t *offset; /* offset[id]: its key in arena */
  uint32_t *len;    /* len[id]: its key length; UINT32_MAX while the id is unused */
} symtab;

static uint32_t sym_hash(const char *s, size_t len) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

static bool sym_is(const symtab *t, int32_t id, const char *s, size_t len) {
  return t->len[id] == len && memcmp(t->arena + t->offset[id], s, len) == 0;
}

static int symtab_find(const symtab *t, const char *s, size_t len, int32_t *id) {
  uint32_t h = sym_hash(s, len);
  for (size_t i = h & t->mask; t->slot[i] != 0; i = (i + 1) & t->mask) {
    int32_t cand = (int32_t)(uint32_t)t->slot[i] - 1;
    if ((uint32_t)(t->slot[i] >> 32) == h && sym_is(t, cand, s, len)) {
      *id = cand;
      return 0;
    }
  }
  return -1;
}

static int vocab_id(const symtab *t, const char *sym, int32_t *id) {
  return symtab_find(t, sym, strlen(sym), id);
}

static void symtab_free(symtab *t) {
  free(t->slot);
  free(t->arena);
  free(t->offset);
  free(t->len);
}

/* ---- vocab.json: a flat JSON object {"symbol": id, ...} ----
 * Read by a small scanner straight into the symbol table: json-c would build 49,408 objects
 * and a hash table of its own first, ~30 ms on the first query's path (5-8x this reader). The
 * scanner accepts exactly JSON's grammar for this shape (any whitespace, every string escape
 * including surrogate pairs, integer ids) and names the byte offset of anything else. */

typedef struct vocab_reader {
  const char *p, *end, *start, *path;
  cdb_error *err;
} vocab_reader;

static int vocab_fail(vocab_reader *r, const char *what) {
  return cdb_error_set(r->err, "tokenizer: %s: invalid JSON: %s at byte %zu", r->path, what,
                       (size_t)(r->p - r->start));
}

static void skip_ws(vocab_reader *r) {
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t')) r->p++;
}

static int hex4(const char *s, uint32_t *v) {
  *v = 0;
  for (int i = 0; i < 4; i++) {
    int d = g_ascii_xdigit_value(s[i]);
    if (d < 0) return -1;
    *v = *v << 4 | (uint32_t)d;
  }
  return 0;
}

/* One \uXXXX escape (r->p at the 'u'), a surrogate pair taking two, as a code point. */
static int read_u_escape(vocab_reader *r, uint32_t *cp) {
  if (r->end - r->p < 5 || hex4(r->p + 1, cp) < 0) return vocab_fail(r, "bad \\u escape");
  r->p += 5;
  if (*cp >= 0xDC00 && *cp <= 0xDFFF) return vocab_fail(r, "lone low surrogate");
  if (*cp < 0xD800 || *cp > 0xDBFF) return 0;
  uint32_t lo;
  if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' || hex4(r->p + 2, &lo) < 0 ||
      lo < 0xDC00 || lo > 0xDFFF)
    return vocab_fail(r, "unpaired high surrogate");
  r->p += 6;
  *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
  return 0;
}

/* A JSON string (r->p at the opening quote), decoded to UTF-8 at out; the text is valid UTF-8
 * already. Returns the decoded length, or -1. */
static long read_string(vocab_reader *r, char *out) {
  if (r->p >= r->end || *r->p != '"') return vocab_fail(r, "expected a string");
  r->p++;
  char *o = out;
  while (r->p < r->end && *r->p != '"') {
    unsigned char c = (unsigned char)*r->p;
    if (c < 0x20) return vocab_fail(r, "control character in a string");
    if (c != '\\') {
      *o++ = (char)c;
      r->p++;
      continue;
    }
    if (++r->p >= r->end) break;
    static const char plain[] = "\"\\/bfnrt", decoded[] = "\"\\/\b\f\n\r\t";
    const char *at = strchr(plain, *r->p);
    if (*r->p == 'u') {
      uint32_t cp = 0;
      if (read_u_escape(r, &cp) < 0) return -1;
      if (cp == 0) return vocab_fail(r, "NUL in a string");
      o += g_unichar_to_utf8(cp, o);
    } else if (at && *at) {
      *o++ = decoded[at - plain];
      r->p++;
    } else {
      return vocab_fail(r, "bad escape");
    }
  }
  if (r->p >= r->end) return vocab_fail(r, "unterminated string");
  r->p++;
  *o = '\0';
  return o - out;
}

/* A JSON number that must be an integer id in range. */
static int read_id(vocab_reader *r, const char *key, int32_t *id) {
  const char *q = r->p;
  int64_t v = 0;
  int neg = q < r->end && *q == '-';
  q += neg;
  const char *digits = q;
  while (q < r->end && *q >= '0' && *q <= '9' && v <= CLIP_VOCAB_SIZE) v = v * 10 + (*q++ - '0');
  while (q < r->end && *q >= '0' && *q <= '9') q++;
  int is_int = q > digits && !(q < r->end && (*q == '.' || *q == 'e' || *q == 'E'));
  if (!is_int || neg || v >= CLIP_VOCAB_SIZE)
    return cdb_error_set(r->err, "tokenizer: %s: the id of \"%.64s\" %s", r->path, key,
                         !is_int ? "is not an integer" : "is out of range");
  r->p = q;
  *id = (int32_t)v;
  return 0;
}

static int symtab_alloc(symtab *t, size_t text_bytes) {
  size_t cap = 1;
  while (cap < (size_t)CLIP_VOCAB_SIZE * 2) cap <<= 1;
  t->slot = calloc(cap, sizeof *t->slot);
  t->mask = cap - 1;
  t->arena = malloc(text_bytes + 1); /* decoded keys are never longer than their JSON text */
  t->offset = malloc(CLIP_VOCAB_SIZE * sizeof *t->offset);
  t->len = malloc(CLIP_VOCAB_SIZE * sizeof *t->len);
  if (!t->slot || !t->arena || !t->offset || !t->len) return -1;
  memset(t->len, 0xff, CLIP_VOCAB_SIZE * sizeof *t->len);
  return 0;
}

/* Adds key (already at arena + at) as id; refuses a repeated id or key. */
static int symtab_add(vocab_reader *r, symtab *t, size_t at, size_t len, int32_t id) {
  const char *key = t->arena + at;
  int32_t other;
  if (t->len[id] != UINT32_MAX)
    return cdb_error_set(r->err, "tokenizer: %s: the id of \"%.64s\" is used twice", r->path, key);
  if (symtab_find(t, key, len, &other) == 0)
    return cdb_error_set(r->err, "tokenizer: %s: \"%.64s\" appears twice", r->path, key);
  t->offset[id] = (uint32_t)at;
  t->len[id] = (uint32_t)len;
  uint32_t h = sym_hash(key, len);
  size_t i = h & t->mask;
  while (t->slot[i]) i = (i + 1) & t->mask;
  t->slot[i] = ((uint64_t)h << 32) | (uint32_t)(id + 1);
  if (len > t->max_len) t->max_len = len;
  return 0;
}

/* Checks vocab.json (an object of 49408 distinct ids in range) and indexes it. */
static int read_vocab(const char *path, symtab *t, cdb_error *err) {
  size_t len;
  char *text = cdb_file_read(path, MAX_VOCAB_BYTES, &len, err);
  if (!text) return cdb_error_prefix(err, "tokenizer");
  vocab_reader r = {text, text + len, text, path, err};
  int rc = 0, n = 0;
  size_t at = 0;
  if (!g_utf8_validate(text, (gssize)len, NULL)) rc = vocab_fail(&r, "not UTF-8");
  if (rc == 0 && symtab_alloc(t, len) < 0) rc = cdb_error_set(err, "tokenizer: out of memory");
  skip_ws(&r);
  if (rc == 0 && (r.p >= r.end || *r.p++ != '{'))
    rc = cdb_error_set(err, "tokenizer: %s: expected a JSON object of token -> id", path);
  skip_ws(&r);
  for (int more = r.p < r.end && *r.p != '}'; rc == 0 && more; n++) {
    long key_len = read_string(&r, t->arena + at);
    int32_t id = 0;
    if (key_len < 0) rc = -1;
    if (rc == 0) skip_ws(&r);
    if (rc == 0 && (r.p >= r.end || *r.p++ != ':')) rc = vocab_fail(&r, "expected ':'");
    if (rc == 0) skip_ws(&r);
    if (rc == 0) rc = read_id(&r, t->arena + at, &id);
    if (rc == 0) rc = symtab_add(&r, t, at, (size_t)key_len, id);
    at += (size_t)key_len + 1;
    if (rc == 0) skip_ws(&r);
    more = rc == 0 && r.p < r.end && *r.p == ',';
    if (more) r.p++, skip_ws(&r);
  }
  if (rc == 0 && (r.p >= r.end || *r.p++ != '}')) rc = vocab_fail(&r, "expected ',' or '}'");
  skip_ws(&r);
  if (rc == 0 && r.p != r.end) rc = vocab_fail(&r, "trailing data");
  if (rc == 0 && n != CLIP_VOCAB_SIZE)
    rc = cdb_error_set(err, "tokenizer: %s: %d entries, expected %d", path, n, CLIP_VOCAB_SIZE);
  free(text);
  return rc;
}

static int load_byte_symbols(clip_tokenizer *tok, const symtab *vocab, const char *path,
                             cdb_error *err) {
  for (int b = 0; b < 256; b++) {
    char sym[16];
    int n = g_unichar_to_utf8(byte_to_unicode(b), sym);
    sym[n] = '\0';
    if (vocab_id(vocab, sym, &tok->byte_id[b]) < 0)
      return cdb_error_set(err, "tokenizer: %s: no entry for byte symbol \"%s\"", path, sym);
    memcpy(sym + n, "</w>", 5);
    if (vocab_id(vocab, sym, &tok->byte_end_id[b]) < 0)
      return cdb_error_set(err, "tokenizer: %s: no entry for \"%s\"", path, sym);
  }
  if (vocab_id(vocab, "<|startoftext|>", &tok->sot_id) < 0 ||
      vocab_id(vocab, "<|endoftext|>", &tok->eot_id) < 0)
    return cdb_error_set(err, "tokenizer: %s: no <|startoftext|> / <|endoftext|> entries", path);
  if (tok->sot_id != CLIP_TOKEN_SOT || tok->eot_id != CLIP_TOKEN_EOT)
    return cdb_error_set(err, "tokenizer: %s: special tokens have ids %d/%d, expected %d/%d", path,
                         tok->sot_id, tok->eot_id, CLIP_TOKEN_SOT, CLIP_TOKEN_EOT);
  return 0;
}

/* One merges.txt line "A B" (A, B are vocab symbols; A+B must be one too). */
static int parse_merge_line(clip_tokenizer *tok, const symtab *vocab, const char *line, size_t len,
                            int rank, const char *path, int lineno, cdb_error *err) {
  if (len > 0 && line[len - 1] == '\r') len--;
  const char *space = memchr(line, ' ', len);
  size_t left_len = space ? (size_t)(space - line) : 0;
  size_t right_len = space ? len - left_len - 1 : 0;
  if (!space || left_len == 0 || right_len == 0 || memchr(space + 1, ' ', right_len))
    return cdb_error_set(err, "tokenizer: %s:%d: expected two symbols separated by one space", path,
                         lineno);
  char joined[256];
  if (len >= sizeof joined)
    return cdb_error_set(err, "tokenizer: %s:%d: merge too long", path, lineno);
  memcpy(joined, line, left_len);
  memcpy(joined + left_len, space + 1, right_len);
  int32_t a, b, ab;
  if (symtab_find(vocab, line, left_len, &a) < 0 ||
      symtab_find(vocab, space + 1, right_len, &b) < 0)
    return cdb_error_set(err, "tokenizer: %s:%d: symbol \"%.*s\" or \"%.*s\" not in vocab.json",
                         path, lineno, (int)left_len, line, (int)right_len, space + 1);
  /* CLIP's vocab lists merge results in merge order after the 512 byte symbols: check that
   * guess first, it saves a hash look-up per line. */
  if (rank + 512 < CLIP_VOCAB_SIZE && sym_is(vocab, rank + 512, joined, left_len + right_len))
    ab = rank + 512;
  else if (symtab_find(vocab, joined, left_len + right_len, &ab) < 0)
    return cdb_error_set(err, "tokenizer: %s:%d: merged symbol \"%.*s\" not in vocab.json", path,
                         lineno, (int)(left_len + right_len), joined);
  merge_insert(tok, a, b, rank, ab);
  return 0;
}

static int load_merges(clip_tokenizer *tok, const symtab *vocab, const char *path, int max_merges,
                       cdb_error *err) {
  size_t len;
  char *text = cdb_file_read(path, MAX_MERGES_BYTES, &len, err);
  if (!text) return cdb_error_prefix(err, "tokenizer");
  if (memchr(text, '\0', len) || !g_utf8_validate(text, (gssize)len, NULL)) {
    free(text);
    return cdb_error_set(err, "tokenizer: %s: not UTF-8 text", path);
  }
  size_t cap = 1;
  while (cap < (size_t)max_merges * 2 + 16) cap <<= 1;
  tok->slots = calloc(cap, sizeof *tok->slots);
  tok->mask = cap - 1;
  if (!tok->slots) {
    free(text);
    return cdb_error_set(err, "tokenizer: out of memory");
  }
  const char *p = text, *end = text + len;
  int lineno = 0, rank = 0, rc = 0;
  while (rank < max_merges && p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = nl ? nl : end;
    lineno++;
    /* The reference skips line 1 unread; insist it is the "#version" header. */
    if (lineno == 1) {
      if (strncmp(p, "#version", 8) != 0) {
        rc = cdb_error_set(err, "tokenizer: %s:1: expected the \"#version\" header", path);
        break;
      }
    } else {
      rc = parse_merge_line(tok, vocab, p, (size_t)(line_end - p), rank, path, lineno, err);
      if (rc < 0) break;
      rank++;
    }
    p = line_end + 1;
  }
  free(text);
  if (rc == 0 && rank < max_merges)
    rc = cdb_error_set(err, "tokenizer: %s: only %d merges, expected %d", path, rank, max_merges);
  return rc;
}

clip_tokenizer *clip_tokenizer_load(const char *vocab_path, const char *merges_path, int max_merges,
                                    cdb_error *err) {
  if (max_merges < 0 || max_merges > (1 << 24)) {
    cdb_error_set(err, "tokenizer: invalid merge count %d", max_merges);
    return NULL;
  }
  if (max_merges == 0) max_merges = CLIP_DEFAULT_MERGES;
  symtab syms = {0};
  clip_tokenizer *tok = calloc(1, sizeof *tok);
  int rc = tok ? 0 : cdb_error_set(err, "tokenizer: out of memory");
  if (rc == 0) rc = read_vocab(vocab_path, &syms, err);
  if (rc == 0) rc = load_byte_symbols(tok, &syms, vocab_path, err);
  if (rc == 0) tok->max_symbol_bytes = syms.max_len;
  if (rc == 0) rc = load_merges(tok, &syms, merges_path, max_merges, err);
  symtab_free(&syms);
  if (rc < 0) {
    clip_tokenizer_free(tok);
    return NULL;
  }
  return tok;
}

void clip_tokenizer_free(clip_tokenizer *tok) {
  if (!tok) return;
  free(tok->slots);
  free(tok);
}

/* ---- a growable UCS-4 string ---- */

typedef struct ustr {
  gunichar *c;
  size_t n, cap;
} ustr;

static bool ustr_reserve(ustr *s, size_t n) {
  if (n <= s->cap) return true;
  size_t cap = s->cap ? s->cap : 64;
  while (cap < n) cap *= 2;
  gunichar *c = realloc(s->c, cap * sizeof *c);
  if (!c) return false;
  s->c = c;
  s->cap = cap;
  return true;
}

static bool ustr_push(ustr *s, gunichar c) {
  if (s->n == s->cap && !ustr_reserve(s, s->n + 1)) return false;
  s->c[s->n++] = c;
  return true;
}

static bool ustr_push_utf8(ustr *s, const char *utf8) {
  for (const char *p = utf8; *p; p = g_utf8_next_char(p))
    if (!ustr_push(s, g_utf8_get_char(p))) return false;
  return true;
}

static void ustr_swap(ustr *a, ustr *b) {
  ustr t = *a;
  *a = *b;
  *b = t;
}

static bool ustr_equal(const ustr *a, const ustr *b) {
  return a->n == b->n && memcmp(a->c, b->c, a->n * sizeof *a->c) == 0;
}

/* ---- HTML entities ---- */

static int entity_cmp(const void *key, const void *elem) {
  return strcmp(key, ((const struct html_entity *)elem)->name);
}

static const char *entity_lookup(const struct html_entity *table, size_t n, const char *name) {
  const struct html_entity *e = bsearch(name, table, n, sizeof *table, entity_cmp);
  return e ? e->utf8 : NULL;
}

static const char *html5_lookup(const char *name) {
  return entity_lookup(html5_entities, G_N_ELEMENTS(html5_entities), name);
}

static bool is_ascii_digit(gunichar c) { return c >= '0' && c <= '9'; }
static bool is_ascii_hex(gunichar c) { return g_ascii_isxdigit((int)(c < 128 ? c : 0)); }

/* Python's html._replace_charref for a numeric reference: appends the result to out. */
static bool push_numeric_ref(ustr *out, uint32_t num) {
  for (size_t i = 0; i < G_N_ELEMENTS(html_invalid_charrefs); i++)
    if (html_invalid_charrefs[i].code == num) return ustr_push(out, html_invalid_charrefs[i].to);
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return ustr_push(out, 0xFFFD);
  for (size_t i = 0; i < G_N_ELEMENTS(html_invalid_codepoints); i++)
    if (num >= html_invalid_codepoints[i].lo && num <= html_invalid_codepoints[i].hi) return true;
  return ustr_push(out, num);
}

/* Parses digits s[i..] in base 10 or 16, saturating above 0x10FFFF; returns the digit count. */
static size_t parse_number(const gunichar *s, size_t i, size_t n, bool hex, uint32_t *num) {
  size_t start = i;
  uint32_t v = 0;
  for (; i < n && (hex ? is_ascii_hex(s[i]) : is_ascii_digit(s[i])); i++) {
    if (v <= 0x10FFFF) v = v * (hex ? 16 : 10) + (uint32_t)g_ascii_xdigit_value((char)s[i]);
  }
  *num = v;
  return i - start;
}

/* Python's html.unescape: "&" followed by "#digits;?", "#xhex;?" or up to 32 characters
 * other than \t\n\f <&#; and an optional ";" (named: longest known prefix wins). Covers all
 * 2231 HTML5 names. Appends the replacement for the reference starting at s[i] (an '&') and
 * returns its length, or 0 when there is none. */
static size_t py_unescape_at(const gunichar *s, size_t i, size_t n, ustr *out) {
  size_t j = i + 1;
  if (j < n && s[j] == '#') {
    bool hex = j + 1 < n && (s[j + 1] == 'x' || s[j + 1] == 'X');
    size_t digits_at = j + 1 + (hex ? 1 : 0);
    uint32_t num;
    size_t nd = parse_number(s, digits_at, n, hex, &num);
    if (nd == 0) return 0;
    size_t end = digits_at + nd;
    if (end < n && s[end] == ';') end++;
    return push_numeric_ref(out, num) ? end - i : 0;
  }
  size_t k = j;
  while (k < n && k - j < 32 && s[k] != '\t' && s[k] != '\n' && s[k] != '\f' && s[k] != ' ' &&
         s[k] != '<' && s[k] != '&' && s[k] != '#' && s[k] != ';')
    k++;
  if (k == j) return 0;
  size_t end = (k < n && s[k] == ';') ? k + 1 : k;
  /* Names are ASCII; a non-ASCII character ends the candidate prefix. */
  char name[40];
  size_t len = 0;
  for (size_t p = j; p < end && s[p] < 128; p++) name[len++] = (char)s[p];
  /* Python tries the whole text, then ever shorter prefixes down to 2 characters. */
  for (size_t x = len; x >= 2; x--) {
    name[x] = '\0';
    const char *val = html5_lookup(name);
    if (!val) continue;
    if (!ustr_push_utf8(out, val)) return 0;
    for (size_t p = j + x; p < end; p++)
      if (!ustr_push(out, s[p])) return 0;
    return end - i;
  }
  return 0;
}

static bool py_html_unescape(const ustr *in, ustr *out) {
  out->n = 0;
  if (!ustr_reserve(out, in->n)) return false;
  for (size_t i = 0; i < in->n;) {
    size_t used = in->c[i] == '&' ? py_unescape_at(in->c, i, in->n, out) : 0;
    if (used) {
      i += used;
    } else if (!ustr_push(out, in->c[i++])) {
      return false;
    }
  }
  return true;
}

static bool is_ascii_alnum(gunichar c) { return c < 128 && g_ascii_isalnum((int)c); }

/* ftfy's unescape_html: only "&#?[0-9A-Za-z]{1,24};" is replaced, by its HTML5 entity (plus
 * upper-cased names), or for "&#..." by html.unescape unless that left a ';' behind. */
static size_t ftfy_unescape_at(const gunichar *s, size_t i, size_t n, ustr *out) {
  size_t j = i + 1;
  bool numeric = j < n && s[j] == '#';
  if (numeric) j++;
  size_t k = j;
  while (k < n && is_ascii_alnum(s[k]) && k - j < 25) k++;
  if (k == j || k - j > 24 || k >= n || s[k] != ';') return 0;
  size_t end = k + 1;
  char name[32];
  size_t len = 0;
  for (size_t p = i + 1; p < end; p++) name[len++] = (char)s[p];
  name[len] = '\0';
  if (!numeric) {
    const char *val = html5_lookup(name);
    if (!val) val = entity_lookup(ftfy_upper_entities, G_N_ELEMENTS(ftfy_upper_entities), name);
    if (!val) return 0;
    return ustr_push_utf8(out, val) ? end - i : 0;
  }
  size_t mark = out->n;
  size_t used = py_unescape_at(s, i, n, out);
  bool semicolon_left = used != end - i;
  for (size_t p = mark; p < out->n; p++) semicolon_left |= out->c[p] == ';';
  if (semicolon_left) {
    out->n = mark;
    return 0;
  }
  return used;
}

/* ---- ftfy fix_text (6.x defaults; fix_encoding / mojibake repair not implemented) ---- */

/* fix_latin_ligatures: the letters a Latin ligature stands for, or NULL. */
static const char *ligature_expansion(gunichar c) {
  static const struct {
    gunichar c;
    const char *to;
  } ligatures[] = {{0x0132, "IJ"},        {0x0133, "ij"},        {0x0149, "\xca\xbcn"},
                   {0x01C4, "D\xc5\xbd"}, {0x01C5, "D\xc5\xbe"}, {0x01C6, "d\xc5\xbe"},
                   {0x01C7, "LJ"},        {0x01C8, "Lj"},        {0x01C9, "lj"},
                   {0x01CA, "NJ"},        {0x01CB, "Nj"},        {0x01CC, "nj"},
                   {0x01F1, "DZ"},        {0x01F2, "Dz"},        {0x01F3, "dz"},
                   {0xFB00, "ff"},        {0xFB01, "fi"},        {0xFB02, "fl"},
                   {0xFB03, "ffi"},       {0xFB04, "ffl"},       {0xFB05, "\xc5\xbft"},
                   {0xFB06, "st"}};
  if ((c >= 0x0132 && c <= 0x01F3) || (c >= 0xFB00 && c <= 0xFB06)) {
    for (size_t i = 0; i < G_N_ELEMENTS(ligatures); i++)
      if (ligatures[i].c == c) return ligatures[i].to;
  }
  return NULL;
}

/* fix_character_width: U+FF01..U+FFEF become their NFKC form (one or more characters). */
static bool push_width_fixed(ustr *out, gunichar c) {
  char utf8[8];
  utf8[g_unichar_to_utf8(c, utf8)] = '\0';
  char *nfkc = g_utf8_normalize(utf8, -1, G_NORMALIZE_NFKC);
  bool ok = nfkc && ustr_push_utf8(out, nfkc);
  g_free(nfkc);
  return ok;
}

static bool is_ftfy_control(gunichar c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
         (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

/* Windows-1252 ("sloppy": undefined bytes stay as they are) for U+0080..U+009F. */
static gunichar c1_to_cp1252(gunichar c) {
  static const uint16_t cp1252[32] = {0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020,
                                      0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D,
                                      0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D,
                                      0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A,
                                      0x0153, 0x009D, 0x017E, 0x0178};
  return cp1252[c - 0x80];
}

/* Length of a terminal escape "ESC [ [0-9;]* [A-Za-z]" at s[i], or 0. */
static size_t terminal_escape_len(const gunichar *s, size_t i, size_t n) {
  if (s[i] != 0x1B || i + 1 >= n || s[i + 1] != '[') return 0;
  size_t k = i + 2;
  while (k < n && (is_ascii_digit(s[k]) || s[k] == ';')) k++;
  if (k < n && s[k] < 128 && g_ascii_isalpha((int)s[k])) return k + 1 - i;
  return 0;
}

/* One round of ftfy's character fixes, in its order: unescape_html (when allowed),
 * fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes,
 * remove_terminal_escapes, remove_control_chars. (fix_line_breaks and fix_surrogates cannot
 * change the tokens of valid UTF-8 and are omitted.) Each step is a separate pass because
 * a step's output feeds the next. */
static bool ftfy_round(ustr *a, ustr *b, bool unescape) {
  if (unescape) {
    b->n = 0;
    for (size_t i = 0; i < a->n;) {
      size_t used = a->c[i] == '&' ? ftfy_unescape_at(a->c, i, a->n, b) : 0;
      if (used) i += used;
      else if (!ustr_push(b, a->c[i++])) return false;
    }
    ustr_swap(a, b);
  }
  b->n = 0;
  for (size_t i = 0; i < a->n; i++) {
    gunichar c = a->c[i];
    if (c >= 0x80 && c <= 0x9F) c = c1_to_cp1252(c);
    if (c == 0x3000) c = ' '; /* fix_character_width maps the ideographic space too */
    const char *expansion = ligature_expansion(c);
    bool ok;
    if (expansion) ok = ustr_push_utf8(b, expansion);
    else if (c >= 0xFF01 && c <= 0xFFEF) ok = push_width_fixed(b, c);
    else ok = ustr_push(b, c);
    if (!ok) return false;
  }
  ustr_swap(a, b);
  b->n = 0;
  for (size_t i = 0; i < a->n;) {
    size_t esc = terminal_escape_len(a->c, i, a->n);
    if (esc) {
      i += esc;
      continue;
    }
    gunichar c = a->c[i++];
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
    else if (c >= 0x201C && c <= 0x201F) c = '"';
    if (!is_ftfy_control(c) && !ustr_push(b, c)) return false;
  }
  ustr_swap(a, b);
  return true;
}

static bool nfc(ustr *a, ustr *b) {
  size_t i = 0;
  while (i < a->n && a->c[i] < 0x300) i++; /* nothing below U+0300 composes */
  if (i == a->n) return true;
  glong len8;
  gchar *utf8 = g_ucs4_to_utf8(a->c, (glong)a->n, NULL, &len8, NULL);
  if (!utf8) return false;
  gchar *norm = g_utf8_normalize(utf8, len8, G_NORMALIZE_NFC);
  g_free(utf8);
  if (!norm) return false;
  b->n = 0;
  bool ok = ustr_push_utf8(b, norm);
  g_free(norm);
  if (ok) ustr_swap(a, b);
  return ok;
}

static bool ftfy_fix(ustr *text, ustr *tmp, ustr *prev, bool unescape) {
  for (int round = 0; round < FTFY_MAX_ROUNDS; round++) {
    prev->n = 0;
    if (!ustr_reserve(prev, text->n)) return false;
    if (text->n) memcpy(prev->c, text->c, text->n * sizeof *text->c);
    prev->n = text->n;
    if (!ftfy_round(text, tmp, unescape) || !nfc(text, tmp)) return false;
    if (ustr_equal(text, prev)) break;
  }
  return true;
}

/* ---- Python str.lower() ---- */

static bool is_cased(gunichar c) {
  GUnicodeType t = g_unichar_type(c);
  return t == G_UNICODE_UPPERCASE_LETTER || t == G_UNICODE_LOWERCASE_LETTER ||
         t == G_UNICODE_TITLECASE_LETTER ||
         utf8proc_tolower((utf8proc_int32_t)c) != (utf8proc_int32_t)c ||
         utf8proc_toupper((utf8proc_int32_t)c) != (utf8proc_int32_t)c;
}

/* Unicode Case_Ignorable: Mn, Me, Cf, Lm, Sk and the word-break MidLetter/MidNumLet/
 * Single_Quote characters. */
static bool is_case_ignorable(gunichar c) {
  switch (g_unichar_type(c)) {
    case G_UNICODE_NON_SPACING_MARK:
    case G_UNICODE_ENCLOSING_MARK:
    case G_UNICODE_FORMAT:
    case G_UNICODE_MODIFIER_LETTER:
    case G_UNICODE_MODIFIER_SYMBOL: return true;
    default: break;
  }
  static const gunichar mid[] = {0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,
                                 0x5F4,  0x2018, 0x2019, 0x2024, 0x2027, 0xFE13,
                                 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
  for (size_t i = 0; i < G_N_ELEMENTS(mid); i++)
    if (mid[i] == c) return true;
  return false;
}

/* Capital sigma lowers to final sigma after a cased letter and not before one (case-ignorable
 * characters skipped), as CPython does. */
static gunichar lower_sigma(const gunichar *s, size_t i, size_t n) {
  size_t j = i;
  while (j > 0 && is_case_ignorable(s[j - 1])) j--;
  if (j == 0 || !is_cased(s[j - 1])) return 0x3C3;
  size_t k = i + 1;
  while (k < n && is_case_ignorable(s[k])) k++;
  return (k == n || !is_cased(s[k])) ? 0x3C2 : 0x3C3;
}

static bool py_lower(const ustr *in, ustr *out) {
  out->n = 0;
  if (!ustr_reserve(out, in->n)) return false;
  for (size_t i = 0; i < in->n; i++) {
    gunichar c = in->c[i];
    bool ok;
    if (c < 128) ok = ustr_push(out, (gunichar)g_ascii_tolower((char)c));
    else if (c == 0x130) ok = ustr_push(out, 'i') && ustr_push(out, 0x307);
    else if (c == 0x3A3) ok = ustr_push(out, lower_sigma(in->c, i, in->n));
    else ok = ustr_push(out, (gunichar)utf8proc_tolower((utf8proc_int32_t)c));
    if (!ok) return false;
  }
  return true;
}

/* ---- pre-tokenizer: the reference regex, case-insensitive ----
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ */

static bool is_letter(gunichar c) {
  if (c < 128) return g_ascii_isalpha((int)c);
  switch (g_unichar_type(c)) {
    case G_UNICODE_LOWERCASE_LETTER:
    case G_UNICODE_MODIFIER_LETTER:
    case G_UNICODE_OTHER_LETTER:
    case G_UNICODE_TITLECASE_LETTER:
    case G_UNICODE_UPPERCASE_LETTER: return true;
    default: return false;
  }
}

static bool is_number(gunichar c) {
  if (c < 128) return c >= '0' && c <= '9';
  GUnicodeType t = g_unichar_type(c);
  return t == G_UNICODE_DECIMAL_NUMBER || t == G_UNICODE_LETTER_NUMBER ||
         t == G_UNICODE_OTHER_NUMBER;
}

/* Python's str.isspace (the whitespace the reference collapses to ' '). */
static bool is_space(gunichar c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

/* Case-insensitive match of an ASCII literal (simple case folding: 'ſ' matches 's'). */
static bool match_literal(const gunichar *s, size_t i, size_t n, const char *lit) {
  for (; *lit; lit++, i++) {
    if (i >= n) return false;
    gunichar c = s[i];
    if (c == 0x17F) c = 's';
    if (c == 0x212A) c = 'k';
    if (c >= 128 || g_ascii_tolower((char)c) != *lit) return false;
  }
  return true;
}

static bool is_exact_ascii(const gunichar *s, size_t i, const char *lit) {
  for (; *lit; lit++, i++)
    if (s[i] != (gunichar)(unsigned char)*lit) return false;
  return true;
}

/* Length of the pre-token at s[i] (0 for whitespace); *special gets the id of a special token
 * or -1. */
static size_t pretoken_len(const clip_tokenizer *tok, const gunichar *s, size_t i, size_t n,
                           int32_t *special) {
  static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  *special = -1;
  if (s[i] == '<') {
    static const char *const names[] = {"<|startoftext|>", "<|endoftext|>"};
    for (int k = 0; k < 2; k++) {
      if (match_literal(s, i, n, names[k])) {
        size_t len = strlen(names[k]);
        /* Only the exact text is in the reference's BPE cache as a single token. */
        if (is_exact_ascii(s, i, names[k])) *special = k == 0 ? tok->sot_id : tok->eot_id;
        return len;
      }
    }
  }
  if (s[i] == '\'') {
    for (size_t k = 0; k < G_N_ELEMENTS(contractions); k++)
      if (match_literal(s, i, n, contractions[k])) return strlen(contractions[k]);
  }
  if (is_letter(s[i])) {
    size_t k = i + 1;
    while (k < n && is_letter(s[k])) k++;
    return k - i;
  }
  if (is_number(s[i])) return 1;
  if (is_space(s[i])) return 0;
  size_t k = i + 1;
  while (k < n && !is_space(s[k]) && !is_letter(s[k]) && !is_number(s[k])) k++;
  return k - i;
}

/* ---- BPE ---- */

typedef struct token_sink {
  int32_t *ids;
  int count, cap;
} token_sink;

static bool sink_full(const token_sink *sink) { return sink->count >= sink->cap; }

static void sink_push(token_sink *sink, int32_t id) {
  if (sink->count < sink->cap) sink->ids[sink->count++] = id;
}

typedef struct heap_item {
  int32_t rank, pos, left, right;
} heap_item;

typedef struct bpe_work {
  int32_t *id, *next, *prev, *start;
  heap_item *heap;
  size_t heap_n;
} bpe_work;

static bool heap_less(const heap_item *a, const heap_item *b) {
  return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(bpe_work *w, heap_item it) {
  size_t i = w->heap_n++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!heap_less(&it, &w->heap[parent])) break;
    w->heap[i] = w->heap[parent];
    i = parent;
  }
  w->heap[i] = it;
}

static heap_item heap_pop(bpe_work *w) {
  heap_item top = w->heap[0], last = w->heap[--w->heap_n];
  size_t i = 0;
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= w->heap_n) break;
    if (child + 1 < w->heap_n && heap_less(&w->heap[child + 1], &w->heap[child])) child++;
    if (!heap_less(&w->heap[child], &last)) break;
    w->heap[i] = w->heap[child];
    i = child;
  }
  if (w->heap_n > 0) w->heap[i] = last;
  return top;
}

static void push_pair(const clip_tokenizer *tok, bpe_work *w, int32_t pos) {
  int32_t right = w->next[pos];
  if (right < 0) return;
  const merge_slot *m = merge_find(tok, w->id[pos], w->id[right]);
  if (m) heap_push(w, (heap_item){m->rank, pos, w->id[pos], w->id[right]});
}

/* Merges bytes[0..n) (last symbol marked as word end when `word_end`) by rank, lowest first
 * and left to right within a rank, which is what the reference's loop does. Leaves the
 * symbols as a linked list from position 0 in w. */
static void bpe_merge(const clip_tokenizer *tok, const unsigned char *bytes, size_t n,
                      bool word_end, bpe_work *w) {
  for (size_t i = 0; i < n; i++) {
    w->id[i] = (word_end && i + 1 == n) ? tok->byte_end_id[bytes[i]] : tok->byte_id[bytes[i]];
    w->next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
    w->prev[i] = (int32_t)i - 1;
    w->start[i] = (int32_t)i;
  }
  w->heap_n = 0;
  for (size_t i = 0; i + 1 < n; i++) push_pair(tok, w, (int32_t)i);
  while (w->heap_n > 0) {
    heap_item it = heap_pop(w);
    int32_t right = w->next[it.pos];
    if (w->id[it.pos] != it.left || right < 0 || w->id[right] != it.right) continue;
    w->id[it.pos] = merge_find(tok, it.left, it.right)->merged;
    w->next[it.pos] = w->next[right];
    if (w->next[right] >= 0) w->prev[w->next[right]] = it.pos;
    w->id[right] = -1;
    if (w->prev[it.pos] >= 0) push_pair(tok, w, w->prev[it.pos]);
    push_pair(tok, w, it.pos);
  }
}

static bool bpe_work_init(bpe_work *w, size_t n) {
  w->id = malloc(n * sizeof *w->id);
  w->next = malloc(n * sizeof *w->next);
  w->prev = malloc(n * sizeof *w->prev);
  w->start = malloc(n * sizeof *w->start);
  w->heap = malloc(3 * n * sizeof *w->heap); /* n-1 pairs + 2 per merge */
  return w->id && w->next && w->prev && w->start && w->heap;
}

static void bpe_work_free(bpe_work *w) {
  free(w->id);
  free(w->next);
  free(w->prev);
  free(w->start);
  free(w->heap);
}

/* BPE of one pre-token. Words longer than BPE_WINDOW are merged a window at a time and only
 * the tokens in the first half of each window are kept (merges never reach that far in
 * practice: the longest vocabulary entry is far shorter), so a 1 MB word costs a few
 * windows, not a quadratic merge. `complete` is false when bytes are only the word's start. */
static bool bpe_word(const clip_tokenizer *tok, const unsigned char *bytes, size_t n, bool complete,
                     token_sink *sink) {
  size_t window = n < BPE_WINDOW ? n : BPE_WINDOW;
  bpe_work w;
  bool ok = bpe_work_init(&w, window);
  size_t off = 0;
  while (ok && off < n && !sink_full(sink)) {
    size_t len = n - off;
    if (!complete && len < BPE_WINDOW) break; /* not reached: the caller encodes enough */
    bool last = complete && len <= BPE_WINDOW;
    if (!last) len = BPE_WINDOW;
    bpe_merge(tok, bytes + off, len, last, &w);
    size_t keep_until = last ? len : len / 2, consumed = 0;
    for (int32_t p = 0; p >= 0 && !sink_full(sink); p = w.next[p]) {
      size_t end = w.next[p] >= 0 ? (size_t)w.next[p] : len;
      if (end > keep_until && consumed > 0) break;
      sink_push(sink, w.id[p]);
      consumed = end;
    }
    off += consumed;
  }
  bpe_work_free(&w);
  return ok;
}

static bool tokenize_clean(const clip_tokenizer *tok, const ustr *text, token_sink *sink) {
  GString *word = g_string_sized_new(64);
  bool ok = true;
  for (size_t i = 0; ok && i < text->n && !sink_full(sink);) {
    int32_t special;
    size_t len = pretoken_len(tok, text->c, i, text->n, &special);
    if (len == 0) {
      i++;
      continue;
    }
    if (special >= 0) {
      sink_push(sink, special);
    } else {
      /* Only the start of a huge word can reach the output. */
      size_t need = (size_t)(sink->cap - sink->count) * tok->max_symbol_bytes + BPE_WINDOW;
      size_t k = i;
      g_string_truncate(word, 0);
      for (; k < i + len && word->len < need; k++) g_string_append_unichar(word, text->c[k]);
      ok = bpe_word(tok, (const unsigned char *)word->str, word->len, k == i + len, sink);
    }
    i += len;
  }
  g_string_free(word, TRUE);
  return ok;
}

/* ---- chunking and the whole pipeline ---- */

typedef struct scratch {
  ustr text, a, b;
} scratch;

/* Printable ASCII and whitespace without '&': every cleanup step but lower-casing is a no-op. */
static bool is_plain_ascii(const char *p, size_t len) {
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)p[i];
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c >= 0x7F || c == '&') return false;
  }
  return true;
}

/* Cleans and tokenizes one chunk (bytes of valid UTF-8, NULs allowed). */
static bool process_chunk(const clip_tokenizer *tok, const char *p, size_t len, bool unescape,
                          scratch *sc, token_sink *sink) {
  sc->text.n = 0;
  if (!ustr_reserve(&sc->text, len)) return false;
  for (const char *q = p, *end = p + len; q < end; q = g_utf8_next_char(q))
    sc->text.c[sc->text.n++] = *q ? g_utf8_get_char(q) : 0;
  if (is_plain_ascii(p, len)) {
    for (size_t i = 0; i < sc->text.n; i++)
      sc->text.c[i] = (gunichar)g_ascii_tolower((char)sc->text.c[i]);
    return tokenize_clean(tok, &sc->text, sink);
  }
  if (!ftfy_fix(&sc->text, &sc->a, &sc->b, unescape)) return false;
  if (!py_html_unescape(&sc->text, &sc->a)) return false;
  if (!py_html_unescape(&sc->a, &sc->b)) return false;
  if (!py_lower(&sc->b, &sc->text)) return false;
  return tokenize_clean(tok, &sc->text, sink);
}

/* End of the chunk starting at p: after the next '\n', or after an ASCII space/tab once the
 * chunk is CHUNK_SOFT_LIMIT bytes long. */
static const char *chunk_end(const char *p, const char *line_end) {
  if ((size_t)(line_end - p) <= CHUNK_SOFT_LIMIT) return line_end;
  for (const char *q = p + CHUNK_SOFT_LIMIT; q < line_end; q++)
    if (*q == ' ' || *q == '\t') return q + 1;
  return line_end;
}

static bool validate_utf8(const char *text, size_t len) {
  const char *p = text, *end = text + len;
  while (p < end) {
    const char *nul = memchr(p, '\0', (size_t)(end - p));
    const char *seg_end = nul ? nul : end;
    if (!g_utf8_validate(p, seg_end - p, NULL)) return false;
    p = nul ? nul + 1 : end;
  }
  return true;
}

static bool tokenize_text(const clip_tokenizer *tok, const char *text, size_t len,
                          token_sink *sink) {
  scratch sc = {0};
  bool ok = true, unescape = true;
  const char *p = text, *end = text + len;
  while (ok && p < end && !sink_full(sink)) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = nl ? nl + 1 : end;
    /* ftfy decodes HTML entities itself until the first line with a '<' (from then on its
     * fix_text keeps unescape_html off). */
    unescape = unescape && memchr(p, '<', (size_t)(line_end - p)) == NULL;
    while (ok && p < line_end && !sink_full(sink)) {
      const char *ce = chunk_end(p, line_end);
      ok = process_chunk(tok, p, (size_t)(ce - p), unescape, &sc, sink);
      p = ce;
    }
  }
  free(sc.text.c);
  free(sc.a.c);
  free(sc.b.c);
  return ok;
}

int clip_tokenizer_encode(const clip_tokenizer *tok, const char *text, size_t len, int32_t *ids,
                          int ctx_len, cdb_error *err) {
  if (ctx_len < 2) return cdb_error_set(err, "tokenizer: context length %d is below 2", ctx_len);
  if (!text && len > 0) return cdb_error_set(err, "tokenizer: NULL text");
  if (len > 0 && !validate_utf8(text, len))
    return cdb_error_set(err, "tokenizer: text is not valid UTF-8");
  memset(ids, 0, (size_t)ctx_len * sizeof *ids);
  token_sink sink = {ids + 1, 0, ctx_len - 2};
  if (len > 0 && !tokenize_text(tok, text, len, &sink))
    return cdb_error_set(err, "tokenizer: out of memory");
  ids[0] = tok->sot_id;
  ids[sink.count + 1] = tok->eot_id;
  return sink.count + 2;
}
