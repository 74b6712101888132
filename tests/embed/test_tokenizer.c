/* test_tokenizer.c: the CLIP tokenizer against the reference's ids in goldens.json, plus the
 * cleanup rules (checked against CPython's html/str behaviour), bad files and bad input. */
#include <criterion/criterion.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "embed/tokenizer.h"
#include "src/json.h"

#define CTX 77

static const char *data_dir(void) {
  const char *d = getenv("CLIPDB_TEST_DATA");
  return d ? d : "tests/data";
}

static char *data_path(const char *rel) { return g_strdup_printf("%s/%s", data_dir(), rel); }

static clip_tokenizer *load_tiny(void) {
  char *vocab = data_path("clip-tiny-shapes/vocab.json");
  char *merges = data_path("clip-tiny-shapes/merges.txt");
  cdb_error err = {{0}};
  clip_tokenizer *tok = clip_tokenizer_load(vocab, merges, 0, &err);
  cr_assert_not_null(tok, "load failed: %s", err.msg);
  g_free(vocab);
  g_free(merges);
  return tok;
}

static clip_tokenizer *tok;
static void setup(void) { tok = load_tiny(); }
static void teardown(void) { clip_tokenizer_free(tok); }

static int encode(const char *text, size_t len, int32_t *ids) {
  cdb_error err = {{0}};
  int n = clip_tokenizer_encode(tok, text, len, ids, CTX, &err);
  cr_assert_geq(n, 2, "encode failed for \"%s\": %s", text, err.msg);
  return n;
}

/* Asserts that two texts tokenize identically (the second being what the reference's cleanup
 * turns the first into, as CPython computes it). */
static void assert_same_ids(const char *a, const char *b) {
  int32_t ia[CTX], ib[CTX];
  int na = encode(a, strlen(a), ia), nb = encode(b, strlen(b), ib);
  cr_assert_eq(na, nb, "\"%s\" gives %d ids, \"%s\" gives %d", a, na, b, nb);
  cr_assert_arr_eq(ia, ib, sizeof ia, "\"%s\" and \"%s\" tokenize differently", a, b);
}

static void assert_different_ids(const char *a, const char *b) {
  int32_t ia[CTX], ib[CTX];
  int na = encode(a, strlen(a), ia), nb = encode(b, strlen(b), ib);
  cr_assert(na != nb || memcmp(ia, ib, sizeof ia) != 0, "\"%s\" and \"%s\" tokenize the same", a,
            b);
}

Test(tokenizer, goldens, .init = setup, .fini = teardown) {
  char *path = data_path("goldens/goldens.json");
  cdb_error err = {{0}};
  struct json_object *g = cdb_json_load_file(path, 64u << 20, &err);
  cr_assert_not_null(g, "%s", err.msg);
  struct json_object *texts;
  cr_assert(json_object_object_get_ex(g, "texts", &texts));
  size_t n = json_object_array_length(texts), failures = 0;
  cr_assert_geq(n, 40);
  for (size_t t = 0; t < n; t++) {
    struct json_object *item = json_object_array_get_idx(texts, t), *jtext, *jids;
    cr_assert(json_object_object_get_ex(item, "text", &jtext));
    cr_assert(json_object_object_get_ex(item, "ids", &jids));
    const char *text = json_object_get_string(jtext);
    size_t len = (size_t)json_object_get_string_len(jtext);
    int32_t ids[CTX];
    int count = encode(text, len, ids);
    cr_assert_eq(json_object_array_length(jids), CTX);
    int expect_count = 0;
    bool same = true;
    for (int i = 0; i < CTX; i++) {
      int32_t want = json_object_get_int(json_object_array_get_idx(jids, i));
      if (want != 0) expect_count = i + 1;
      if (ids[i] != want) same = false;
    }
    if (!same || count != expect_count) {
      failures++;
      fprintf(stderr, "golden %zu \"%s\": mismatch (count %d, want %d)\n  got :", t, text, count,
              expect_count);
      for (int i = 0; i < count; i++) fprintf(stderr, " %d", ids[i]);
      fprintf(stderr, "\n  want:");
      for (int i = 0; i < expect_count; i++)
        fprintf(stderr, " %d", json_object_get_int(json_object_array_get_idx(jids, i)));
      fprintf(stderr, "\n");
    }
  }
  cr_assert_eq(failures, 0, "%zu of %zu golden texts differ", failures, n);
  json_object_put(g);
  g_free(path);
}

/* Expected cleanups below were computed with CPython 3.11 (html.unescape, str.lower,
 * unicodedata) and ftfy 6's documented rules. */
Test(tokenizer, html_entities, .init = setup, .fini = teardown) {
  assert_same_ids("&eacute;t&eacute;", "\xc3\xa9t\xc3\xa9");
  assert_same_ids("&#233; &#xE9; &#XE9", "\xc3\xa9 \xc3\xa9 \xc3\xa9");
  assert_same_ids("&amp; &lt;b&gt; &quot;x&quot;", "& <b> \"x\"");
  assert_same_ids("&notit;", "\xc2\xacit;"); /* longest legacy prefix "not" */
  assert_same_ids("&copy2024", "\xc2\xa9"
                               "2024"); /* no semicolon needed for legacy names */
  assert_same_ids("&ampx", "&x");
  assert_same_ids("&#x80;", "\xe2\x82\xac"); /* Windows-1252 numeric reference */
  assert_same_ids("&#0;", "\xef\xbf\xbd");   /* U+FFFD */
  assert_same_ids("&#99999999999999999999;", "\xef\xbf\xbd");
  assert_same_ids("a&#1;b", "ab"); /* invalid code point: removed */
  assert_same_ids("a&#59;b", "a;b");
  assert_same_ids("&amp;amp;amp;lt;", "<");    /* ftfy unescapes to a fixed point */
  assert_same_ids("&EACUTE;", "\xc3\xa9");     /* ftfy's upper-case entity names */
  assert_same_ids("&ldquo;x&rdquo;", "\"x\""); /* decoded, then uncurled by ftfy */
  assert_same_ids("&EACUTE;\na<b", "\xc3\xa9\na<b");
  /* After a line with '<' ftfy leaves entities alone: only html.unescape (twice) runs. */
  assert_different_ids("a<b\n&EACUTE;", "a<b\n\xc3\xa9");
  assert_different_ids("<&ldquo;x", "<\"x");
  assert_different_ids("< &amp;amp;amp;lt;", "< <");
  assert_same_ids("< &amp;lt;", "< <");
}

Test(tokenizer, ftfy_fixes, .init = setup, .fini = teardown) {
  assert_same_ids("\xef\xac\x83"
                  "x",
                  "ffix");                                        /* ligature U+FB03 */
  assert_same_ids("\xc7\x84", "d\xc5\xbe");                       /* U+01C4 DŽ */
  assert_same_ids("\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\x91", "ab1"); /* full-width */
  assert_same_ids("\xef\xbd\xb6", "\xe3\x82\xab");                /* half-width katakana */
  assert_same_ids("a\xe3\x80\x80"
                  "b",
                  "a b"); /* ideographic space */
  assert_same_ids("\xe2\x80\x98x\xe2\x80\x99 \xca\xbc", "'x' '");
  assert_same_ids("\xc2\x93x\xc2\x94", "\"x\""); /* C1 controls as Windows-1252 */
  assert_same_ids("a\xc2\x85"
                  "b",
                  "a\xe2\x80\xa6"
                  "b");
  assert_same_ids("a\x01"
                  "b\x7f"
                  "c",
                  "abc");
  assert_same_ids("\xef\xbb\xbf"
                  "abc",
                  "abc");                         /* byte-order mark */
  assert_same_ids("\x1b[1;31mred\x1b[0m", "red"); /* terminal escapes */
  assert_same_ids("e\xcc\x81", "\xc3\xa9");       /* NFC */
  assert_different_ids("a\xe2\x80\x8b"
                       "b",
                       "ab"); /* U+200B is kept */
  assert_same_ids("a\t\n\r\f\v b\xc2\xa0\xe2\x80\x83"
                  "c",
                  "a b c");
}

Test(tokenizer, python_lower, .init = setup, .fini = teardown) {
  assert_same_ids("\xc4\xb0", "i\xcc\x87");                                /* İ -> i + U+0307 */
  assert_same_ids("\xce\xa3\xce\x91\xce\xa3", "\xcf\x83\xce\xb1\xcf\x82"); /* final sigma */
  assert_same_ids("\xce\xa3", "\xcf\x83");
  assert_same_ids("a\xce\xa3.b", "a\xcf\x83.b");
  assert_same_ids("\xe2\x85\xa0\xe2\x85\xa1", "\xe2\x85\xb0\xe2\x85\xb1"); /* Roman numerals */
  assert_same_ids("\xe2\x92\xb6", "\xe2\x93\x90");                         /* circled letters */
}

Test(tokenizer, pretokenizer_and_specials, .init = setup, .fini = teardown) {
  int32_t ids[CTX];
  assert_same_ids("IT'S", "it's");
  int n = encode("x<|ENDOFTEXT|>y", 15, ids);
  cr_assert_eq(n, 5);
  cr_assert_eq(ids[2], CLIP_TOKEN_EOT, "special token inside the text");
  n = encode("<|startoftext|>", 15, ids);
  cr_assert(n == 3 && ids[0] == CLIP_TOKEN_SOT && ids[1] == CLIP_TOKEN_SOT &&
            ids[2] == CLIP_TOKEN_EOT);
  n = encode("!<|startoftext|>", 16, ids);
  cr_assert(ids[1] != CLIP_TOKEN_SOT && ids[2] != CLIP_TOKEN_SOT, "punctuation run swallows '<|'");
  n = encode("a\0b", 3, ids);
  int32_t ab[CTX];
  encode("ab", 2, ab);
  cr_assert_arr_eq(ids, ab, sizeof ids, "embedded NUL: length must be authoritative");
}

Test(tokenizer, invalid_utf8, .init = setup, .fini = teardown) {
  static const char *const bad[] = {"\xff", "abc\xc3", "\xed\xa0\x80", "\xc0\xaf",
                                    "a\xf8\x88\x80\x80\x80"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int32_t ids[CTX];
    cdb_error err = {{0}};
    int n = clip_tokenizer_encode(tok, bad[i], strlen(bad[i]), ids, CTX, &err);
    cr_assert_eq(n, -1, "invalid UTF-8 #%zu accepted", i);
    cr_assert(strstr(err.msg, "UTF-8"), "message: %s", err.msg);
  }
}

Test(tokenizer, context_lengths, .init = setup, .fini = teardown) {
  int32_t ids[CTX];
  cdb_error err = {{0}};
  cr_assert_eq(clip_tokenizer_encode(tok, "a cat", 5, ids, 1, &err), -1);
  cr_assert_eq(clip_tokenizer_encode(tok, "a cat", 5, ids, 2, &err), 2);
  cr_assert(ids[0] == CLIP_TOKEN_SOT && ids[1] == CLIP_TOKEN_EOT);
  int32_t full[CTX];
  int n = encode("a photo of a cat", 16, full);
  cr_assert_eq(n, 7);
  cr_assert_eq(clip_tokenizer_encode(tok, "a photo of a cat", 16, ids, 4, &err), 4);
  cr_assert(ids[1] == full[1] && ids[2] == full[2] && ids[3] == CLIP_TOKEN_EOT);
  cr_assert_eq(clip_tokenizer_encode(tok, NULL, 0, ids, CTX, &err), 2);
}

/* 1 MB inputs: the result is the first 75 tokens, as for the short prefix. */
Test(tokenizer, megabyte_inputs, .init = setup, .fini = teardown) {
  size_t len = 1 << 20;
  char *text = malloc(len + 1);
  const char *phrase = "a photo of a red star ";
  size_t plen = strlen(phrase);
  for (size_t i = 0; i < len; i++) text[i] = phrase[i % plen];
  int32_t ids[CTX], prefix[CTX];
  int n = encode(text, len, ids);
  cr_assert_eq(n, CTX);
  encode(text, 100 * plen, prefix);
  cr_assert_arr_eq(ids, prefix, sizeof ids);
  /* One 1 MB word: merged in windows; its start must equal the short word's start. */
  memset(text, 'a', len);
  n = encode(text, len, ids);
  cr_assert_eq(n, CTX);
  cr_assert_eq(ids[CTX - 1], CLIP_TOKEN_EOT);
  encode(text, 1500, prefix);
  cr_assert_arr_eq(ids, prefix, sizeof(int32_t) * (CTX - 1));
  free(text);
}

static void *encode_many(void *arg) {
  int32_t *out = arg;
  static const char *const texts[] = {"a photo of a cat", "Ünïcödé Straße", "&amp; x", "日本語"};
  for (int round = 0; round < 200; round++) {
    for (int t = 0; t < 4; t++) {
      int32_t ids[CTX];
      if (clip_tokenizer_encode(tok, texts[t], strlen(texts[t]), ids, CTX, NULL) < 0) return NULL;
      if (round == 0) memcpy(out + t * CTX, ids, sizeof ids);
      else if (memcmp(out + t * CTX, ids, sizeof ids) != 0) return NULL;
    }
  }
  return out;
}

Test(tokenizer, concurrent_encode, .init = setup, .fini = teardown) {
  GThread *threads[4];
  int32_t results[4][4 * CTX];
  for (int i = 0; i < 4; i++) threads[i] = g_thread_new("enc", encode_many, results[i]);
  for (int i = 0; i < 4; i++) cr_assert_not_null(g_thread_join(threads[i]), "thread %d", i);
  for (int i = 1; i < 4; i++) cr_assert_arr_eq(results[i], results[0], sizeof results[0]);
}

/* ---- malformed vocab.json / merges.txt ---- */

static char *write_temp(const char *name, const char *content, size_t len) {
  char *dir = g_dir_make_tmp("cliptok-XXXXXX", NULL);
  cr_assert_not_null(dir);
  char *path = g_build_filename(dir, name, NULL);
  cr_assert(g_file_set_contents(path, content, (gssize)len, NULL));
  g_free(dir);
  return path;
}

static void remove_temp(char *path) {
  char *dir = g_path_get_dirname(path);
  remove(path);
  remove(dir);
  g_free(dir);
  g_free(path);
}

static void expect_load_error(const char *vocab, const char *merges, const char *needle1,
                              const char *needle2) {
  cdb_error err = {{0}};
  clip_tokenizer *t = clip_tokenizer_load(vocab, merges, 0, &err);
  cr_assert_null(t, "malformed tokenizer files accepted");
  cr_assert(strstr(err.msg, needle1) && strstr(err.msg, needle2),
            "message \"%s\" lacks \"%s\" / \"%s\"", err.msg, needle1, needle2);
}

/* The real vocab.json as another JSON writer could have written it: every non-ASCII character
 * as a \u escape, '/' as "\/", one entry per indented line. (Byte-level BPE symbols are all
 * below U+0144; surrogate pairs are checked in vocab_json_malformed_strings.) */
static GString *reencoded_vocab(const char *text, size_t len) {
  GString *out = g_string_sized_new(len * 2);
  int in_string = 0;
  for (const char *p = text; p < text + len;) {
    unsigned char c = (unsigned char)*p;
    if (!in_string) {
      g_string_append_c(out, (char)c);
      if (c == ',') g_string_append(out, "\n  ");
      in_string = c == '"';
      p++;
    } else if (c == '\\') {
      g_string_append_len(out, p, 2);
      p += 2;
    } else if (c == '"' || c < 0x80) {
      if (c == '/') g_string_append_c(out, '\\');
      g_string_append_c(out, (char)c);
      in_string = c != '"';
      p++;
    } else {
      gunichar u = g_utf8_get_char(p);
      if (u > 0xFFFF)
        g_string_append_printf(out, "\\u%04X\\u%04x", 0xD800 + ((u - 0x10000) >> 10),
                               0xDC00 + ((u - 0x10000) & 0x3FF));
      else g_string_append_printf(out, "\\u%04x", u);
      p = g_utf8_next_char(p);
    }
  }
  return out;
}

Test(tokenizer, vocab_json_escapes_and_layout, .init = setup, .fini = teardown) {
  char *vocab = data_path("clip-tiny-shapes/vocab.json"), *text;
  char *merges = data_path("clip-tiny-shapes/merges.txt");
  size_t len;
  cr_assert(g_file_get_contents(vocab, &text, &len, NULL));
  GString *re = reencoded_vocab(text, len);
  cr_assert(strstr(re->str, "\\u0120"), "no \\u escape made");
  char *p = write_temp("vocab.json", re->str, re->len);
  cdb_error err = {{0}};
  clip_tokenizer *other = clip_tokenizer_load(p, merges, 0, &err);
  cr_assert_not_null(other, "re-encoded vocab.json refused: %s", err.msg);
  static const char *const texts[] = {"a photo of a cat", "Ünïcödé Straße, naïve café",
                                      "emoji \xf0\x9f\x98\x82\xf0\x9f\x90\xb6 dog", "1/2 a/b",
                                      "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xd0\xbf\xd1\x80"};
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    int32_t want[CTX], got[CTX];
    int n = encode(texts[i], strlen(texts[i]), want);
    cr_assert_eq(clip_tokenizer_encode(other, texts[i], strlen(texts[i]), got, CTX, &err), n);
    cr_assert_arr_eq(want, got, sizeof want, "\"%s\" differs with the re-encoded vocab.json",
                     texts[i]);
  }
  clip_tokenizer_free(other);
  remove_temp(p);
  g_string_free(re, TRUE);
  g_free(text);
  g_free(vocab);
  g_free(merges);
}

Test(tokenizer, vocab_json_malformed_strings) {
  char *merges = data_path("clip-tiny-shapes/merges.txt");
  static const struct {
    const char *json, *needle;
  } cases[] = {
      {"{\"a\": 1, \"a\": 2}", "appears twice"},
      {"{\"\\ud800x\": 1}", "surrogate"},
      {"{\"\\udc00\": 1}", "surrogate"},
      {"{\"\\u00zz\": 1}", "\\u escape"},
      {"{\"\\q\": 1}", "bad escape"},
      {"{\"a\tb\": 1}", "control character"},
      {"{\"\\u0000\": 1}", "NUL"},
      {"{\"a\": 1} x", "trailing data"},
      {"{\"a\": 1.5}", "not an integer"},
      {"{\"a\": -1}", "out of range"},
      {"{\"a\": 99999999999999999999}", "out of range"},
      {"{\"a\" 1}", "':'"},
      {"{\"a\": 1 \"b\": 2}", "','"},
      {"{\"abc", "unterminated"},
      {"{\"\xff\": 1}", "UTF-8"},
      /* well-formed escapes decode to the very bytes of the raw text: */
      {"{\"\xf0\x9f\x98\x82\": 1, \"\\ud83d\\ude02\": 2}", "appears twice"},
      {"{\"\\u00e9\\/\": 1, \"\xc3\xa9/\": 2}", "appears twice"},
      {"{\"\\ud83d\\ude02\\n\": 1}", "1 entries"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *p = write_temp("vocab.json", cases[i].json, strlen(cases[i].json));
    expect_load_error(p, merges, p, cases[i].needle);
    remove_temp(p);
  }
  g_free(merges);
}

/* merges.txt with line `lineno` replaced. */
static char *merges_with_line(int lineno, const char *replacement) {
  char *real = data_path("clip-tiny-shapes/merges.txt"), *text;
  size_t len;
  cr_assert(g_file_get_contents(real, &text, &len, NULL));
  char **lines = g_strsplit(text, "\n", -1);
  g_free(lines[lineno - 1]);
  lines[lineno - 1] = g_strdup(replacement);
  char *joined = g_strjoinv("\n", lines);
  char *path = write_temp("merges.txt", joined, strlen(joined));
  g_strfreev(lines);
  g_free(joined);
  g_free(text);
  g_free(real);
  return path;
}

Test(tokenizer, malformed_files) {
  char *vocab = data_path("clip-tiny-shapes/vocab.json");
  char *merges = data_path("clip-tiny-shapes/merges.txt");
  expect_load_error("/nonexistent/vocab.json", merges, "/nonexistent/vocab.json", "");
  expect_load_error(vocab, "/nonexistent/merges.txt", "/nonexistent/merges.txt", "");

  char *p = write_temp("vocab.json", "[1, 2]", 6);
  expect_load_error(p, merges, p, "object");
  remove_temp(p);
  p = write_temp("vocab.json", "{\"a\": 1", 7);
  expect_load_error(p, merges, p, "JSON");
  remove_temp(p);
  p = write_temp("vocab.json", "{\"a\": 1}", 8);
  expect_load_error(p, merges, p, "1 entries");
  remove_temp(p);

  p = merges_with_line(1, "e r");
  expect_load_error(vocab, p, p, ":1:");
  remove_temp(p);
  p = merges_with_line(5, "no_space_here");
  expect_load_error(vocab, p, p, ":5:");
  remove_temp(p);
  p = merges_with_line(7, "a b c");
  expect_load_error(vocab, p, p, ":7:");
  remove_temp(p);
  p = merges_with_line(9, "\xe2\x98\x83 q");
  expect_load_error(vocab, p, p, ":9:");
  remove_temp(p);
  p = write_temp("merges.txt", "#version: 0.2\ni n\n", 18);
  expect_load_error(vocab, p, p, "only 1 merges");
  remove_temp(p);

  /* The real vocab.json with one id duplicated / one id not an integer. */
  char *text;
  size_t len;
  cr_assert(g_file_get_contents(vocab, &text, &len, NULL));
  cr_assert(g_str_has_prefix(text, "{\"!\": 0, "));
  text[6] = '1'; /* "!": 1 duplicates the id of "\"" */
  p = write_temp("vocab.json", text, len);
  expect_load_error(p, merges, p, "used twice");
  remove_temp(p);
  char *string_id = g_strconcat("{\"!\": \"0\"", text + 7, NULL); /* "!": "0" */
  p = write_temp("vocab.json", string_id, strlen(string_id));
  expect_load_error(p, merges, p, "is not an integer");
  remove_temp(p);
  g_free(string_id);
  g_free(text);
  g_free(vocab);
  g_free(merges);
}
