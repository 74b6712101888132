/* test_core.c: the shared core (errors, files, JSON helpers, worker pool, model paths, cache). */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/err.h"
#include "src/file.h"
#include "src/hub.h"
#include "src/json.h"
#include "src/model_path.h"
#include "src/pool.h"

static char *write_temp(const char *content) {
  char *path = strdup("/tmp/clipdb-core-XXXXXX");
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
  close(fd);
  return path;
}

Test(err, prefix_adds_context) {
  cdb_error err;
  cr_assert_eq(cdb_error_set(&err, "bad %s", "thing"), -1);
  cdb_error_prefix(&err, "file %d", 3);
  cr_assert_str_eq(err.msg, "file 3: bad thing");
  cr_assert_eq(cdb_error_set(NULL, "ignored"), -1);
}

Test(file, read_respects_limit_and_reports_missing) {
  char *path = write_temp("hello");
  cdb_error err;
  size_t len;
  char *buf = cdb_file_read(path, 100, &len, &err);
  cr_assert_not_null(buf);
  cr_assert_eq(len, 5);
  cr_assert_str_eq(buf, "hello");
  free(buf);
  cr_assert_null(cdb_file_read(path, 4, NULL, &err));
  cr_assert(strstr(err.msg, "more than the 4 allowed"), "%s", err.msg);
  unlink(path);
  cr_assert_null(cdb_file_read(path, 100, NULL, &err));
  cr_assert(strstr(err.msg, "No such file"), "%s", err.msg);
  free(path);
}

Test(json, typed_lookups_and_errors) {
  cdb_error err;
  const char *text = "{\"a\": 3, \"b\": \"x\", \"c\": 1.5}";
  struct json_object *obj = cdb_json_parse(text, strlen(text), "t.json", &err);
  cr_assert_not_null(obj, "%s", err.msg);
  int64_t a = 0;
  double c = 0;
  const char *b = NULL;
  cr_assert_eq(cdb_json_get_int(obj, "a", "t.json", &a, &err), 0);
  cr_assert_eq(a, 3);
  cr_assert_eq(cdb_json_get_double(obj, "c", "t.json", &c, &err), 0);
  cr_assert_float_eq(c, 1.5, 1e-12);
  cr_assert_eq(cdb_json_get_string(obj, "b", "t.json", &b, &err), 0);
  cr_assert_str_eq(b, "x");
  cr_assert_eq(cdb_json_get_int(obj, "missing", "t.json", &a, &err), 1);
  cr_assert_eq(cdb_json_get_int(obj, "b", "t.json", &a, &err), -1);
  cr_assert(strstr(err.msg, "\"b\" must be an integer"), "%s", err.msg);
  json_object_put(obj);
  cr_assert_null(cdb_json_parse("{\"a\": ", 6, "t.json", &err));
  cr_assert(strstr(err.msg, "t.json: invalid JSON"), "%s", err.msg);
  cr_assert_null(cdb_json_parse("{} x", 4, "t.json", &err));
  cr_assert(strstr(err.msg, "trailing data"), "%s", err.msg);
}

/* Worker threads only record what they saw (Criterion's assertions belong to the test's own
 * thread); the test thread checks it after cdb_parallel returns. */
typedef struct {
  atomic_int hits[64];
  atomic_int bad_index; /* tasks called with ith outside [0, nth) or nth changed */
  int nth;
} pool_probe;

static void mark_task(void *ctx, int ith, int nth) {
  pool_probe *p = ctx;
  if (ith < 0 || ith >= 64 || ith >= nth || nth != p->nth) {
    atomic_fetch_add(&p->bad_index, 1);
    return;
  }
  atomic_fetch_add(&p->hits[ith], 1);
}

Test(pool, every_task_runs_exactly_once) {
  cdb_pool_set_threads(4);
  for (int round = 0; round < 50; round++) {
    pool_probe probe = {0};
    probe.nth = 1 + round % 64;
    cdb_parallel(mark_task, &probe, probe.nth);
    cr_assert_eq(atomic_load(&probe.bad_index), 0, "round %d", round);
    for (int i = 0; i < probe.nth; i++) cr_assert_eq(atomic_load(&probe.hits[i]), 1);
    for (int i = probe.nth; i < 64; i++) cr_assert_eq(atomic_load(&probe.hits[i]), 0);
  }
}

Test(models, cache_paths_and_name_validation) {
  cdb_error err;
  setenv("XDG_CACHE_HOME", "/tmp/clipdb-xdg", 1);
  char *p = cdb_hub_model_dir("openai/clip-vit-base-patch32", &err);
  cr_assert_str_eq(p, "/tmp/clipdb-xdg/clipdb/models/openai--clip-vit-base-patch32");
  free(p);
  cr_assert_null(cdb_hub_model_dir("../etc/passwd", &err));
  cr_assert_null(cdb_hub_model_dir("a/b/c", &err));
  cr_assert_null(cdb_hub_model_dir("noslash", &err));
  char *missing = cdb_model_resolve("nobody/nothing", &err);
  cr_assert_null(missing);
  cr_assert(strstr(err.msg, "clipdb model pull nobody/nothing"), "%s", err.msg);
  char *dir = cdb_model_resolve("/tmp", &err);
  cr_assert_str_eq(dir, "/tmp");
  free(dir);
}
