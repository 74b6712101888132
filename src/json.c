/* json.c: json-c parsing and typed lookups with error messages that name the file and key. */
#include "src/json.h"

#include "src/file.h"

#include <stdlib.h>

struct json_object *cdb_json_parse(const char *text, size_t len, const char *what, cdb_error *err) {
  if (len > INT32_MAX) {
    cdb_error_set(err, "%s: JSON too large", what);
    return NULL;
  }
  struct json_tokener *tok = json_tokener_new_ex(64);
  if (!tok) {
    cdb_error_set(err, "%s: out of memory", what);
    return NULL;
  }
  struct json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
  enum json_tokener_error jerr = json_tokener_get_error(tok);
  size_t used = json_tokener_get_parse_end(tok);
  if (jerr != json_tokener_success || !obj) {
    cdb_error_set(err, "%s: invalid JSON at byte %zu: %s", what, used,
                  jerr == json_tokener_continue ? "unexpected end of input"
                                                : json_tokener_error_desc(jerr));
    json_object_put(obj);
    json_tokener_free(tok);
    return NULL;
  }
  json_tokener_free(tok);
  for (; used < len; used++) {
    char c = text[used];
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t' && c != '\0') {
      cdb_error_set(err, "%s: trailing data after JSON value at byte %zu", what, used);
      json_object_put(obj);
      return NULL;
    }
  }
  return obj;
}

struct json_object *cdb_json_load_file(const char *path, size_t max_bytes, cdb_error *err) {
  size_t len;
  char *text = cdb_file_read(path, max_bytes, &len, err);
  if (!text) return NULL;
  struct json_object *obj = cdb_json_parse(text, len, path, err);
  free(text);
  return obj;
}

static int lookup(struct json_object *obj, const char *key, struct json_object **val) {
  if (!obj || !json_object_is_type(obj, json_type_object)) return 1;
  if (!json_object_object_get_ex(obj, key, val) || *val == NULL) return 1;
  return 0;
}

int cdb_json_get_int(struct json_object *obj, const char *key, const char *what, int64_t *out,
                     cdb_error *err) {
  struct json_object *v;
  if (lookup(obj, key, &v)) return 1;
  if (!json_object_is_type(v, json_type_int))
    return cdb_error_set(err, "%s: \"%s\" must be an integer", what, key);
  *out = json_object_get_int64(v);
  return 0;
}

int cdb_json_get_double(struct json_object *obj, const char *key, const char *what, double *out,
                        cdb_error *err) {
  struct json_object *v;
  if (lookup(obj, key, &v)) return 1;
  if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
    return cdb_error_set(err, "%s: \"%s\" must be a number", what, key);
  *out = json_object_get_double(v);
  return 0;
}

int cdb_json_get_string(struct json_object *obj, const char *key, const char *what,
                        const char **out, cdb_error *err) {
  struct json_object *v;
  if (lookup(obj, key, &v)) return 1;
  if (!json_object_is_type(v, json_type_string))
    return cdb_error_set(err, "%s: \"%s\" must be a string", what, key);
  *out = json_object_get_string(v);
  return 0;
}
