/* extension.c: entry points of the clipdb SQLite extension and its SQL documentation.
 *
 * Loading:  .load ./build/sqlite-ext/clipdb        (sqlite3 shell)
 *           conn.load_extension("build/sqlite-ext/clipdb")   (Python)
 *           clipdb_register(db, &errmsg)          (programs linking the static clipdb_sql)
 *
 * Vectors are little-endian float32 BLOBs. Models are named by a directory, a cached hub name
 * ("openai/clip-vit-base-patch32"), or a name registered with clip_model(); NULL/omitted means
 * the model registered as 'default', else $CLIPDB_MODEL, else the default hub model. A model is
 * loaded once per process and shared by all connections.
 *
 * Scalar functions
 *   clip_embed_text(text [, model])        -> BLOB   normalised text embedding
 *   clip_embed_image(source [, model])     -> BLOB   source: image bytes (BLOB), a file path or an
 *                                                     http(s) URL (TEXT). Direct use only.
 *   clip_similarity(a, b)                  -> REAL   cosine similarity of two vectors
 *   clip_vec_add(a, b), clip_vec_sub(a, b) -> BLOB   element-wise (not renormalised)
 *   clip_vec_scale(a, s)                   -> BLOB
 *   clip_vec_normalize(a)                  -> BLOB   unit length
 *   clip_vec_to_json(a)                    -> TEXT   "[0.1,...]"
 *   clip_vec_from_json(json)               -> BLOB
 *   clip_classify(image, label, ...)       -> TEXT   zero-shot: [{"label":..,"probability":..,
 *                                                     "score":..},...] (score: the older name of
 *                                                     probability), most likely first; prompt
 *                                                     "a photo of a {}.", as `clipdb classify`
 *   clip_classify_templates(image, templates_json, label, ...)  same, averaging the prompts
 *                                                     of a JSON array of templates with "{}"
 *     (image: image bytes / path / URL, or an embedding BLOB of the model's dims; default model.
 *      The labels may instead be one JSON object '{"labels": [...], "model": NAME}' to use the
 *      model NAME, a directory or cached hub name.)
 *   JSON results print numbers as the shortest decimal that reads back as the same float32 and
 *   do not escape "/".
 *   clip_model(name, path)                 -> TEXT   registers a model (a directory or a cached
 *                                                     hub name, resolved as clip_embed_text does)
 *                                                     under a name for this connection
 *                                                     ('default' replaces the
 *                                                     default; loading the extension again keeps
 *                                                     it); returns JSON {name, path, dims,
 *                                                     identity, precision}
 *   clip_version()                         -> TEXT
 *   (a table argument is resolved as SQL resolves a table name: 'aux.photos' is the table of schema
 *    aux; an unqualified name is looked up in temp, then main, then attached schemas in order)
 *   clip_index_info(table)                 -> TEXT   JSON of the live index: kind ("flat"/"ivf"),
 *                                                     factory, nlist, nprobe, count, mapped;
 *                                                     embed_batches, embedded_rows: encoder calls
 *                                                     and rows embedded for the table by this
 *                                                     connection (batching at work: rows/batch);
 *                                                     model (the name as created, "" = default)
 *                                                     and model_identity (of the model the
 *                                                     vectors come from); null for a dims= table;
 *                                                     precision: "f32"/"bf16"/"int8" of the
 *                                                     images' vectors, "mixed" when several were
 *                                                     written (accepted: each keeps cosine
 *                                                     >= 0.9998 to f32),
 *                                                     null before the first image
 *
 * The clip virtual table
 *   CREATE VIRTUAL TABLE photos USING clip(model=NAME, index=auto, taken_at TEXT, album TEXT);
 *   options:  model=NAME   the encoder (omitted: the default model)
 *             dims=N       a table for precomputed vectors only, without a model
 *             index=auto | flat | 'IVF,Flat' | 'IVF256,SQ8' (any FAISS factory string; quote
 *                          commas). auto: exact below 10,000 rows, then IVF<n>,SQ8 (8-bit codes;
 *                          the k x 4 best candidates, at least k + 32, are re-ranked by their
 *                          exact vectors from photos_vectors: distances are exact); 'IVF,Flat'
 *                          keeps raw float copies in the index (4x its memory and cache file)
 *             nlist=N, nprobe=N  index parameters (0/omitted: nlist from the size, nprobe
 *                                measured on the vectors at training)
 *             autotrain=on|off   on (default): COMMIT trains the IVF index when it has grown
 *                          enough (the first time at 10,000 rows); off: only 'train' does
 *             image_paths=on|off on (default): image may be a file path or URL (the table is
 *                          then direct-only, see below); off: image bytes only
 *             each option at most once
 *   columns:  image      BLOB image bytes or TEXT file path / URL, stored as given
 *             text       TEXT
 *             embedding  float32 BLOB: read it, or write it to store a precomputed vector
 *             user columns as declared (name [type] [COLLATE collation]; constraints such as
 *             NOT NULL, DEFAULT, UNIQUE, CHECK are refused: the table would not apply them)
 *   hidden:   distance (1 - cosine, in KNN queries), k, nprobe, and a column named like the table
 *             (the MATCH operand and the command column); so a table cannot be named (CREATE
 *             or ALTER TABLE RENAME) like any of its columns: image, text, embedding, distance,
 *             k, nprobe, rowid or a user column
 *   Inserting a row with image embeds the image, with only text embeds the text; a non-NULL
 *   embedding wins over both. UPDATE re-embeds when the image changes, or the embedding is set
 *   (NULL: from the image or text); a text change re-embeds only a row whose vector came from
 *   its text (a supplied embedding is kept). Stored embeddings are normalised; an encoder output
 *   that is not finite (a damaged model) is an error, never stored or returned.
 *   Direct use only: writing a path or URL into image reads that file or fetches that URL, so
 *   the table is SQLITE_VTAB_DIRECTONLY, like clip_embed_image: triggers and views stored in a
 *   database file cannot use it ("unsafe use of virtual table"), and no trigger may write it.
 *   SQLite tells a virtual table nothing about where a write comes from, so this covers the
 *   whole table, BLOB bytes and reads included; the application's statements and its TEMP
 *   views use it as usual (clip_search works anywhere: its query only embeds, never fetches).
 *   A table created with image_paths=off takes image bytes only (any TEXT image is an error,
 *   wherever it comes from), and so triggers and views may use it like any table.
 *   Batched embedding: an INSERT/UPDATE checks and preprocesses its image (fetch, decode,
 *   resize) or text (UTF-8, tokenizing) at once, so a bad one fails that statement and changes
 *   nothing, writes the row, and queues the input; the encoder then runs once per 32 images /
 *   64 texts (one pass over the weights). The queue is embedded when full and before anything
 *   needs the vectors: a MATCH query or clip_search, reading the embedding column of a queued
 *   row, commands, clip_index_info, SAVEPOINT, RENAME and COMMIT (a commit persists every
 *   vector). So many rows per transaction (executemany inside BEGIN...COMMIT, or INSERT ...
 *   SELECT) embed in batches; one row per transaction embeds alone. ROLLBACK / ROLLBACK TO drop
 *   the queued rows unembedded. Single-row statements inside a transaction open no statement
 *   savepoint, so they keep batching; a multi-row statement flushes the queue once at its start.
 *   Until then the t_vectors shadow table lacks the queued rows (SQL through t always sees them).
 *
 *   SELECT rowid, image, distance FROM photos WHERE photos MATCH :q AND k = 10;
 *   SELECT rowid, distance FROM photos WHERE photos MATCH :q AND album = 'x' ORDER BY distance
 *     LIMIT 10;   -- filters on user columns apply before the top-k cut
 *   ... AND nprobe = 32      -- IVF probes for this query
 *   ... AND distance < 0.7   -- with k: drops farther rows; without k: a range search
 *   Without k the search grows as rows are read (SQLite 3.40 does not hand LIMIT to a MATCH
 *   query), so LIMIT/OFFSET and ORDER BY distance work; k = N is the fastest form.
 *   What k means: the k nearest rows among those that satisfy every condition on the table
 *   that SQLite hands it, applied before the cut (k rows come back when k exist):
 *   =, <, <=, >, >=, !=, IN (a list or a subquery), BETWEEN, LIKE, GLOB, REGEXP, IS, IS NOT,
 *   IS NULL, IS NOT NULL on rowid, image, text and user columns, with the collation SQLite
 *   compares with (declared or an explicit COLLATE), and an OR of equalities on one column
 *   (SQLite turns it into IN). k, nprobe take one value (k = N); distance with k: < or <=.
 *   In a join, a condition whose value comes from another table (ON m.id = t.rowid, AND
 *   t.album = m.name) is applied the same way: the table is searched once per combination of
 *   those values, so k applies per row of the other tables (every plan SQLite may choose does
 *   this); for the k nearest among rows another table selects, write
 *   rowid IN (SELECT id FROM m WHERE ...). A condition SQLite would apply only after the cut is
 *   an error rather than fewer rows: another OR over the table's columns, a distance test other
 *   than < / <=, k given as k > N or k IN (...), a collation named other than [A-Za-z0-9_],
 *   != or IS NOT on a column declared with a collation (SQLite does not say which applies).
 *   SQLite hands virtual tables no expression over a column (lower(album) = 'x', LIKE with
 *   ESCAPE, album COLLATE NOCASE != 'x': write album != 'x' COLLATE NOCASE), no OR with such a
 *   term or with rowid IS NULL, and nothing to a table placed left of a CROSS JOIN from the
 *   tables right of it: such conditions filter the k rows afterwards; put them in
 *   rowid IN (SELECT rowid FROM t WHERE ...) or use ORDER BY distance LIMIT N without k, whose
 *   growing search applies every condition before the LIMIT.
 *   :q is TEXT (embedded with the table's model), a BLOB of dims float32 values (an
 *   embedding), or another BLOB (image bytes).
 *   SELECT * FROM clip_search('photos', :q [, k [, nprobe]]) -- rowid, distance, image, text,
 *     embedding, metadata (JSON object of the user columns); k defaults to 10
 *
 * Videos
 *   SELECT frame, t FROM clip_video_frames(path [, interval [, model [, scene]]])
 *     a video file's sampled frames: one every `interval` seconds (default 2; widened so that a
 *     video gives at most 1800, CLIPDB_VIDEO_MAX_SAMPLES), each the first decoded frame at or
 *     after its time (when keyframes are that dense, the first keyframe: only keyframes are
 *     then decoded). frame: PNG bytes at the size the model (default: the default model)
 *     resizes images to before its centre crop, lossless, so a clip table embeds it exactly as
 *     the frame's pixels; t: seconds from the start. scene (a cosine in (0, 1]): embed each
 *     sample and yield it only when its similarity to the last yielded frame is below scene
 *     (a static shot gives one row). The hidden columns path, interval, model, scene read back
 *     as given, so
 *       INSERT INTO clips(image, video, t) SELECT frame, path, t FROM clip_video_frames('x.mp4');
 *     fills a table `CREATE VIRTUAL TABLE clips USING clip(video TEXT, t REAL)`.
 *     Local files only (no URL), in self-contained containers (MP4/MOV, Matroska/WebM, AVI,
 *     MPEG-PS/TS, FLV, Ogg, raw H.264/HEVC; no playlists). A bad file is an error naming it:
 *     not a video, no video stream, frames above CLIPDB_MAX_IMAGE_PIXELS, nothing decodable,
 *     over the per-file budgets (CLIPDB_VIDEO_MAX_SECONDS, default 600 s of wall time;
 *     CLIPDB_VIDEO_MAX_FRAMES, default 2,000,000 decoded frames). Direct use only, like
 *     clip_embed_image: it reads the files it is given.
 *
 *   INSERT INTO photos(photos) VALUES('train' | 'rebuild' | 'optimize' | 'integrity-check');
 *     (a command row sets no other column)
 *     train: (re)train the IVF index now; optimize: train if it has grown enough, or retrain
 *     it for its size when its lists no longer fit (most rows deleted, lists unbalanced; back to
 *     exact search when too few rows remain to train), and compact the log;
 *     integrity-check: rows and vectors match, vectors normalised, the index holds exactly them;
 *     rebuild: reload the index from the vectors, dropping vectors whose row was deleted from
 *     photos_rows directly and embedding again (from the stored image or text) rows whose vector
 *     was deleted from photos_vectors; a row that cannot be (file gone, no source) is an error
 *     naming it, and the command then changes nothing. When the model name now loads a model
 *     of another identity (same dims), every row is embedded again with it and the table
 *     records the new identity.
 *   Model identity: a table stores the identity of the model its vectors come from (SHA-256 of
 *   config.json and of the weights' SHA-256, every shard's for a sharded checkpoint: any
 *   weight counts). When its model name loads a model of another identity, everything that
 *   embeds for the table (MATCH with a TEXT
 *   or image BLOB, clip_search with one, INSERT/UPDATE that embed) fails naming both identities
 *   and the ways out: 'rebuild' above, or register the original model with clip_model().
 *   Vector queries and reads still work. Tables from earlier versions store the identity of
 *   config.json + the safetensors header: accepted when the model matches it, and replaced by
 *   the full identity at the table's next commit.
 *
 * Storage: shadow tables photos_config, photos_rows, photos_vectors, photos_changes and
 * photos_index hold everything; the in-memory FAISS index is a cache (see cache.c). A trained
 * (IVF) index is also kept as a memory-mappable cold-start file "<db>-clip-<table>.idx" next to
 * the database (written only from committed state, checksummed, rebuilt when missing, stale or
 * damaged; never written for a read-only or immutable database; CLIPDB_INDEX_CACHE=0 turns it
 * off). 'integrity-check' also compares the cache file with the stored vectors. COMMIT
 * trains the index when it has grown enough (index/ivf.h policy) and then rewrites the snapshot
 * (the lists' ids and centroids; the vectors stay in photos_vectors only, codes are re-encoded
 * from them on load) and the cache file (SQ8: codes, a quarter of the raw vectors);
 * otherwise a commit only appends to the tables. */
#include "sqlite-ext/clipdb.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef SQLITE_CORE
#include <sqlite3.h>
#else
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1
#endif

#include "sqlite-ext/internal.h"
#include "sqlite-ext/table.h"

/* The connection context lives as long as the `clip` module (until sqlite3_close). Loading the
 * extension again on a connection re-registers everything with the same context (so models
 * registered with clip_model() stay): each registration of the module holds one reference. */
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static cdbx_conn *conns;

static void conn_free(void *p) {
  cdbx_conn *conn = p;
  if (!conn) return;
  pthread_mutex_lock(&conns_lock);
  int last = --conn->refs == 0;
  for (cdbx_conn **pc = &conns; last && *pc; pc = &(*pc)->next_conn) {
    if (*pc == conn) {
      *pc = conn->next_conn;
      break;
    }
  }
  pthread_mutex_unlock(&conns_lock);
  if (!last) return;
  cdbx_conn_free_models(conn);
  free(conn);
}

/* The context of db, created on first registration; one more reference either way. */
static cdbx_conn *conn_acquire(sqlite3 *db) {
  pthread_mutex_lock(&conns_lock);
  cdbx_conn *conn = conns;
  while (conn && conn->db != db) conn = conn->next_conn;
  if (!conn && (conn = calloc(1, sizeof *conn)) != NULL) {
    conn->db = db;
    conn->next_conn = conns;
    conns = conn;
  }
  if (conn) conn->refs++;
  pthread_mutex_unlock(&conns_lock);
  return conn;
}

static int register_all(sqlite3 *db, char **errmsg) {
  cdbx_conn *conn = conn_acquire(db);
  if (!conn) return SQLITE_NOMEM;
  /* The `clip` module owns one reference (SQLite calls conn_free even when registration fails,
   * and when a later registration replaces this one). */
  int rc = sqlite3_create_module_v2(db, "clip", cdbx_vtab_module(), conn, conn_free);
  if (rc == SQLITE_OK) rc = cdbx_register_search(db, conn);
  if (rc == SQLITE_OK) rc = cdbx_register_video(db, conn);
  if (rc == SQLITE_OK) rc = cdbx_register_functions(db, conn);
  if (rc != SQLITE_OK && errmsg) {
    *errmsg = sqlite3_mprintf("clipdb: registration failed: %s", sqlite3_errstr(rc));
  }
  return rc;
}

int clipdb_register(sqlite3 *db, char **errmsg) { return register_all(db, errmsg); }

static int api_error(char **errmsg, int rc, const char *msg) {
  if (errmsg) *errmsg = sqlite3_mprintf("%s", msg);
  return rc;
}

int clipdb_table_model(sqlite3 *db, const char *table, clip_model **model, char **errmsg) {
  *model = NULL;
  pthread_mutex_lock(&conns_lock);
  cdbx_conn *conn = conns;
  while (conn && conn->db != db) conn = conn->next_conn;
  pthread_mutex_unlock(&conns_lock);
  if (!conn) return api_error(errmsg, SQLITE_MISUSE, "clipdb is not registered on this connection");
  cdbx_table *t = cdbx_conn_open_table(db, conn, table);
  if (!t) {
    if (errmsg) *errmsg = sqlite3_mprintf("no clip table named \"%s\"", table);
    return SQLITE_ERROR;
  }
  clip_model *m = cdbx_table_model(t);
  if (!m) {
    const char *why = t->base.zErrMsg ? t->base.zErrMsg : "the model could not be loaded";
    int rc = api_error(errmsg, SQLITE_ERROR, why);
    sqlite3_free(t->base.zErrMsg);
    t->base.zErrMsg = NULL;
    return rc;
  }
  cdbx_registry_retain(m);
  *model = m;
  return SQLITE_OK;
}

void clipdb_model_release(clip_model *model) { cdbx_registry_release(model); }

#ifndef SQLITE_CORE
__attribute__((visibility("default"))) int sqlite3_clipdb_init(sqlite3 *db, char **errmsg,
                                                               const sqlite3_api_routines *api) {
  SQLITE_EXTENSION_INIT2(api);
  return register_all(db, errmsg);
}
#endif
