/* model_path.c: model references -> folders (explicit path, CLIPDB_MODEL, or the hub cache). */
#include "src/model_path.h"

#include <stdlib.h>
#include <string.h>

#include "src/file.h"
#include "src/hub.h"

char *cdb_model_resolve(const char *name_or_path, cdb_error *err) {
  const char *ref = name_or_path;
  if (!ref || !ref[0]) ref = getenv("CLIPDB_MODEL");
  if (!ref || !ref[0]) ref = CDB_DEFAULT_MODEL;
  if (cdb_is_dir(ref)) return strdup(ref);
  if (ref[0] == '/' || ref[0] == '.' || !strchr(ref, '/')) {
    cdb_error_set(err, "model \"%s\": no such directory", ref);
    return NULL;
  }
  return cdb_hub_find(ref, err);
}
