/* json.h: thin helpers over json-c for reading config files with clear errors. */
#ifndef CDB_JSON_H
#define CDB_JSON_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

#include "src/err.h"

/* Parses text (len bytes) as one JSON value; `what` names the source in error messages. */
struct json_object *cdb_json_parse(const char *text, size_t len, const char *what, cdb_error *err);

/* Reads and parses a JSON file of at most max_bytes. */
struct json_object *cdb_json_load_file(const char *path, size_t max_bytes, cdb_error *err);

/* Typed lookups of obj[key]: 0 when found with the right type, 1 when absent (out untouched),
 * -1 (with err set, naming `what` and the key) when present with another type. */
int cdb_json_get_int(struct json_object *obj, const char *key, const char *what, int64_t *out,
                     cdb_error *err);
int cdb_json_get_double(struct json_object *obj, const char *key, const char *what, double *out,
                        cdb_error *err);
int cdb_json_get_string(struct json_object *obj, const char *key, const char *what,
                        const char **out, cdb_error *err);

#endif
