/* pool.h: the process-wide worker pool used by the encoder's kernels.
 *
 * cdb_parallel(fn, ctx, nth) runs fn(ctx, ith, nth) for ith = 0..nth-1 and returns when all
 * are done; the calling thread runs ith = 0. Kernels split their rows by (ith, nth) themselves.
 * Thread-safe: when another thread is using the pool, the call runs its tasks inline, so
 * concurrent callers (several SQLite connections) never deadlock or oversubscribe. */
#ifndef CDB_POOL_H
#define CDB_POOL_H

typedef void (*cdb_pool_fn)(void *ctx, int ith, int nth);

/* Number of threads kernels should split work into (default: the CPUs this process may use,
 * or CLIPDB_THREADS). */
int cdb_pool_threads(void);

/* Sets the thread count for later calls (1 = no workers). Call before heavy use. */
void cdb_pool_set_threads(int n);

void cdb_parallel(cdb_pool_fn fn, void *ctx, int nth);

#endif
