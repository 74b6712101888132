/* fuzz_cli_query.c: libFuzzer target for the CLI's small grammars: the search query
 * (cli/query.h: signs, weights, quoted phrases, image terms), the --before/--after DATE shape
 * (cli_check_date) and the EXIF date reader (meta_parse_exif_date). Byte 0 picks the parser;
 * the rest is the text (NUL-terminated copy). Invariants: a parsed query has at least one
 * term, each with a non-empty text and a finite weight; an error has a message; an
 * accepted date has one of the documented shapes; an EXIF date becomes "YYYY-MM-DD HH:MM:SS". */
#include <ctype.h>
#include <math.h>

#include "cli/db.h"
#include "cli/meta.h"
#include "cli/query.h"
#include "tests/fuzz/fuzz_common.h"

static void check_query(const char *text) {
  query q = {0};
  cdb_error err = {{0}};
  if (query_parse(text, &q, &err) != 0) {
    FUZZ_CHECK(err.msg[0] != '\0');
    return;
  }
  FUZZ_CHECK(q.n >= 1);
  for (size_t i = 0; i < q.n; i++) {
    FUZZ_CHECK(q.terms[i].text && q.terms[i].text[0] != '\0');
    FUZZ_CHECK(isfinite(q.terms[i].weight)); /* 0 is allowed: search reports "terms cancel out" */
  }
  query_free(&q);
}

static void check_date(const char *s) {
  if (cli_check_date(s) != 0) return;
  size_t n = strlen(s);
  FUZZ_CHECK(n == 4 || n == 7 || n == 10 || n == 16 || n == 19);
  for (size_t i = 0; i < n; i++) FUZZ_CHECK(isdigit((unsigned char)s[i]) || strchr("-: T", s[i]));
}

static void check_exif_date(const char *s) {
  char out[20];
  memset(out, 'x', sizeof out);
  if (meta_parse_exif_date(s, out) != 0) return;
  FUZZ_CHECK(out[19] == '\0' && strlen(out) == 19);
  FUZZ_CHECK(out[4] == '-' && out[7] == '-' && out[10] == ' ' && out[13] == ':' && out[16] == ':');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  char *text = malloc(size);
  if (!text) abort();
  memcpy(text, data + 1, size - 1);
  text[size - 1] = '\0';
  switch (data[0] % 3) {
    case 0: check_query(text); break;
    case 1: check_date(text); break;
    default: check_exif_date(text); break;
  }
  free(text);
  return 0;
}
