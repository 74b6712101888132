/* transformer.c: CLIP's pre-norm transformer layers, embeddings and pooling, both towers. */
#include "embed/transformer.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "embed/kernels/kernels.h"
#include "embed/tokenizer.h"
#include "src/pool.h"

/* Below this many elements of work a step runs on the calling thread: waking the pool costs
 * more than it saves (a short text query). */
#define SMALL_WORK 32768

/* Column blocks handed to threads are multiples of this (one AVX-512 register). */
#define GEMM_COL_ALIGN 16
/* Packed GEMMs with at least this many rows split rows (in multiples of the 14-row tile) over
 * the threads instead of weight panels. */
#define SPLIT_ROWS_MIN 256
#define ROW_ALIGN 14
/* Rows per task when splitting rows: more tasks than threads, handed out as threads come free,
 * so a core slowed by a neighbour does not hold the other back at every GEMM's end. */
#ifndef ROW_TASK_ROWS
#define ROW_TASK_ROWS 112
#endif

static clip_gemm_mode gemm_mode = CLIP_GEMM_AUTO;
static pthread_once_t gemm_once = PTHREAD_ONCE_INIT;

static void gemm_init(void) {
  const char *env = getenv("CLIPDB_GEMM");
  if (env && strcmp(env, "blas") == 0) gemm_mode = CLIP_GEMM_BLAS;
  if (env && strcmp(env, "own") == 0) gemm_mode = CLIP_GEMM_OWN;
}

/* Only once OpenBLAS is used here (it is process-wide, FAISS shares it): parallelism comes from
 * the pool, and OpenBLAS's own threads would oversubscribe the cores. */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_threaded(void) { openblas_set_num_threads(1); }

/* OpenBLAS's (exported, undeclared) shutdown, also used by its fork handler; weak, so that a
 * build against another BLAS links and skips it. */
extern int blas_thread_shutdown_(void) __attribute__((weak));

void clip_release_blas_threads(void) {
  if (blas_thread_shutdown_) blas_thread_shutdown_();
}

void clip_set_gemm_mode(clip_gemm_mode mode) {
  pthread_once(&gemm_once, gemm_init);
  gemm_mode = mode;
}

clip_gemm_mode clip_get_gemm_mode(void) {
  pthread_once(&gemm_once, gemm_init);
  return gemm_mode;
}

/* Per-thread scratch for packed activation rows, freed when the thread exits (callers' own
 * threads run tasks inline when the pool is busy). */
typedef struct scratch_buf {
  float *data;
  size_t len;
} scratch_buf;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p) {
  scratch_buf *b = p;
  free(b->data);
  free(b);
}

static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

static int scratch_fails; /* clip_transformer_fail_scratch() */

void clip_transformer_fail_scratch(int fail) { scratch_fails = fail; }

/* NULL when out of memory; the packed kernels then cannot run and the caller falls back. */
static float *scratch_for(size_t need) {
  if (scratch_fails) return NULL;
  pthread_once(&scratch_once, scratch_init);
  scratch_buf *b = pthread_getspecific(scratch_key);
  if (!b) {
    b = calloc(1, sizeof *b);
    if (!b || pthread_setspecific(scratch_key, b) != 0) {
      free(b);
      return NULL;
    }
  }
  if (need > b->len) {
    free(b->data);
    b->data = aligned_alloc(64, need * sizeof(float));
    b->len = b->data ? need : 0;
  }
  return b->data;
}

/* ---- parallel building blocks ---- */

typedef struct linear_job {
  const clip_kernels *kern;
  int M, N, K;
  const float *A;        /* [M, K] */
  const float *W;        /* [N, K] row-major, or NULL */
  const clip_packed *Wp; /* packed, or NULL */
  const float *bias;     /* [N] or NULL */
  float *C;              /* [M, ldc] */
  int ldc;
  int accumulate; /* C += A W^T instead of C = A W^T */
  clip_epi_act act;
  int use_blas;
} linear_job;

static void split(int n, int align, int ith, int nth, int *b, int *e) {
  int blocks = (n + align - 1) / align;
  int b0 = (int)((long)blocks * ith / nth), b1 = (int)((long)blocks * (ith + 1) / nth);
  *b = b0 * align;
  *e = b1 * align < n ? b1 * align : n;
}

static void linear_task(void *ctx, int ith, int nth) {
  const linear_job *j = ctx;
  if (j->Wp && j->Wp->data) {
    /* Few rows (text, one image): threads split the weight panels, so each weight byte is read
     * once, and every thread packs all rows (cheap). Many rows: threads split the rows, so no
     * row is packed twice; the panels are then shared through the L3 cache. */
    int panels = (j->N + CLIP_PANEL - 1) / CLIP_PANEL, p0 = 0, p1 = panels, m0 = 0, m1 = j->M;
    if (j->M >= SPLIT_ROWS_MIN) split(j->M, ROW_ALIGN, ith, nth, &m0, &m1);
    else split(panels, 1, ith, nth, &p0, &p1);
    if (p0 >= p1 || m0 >= m1) return;
    if (j->Wp->int8) {
      /* Whole 64-byte lines: aligned_alloc wants a multiple of its alignment. */
      size_t lines = (clip_gemm_int8_scratch(m1 - m0, j->K) + 63) / 64;
      void *bytes_at = scratch_for(lines * (64 / sizeof(float)));
      /* Without scratch memory the reference (which then needs none) gives the same answer. */
      clip_gemm_int8_fn gemm = bytes_at ? clip_int8_kernel_best()->gemm
                                        : clip_int8_kernel_for(CLIP_INT8_C)->gemm;
      clip_gemm_out out = {j->C + (size_t)m0 * j->ldc, j->ldc, j->accumulate, j->bias, j->act};
      gemm(m1 - m0, j->N, j->K, j->A + (size_t)m0 * j->K, j->K, j->Wp->data, p0, p1, &out,
           bytes_at);
      return;
    }
    if (j->Wp->bf16) {
      uint32_t *words = (uint32_t *)scratch_for(clip_gemm_bf16_scratch(m1 - m0, j->K));
      /* Without scratch memory the reference (which then needs none) gives the same answer. */
      clip_gemm_bf16_fn gemm = words ? clip_gemm_bf16_native() : clip_gemm_bf16_ref;
      clip_gemm_out out = {j->C + (size_t)m0 * j->ldc, j->ldc, j->accumulate, j->bias, j->act};
      gemm(m1 - m0, j->N, j->K, j->A + (size_t)m0 * j->K, j->K, j->Wp->data, p0, p1, &out, words);
      return;
    }
    float *scratch = scratch_for(clip_gemm_scratch_floats(j->K));
    /* Without scratch memory the plain C kernel (which needs none) still gives the answer. */
    const clip_kernels *kern = scratch ? j->kern : &clip_kernels_generic;
    const float *A = j->A + (size_t)m0 * j->K;
    clip_gemm_out out = {j->C + (size_t)m0 * j->ldc, j->ldc, j->accumulate, j->bias, j->act};
    if (j->Wp->f16)
      kern->gemm_packed_f16(m1 - m0, j->N, j->K, A, j->K, j->Wp->data, p0, p1, &out, scratch);
    else kern->gemm_packed(m1 - m0, j->N, j->K, A, j->K, j->Wp->data, p0, p1, &out, scratch);
    return;
  }
  int n0, n1;
  split(j->N, GEMM_COL_ALIGN, ith, nth, &n0, &n1);
  if (n0 >= n1) return;
  float *C = j->C + n0;
  clip_gemm_out out = {j->C, j->ldc, j->accumulate, j->bias, j->act};
  if (j->use_blas)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, n1 - n0, j->K, 1.0f, j->A, j->K,
                j->W + (size_t)n0 * j->K, j->K, j->accumulate ? 1.0f : 0.0f, C, j->ldc);
  else
    j->kern->gemm_nt(j->M, n1 - n0, j->K, j->A, j->K, j->W + (size_t)n0 * j->K, j->K, C, j->ldc,
                     j->accumulate);
  clip_gemm_epilogue(j->kern, &out, j->M, n0, n1);
}

/* C[M, N] (+)= A[M, K] W^T + bias, then the activation, over the pool. W row-major or Wp
 * packed (preferred when set). C rows are ldc apart. */
static void linear(const float *A, int M, int K, const float *W, const clip_packed *Wp,
                   const float *bias, int N, float *C, int ldc, int accumulate, clip_epi_act act) {
  int nth = cdb_pool_threads();
  linear_job j = {clip_kernels_best(),
                  M,
                  N,
                  K,
                  A,
                  W,
                  Wp,
                  bias,
                  C,
                  ldc,
                  accumulate,
                  act,
                  clip_get_gemm_mode() == CLIP_GEMM_BLAS};
  if (j.use_blas) pthread_once(&blas_once, blas_single_threaded);
  int max_tasks = !(Wp && Wp->data)     ? (N + GEMM_COL_ALIGN - 1) / GEMM_COL_ALIGN
                  : M >= SPLIT_ROWS_MIN ? (M + ROW_ALIGN - 1) / ROW_ALIGN
                                        : (N + CLIP_PANEL - 1) / CLIP_PANEL;
  int tasks = nth;
  if (Wp && Wp->data && M >= SPLIT_ROWS_MIN && nth > 1) {
    int by_rows = (M + ROW_TASK_ROWS - 1) / ROW_TASK_ROWS;
    tasks = by_rows > nth ? by_rows : nth;
  }
  cdb_parallel(linear_task, &j, tasks < max_tasks ? tasks : max_tasks);
}

typedef struct layernorm_job {
  const clip_kernels *kern;
  const float *x;
  float *y;
  const float *g, *b;
  int rows, width, stride_in; /* rows of x are stride_in apart, rows of y width apart */
  float eps;
} layernorm_job;

static void layernorm_task(void *ctx, int ith, int nth) {
  const layernorm_job *j = ctx;
  for (int r = j->rows * ith / nth; r < j->rows * (ith + 1) / nth; r++)
    j->kern->layernorm(j->x + (size_t)r * j->stride_in, j->g, j->b, j->y + (size_t)r * j->width,
                       j->width, j->eps);
}

static void layernorm_rows(const float *x, int stride_in, float *y, int rows, int width,
                           const float *g, const float *b, float eps) {
  layernorm_job j = {clip_kernels_best(), x, y, g, b, rows, width, stride_in, eps};
  int nth = (size_t)rows * width < SMALL_WORK ? 1 : cdb_pool_threads();
  cdb_parallel(layernorm_task, &j, rows < nth ? rows : nth);
}

/* ---- attention ---- */

/* Floats one attention task needs: the scores [len, len] and K transposed [head_dim, len]. */
static size_t attention_scratch(int max_len, int head_dim) {
  return (size_t)max_len * max_len + (size_t)head_dim * max_len;
}

typedef struct attention_job {
  const clip_kernels *kern;
  const float *q, *k, *v; /* rows ld apart */
  int ld;
  float *out; /* [total, width] */
  const int *seq_start, *seq_len;
  int n_seq, heads, head_dim, width, causal;
  float *scratch; /* per task: attention_scratch() floats */
  int max_len;
  const int *pool; /* NULL: every query row; else only row pool[s] of sequence s, out row s */
} attention_job;

/* Query rows per block of a causal sequence: each block needs keys only up to its last row, so
 * the masked half of both products is skipped. */
#define CAUSAL_BLOCK 8

/* One head of one sequence as two small GEMMs: S = Q K^T (K transposed into scratch first),
 * a row-wise scaled softmax (causal: row t sees keys 0..t), then out = S V. */
static void attend_one(const attention_job *j, int s, int h, float *scratch) {
  const clip_kernels *kern = j->kern;
  int start = j->seq_start[s], len = j->seq_len[s], hd = j->head_dim;
  float scale = 1.0f / sqrtf((float)hd);
  float *S = scratch, *kt = scratch + (size_t)len * len;
  const float *q = j->q + (size_t)start * j->ld + h * hd,
              *k = j->k + (size_t)start * j->ld + h * hd;
  const float *v = j->v + (size_t)start * j->ld + h * hd;
  float *out = j->out + (size_t)start * j->width + h * hd;
  for (int u = 0; u < len; u++)
    for (int d = 0; d < hd; d++) kt[(size_t)d * len + u] = k[(size_t)u * j->ld + d];
  int block = j->causal ? CAUSAL_BLOCK : len;
  for (int r0 = 0; r0 < len; r0 += block) {
    int rows = len - r0 < block ? len - r0 : block, keys = j->causal ? r0 + rows : len;
    float *Sb = S + (size_t)r0 * len;
    kern->gemm_nn(rows, keys, hd, q + (size_t)r0 * j->ld, j->ld, kt, len, Sb, len);
    for (int t = r0; t < r0 + rows; t++) {
      float *row = S + (size_t)t * len;
      int seen = j->causal ? t + 1 : len; /* causal: row t sees keys 0..t */
      for (int u = 0; u < seen; u++) row[u] *= scale;
      kern->softmax(row, seen);
      for (int u = seen; u < keys; u++) row[u] = 0.0f;
    }
    kern->gemm_nn(rows, hd, keys, Sb, len, v, j->ld, out + (size_t)r0 * j->width, j->width);
  }
}

/* One head, one query row p of sequence s (the row a tower pools), into out row s. */
static void attend_pooled(const attention_job *j, int s, int h, float *scratch) {
  const clip_kernels *kern = j->kern;
  int start = j->seq_start[s], p = j->pool[s], hd = j->head_dim;
  int keys = j->causal ? p + 1 : j->seq_len[s];
  float scale = 1.0f / sqrtf((float)hd);
  const float *q = j->q + (size_t)(start + p) * j->ld + h * hd;
  for (int u = 0; u < keys; u++)
    scratch[u] = scale * kern->dot(q, j->k + (size_t)(start + u) * j->ld + h * hd, hd);
  kern->softmax(scratch, keys);
  kern->gemm_nn(1, hd, keys, scratch, keys, j->v + (size_t)start * j->ld + h * hd, j->ld,
                j->out + (size_t)s * j->width + h * hd, j->width);
}

static void attention_task(void *ctx, int ith, int nth) {
  const attention_job *j = ctx;
  float *scratch = j->scratch + (size_t)ith * attention_scratch(j->max_len, j->head_dim);
  for (int i = ith; i < j->n_seq * j->heads; i += nth) {
    if (j->pool) attend_pooled(j, i / j->heads, i % j->heads, scratch);
    else attend_one(j, i / j->heads, i % j->heads, scratch);
  }
}

/* ---- the layer stack ---- */

typedef struct encoder_run {
  const clip_tower_config *cfg;
  int total, n_seq, causal, max_len;
  const int *seq_start, *seq_len;
  float *x;        /* residual stream [total, width] */
  float *h, *attn; /* [total, width] each */
  float *qkv;      /* [total, 3 * width]: q, k, v side by side */
  float *mlp;      /* [total, intermediate] */
  float *scratch;
} encoder_run;

/* ln1 and the q/k/v projections of every row. */
static void project_qkv(const encoder_run *r, const clip_layer_weights *L) {
  const clip_tower_config *c = r->cfg;
  int T = r->total, D = c->hidden;
  layernorm_rows(r->x, D, r->h, T, D, L->ln1_w, L->ln1_b, c->ln_eps);
  if (L->qkv_p.data) {
    linear(r->h, T, D, NULL, &L->qkv_p, L->qkv_b, 3 * D, r->qkv, 3 * D, 0, CLIP_EPI_NONE);
  } else {
    linear(r->h, T, D, L->q_w, NULL, L->q_b, D, r->qkv, 3 * D, 0, CLIP_EPI_NONE);
    linear(r->h, T, D, L->k_w, NULL, L->k_b, D, r->qkv + D, 3 * D, 0, CLIP_EPI_NONE);
    linear(r->h, T, D, L->v_w, NULL, L->v_b, D, r->qkv + 2 * D, 3 * D, 0, CLIP_EPI_NONE);
  }
}

/* Attention of every query row into out (pool NULL), or of row pool[s] of each sequence s only,
 * into out row s. */
static void attend(const encoder_run *r, const int *pool, float *out) {
  const clip_tower_config *c = r->cfg;
  int D = c->hidden;
  size_t work = 0; /* multiply-adds of the attention, to skip waking threads for a short text */
  for (int i = 0; i < r->n_seq; i++) work += (size_t)r->seq_len[i] * (pool ? 1 : r->seq_len[i]) * D;
  int nth = work < SMALL_WORK ? 1 : cdb_pool_threads(), tasks = r->n_seq * c->heads;
  attention_job aj = {
      clip_kernels_best(), r->qkv,   r->qkv + D, r->qkv + 2 * D, 3 * D, out,       r->seq_start,
      r->seq_len,          r->n_seq, c->heads,   D / c->heads,   D,     r->causal, r->scratch,
      r->max_len,          pool};
  cdb_parallel(attention_task, &aj, tasks < nth ? tasks : nth);
}

/* The rest of a layer on `rows` rows of the residual stream x: x += o(attn), x += MLP(ln2(x)). */
static void finish_layer(const encoder_run *r, const clip_layer_weights *L, float *x,
                         const float *attn, int rows) {
  const clip_tower_config *c = r->cfg;
  int D = c->hidden, inter = c->intermediate;
  linear(attn, rows, D, L->o_w, &L->o_p, L->o_b, D, x, D, 1, CLIP_EPI_NONE);
  layernorm_rows(x, D, r->h, rows, D, L->ln2_w, L->ln2_b, c->ln_eps);
  clip_epi_act act = c->act == CLIP_ACT_GELU ? CLIP_EPI_GELU : CLIP_EPI_QUICK_GELU;
  linear(r->h, rows, D, L->fc1_w, &L->fc1_p, L->fc1_b, inter, r->mlp, inter, 0, act);
  linear(r->mlp, rows, inter, L->fc2_w, &L->fc2_p, L->fc2_b, D, x, D, 1, CLIP_EPI_NONE);
}

static void run_layer(const encoder_run *r, const clip_layer_weights *L) {
  project_qkv(r, L);
  attend(r, NULL, r->attn);
  finish_layer(r, L, r->x, r->attn, r->total);
}

/* The last layer: a tower reads only its pooled rows afterwards (a text's end token, an image's
 * class token), so past the keys and values only those rows are computed: exact, and it saves
 * nearly a layer's output projection and MLP (~7% of a ViT-B/32 image or a 77-token text). */
static void run_last_layer(const encoder_run *r, const clip_layer_weights *L, const int *pool) {
  int D = r->cfg->hidden, n = r->n_seq;
  project_qkv(r, L);
  attend(r, pool, r->attn);
  float *xp = r->qkv; /* free once attention is done; n * D <= 3 * total * D */
  for (int s = 0; s < n; s++)
    memcpy(xp + (size_t)s * D, r->x + (size_t)(r->seq_start[s] + pool[s]) * D, sizeof(float) * D);
  finish_layer(r, L, xp, r->attn, n);
  for (int s = 0; s < n; s++)
    memcpy(r->x + (size_t)(r->seq_start[s] + pool[s]) * D, xp + (size_t)s * D, sizeof(float) * D);
}

/* Runs every layer on x[total, width] in place; afterwards only the rows pool[s] (within each
 * sequence s) hold the final layer's output. */
static int encoder_forward(const clip_tower_config *cfg, clip_layer_weights *layers, float *x,
                           int total, const int *seq_start, const int *seq_len, const int *pool,
                           int n_seq, int causal, cdb_error *err) {
  int max_len = 1;
  for (int s = 0; s < n_seq; s++) max_len = seq_len[s] > max_len ? seq_len[s] : max_len;
  size_t td = (size_t)total * cfg->hidden;
  int nth = cdb_pool_threads(), hd = cfg->hidden / cfg->heads;
  /* Separate blocks rather than one: each stays under glibc's mmap threshold (32 MB for a
   * batch of 32 images), so repeated batches reuse heap memory instead of having the kernel
   * map and zero fresh pages every call (3-4% of a batch's time). */
  float *h = malloc(sizeof(float) * 2 * td), *qkv = malloc(sizeof(float) * 3 * td);
  float *mlp = malloc(sizeof(float) * (size_t)total * cfg->intermediate);
  float *scratch = malloc(sizeof(float) * (size_t)nth * attention_scratch(max_len, hd));
  if (!h || !qkv || !mlp || !scratch) {
    free(h);
    free(qkv);
    free(mlp);
    free(scratch);
    return cdb_error_set(err, "encoder: out of memory for %d tokens", total);
  }
  encoder_run r = {.cfg = cfg,
                   .total = total,
                   .n_seq = n_seq,
                   .causal = causal,
                   .max_len = max_len,
                   .seq_start = seq_start,
                   .seq_len = seq_len,
                   .x = x,
                   .h = h,
                   .attn = h + td,
                   .qkv = qkv,
                   .mlp = mlp,
                   .scratch = scratch};
  for (int l = 0; l < cfg->layers - 1; l++) run_layer(&r, &layers[l]);
  if (cfg->layers > 0) run_last_layer(&r, &layers[cfg->layers - 1], pool);
  free(h);
  free(qkv);
  free(mlp);
  free(scratch);
  return 0;
}

/* ---- vision tower ---- */

/* Unfolds image b into its patches, each a row of channels * patch * patch values ordered like
 * the conv weight [width, channel, ky, kx]. */
static void im2col(const float *img, int channels, int size, int patch, float *rows) {
  int grid = size / patch;
  for (int py = 0; py < grid; py++)
    for (int px = 0; px < grid; px++) {
      float *row = rows + (size_t)(py * grid + px) * channels * patch * patch;
      for (int c = 0; c < channels; c++)
        for (int ky = 0; ky < patch; ky++)
          memcpy(row + (c * patch + ky) * patch,
                 img + ((size_t)c * size + py * patch + ky) * size + px * patch,
                 sizeof(float) * (size_t)patch);
    }
}

int clip_vision_forward(const clip_config *cfg, const clip_vision_weights *w, const float *pixels,
                        int n, float *out, cdb_error *err) {
  int D = cfg->vision.hidden, size = cfg->image_size, p = cfg->patch_size, C = cfg->num_channels;
  int grid = size / p, P = grid * grid, T = P + 1, patch_len = C * p * p;
  size_t img_len = (size_t)C * size * size;
  int total = n * T;
  float *x = malloc(sizeof(float) * (size_t)total * D);
  float *cols = malloc(sizeof(float) * (size_t)n * P * (patch_len > D ? patch_len : D));
  float *emb = malloc(sizeof(float) * (size_t)n * P * D);
  float *pooled = malloc(sizeof(float) * (size_t)n * D);
  int *start = malloc(sizeof(int) * (size_t)n), *len = malloc(sizeof(int) * (size_t)n);
  int *pool = calloc((size_t)n, sizeof(int)); /* each image pools its class token, row 0 */
  int rc = -1;
  if (!x || !cols || !emb || !pooled || !start || !len || !pool) {
    cdb_error_set(err, "encoder: out of memory for %d images", n);
    goto done;
  }
  for (int b = 0; b < n; b++)
    im2col(pixels + b * img_len, C, size, p, cols + (size_t)b * P * patch_len);
  if (n < 1) { /* nothing to do (also tells the compiler that cols was written) */
    rc = 0;
    goto done;
  }
  linear(cols, n * P, patch_len, w->patch_w, &w->patch_p, NULL, D, emb, D, 0, CLIP_EPI_NONE);
  const clip_kernels *kern = clip_kernels_best();
  for (int b = 0; b < n; b++) {
    float *seq = x + (size_t)b * T * D;
    memcpy(seq, w->class_emb, sizeof(float) * (size_t)D);
    memcpy(seq + D, emb + (size_t)b * P * D, sizeof(float) * (size_t)P * D);
    for (int t = 0; t < T; t++) kern->add(seq + (size_t)t * D, w->pos_emb + (size_t)t * D, D);
    start[b] = b * T;
    len[b] = T;
  }
  layernorm_rows(x, D, x, total, D, w->pre_ln_w, w->pre_ln_b, cfg->vision.ln_eps);
  if (encoder_forward(&cfg->vision, w->layers, x, total, start, len, pool, n, 0, err) != 0)
    goto done;
  /* Pool the class token of each image. */
  layernorm_rows(x, T * D, pooled, n, D, w->post_ln_w, w->post_ln_b, cfg->vision.ln_eps);
  linear(pooled, n, D, w->proj, &w->proj_p, NULL, cfg->projection_dim, out, cfg->projection_dim, 0,
         CLIP_EPI_NONE);
  rc = 0;
done:
  free(x);
  free(cols);
  free(emb);
  free(pooled);
  free(start);
  free(len);
  free(pool);
  return rc;
}

/* ---- text tower ---- */

/* The pooled position: the first <|endoftext|>, else (ids from elsewhere) the highest id, which
 * is what the reference's argmax picks. */
static int pool_position(const int32_t *ids, int ctx) {
  int best = 0;
  for (int t = 0; t < ctx; t++) {
    if (ids[t] == CLIP_TOKEN_EOT) return t;
    if (ids[t] > ids[best]) best = t;
  }
  return best;
}

static void token_row(const st_tensor *emb, int width, int id, float *dst) {
  const clip_kernels *kern = clip_kernels_best();
  const unsigned char *src = emb->data + (size_t)id * width * (emb->dtype == ST_F32 ? 4 : 2);
  if (emb->dtype == ST_F32) memcpy(dst, src, sizeof(float) * (size_t)width);
  else if (emb->dtype == ST_F16) kern->f16_to_f32((const uint16_t *)src, dst, (size_t)width);
  else kern->bf16_to_f32((const uint16_t *)src, dst, (size_t)width);
}

int clip_text_forward(const clip_config *cfg, const clip_text_weights *w, const int32_t *ids, int n,
                      float *out, cdb_error *err) {
  int D = cfg->text.hidden, ctx = cfg->context_length;
  int *start = malloc(sizeof(int) * (size_t)n), *len = malloc(sizeof(int) * (size_t)n);
  int *pool = malloc(sizeof(int) * (size_t)n); /* each text pools its last (end) token */
  float *x = NULL, *pooled = malloc(sizeof(float) * (size_t)n * D);
  int rc = -1, total = 0;
  if (!start || !len || !pool || !pooled) goto oom;
  for (int i = 0; i < n; i++) {
    const int32_t *row = ids + (size_t)i * ctx;
    for (int t = 0; t < ctx; t++)
      if (row[t] < 0 || row[t] >= cfg->vocab_size) {
        cdb_error_set(err, "encoder: token id %d at position %d is outside the vocabulary (%d)",
                      row[t], t, cfg->vocab_size);
        goto done;
      }
    start[i] = total;
    len[i] = pool_position(row, ctx) + 1;
    pool[i] = len[i] - 1;
    total += len[i];
  }
  x = malloc(sizeof(float) * (size_t)total * D);
  if (!x) goto oom;
  const clip_kernels *kern = clip_kernels_best();
  for (int i = 0; i < n; i++)
    for (int t = 0; t < len[i]; t++) {
      float *row = x + (size_t)(start[i] + t) * D;
      token_row(w->tok_emb, D, ids[(size_t)i * ctx + t], row);
      kern->add(row, w->pos_emb + (size_t)t * D, D);
    }
  if (encoder_forward(&cfg->text, w->layers, x, total, start, len, pool, n, 1, err) != 0) goto done;
  for (int i = 0; i < n; i++)
    kern->layernorm(x + (size_t)(start[i] + len[i] - 1) * D, w->final_ln_w, w->final_ln_b,
                    pooled + (size_t)i * D, D, cfg->text.ln_eps);
  linear(pooled, n, D, w->proj, NULL, NULL, cfg->projection_dim, out, cfg->projection_dim, 0,
         CLIP_EPI_NONE);
  rc = 0;
  goto done;
oom:
  cdb_error_set(err, "encoder: out of memory for %d texts", n);
done:
  free(start);
  free(len);
  free(pool);
  free(x);
  free(pooled);
  return rc;
}
