/* models.h: where models live. A model is named by a directory path or by a hub name
 * ("openai/clip-vit-base-patch32") found in the model cache
 * ($XDG_CACHE_HOME/clipdb/models/ORG--NAME, default ~/.cache/clipdb/models). */
#ifndef CDB_MODELS_H
#define CDB_MODELS_H

#include "src/err.h"

#define CDB_DEFAULT_MODEL "openai/clip-vit-base-patch32"

/* The cache root, malloc'd (caller frees). */
char *cdb_model_cache_dir(void);

/* The cache folder for a hub name ("ORG/NAME" -> <cache>/ORG--NAME), malloc'd. NULL (err set)
 * when the name is not of the form ORG/NAME with safe characters. */
char *cdb_model_cache_path(const char *hub_name, cdb_error *err);

/* Resolves a model reference to a directory, malloc'd: NULL or "" means $CLIPDB_MODEL, else the
 * default model; an existing directory is used as is; otherwise a cached hub name. The error
 * tells the user how to get the model (`clipdb model pull NAME`). */
char *cdb_model_resolve(const char *name_or_path, cdb_error *err);

#endif
