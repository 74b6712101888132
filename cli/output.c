/* output.c: search/similar result printing shared by the commands. */
#include "cli/output.h"

#include <getopt.h>
#include <glib.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/preview.h"

#define PREVIEW_PX 160
#define MAX_TOP 10000
#define DEFAULT_TOP 10

static bool needs_quoting(const char *path) {
  if (path[0] != '/') return true;
  for (const unsigned char *p = (const unsigned char *)path; *p; p++)
    if (*p < 0x20 || *p == 0x7f) return true;
  return false;
}

void output_path_line(FILE *out, const char *prefix, const char *path) {
  fputs(prefix, out);
  if (!needs_quoting(path)) {
    fputs(path, out);
    fputc('\n', out);
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
  fputs("'\n", out);
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
      json_object_array_add(arr, o);
    }
    puts(json_object_to_json_string_ext(arr, CLI_JSON_FLAGS));
    json_object_put(arr);
    return;
  }
  preview_kind kind = preview ? preview_detect() : PREVIEW_NONE;
  for (int i = 0; i < n; i++) {
    char score[32] = "";
    if (fmt != OUTPUT_PATHS) snprintf(score, sizeof score, "%.4f  ", hits[i].score);
    output_path_line(stdout, score, hits[i].path);
    if (fmt == OUTPUT_PATHS) continue;
    if (kind != PREVIEW_NONE) preview_show(kind, hits[i].path, PREVIEW_PX);
  }
}

int search_parse_args(int argc, char **argv, const char *cmd, const char *usage,
                      search_args *a) {
  static const struct option longopts[] = {
      {"top", required_argument, 0, 'n'},   {"json", no_argument, 0, 'j'},
      {"paths", no_argument, 0, 'p'},       {"after", required_argument, 0, 'a'},
      {"before", required_argument, 0, 'b'}, {"threshold", required_argument, 0, 't'},
      {"preview", no_argument, 0, 'v'},     {"local", no_argument, 0, 'l'},
      {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
  *a = (search_args){.top = DEFAULT_TOP, .threshold = -INFINITY};
  int c;
  while ((c = getopt_long(argc, argv, "hn:", longopts, NULL)) != -1) {
    switch (c) {
      case 'h': return fputs(usage, stdout), -1;
      case 'n':
        if (!cli_parse_int(optarg, 1, MAX_TOP, &a->top))
          return cli_usage_error(cmd, "--top wants a number from 1 to %d", MAX_TOP);
        break;
      case 'j': a->fmt = OUTPUT_JSON; break;
      case 'p': a->fmt = OUTPUT_PATHS; break;
      case 'a': a->after = optarg; break;
      case 'b': a->before = optarg; break;
      case 't':
        if (!cli_parse_float(optarg, &a->threshold) || a->threshold < -1 || a->threshold > 1)
          return cli_usage_error(cmd, "--threshold wants a number from -1 to 1");
        break;
      case 'v': a->preview = true; break;
      case 'l': a->local = true; break;
      default: return cli_usage_error(cmd, "unknown option");
    }
  }
  if ((a->after && cli_check_date(a->after)) || (a->before && cli_check_date(a->before)))
    return cli_usage_error(cmd, "dates look like 2021, 2021-06, 2021-06-30 or "
                                     "\"2021-06-30 18:00\"");
  return 0;
}

