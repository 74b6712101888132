/* pool.c: a small fork-join worker pool (one job at a time; idle threads poll briefly, then
 * sleep on a condition). */
#include "src/pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define POOL_MAX_THREADS 256
/* Before sleeping on a condition, a thread waits this long by polling: the encoder runs ~50-90
 * parallel steps per text a few microseconds apart, and waking a sleeping thread costs ~10 us
 * here (a 2 x 5 us step took 17 us). Short enough to cost little when the pool goes idle. */
#ifndef POOL_SPIN_NS
#define POOL_SPIN_NS 50000
#endif

static struct {
  pthread_once_t once;
  pthread_mutex_t busy; /* held by the caller that owns the pool for one job */
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  int n_threads; /* desired split, workers = n_threads - 1 */
  int n_started; /* worker threads alive */
  unsigned long generation;
  cdb_pool_fn fn;
  void *ctx;
  int nth;
  int next;              /* next task index to hand out */
  unsigned long pending; /* tasks not yet finished */
} pool = {.once = PTHREAD_ONCE_INIT,
          .busy = PTHREAD_MUTEX_INITIALIZER,
          .mu = PTHREAD_MUTEX_INITIALIZER,
          .work = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

/* CPUs this process may run on (taskset, cgroup cpusets), not all online ones: a pool larger
 * than that has threads spinning for a partner that cannot run. */
static int usable_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return (int)sysconf(_SC_NPROCESSORS_ONLN);
}

static void pool_init(void) {
  int n = 0;
  const char *env = getenv("CLIPDB_THREADS");
  if (env) n = atoi(env);
  if (n <= 0) n = usable_cpus();
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
    if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_RELEASE) == 0)
      pthread_cond_broadcast(&pool.done);
  }
}

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Called with pool.mu held, returns with it held: polls *word (written under pool.mu, atomically)
 * without the lock for up to POOL_SPIN_NS while (*word == value) == equal. */
static void spin_while(const unsigned long *word, unsigned long value, int equal) {
  pthread_mutex_unlock(&pool.mu);
  long long end = now_ns() + POOL_SPIN_NS;
  for (int i = 0; (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value) == equal; i++) {
    cpu_relax();
    if ((i & 63) == 63 && now_ns() > end) break;
  }
  pthread_mutex_lock(&pool.mu);
}

static void *worker_main(void *arg) {
  (void)arg;
  unsigned long seen = 0;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    if (pool.generation == seen) spin_while(&pool.generation, seen, 1);
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
  __atomic_store_n(&pool.pending, (unsigned long)nth, __ATOMIC_RELAXED);
  __atomic_store_n(&pool.generation, pool.generation + 1, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&pool.work);
  run_tasks_locked();
  if (pool.pending > 0) spin_while(&pool.pending, 0, 0);
  while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.mu);
  pthread_mutex_unlock(&pool.mu);
  pthread_mutex_unlock(&pool.busy);
}
