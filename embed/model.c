/* model.c: the public encoder API (clip.h): loading and validating a Hugging Face CLIPModel
 * directory, and embedding texts and images (tower preparation is in weights.c). */
#include <glib.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "embed/clip_internal.h"
#include "embed/kernels/kernels.h"
#include "embed/model_impl.h"
#include "src/digest.h"
#include "src/fetch.h"
#include "src/file.h"
#include "src/model_path.h"
#include "src/pool.h"
#include "src/shards.h"
#include "src/vec.h"

#define DEFAULT_MAX_IMAGE_PIXELS 100000000LL
/* Images per forward pass: enough rows for GEMM efficiency, bounded activation memory. */
#define IMAGE_CHUNK 32
#define TEXT_CHUNK 64

clip_params clip_default_params(void) {
  clip_params p = {DEFAULT_MAX_IMAGE_PIXELS};
  const char *env = getenv("CLIPDB_MAX_IMAGE_PIXELS");
  if (env) {
    long long v = atoll(env);
    if (v > 0) p.max_image_pixels = v;
  }
  return p;
}

/* ---- files ---- */

static char *model_file(const char *dir, const char *name, cdb_error *err) {
  char *path = cdb_path_join(dir, name);
  if (!path) {
    cdb_error_set(err, "encoder: out of memory");
    return NULL;
  }
  struct stat st;
  if (stat(path, &st) != 0) {
    cdb_error_set(err,
                  "encoder: model directory %s has no %s; run `clipdb model pull NAME` to "
                  "download a model (e.g. %s)",
                  dir, name, CDB_DEFAULT_MODEL);
    free(path);
    return NULL;
  }
  return path;
}

/* ---- loading ---- */

float clip_read_scalar(const st_tensor *t) {
  float v;
  if (t->dtype == ST_F32) {
    memcpy(&v, t->data, 4);
  } else {
    uint16_t h;
    memcpy(&h, t->data, 2);
    const clip_kernels *kern = &clip_kernels_generic;
    if (t->dtype == ST_F16) kern->f16_to_f32(&h, &v, 1);
    else kern->bf16_to_f32(&h, &v, 1);
  }
  return v;
}

/* The weights' digest: the SHA-256 of model.safetensors, or for a sharded checkpoint the SHA-256
 * of its shards' SHA-256s in the index's order. */
static int weights_sha256(const clip_model *m, const char *weights_path, char hex[65],
                          cdb_error *err) {
  if (m->st.n_shards == 0) return cdb_file_sha256_cached(weights_path, hex, err);
  GChecksum *sum = g_checksum_new(G_CHECKSUM_SHA256);
  int rc = 0;
  for (int i = 0; i < m->st.n_shards && rc == 0; i++) {
    char shard[65];
    rc = cdb_file_sha256_cached(m->st.shards[i].path, shard, err);
    if (rc == 0) g_checksum_update(sum, (const guchar *)shard, 64);
  }
  snprintf(hex, 65, "%s", g_checksum_get_string(sum));
  g_checksum_free(sum);
  return rc;
}

/* identity: SHA-256 of config.json and of the weights' SHA-256, so it changes with any weight
 * (a file's digest is computed once per version of the file: src/digest.h).
 * legacy_identity: SHA-256 of config.json and the safetensors header, what tables created before
 * the weights were covered store; kept for their upgrade. */
static int compute_identity(clip_model *m, const char *config_path, const char *weights_path,
                            cdb_error *err) {
  size_t len;
  char weights_sha[65];
  if (weights_sha256(m, weights_path, weights_sha, err) != 0) return -1;
  char *config = cdb_file_read(config_path, 1u << 20, &len, err);
  if (!config) return -1;
  GChecksum *sum = g_checksum_new(G_CHECKSUM_SHA256);
  g_checksum_update(sum, (const guchar *)config, (gssize)len);
  g_checksum_update(sum, (const guchar *)weights_sha, 64);
  snprintf(m->identity, sizeof m->identity, "%s", g_checksum_get_string(sum));
  g_checksum_reset(sum);
  g_checksum_update(sum, (const guchar *)config, (gssize)len);
  if (m->st.header) g_checksum_update(sum, m->st.header, (gssize)m->st.header_bytes);
  snprintf(m->legacy_identity, sizeof m->legacy_identity, "%s", g_checksum_get_string(sum));
  g_checksum_free(sum);
  free(config);
  return 0;
}

static int exists_in(const char *dir, const char *name) {
  char *path = cdb_path_join(dir, name);
  struct stat st;
  int found = path && stat(path, &st) == 0;
  free(path);
  return found;
}

/* The weights: model.safetensors, else a sharded checkpoint's index (src/shards.h). */
static char *weights_file(const char *dir, cdb_error *err) {
  int sharded = !exists_in(dir, CDB_SINGLE_WEIGHTS) && exists_in(dir, CDB_SHARD_INDEX);
  return model_file(dir, sharded ? CDB_SHARD_INDEX : CDB_SINGLE_WEIGHTS, err);
}

static int open_weights(clip_model *m, const char *path, cdb_error *err) {
  if (g_str_has_suffix(path, CDB_SHARD_INDEX)) return st_open_index(path, &m->st, err);
  return st_open(path, &m->st, err);
}

static int load_files(clip_model *m, const char *dir, cdb_error *err) {
  static const char *const needed[] = {"config.json", NULL, "vocab.json", "merges.txt",
                                       "preprocessor_config.json"};
  char *paths[5] = {0};
  int rc = -1;
  for (int i = 0; i < 5; i++)
    if (!(paths[i] = needed[i] ? model_file(dir, needed[i], err) : weights_file(dir, err)))
      goto done;
  if (clip_config_load(paths[0], &m->cfg, err) != 0 ||
      clip_preprocess_config_load(paths[4], m->cfg.image_size, &m->spec, err) != 0 ||
      open_weights(m, paths[1], err) != 0 || clip_check_tensors(m, err) != 0 ||
      compute_identity(m, paths[0], paths[1], err) != 0)
    goto done;
  m->spec.max_pixels = m->params.max_image_pixels;
  m->logit_scale = clip_read_scalar(st_find(&m->st, "logit_scale"));
  rc = 0;
done:
  for (int i = 0; i < 5; i++) free(paths[i]);
  return rc;
}

clip_model *clip_model_load(const char *dir, const clip_params *params, cdb_error *err) {
  if (!dir) {
    cdb_error_set(err, "encoder: no model directory given");
    return NULL;
  }
  clip_model *m = calloc(1, sizeof *m);
  if (!m || !(m->dir = strdup(dir))) {
    free(m);
    cdb_error_set(err, "encoder: out of memory");
    return NULL;
  }
  m->params = params ? *params : clip_default_params();
  pthread_mutex_init(&m->tok_mu, NULL);
  pthread_mutex_init(&m->text.mu, NULL);
  pthread_mutex_init(&m->vision.mu, NULL);
  if (load_files(m, dir, err) != 0) {
    clip_model_free(m);
    return NULL;
  }
  return m;
}

void clip_model_free(clip_model *m) {
  if (!m) return;
  clip_tower_release(&m->text);
  clip_tower_release(&m->vision);
  if (m->tok) clip_tokenizer_free(m->tok);
  st_close(&m->st);
  pthread_mutex_destroy(&m->tok_mu);
  pthread_mutex_destroy(&m->text.mu);
  pthread_mutex_destroy(&m->vision.mu);
  free(m->dir);
  free(m);
}

int clip_model_dim(const clip_model *m) { return m->cfg.projection_dim; }
const char *clip_model_precision(const clip_model *m) {
  static const char *const names[] = {"f32", "bf16", "int8"};
  return names[clip_tower_ready(&m->vision) ? m->vision.precision
                                            : clip_vision_precision_planned()];
}
int clip_model_image_size(const clip_model *m) { return m->cfg.image_size; }
int clip_model_context_length(const clip_model *m) { return m->cfg.context_length; }
float clip_model_logit_scale(const clip_model *m) { return m->logit_scale; }
const char *clip_model_identity(const clip_model *m) { return m->identity; }
const char *clip_model_legacy_identity(const clip_model *m) { return m->legacy_identity; }
const clip_config *clip_model_config(const clip_model *m) { return &m->cfg; }
const clip_image_spec *clip_model_image_spec(const clip_model *m) { return &m->spec; }

int clip_model_text_ready(const clip_model *m) { return clip_tower_ready(&m->text); }
int clip_model_vision_ready(const clip_model *m) { return clip_tower_ready(&m->vision); }

/* ---- embedding ---- */

static void normalise_rows(float *v, int n, int dim) {
  for (int i = 0; i < n; i++) {
    cdb_vec_normalise(v + (size_t)i * dim, (size_t)dim); /* NaN rows stay NaN: callers check */
  }
}

int clip_tokenize(const clip_model *model, const char *text, size_t len, int32_t *ids,
                  cdb_error *err) {
  clip_model *m = (clip_model *)model; /* the tokenizer is loaded on first use */
  pthread_mutex_lock(&m->tok_mu);
  if (!m->tok) {
    char *vocab = cdb_path_join(m->dir, "vocab.json"),
         *merges = cdb_path_join(m->dir, "merges.txt");
    if (vocab && merges) m->tok = clip_tokenizer_load(vocab, merges, 0, err);
    else cdb_error_set(err, "encoder: out of memory");
    free(vocab);
    free(merges);
  }
  clip_tokenizer *tok = m->tok;
  pthread_mutex_unlock(&m->tok_mu);
  if (!tok) return -1;
  return clip_tokenizer_encode(tok, text, len, ids, m->cfg.context_length, err);
}

int clip_embed_token_ids(clip_model *m, const int32_t *ids, int n, float *out, cdb_error *err) {
  if (n < 0 || (n > 0 && (!ids || !out))) return cdb_error_set(err, "encoder: bad arguments");
  if (n == 0) return 0;
  if (clip_ensure_text(m, err) != 0) return -1;
  int ctx = m->cfg.context_length, dim = m->cfg.projection_dim;
  for (int i = 0; i < n; i += TEXT_CHUNK) {
    int k = n - i < TEXT_CHUNK ? n - i : TEXT_CHUNK;
    if (clip_text_forward(&m->cfg, &m->text_w, ids + (size_t)i * ctx, k, out + (size_t)i * dim,
                          err) != 0)
      return -1;
  }
  normalise_rows(out, n, dim);
  return 0;
}

typedef struct text_prep {
  clip_model *m;
  int rc;
  cdb_error err;
} text_prep;

static void *prepare_text_thread(void *arg) {
  text_prep *p = arg;
  p->rc = clip_ensure_text(p->m, &p->err);
  return NULL;
}

int clip_embed_texts(clip_model *m, const char *const *texts, int n, float *out, cdb_error *err) {
  if (n < 0 || (n > 0 && (!texts || !out))) return cdb_error_set(err, "encoder: bad arguments");
  int ctx = m->cfg.context_length;
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)ctx * (size_t)(n ? n : 1));
  if (!ids) return cdb_error_set(err, "encoder: out of memory for %d texts", n);
  /* On first use the text tower is prepared (memory-bound packing) while this thread loads the
   * tokenizer and tokenizes (CPU-bound): the two overlap. */
  text_prep prep = {m, 0, {{0}}};
  pthread_t th;
  int started = n > 0 && !clip_model_text_ready(m) &&
                pthread_create(&th, NULL, prepare_text_thread, &prep) == 0;
  int rc = 0;
  for (int i = 0; i < n && rc == 0; i++) {
    if (!texts[i]) rc = cdb_error_set(err, "encoder: text %d is NULL", i);
    else if (clip_tokenize(m, texts[i], strlen(texts[i]), ids + (size_t)i * ctx, err) < 0) rc = -1;
  }
  if (started) {
    pthread_join(th, NULL);
    if (rc == 0 && prep.rc != 0) {
      if (err) *err = prep.err;
      rc = -1;
    }
  }
  if (rc == 0) rc = clip_embed_token_ids(m, ids, n, out, err);
  free(ids);
  return rc;
}

int clip_embed_pixels(clip_model *m, const float *pixels, int n, float *out, cdb_error *err) {
  if (n < 0 || (n > 0 && (!pixels || !out))) return cdb_error_set(err, "encoder: bad arguments");
  if (n == 0) return 0;
  if (clip_ensure_vision(m, err) != 0) return -1;
  size_t img = (size_t)m->cfg.num_channels * m->cfg.image_size * m->cfg.image_size;
  int dim = m->cfg.projection_dim;
  for (int i = 0; i < n; i += IMAGE_CHUNK) {
    int k = n - i < IMAGE_CHUNK ? n - i : IMAGE_CHUNK;
    if (clip_vision_forward(&m->cfg, &m->vision_w, pixels + i * img, k, out + (size_t)i * dim,
                            err) != 0)
      return -1;
  }
  normalise_rows(out, n, dim);
  return 0;
}

int clip_image_load_file(const clip_model *m, const char *path, float *pixels, cdb_error *err) {
  return clip_image_preprocess_file(&m->spec, path, pixels, err);
}

int clip_image_load_buffer(const clip_model *m, const void *buf, size_t len, float *pixels,
                           cdb_error *err) {
  return clip_image_preprocess_buffer(&m->spec, buf, len, pixels, err);
}

int clip_image_load_source(const clip_model *m, const char *path_or_url, float *pixels,
                           cdb_error *err) {
  if (!cdb_is_url(path_or_url)) return clip_image_load_file(m, path_or_url, pixels, err);
  size_t len = 0;
  void *bytes = cdb_fetch(path_or_url, NULL, &len, err);
  if (!bytes) return -1;
  int rc = clip_image_load_buffer(m, bytes, len, pixels, err);
  free(bytes);
  return rc;
}

/* Decoding is spread over the pool; each image records its own error, the first one wins. */
typedef struct decode_job {
  const clip_model *m;
  const char *const *paths;
  const void *const *bufs;
  const size_t *lens;
  int n;
  float *pixels;
  cdb_error *errs;
  int *failed;
} decode_job;

static void decode_task(void *ctx, int ith, int nth) {
  decode_job *j = ctx;
  size_t img = (size_t)3 * j->m->cfg.image_size * j->m->cfg.image_size;
  for (int i = ith; i < j->n; i += nth) {
    int rc = j->paths ? clip_image_load_file(j->m, j->paths[i], j->pixels + i * img, &j->errs[i])
                      : clip_image_load_buffer(j->m, j->bufs[i], j->lens[i], j->pixels + i * img,
                                               &j->errs[i]);
    j->failed[i] = rc != 0;
  }
}

static int embed_images(clip_model *m, const char *const *paths, const void *const *bufs,
                        const size_t *lens, int n, float *out, cdb_error *err) {
  if (n < 0 || (n > 0 && (!out || (!paths && (!bufs || !lens)))))
    return cdb_error_set(err, "encoder: bad arguments");
  size_t img = (size_t)3 * m->cfg.image_size * m->cfg.image_size;
  int dim = m->cfg.projection_dim, rc = 0;
  float *pixels = malloc(sizeof(float) * img * IMAGE_CHUNK);
  cdb_error *errs = calloc(IMAGE_CHUNK, sizeof *errs);
  int *failed = calloc(IMAGE_CHUNK, sizeof *failed);
  if (!pixels || !errs || !failed) rc = cdb_error_set(err, "encoder: out of memory");
  for (int i = 0; i < n && rc == 0; i += IMAGE_CHUNK) {
    int k = n - i < IMAGE_CHUNK ? n - i : IMAGE_CHUNK;
    decode_job j = {m,
                    paths ? paths + i : NULL,
                    bufs ? bufs + i : NULL,
                    lens ? lens + i : NULL,
                    k,
                    pixels,
                    errs,
                    failed};
    int nth = cdb_pool_threads();
    cdb_parallel(decode_task, &j, k < nth ? k : nth);
    for (int b = 0; b < k && rc == 0; b++)
      if (failed[b]) {
        if (err) *err = errs[b];
        if (paths) rc = cdb_error_prefix(err, "image %d", i + b);
        else rc = cdb_error_prefix(err, "image buffer %d", i + b);
      }
    if (rc == 0) rc = clip_embed_pixels(m, pixels, k, out + (size_t)i * dim, err);
  }
  free(pixels);
  free(errs);
  free(failed);
  return rc;
}

int clip_embed_image_files(clip_model *m, const char *const *paths, int n, float *out,
                           cdb_error *err) {
  if (n > 0 && !paths) return cdb_error_set(err, "encoder: bad arguments");
  return embed_images(m, paths, NULL, NULL, n, out, err);
}

int clip_embed_image_buffers(clip_model *m, const void *const *bufs, const size_t *lens, int n,
                             float *out, cdb_error *err) {
  return embed_images(m, NULL, bufs, lens, n, out, err);
}

int clip_embed_image_source(clip_model *m, const char *path_or_url, float *out, cdb_error *err) {
  float *pixels = malloc(sizeof(float) * 3 * (size_t)m->cfg.image_size * m->cfg.image_size);
  if (!pixels) return cdb_error_set(err, "encoder: out of memory");
  int rc = clip_image_load_source(m, path_or_url, pixels, err);
  if (rc == 0) rc = clip_embed_pixels(m, pixels, 1, out, err);
  free(pixels);
  return rc;
}
