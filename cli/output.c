/* output.c: result printing shared by the commands: paths, JSON text, search/similar hits. */
#include "cli/output.h"

#include <glib.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "cli/moments.h"
#include "cli/preview.h"

#define PREVIEW_PX 160

static void write_path(FILE *out, const char *path);

static bool needs_quoting(const char *path) {
  if (path[0] != '/') return true;
  for (const unsigned char *p = (const unsigned char *)path; *p; p++)
    if (*p < 0x20 || *p == 0x7f) return true;
  return false;
}

void output_path_line(FILE *out, const char *prefix, const char *path) {
  fputs(prefix, out);
  write_path(out, path);
  fputc('\n', out);
}

static void write_path(FILE *out, const char *path) {
  if (!needs_quoting(path)) {
    fputs(path, out);
    return;
  }
  fputs("$'", out);
  for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
    switch (*p) {
      case '\n': fputs("\\n", out); break;
      case '\t': fputs("\\t", out); break;
      case '\r': fputs("\\r", out); break;
      case '\\': fputs("\\\\", out); break;
      case '\'': fputs("\\'", out); break;
      default:
        if (*p < 0x20 || *p == 0x7f) fprintf(out, "\\x%02x", *p);
        else fputc(*p, out);
    }
  }
  fputc('\'', out);
}

json_object *output_json_text(const char *s) {
  if (g_utf8_validate(s, -1, NULL)) return json_object_new_string(s);
  char *valid = g_utf8_make_valid(s, -1);
  json_object *o = json_object_new_string(valid);
  g_free(valid);
  return o;
}

void output_json_path(json_object *o, const char *key, const char *path) {
  json_object_object_add(o, key, output_json_text(path));
  if (g_utf8_validate(path, -1, NULL)) return;
  char *b64 = g_base64_encode((const guchar *)path, strlen(path));
  char *bytes_key = g_strconcat(key, "_bytes", NULL);
  json_object_object_add(o, bytes_key, json_object_new_string(b64));
  g_free(bytes_key);
  g_free(b64);
}

/* "t": seconds into a video (null for a photo) and "moments": its other matching frames. */
static void add_json_moments(json_object *o, const cli_hit *h) {
  json_object_object_add(o, "t", h->t >= 0 ? json_object_new_double(h->t) : NULL);
  json_object *moments = json_object_new_array();
  for (int i = 0; i < h->n_moments; i++) {
    json_object *m = json_object_new_object();
    json_object_object_add(m, "t", json_object_new_double(h->moments[i].t));
    json_object_object_add(m, "score", json_object_new_double(h->moments[i].score));
    json_object_array_add(moments, m);
  }
  json_object_object_add(o, "moments", moments);
}

void output_hits(const cli_hit *hits, int n, output_format fmt, bool preview) {
  if (fmt == OUTPUT_JSON) {
    json_object *arr = json_object_new_array();
    for (int i = 0; i < n; i++) {
      json_object *o = json_object_new_object();
      output_json_path(o, "path", hits[i].path);
      json_object_object_add(o, "score", json_object_new_double(hits[i].score));
      json_object_object_add(o, "rowid", json_object_new_int64(hits[i].rowid));
      json_object_object_add(o, "date", hits[i].date ? json_object_new_string(hits[i].date) : NULL);
      json_object_object_add(o, "width", json_object_new_int(hits[i].width));
      json_object_object_add(o, "height", json_object_new_int(hits[i].height));
      add_json_moments(o, &hits[i]);
      json_object_array_add(arr, o);
    }
    puts(json_object_to_json_string_ext(arr, CLI_JSON_FLAGS));
    json_object_put(arr);
    return;
  }
  if (fmt == OUTPUT_PATHS_NUL) { /* raw bytes, each path ended by NUL, as find -print0 */
    for (int i = 0; i < n; i++) fwrite(hits[i].path, 1, strlen(hits[i].path) + 1, stdout);
    return;
  }
  preview_kind kind = preview ? preview_detect() : PREVIEW_NONE;
  for (int i = 0; i < n; i++) {
    char score[32] = "";
    if (fmt != OUTPUT_PATHS) snprintf(score, sizeof score, "%.4f\t", hits[i].score);
    if (fmt == OUTPUT_PATHS || hits[i].t < 0) {
      output_path_line(stdout, score, hits[i].path);
    } else { /* a video: its best moment in a third column */
      char at[32];
      cli_format_moment(hits[i].t, at);
      fputs(score, stdout);
      write_path(stdout, hits[i].path);
      printf("\t%s\n", at);
    }
    if (fmt == OUTPUT_PATHS) continue;
    if (kind != PREVIEW_NONE && hits[i].t < 0) preview_show(kind, hits[i].path, PREVIEW_PX);
  }
}
