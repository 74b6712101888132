/* query.h (cli-internal): the search query grammar (query arithmetic).
 *
 *   query  := [sign] term { sign term }
 *   sign   := "+" | "-"            a word of its own (spaces around it), so "t-shirt" is text
 *   term   := [weight ":"] phrase  weight: a decimal number, e.g. 2:sunset, 0.5:"blue sky"
 *   phrase := words up to the next sign | "double-quoted text" (signs inside are text)
 *
 * A phrase naming an existing image file (has a '/' or an image extension) or an http(s) URL is
 * an image term.
 * The query vector is normalise(sum of sign * weight * normalise(embedding(term))). */
#ifndef CLI_QUERY_H
#define CLI_QUERY_H

#include <stdbool.h>
#include <stddef.h>

#include "src/err.h"

typedef struct query_term {
  double weight; /* signed: "- people" gives -1 */
  char *text;    /* malloc'd: the phrase, or the image path */
  bool is_image;
} query_term;

typedef struct query {
  query_term *terms;
  size_t n;
} query;

int query_parse(const char *text, query *out, cdb_error *err);
void query_free(query *q);

/* The query's unit vector (grammar above) with the library's model; *out malloc'd (dim floats).
 * Image terms use the photo's stored vector when it is indexed. */
struct cli_db;
int query_vector(struct cli_db *db, const query *q, float **out, int *dim, cdb_error *err);

#endif
