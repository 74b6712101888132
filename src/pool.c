/* pool.c: a small fork-join worker pool (one job at a time; workers sleep on a condition). */
#include "src/pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_MAX_THREADS 256

static struct {
  pthread_once_t once;
  pthread_mutex_t busy; /* held by the caller that owns the pool for one job */
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  int n_threads;   /* desired split, workers = n_threads - 1 */
  int n_started;   /* worker threads alive */
  unsigned long generation;
  cdb_pool_fn fn;
  void *ctx;
  int nth;
  int next;        /* next task index to hand out */
  int pending;     /* tasks not yet finished */
} pool = {.once = PTHREAD_ONCE_INIT,
          .busy = PTHREAD_MUTEX_INITIALIZER,
          .mu = PTHREAD_MUTEX_INITIALIZER,
          .work = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

static void pool_init(void) {
  int n = 0;
  const char *env = getenv("CLIPDB_THREADS");
  if (env) n = atoi(env);
  if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (n <= 0) n = 1;
  if (n > POOL_MAX_THREADS) n = POOL_MAX_THREADS;
  if (pool.n_threads <= 0) pool.n_threads = n;
}

int cdb_pool_threads(void) {
  pthread_once(&pool.once, pool_init);
  return pool.n_threads;
}

void cdb_pool_set_threads(int n) {
  pthread_once(&pool.once, pool_init);
  if (n < 1) n = 1;
  if (n > POOL_MAX_THREADS) n = POOL_MAX_THREADS;
  pthread_mutex_lock(&pool.busy);
  pool.n_threads = n;
  pthread_mutex_unlock(&pool.busy);
}

/* Takes and runs tasks of the current job until none are left. Called with pool.mu held. */
static void run_tasks_locked(void) {
  while (pool.next < pool.nth) {
    int ith = pool.next++;
    cdb_pool_fn fn = pool.fn;
    void *ctx = pool.ctx;
    int nth = pool.nth;
    pthread_mutex_unlock(&pool.mu);
    fn(ctx, ith, nth);
    pthread_mutex_lock(&pool.mu);
    if (--pool.pending == 0) pthread_cond_broadcast(&pool.done);
  }
}

static void *worker_main(void *arg) {
  (void)arg;
  unsigned long seen = 0;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    while (pool.generation == seen) pthread_cond_wait(&pool.work, &pool.mu);
    seen = pool.generation;
    run_tasks_locked();
  }
  return NULL;
}

static void start_workers_locked(int wanted) {
  while (pool.n_started < wanted) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, worker_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) break; /* fewer workers: the caller still runs every task */
    pool.n_started++;
  }
}

static void run_inline(cdb_pool_fn fn, void *ctx, int nth) {
  for (int i = 0; i < nth; i++) fn(ctx, i, nth);
}

void cdb_parallel(cdb_pool_fn fn, void *ctx, int nth) {
  pthread_once(&pool.once, pool_init);
  if (nth <= 1 || pool.n_threads <= 1 || pthread_mutex_trylock(&pool.busy) != 0) {
    run_inline(fn, ctx, nth);
    return;
  }
  pthread_mutex_lock(&pool.mu);
  start_workers_locked(pool.n_threads - 1);
  pool.fn = fn;
  pool.ctx = ctx;
  pool.nth = nth;
  pool.next = 0;
  pool.pending = nth;
  pool.generation++;
  pthread_cond_broadcast(&pool.work);
  run_tasks_locked();
  while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.mu);
  pthread_mutex_unlock(&pool.mu);
  pthread_mutex_unlock(&pool.busy);
}
