/* output.h (cli-internal): result printing shared by the commands: paths, JSON text, hits. */
#ifndef CLI_OUTPUT_H
#define CLI_OUTPUT_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>

#include "cli/db.h"

typedef enum { OUTPUT_TEXT, OUTPUT_JSON, OUTPUT_PATHS, OUTPUT_PATHS_NUL } output_format;

/* Writes prefix and path and a newline. A path is written as it is, unless it holds a control
 * character (a newline would split it in two) or does not start with '/': then in the shell's
 * ANSI-C quoting, $'/photos/a\nb.jpg' (\n \t \r \\ \' and \xHH), which no raw path (absolute,
 * so starting with '/') can be mistaken for. Other bytes, invalid UTF-8 included, are as stored. */
void output_path_line(FILE *out, const char *prefix, const char *path);

/* A JSON string of s as valid UTF-8: each invalid byte becomes U+FFFD. */
json_object *output_json_text(const char *s);

/* Adds "key": path (as output_json_text) to o and, only when the path is not valid UTF-8,
 * "key_bytes": its exact bytes in base64, so that scripts can still open the file. */
void output_json_path(json_object *o, const char *key, const char *path);

/* text: "SCORE<TAB>PATH" per line, "SCORE<TAB>PATH<TAB>hh:mm:ss" for a video's best moment
 * (with a thumbnail under each when preview is set); JSON: [{"path", "score", "rowid", "date",
 * "width", "height", "t", "moments"}, ...] (t: seconds, null for a photo; moments: [{t, score}]
 * best first); paths: one per line. */
void output_hits(const cli_hit *hits, int n, output_format fmt, bool preview);

#endif
