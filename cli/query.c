/* query.c: parses search queries such as `2:sunset - people + "a red star"` into weighted terms
 * (grammar in query.h). */
#include "cli/query.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/walk.h"

#define MAX_TERMS 64

typedef struct buf {
  char *s;
  size_t n, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n) {
  if (b->n + n + 2 > b->cap) {
    size_t cap = (b->n + n + 2) * 2;
    char *p = realloc(b->s, cap);
    if (!p) return -1;
    b->s = p;
    b->cap = cap;
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = '\0';
  return 0;
}

/* "2.5:" at p -> weight, returns the length consumed (0 when there is no weight prefix). */
static size_t parse_weight(const char *p, double *w) {
  size_t i = 0, digits = 0;
  while (isdigit((unsigned char)p[i]) || p[i] == '.') digits += isdigit((unsigned char)p[i++]) != 0;
  if (digits == 0 || p[i] != ':') return 0;
  char *end;
  double v = strtod(p, &end);
  if (end != p + i || !isfinite(v)) return 0;
  *w = v;
  return i + 1;
}

/* An existing image file, or an http(s) URL (fetched by the extension's clip_embed_image). */
static bool names_image(const char *s) {
  if (strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0) return !strchr(s, ' ');
  struct stat st;
  return (strchr(s, '/') || walk_is_image_name(s)) && stat(s, &st) == 0 && S_ISREG(st.st_mode);
}

static int finish_term(query *q, buf *phrase, double sign, double weight, cdb_error *err) {
  if (!phrase->s || phrase->n == 0) return cdb_error_set(err, "query: a term is empty");
  if (q->n == MAX_TERMS) return cdb_error_set(err, "query: more than %d terms", MAX_TERMS);
  if (!q->terms && !(q->terms = calloc(MAX_TERMS, sizeof *q->terms)))
    return cdb_error_set(err, "out of memory");
  query_term *t = &q->terms[q->n++];
  t->weight = sign * weight;
  t->text = phrase->s;
  t->is_image = names_image(t->text);
  *phrase = (buf){0};
  return 0;
}

int query_parse(const char *text, query *out, cdb_error *err) {
  *out = (query){0};
  buf phrase = {0};
  double sign = 1, weight = 1;
  bool term_started = false; /* a weight or any word seen since the last sign */
  const char *p = text;
  for (;;) {
    while (isspace((unsigned char)*p)) p++;
    if (!*p) break;
    size_t wlen = strcspn(p, " \t\r\n\v\f");
    if (wlen == 1 && (*p == '+' || *p == '-')) { /* a sign ends the current term */
      if (term_started && finish_term(out, &phrase, sign, weight, err) != 0) goto fail;
      if (!term_started && out->n > 0) {
        cdb_error_set(err, "query: two signs in a row");
        goto fail;
      }
      sign = *p == '-' ? -1 : 1;
      weight = 1;
      term_started = false;
      p++;
      continue;
    }
    if (!term_started) {
      p += parse_weight(p, &weight);
      term_started = true;
      if (!*p || isspace((unsigned char)*p)) continue;
    }
    if (phrase.n && buf_add(&phrase, " ", 1) != 0) goto oom;
    if (*p == '"') {
      const char *close = strchr(p + 1, '"');
      if (!close) {
        cdb_error_set(err, "query: unmatched double quote");
        goto fail;
      }
      if (buf_add(&phrase, p + 1, (size_t)(close - p - 1)) != 0) goto oom;
      p = close + 1;
    } else {
      size_t n = strcspn(p, " \t\r\n\v\f\"");
      if (buf_add(&phrase, p, n) != 0) goto oom;
      p += n;
    }
  }
  if (!term_started) {
    cdb_error_set(err, out->n ? "query: ends with a sign" : "query: empty");
    goto fail;
  }
  if (finish_term(out, &phrase, sign, weight, err) != 0) goto fail;
  return 0;
oom:
  cdb_error_set(err, "out of memory");
fail:
  free(phrase.s);
  query_free(out);
  return -1;
}

void query_free(query *q) {
  for (size_t i = 0; i < q->n; i++) free(q->terms[i].text);
  free(q->terms);
  *q = (query){0};
}
