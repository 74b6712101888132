/* weights.c: checking a checkpoint's tensors against the config, and preparing a tower's
 * weights on first use: float32 views of the mapping, conversions of F16/BF16, and the packed
 * panels (kernels.h) the GEMMs stream, in one huge-page arena per tower. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "embed/kernels/kernels.h"
#include "embed/model_impl.h"
#include "src/pool.h"

/* ---- checking every tensor against the config, before any data is touched ---- */

typedef struct shape_check {
  const st_file *st;
  cdb_error *err;
  int failed;
} shape_check;

static const st_tensor *expect(shape_check *c, const char *name, int ndim, int64_t d0, int64_t d1,
                               int64_t d2, int64_t d3) {
  if (c->failed) return NULL;
  int64_t shape[4] = {d0, d1, d2, d3};
  const st_tensor *t = st_expect(c->st, name, ndim, shape, c->err);
  if (!t) c->failed = 1;
  return t;
}

static void check_layers(shape_check *c, const char *prefix, const clip_tower_config *t) {
  static const char *const vecs[] = {"layer_norm1.weight",    "layer_norm1.bias",
                                     "layer_norm2.weight",    "layer_norm2.bias",
                                     "self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                     "self_attn.v_proj.bias", "self_attn.out_proj.bias",
                                     "mlp.fc2.bias"};
  static const char *const mats[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                     "self_attn.v_proj.weight", "self_attn.out_proj.weight"};
  char name[256];
  for (int l = 0; l < t->layers && !c->failed; l++) {
    for (size_t i = 0; i < sizeof vecs / sizeof *vecs; i++) {
      snprintf(name, sizeof name, "%s.encoder.layers.%d.%s", prefix, l, vecs[i]);
      expect(c, name, 1, t->hidden, 0, 0, 0);
    }
    for (size_t i = 0; i < sizeof mats / sizeof *mats; i++) {
      snprintf(name, sizeof name, "%s.encoder.layers.%d.%s", prefix, l, mats[i]);
      expect(c, name, 2, t->hidden, t->hidden, 0, 0);
    }
    snprintf(name, sizeof name, "%s.encoder.layers.%d.mlp.fc1.weight", prefix, l);
    expect(c, name, 2, t->intermediate, t->hidden, 0, 0);
    snprintf(name, sizeof name, "%s.encoder.layers.%d.mlp.fc1.bias", prefix, l);
    expect(c, name, 1, t->intermediate, 0, 0, 0);
    snprintf(name, sizeof name, "%s.encoder.layers.%d.mlp.fc2.weight", prefix, l);
    expect(c, name, 2, t->hidden, t->intermediate, 0, 0);
  }
}

int clip_check_tensors(const clip_model *m, cdb_error *err) {
  shape_check c = {&m->st, err, 0};
  const clip_config *g = &m->cfg;
  int T = g->text.hidden, V = g->vision.hidden, P = g->projection_dim;
  int grid = g->image_size / g->patch_size;
  expect(&c, "logit_scale", 0, 0, 0, 0, 0);
  expect(&c, "text_model.embeddings.token_embedding.weight", 2, g->vocab_size, T, 0, 0);
  expect(&c, "text_model.embeddings.position_embedding.weight", 2, g->context_length, T, 0, 0);
  expect(&c, "text_model.final_layer_norm.weight", 1, T, 0, 0, 0);
  expect(&c, "text_model.final_layer_norm.bias", 1, T, 0, 0, 0);
  expect(&c, "text_projection.weight", 2, P, T, 0, 0);
  check_layers(&c, "text_model", &g->text);
  expect(&c, "vision_model.embeddings.class_embedding", 1, V, 0, 0, 0);
  expect(&c, "vision_model.embeddings.patch_embedding.weight", 4, V, g->num_channels, g->patch_size,
         g->patch_size);
  expect(&c, "vision_model.embeddings.position_embedding.weight", 2, grid * grid + 1, V, 0, 0);
  expect(&c, "vision_model.pre_layrnorm.weight", 1, V, 0, 0, 0);
  expect(&c, "vision_model.pre_layrnorm.bias", 1, V, 0, 0, 0);
  expect(&c, "vision_model.post_layernorm.weight", 1, V, 0, 0, 0);
  expect(&c, "vision_model.post_layernorm.bias", 1, V, 0, 0, 0);
  expect(&c, "visual_projection.weight", 2, P, V, 0, 0);
  check_layers(&c, "vision_model", &g->vision);
  return c.failed ? -1 : 0;
}

/* ---- preparing a tower ---- */

static int keep(clip_tower *tw, float *p) {
  if (tw->n_owned == tw->cap_owned) {
    int cap = tw->cap_owned ? 2 * tw->cap_owned : 64;
    float **grown = realloc(tw->owned, sizeof *grown * (size_t)cap);
    if (!grown) return -1;
    tw->owned = grown;
    tw->cap_owned = cap;
  }
  tw->owned[tw->n_owned++] = p;
  return 0;
}

/* One mapping for all of a tower's packed weights: transparent huge pages cut the page faults
 * of preparing it and the TLB misses of streaming it through the GEMM. */
static int arena_open(clip_tower *tw, size_t bytes) {
  size_t huge = (size_t)2 << 20;
  bytes = (bytes + huge - 1) / huge * huge;
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return -1;
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);
#endif
  tw->arena = p;
  tw->arena_size = bytes;
  tw->arena_used = 0;
  return 0;
}

static void *arena_alloc(clip_tower *tw, size_t bytes) {
  size_t at = (tw->arena_used + 63) / 64 * 64;
  if (!tw->arena || at + bytes > tw->arena_size) return NULL;
  tw->arena_used = at + bytes;
  return tw->arena + at;
}

/* Bytes of packed float32 weights (an upper bound for half floats) of a tower's layers. */
static size_t packed_layer_bytes(const clip_tower_config *c) {
  size_t per_layer = clip_packed_floats(3 * c->hidden, c->hidden) +
                     clip_packed_floats(c->hidden, c->hidden) +
                     clip_packed_floats(c->intermediate, c->hidden) +
                     clip_packed_floats(c->hidden, c->intermediate);
  return (per_layer * sizeof(float) + 4 * 64) * (size_t)c->layers;
}

/* float32 view of a tensor: the mapping itself for aligned F32, else a converted copy. */
static float *to_f32_copy(const st_tensor *t) {
  float *dst = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
  if (!dst) return NULL;
  if (t->dtype == ST_F32) {
    memcpy(dst, t->data, t->nbytes);
    return dst;
  }
  const clip_kernels *kern = clip_kernels_best();
  const uint16_t *src = (const uint16_t *)(const void *)t->data;
  uint16_t *aligned = NULL;
  if ((uintptr_t)t->data % 2 != 0) {
    aligned = malloc(t->nbytes ? t->nbytes : 1);
    if (!aligned) {
      free(dst);
      return NULL;
    }
    memcpy(aligned, t->data, t->nbytes);
    src = aligned;
  }
  if (t->dtype == ST_F16) kern->f16_to_f32(src, dst, (size_t)t->numel);
  else kern->bf16_to_f32(src, dst, (size_t)t->numel);
  free(aligned);
  return dst;
}

static const float *weight(clip_model *m, clip_tower *tw, const char *name, cdb_error *err) {
  const st_tensor *t = st_find(&m->st, name); /* present and checked by check_tensors */
  if (t->dtype == ST_F32 && (uintptr_t)t->data % sizeof(float) == 0)
    return (const float *)(const void *)t->data;
  float *copy = to_f32_copy(t);
  if (!copy || keep(tw, copy) != 0) {
    free(copy);
    cdb_error_set(err, "encoder: out of memory converting %s", name);
    return NULL;
  }
  return copy;
}

static int load_layers(clip_model *m, clip_tower *tw, const char *prefix, int n_layers,
                       cdb_error *err) {
  tw->layers = calloc((size_t)n_layers, sizeof *tw->layers);
  if (!tw->layers) return cdb_error_set(err, "encoder: out of memory");
  for (int l = 0; l < n_layers; l++) {
    clip_layer_weights *L = &tw->layers[l];
    struct {
      const float **dst;
      const char *suffix;
    } parts[] = {
        {&L->ln1_w, "layer_norm1.weight"},      {&L->ln1_b, "layer_norm1.bias"},
        {&L->ln2_w, "layer_norm2.weight"},      {&L->ln2_b, "layer_norm2.bias"},
        {&L->q_w, "self_attn.q_proj.weight"},   {&L->q_b, "self_attn.q_proj.bias"},
        {&L->k_w, "self_attn.k_proj.weight"},   {&L->k_b, "self_attn.k_proj.bias"},
        {&L->v_w, "self_attn.v_proj.weight"},   {&L->v_b, "self_attn.v_proj.bias"},
        {&L->o_w, "self_attn.out_proj.weight"}, {&L->o_b, "self_attn.out_proj.bias"},
        {&L->fc1_w, "mlp.fc1.weight"},          {&L->fc1_b, "mlp.fc1.bias"},
        {&L->fc2_w, "mlp.fc2.weight"},          {&L->fc2_b, "mlp.fc2.bias"},
    };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
      char name[256];
      snprintf(name, sizeof name, "%s.encoder.layers.%d.%s", prefix, l, parts[i].suffix);
      if (!(*parts[i].dst = weight(m, tw, name, err))) return -1;
    }
  }
  return 0;
}

void clip_tower_release(clip_tower *tw) {
  if (tw->arena) munmap(tw->arena, tw->arena_size);
  tw->arena = NULL;
  tw->arena_size = tw->arena_used = 0;
  for (int i = 0; i < tw->n_owned; i++) free(tw->owned[i]);
  free(tw->owned);
  free(tw->layers);
  tw->owned = NULL;
  tw->layers = NULL;
  tw->n_owned = tw->cap_owned = 0;
}

/* float32 data of a tensor; *temp gets the allocation to free when it had to be converted. */
static const float *f32_data(const st_tensor *t, float **temp) {
  *temp = NULL;
  if (t->dtype == ST_F32 && (uintptr_t)t->data % sizeof(float) == 0)
    return (const float *)(const void *)t->data;
  return *temp = to_f32_copy(t);
}

/* How a weight is packed: float32 as is, half floats as is, float32 rounded to half, or
 * float32 quantized to int8 (kernels.h). */
typedef enum pack_mode { PACK_F32, PACK_F16, PACK_F32_TO_F16, PACK_INT8 } pack_mode;

typedef struct pack_job {
  const void *src;
  int N, K;
  pack_mode mode;
  void *dst;
  atomic_int not_finite; /* PACK_F32_TO_F16: a value left the half range */
} pack_job;

static void pack_task(void *ctx, int ith, int nth) {
  const pack_job *j = ctx;
  int panels = (j->N + CLIP_PANEL - 1) / CLIP_PANEL;
  int p0 = panels * ith / nth, p1 = panels * (ith + 1) / nth;
  if (p0 >= p1) return;
  if (j->mode == PACK_INT8) {
    clip_pack_weights_int8_panels(j->src, j->N, j->K, p0, p1, j->dst);
    return;
  }
  int n0 = p0 * CLIP_PANEL, n1 = p1 * CLIP_PANEL < j->N ? p1 * CLIP_PANEL : j->N;
  size_t at = (size_t)n0 * j->K;
  if (j->mode == PACK_F16)
    clip_pack_weights_f16((const uint16_t *)j->src + at, n1 - n0, j->K, (uint16_t *)j->dst + at);
  else if (j->mode == PACK_F32_TO_F16) {
    if (clip_pack_weights_f32_to_f16((const float *)j->src + at, n1 - n0, j->K,
                                     (uint16_t *)j->dst + at))
      atomic_store(&((pack_job *)ctx)->not_finite, 1);
  } else clip_pack_weights((const float *)j->src + at, n1 - n0, j->K, (float *)j->dst + at);
}

/* Packing is a transpose bound by memory bandwidth; all cores share it. Returns 1 when rounding
 * to half floats overflowed (the packed data is then unusable). */
static int pack_parallel(const void *src, int N, int K, pack_mode mode, void *dst) {
  pack_job j = {src, N, K, mode, dst, 0};
  int nth = cdb_pool_threads(), panels = (N + CLIP_PANEL - 1) / CLIP_PANEL;
  cdb_parallel(pack_task, &j, nth < panels ? nth : panels);
  return atomic_load(&j.not_finite);
}

/* A tensor's mapped pages, once packed, are not read again: dropping them keeps the resident
 * set to one copy of the weights (the mapping is read-only, so a later touch just re-reads). */
static void drop_mapped(const st_tensor *t) {
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t b = ((uintptr_t)t->data + page - 1) / page * page;
  uintptr_t e = ((uintptr_t)t->data + t->nbytes) / page * page;
  if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
}

/* An F16 tensor can stay half precision when its data is 2-byte aligned in the mapping. */
static int keeps_f16(const st_tensor *t) {
  return t->dtype == ST_F16 && (uintptr_t)t->data % 2 == 0;
}

/* The packed form (kernels.h) of one [N, K] weight, or of several stacked along N: half floats
 * when every part is F16 or the tower rounds to half (tw->round_f16), else float32. */
static clip_packed packed_as(clip_model *m, clip_tower *tw, const char *const *names, int n_names,
                             int N, int K, int round_f16, int *overflow, cdb_error *err) {
  int all_f16 = 1;
  for (int i = 0; i < n_names; i++) all_f16 &= keeps_f16(st_find(&m->st, names[i]));
  /* Parts whose rows fill whole panels are packed in place; others are stacked first. */
  int aligned = N % CLIP_PANEL == 0 || n_names == 1;
  int f16 = aligned && (all_f16 || round_f16);
  size_t esize = f16 ? 2 : 4;
  void *dst = arena_alloc(tw, esize * clip_packed_floats(N * n_names, K));
  float *stacked = aligned ? NULL : malloc(sizeof(float) * (size_t)N * n_names * K);
  int ok = dst && (aligned || stacked);
  for (int i = 0; ok && i < n_names; i++) {
    const st_tensor *t = st_find(&m->st, names[i]);
    char *part = (char *)dst + (size_t)i * N * K * esize;
    if (f16 && keeps_f16(t)) {
      pack_parallel(t->data, N, K, PACK_F16, part);
      drop_mapped(t);
      continue;
    }
    float *temp;
    const float *src = f32_data(t, &temp);
    ok = src != NULL;
    if (ok && aligned && pack_parallel(src, N, K, f16 ? PACK_F32_TO_F16 : PACK_F32, part))
      *overflow = 1;
    if (ok && !aligned) memcpy(stacked + (size_t)i * N * K, src, sizeof(float) * (size_t)N * K);
    free(temp);
    if (clip_get_gemm_mode() != CLIP_GEMM_BLAS && !*overflow) drop_mapped(t);
  }
  if (ok && !aligned) pack_parallel(stacked, N * n_names, K, PACK_F32, dst);
  free(stacked);
  if (!ok) {
    cdb_error_set(err, "encoder: out of memory packing %s", names[0]);
    return (clip_packed){NULL, 0, 0, 0};
  }
  return (clip_packed){dst, f16, 0, 0};
}

/* Several [N, K] weights stacked along N in one malloc'd float array (NULL when out of memory
 * or a tensor cannot be read as float32). */
static float *stacked_f32(clip_model *m, const char *const *names, int n_names, int N, int K) {
  float *stacked = malloc(sizeof(float) * (size_t)N * n_names * K);
  for (int i = 0; stacked && i < n_names; i++) {
    float *temp;
    const float *src = f32_data(st_find(&m->st, names[i]), &temp);
    if (src) memcpy(stacked + (size_t)i * N * K, src, sizeof(float) * (size_t)N * K);
    free(temp);
    if (!src) {
      free(stacked);
      stacked = NULL;
    }
  }
  return stacked;
}

/* Several [N, K] weights stacked along N, rounded to bfloat16 panels. */
static clip_packed packed_bf16(clip_model *m, clip_tower *tw, const char *const *names, int n_names,
                               int N, int K, cdb_error *err) {
  uint16_t *dst = arena_alloc(tw, sizeof(uint16_t) * clip_packed_bf16_elems(N * n_names, K));
  float *stacked = dst ? stacked_f32(m, names, n_names, N, K) : NULL;
  int ok = stacked != NULL;
  if (ok) clip_pack_weights_bf16(stacked, N * n_names, K, dst);
  free(stacked);
  if (!ok) {
    cdb_error_set(err, "encoder: out of memory packing %s", names[0]);
    return (clip_packed){NULL, 0, 0, 0};
  }
  return (clip_packed){dst, 0, 1, 0};
}

/* Several [N, K] weights stacked along N, quantized to int8 panels with per-channel scales. */
static clip_packed packed_int8(clip_model *m, clip_tower *tw, const char *const *names, int n_names,
                               int N, int K, cdb_error *err) {
  void *dst = arena_alloc(tw, clip_packed_int8_bytes(N * n_names, K));
  float *stacked = dst ? stacked_f32(m, names, n_names, N, K) : NULL;
  int ok = stacked != NULL;
  if (ok) pack_parallel(stacked, N * n_names, K, PACK_INT8, dst);
  free(stacked);
  if (!ok) {
    cdb_error_set(err, "encoder: out of memory packing %s", names[0]);
    return (clip_packed){NULL, 0, 0, 0};
  }
  return (clip_packed){dst, 0, 0, 1};
}

/* CLIPDB_PRECISION: f32, bf16 or int8 for the vision tower's linear layers. bf16 needs
 * AVX512-BF16 and the AVX-512 kernel set (CLIPDB_ISA=avx2|generic forces the fallback) and
 * otherwise stays f32 (clip_model_precision() says which ran). int8 always runs: with
 * AVX512-VNNI or AVX-VNNI at speed, else through the (slow, exact) C reference. Unset: int8 where
 * a VNNI kernel runs, else bf16 where it runs, else f32; each default kept every photo-like
 * file's embedding at cosine >= 0.9998 to the PyTorch fp32 reference (bench/README.md).
 * Returns -1 on an unknown value. */
static int vision_precision(cdb_error *err) {
  const char *env = getenv("CLIPDB_PRECISION");
  int bf16_runs = clip_gemm_bf16_native() != NULL && clip_kernels_best() == &clip_kernels_avx512;
  int int8_fast = clip_int8_kernel_best() != clip_int8_kernel_for(CLIP_INT8_C);
  if (!env && int8_fast) return CLIP_PRECISION_INT8;
  if (!env || strcmp(env, "bf16") == 0) return bf16_runs ? CLIP_PRECISION_BF16 : CLIP_PRECISION_F32;
  if (strcmp(env, "f32") == 0) return CLIP_PRECISION_F32;
  if (strcmp(env, "int8") == 0) return CLIP_PRECISION_INT8;
  return cdb_error_set(err, "CLIPDB_PRECISION=%s: unknown precision (expected f32, bf16 or int8)",
                       env);
}

int clip_vision_precision_planned(void) {
  cdb_error err = {{0}};
  int p = vision_precision(&err);
  return clip_get_gemm_mode() == CLIP_GEMM_BLAS || p < 0 ? CLIP_PRECISION_F32 : p;
}

/* The packed weight; one whose values leave the half range when rounded is packed again as
 * float32 (the half-float copy's arena space is simply not reused). */
static clip_packed packed(clip_model *m, clip_tower *tw, const char *const *names, int n_names,
                          int N, int K, cdb_error *err) {
  if (tw->precision == CLIP_PRECISION_BF16) return packed_bf16(m, tw, names, n_names, N, K, err);
  if (tw->precision == CLIP_PRECISION_INT8) return packed_int8(m, tw, names, n_names, N, K, err);
  int overflow = 0;
  clip_packed p = packed_as(m, tw, names, n_names, N, K, tw->round_f16, &overflow, err);
  if (p.data && overflow) p = packed_as(m, tw, names, n_names, N, K, 0, &overflow, err);
  return p;
}

static const float *stacked_bias(clip_model *m, clip_tower *tw, const char *const *names, int n,
                                 int D, cdb_error *err) {
  float *dst = malloc(sizeof(float) * (size_t)n * D);
  if (!dst || keep(tw, dst) != 0) {
    free(dst);
    cdb_error_set(err, "encoder: out of memory");
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    float *temp;
    const float *src = f32_data(st_find(&m->st, names[i]), &temp);
    if (!src) return cdb_error_set(err, "encoder: out of memory"), NULL;
    memcpy(dst + (size_t)i * D, src, sizeof(float) * (size_t)D);
    free(temp);
  }
  return dst;
}

/* A tower's layers with packed weights (q, k, v stacked into one GEMM). */
static int pack_layers(clip_model *m, clip_tower *tw, const char *prefix,
                       const clip_tower_config *c, cdb_error *err) {
  tw->layers = calloc((size_t)c->layers, sizeof *tw->layers);
  if (!tw->layers) return cdb_error_set(err, "encoder: out of memory");
  for (int l = 0; l < c->layers; l++) {
    clip_layer_weights *L = &tw->layers[l];
    char nm[9][160];
    static const char *const parts[9] = {
        "self_attn.q_proj.weight",   "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.q_proj.bias",     "self_attn.k_proj.bias",   "self_attn.v_proj.bias",
        "self_attn.out_proj.weight", "mlp.fc1.weight",          "mlp.fc2.weight"};
    const char *names[9];
    for (int i = 0; i < 9; i++) {
      snprintf(nm[i], sizeof nm[i], "%s.encoder.layers.%d.%s", prefix, l, parts[i]);
      names[i] = nm[i];
    }
    char ln[4][160], bias[3][160];
    static const char *const ln_parts[4] = {"layer_norm1.weight", "layer_norm1.bias",
                                            "layer_norm2.weight", "layer_norm2.bias"};
    static const char *const bias_parts[3] = {"self_attn.out_proj.bias", "mlp.fc1.bias",
                                              "mlp.fc2.bias"};
    for (int i = 0; i < 4; i++)
      snprintf(ln[i], sizeof ln[i], "%s.encoder.layers.%d.%s", prefix, l, ln_parts[i]);
    for (int i = 0; i < 3; i++)
      snprintf(bias[i], sizeof bias[i], "%s.encoder.layers.%d.%s", prefix, l, bias_parts[i]);
    if (!(L->qkv_p = packed(m, tw, names, 3, c->hidden, c->hidden, err)).data ||
        !(L->qkv_b = stacked_bias(m, tw, names + 3, 3, c->hidden, err)) ||
        !(L->o_p = packed(m, tw, names + 6, 1, c->hidden, c->hidden, err)).data ||
        !(L->fc1_p = packed(m, tw, names + 7, 1, c->intermediate, c->hidden, err)).data ||
        !(L->fc2_p = packed(m, tw, names + 8, 1, c->hidden, c->intermediate, err)).data ||
        !(L->ln1_w = weight(m, tw, ln[0], err)) || !(L->ln1_b = weight(m, tw, ln[1], err)) ||
        !(L->ln2_w = weight(m, tw, ln[2], err)) || !(L->ln2_b = weight(m, tw, ln[3], err)) ||
        !(L->o_b = weight(m, tw, bias[0], err)) || !(L->fc1_b = weight(m, tw, bias[1], err)) ||
        !(L->fc2_b = weight(m, tw, bias[2], err)))
      return -1;
  }
  return 0;
}

/* Whether a tower keeps float32 linear weights as half floats (multiply-adds stay float32).
 * Default: the text tower only. A text query is bound by streaming its weights once (ViT-B/32:
 * 152 MB as float32, 76 MB as half; measured 4.7 -> 3.4 ms for 7 tokens on quiet cores), and
 * the rounding (relative 2^-11 per weight) moves a ViT-B/32 text embedding by a cosine distance
 * of ~2e-7 (bench-embed prints it). Images gain nothing measurable (a batch is compute bound and
 * one image is close to it), so the vision tower stays exact. CLIPDB_WEIGHTS=f32 keeps both
 * float32 (the exact reference path); CLIPDB_WEIGHTS=f16 rounds both (half the vision memory). */
static int weights_half(int text_tower) {
  const char *env = getenv("CLIPDB_WEIGHTS");
  if (env && strcmp(env, "f32") == 0) return 0;
  if (env && strcmp(env, "f16") == 0) return 1;
  return text_tower;
}

static int prepare_vision(clip_model *m, cdb_error *err) {
  clip_tower *tw = &m->vision;
  clip_vision_weights *w = &m->vision_w;
  const clip_config *c = &m->cfg;
  if (!(w->class_emb = weight(m, tw, "vision_model.embeddings.class_embedding", err)) ||
      !(w->pos_emb = weight(m, tw, "vision_model.embeddings.position_embedding.weight", err)) ||
      !(w->pre_ln_w = weight(m, tw, "vision_model.pre_layrnorm.weight", err)) ||
      !(w->pre_ln_b = weight(m, tw, "vision_model.pre_layrnorm.bias", err)) ||
      !(w->post_ln_w = weight(m, tw, "vision_model.post_layernorm.weight", err)) ||
      !(w->post_ln_b = weight(m, tw, "vision_model.post_layernorm.bias", err)))
    return -1;
  if (clip_get_gemm_mode() == CLIP_GEMM_BLAS) { /* row-major weights for sgemm */
    if (!(w->patch_w = weight(m, tw, "vision_model.embeddings.patch_embedding.weight", err)) ||
        !(w->proj = weight(m, tw, "visual_projection.weight", err)) ||
        load_layers(m, tw, "vision_model", c->vision.layers, err) != 0)
      return -1;
  } else {
    tw->round_f16 = weights_half(0);
    /* The transformer layers only: patch embedding and projection stay f32. */
    int precision = vision_precision(err);
    if (precision < 0) return -1;
    static const char *const patch[1] = {"vision_model.embeddings.patch_embedding.weight"};
    static const char *const proj[1] = {"visual_projection.weight"};
    int D = c->vision.hidden, patch_len = c->num_channels * c->patch_size * c->patch_size;
    size_t bytes = packed_layer_bytes(&c->vision) + 128 +
                   sizeof(float) * (clip_packed_floats(D, patch_len) +
                                    clip_packed_floats(c->projection_dim, D));
    if (arena_open(tw, tw->round_f16 ? bytes / 2 * 3 : bytes) != 0)
      return cdb_error_set(err, "encoder: out of memory for the vision tower");
    if (!(w->patch_p = packed(m, tw, patch, 1, D, patch_len, err)).data ||
        !(w->proj_p = packed(m, tw, proj, 1, c->projection_dim, D, err)).data ||
        (tw->precision = precision, pack_layers(m, tw, "vision_model", &c->vision, err)) != 0)
      return -1;
  }
  w->layers = tw->layers;
  return 0;
}

static int prepare_text(clip_model *m, cdb_error *err) {
  clip_tower *tw = &m->text;
  clip_text_weights *w = &m->text_w;
  const st_tensor *tok = st_find(&m->st, "text_model.embeddings.token_embedding.weight");
  w->tok_emb = tok;
  size_t elem = tok->dtype == ST_F32 ? 4 : 2;
  if ((uintptr_t)tok->data % elem != 0) { /* rows are read in place unless misaligned */
    float *copy = to_f32_copy(tok);
    if (!copy || keep(tw, copy) != 0) {
      free(copy);
      return cdb_error_set(err, "encoder: out of memory converting the token embedding");
    }
    tw->tok_emb_f32 = *tok;
    tw->tok_emb_f32.dtype = ST_F32;
    tw->tok_emb_f32.data = (const unsigned char *)copy;
    w->tok_emb = &tw->tok_emb_f32;
  }
  if (!(w->pos_emb = weight(m, tw, "text_model.embeddings.position_embedding.weight", err)) ||
      !(w->final_ln_w = weight(m, tw, "text_model.final_layer_norm.weight", err)) ||
      !(w->final_ln_b = weight(m, tw, "text_model.final_layer_norm.bias", err)) ||
      !(w->proj = weight(m, tw, "text_projection.weight", err)))
    return -1;
  int blas = clip_get_gemm_mode() == CLIP_GEMM_BLAS;
  tw->round_f16 = weights_half(1);
  /* Room for a weight packed twice (half floats that overflowed, then float32). */
  size_t bytes = packed_layer_bytes(&m->cfg.text) * (tw->round_f16 ? 3 : 2) / 2;
  if (!blas && arena_open(tw, bytes) != 0)
    return cdb_error_set(err, "encoder: out of memory for the text tower");
  int rc = blas ? load_layers(m, tw, "text_model", m->cfg.text.layers, err)
                : pack_layers(m, tw, "text_model", &m->cfg.text, err);
  if (rc != 0) return -1;
  w->layers = tw->layers;
  return 0;
}

/* Prepares a tower once; concurrent first callers wait for the one doing the work. A failure
 * (out of memory) leaves the tower unprepared so that a later call can retry. */
static int ensure_tower(clip_model *m, clip_tower *tw, int (*prepare)(clip_model *, cdb_error *),
                        cdb_error *err) {
  pthread_mutex_lock(&tw->mu);
  int rc = 0;
  if (!tw->ready) {
    rc = prepare(m, err);
    if (rc == 0) tw->ready = 1;
    else clip_tower_release(tw);
  }
  pthread_mutex_unlock(&tw->mu);
  return rc;
}

int clip_ensure_text(clip_model *m, cdb_error *err) {
  return ensure_tower(m, &m->text, prepare_text, err);
}

int clip_ensure_vision(clip_model *m, cdb_error *err) {
  return ensure_tower(m, &m->vision, prepare_vision, err);
}

int clip_tower_ready(const clip_tower *tw) {
  pthread_mutex_lock((pthread_mutex_t *)&tw->mu);
  int r = tw->ready;
  pthread_mutex_unlock((pthread_mutex_t *)&tw->mu);
  return r;
}
