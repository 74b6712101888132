/* model_path.h: model references -> model folders. A model is named by a folder path or by a hub
 * name ("openai/clip-vit-base-patch32") that src/hub.h finds in the model cache. */
#ifndef CDB_MODEL_PATH_H
#define CDB_MODEL_PATH_H

#include "src/err.h"

#define CDB_DEFAULT_MODEL "openai/clip-vit-base-patch32"

/* Resolves a model reference to a folder, malloc'd: NULL or "" means $CLIPDB_MODEL, else the
 * default model; an existing folder is used as is; otherwise a cached hub name. The error
 * tells the user how to get the model (`clipdb model pull NAME`). */
char *cdb_model_resolve(const char *name_or_path, cdb_error *err);

#endif
