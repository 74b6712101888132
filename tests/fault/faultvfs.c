/* faultvfs.c: fault injection for the fault tests (tests/python/test_fault_injection.py).
 *
 * Two parts in one loadable module (build/tests/fault/faultvfs.so):
 *  - a SQLite VFS "faultvfs" over the default one that fails the Nth xRead / xWrite / xSync /
 *    xTruncate (or the Nth of any of them) with SQLITE_IOERR_* or SQLITE_FULL, once ("transient")
 *    or from then on ("persistent"), as SQLite's own fault tests do. Open a database with it via
 *    the URI "file:x.db?vfs=faultvfs" after loading the module as an extension.
 *  - libc interposers for the extension's cache files ("<db>-clip-<table>.idx", written with
 *    stdio): fopen / fwrite / fflush / fsync / fclose / rename on a path containing "-clip-"
 *    count as "cache" calls, and the Nth fails with EIO or ENOSPC. They take effect only when the
 *    module is also in LD_PRELOAD (the same file: the loaded extension shares its counters).
 * SQL: faultvfs_arm(kind, n, error [, persistent])  kind: read|write|sync|truncate|any|cache,
 *        error: ioerr|full|corrupt; counting restarts at 0 and the nth call from now fails ->
 *        NULL. corrupt (cache only): the nth fwrite succeeds but writes one byte flipped, as a
 *        disk returning bad data would, which only a checksum can detect.
 *      faultvfs_disarm()  -> the number of failures injected since the last arm
 *      faultvfs_count(kind) -> calls of that kind seen since the last arm (to size a sweep) */
/* The interposers define fopen and fopen64 separately: no 64-bit redirection of fopen here. */
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

#define EXPORT __attribute__((visibility("default")))

enum { K_READ, K_WRITE, K_SYNC, K_TRUNCATE, K_CACHE, K_COUNT, K_ANY = K_COUNT };
static const char *const kind_names[] = {"read", "write", "sync", "truncate", "cache", "any"};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  int armed_kind; /* -1: disarmed */
  long target;    /* 1-based call number that fails */
  int full;       /* SQLITE_FULL / ENOSPC instead of an I/O error */
  int corrupt;    /* cache fwrite: write the data with one byte flipped and report success */
  int persistent;
  long calls[K_COUNT + 1];
  long injected;
} st = {.armed_kind = -1};

/* Counts a call of `kind`; returns 1 when it must fail. */
static int should_fail(int kind) {
  pthread_mutex_lock(&lock);
  st.calls[kind]++;
  if (kind != K_CACHE) st.calls[K_ANY]++;
  int hit = 0;
  int armed = st.armed_kind == kind || (st.armed_kind == K_ANY && kind != K_CACHE);
  if (st.armed_kind >= 0 && armed) {
    long n = st.calls[st.armed_kind];
    hit = n == st.target || (st.persistent && n > st.target);
  }
  if (hit) st.injected++;
  pthread_mutex_unlock(&lock);
  return hit;
}

static int fault_rc(int ioerr) { return st.full ? SQLITE_FULL : ioerr; }

/* ---- the VFS shim ---- */

typedef struct fault_file {
  sqlite3_file base;
  sqlite3_file *real; /* allocated right after this struct */
} fault_file;

static sqlite3_vfs *real_vfs;

static int f_close(sqlite3_file *f) {
  fault_file *p = (fault_file *)f;
  int rc = p->real->pMethods ? p->real->pMethods->xClose(p->real) : SQLITE_OK;
  p->real->pMethods = NULL;
  return rc;
}

static int f_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off) {
  fault_file *p = (fault_file *)f;
  if (should_fail(K_READ)) return SQLITE_IOERR_READ;
  return p->real->pMethods->xRead(p->real, buf, n, off);
}

static int f_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off) {
  fault_file *p = (fault_file *)f;
  if (should_fail(K_WRITE)) return fault_rc(SQLITE_IOERR_WRITE);
  return p->real->pMethods->xWrite(p->real, buf, n, off);
}

static int f_truncate(sqlite3_file *f, sqlite3_int64 size) {
  fault_file *p = (fault_file *)f;
  if (should_fail(K_TRUNCATE)) return fault_rc(SQLITE_IOERR_TRUNCATE);
  return p->real->pMethods->xTruncate(p->real, size);
}

static int f_sync(sqlite3_file *f, int flags) {
  fault_file *p = (fault_file *)f;
  if (should_fail(K_SYNC)) return fault_rc(SQLITE_IOERR_FSYNC);
  return p->real->pMethods->xSync(p->real, flags);
}

#define FORWARD(name, sig, args)            \
  static int f_##name sig {                 \
    fault_file *p = (fault_file *)f;        \
    return p->real->pMethods->x##name args; \
  }
FORWARD(FileSize, (sqlite3_file * f, sqlite3_int64 *size), (p->real, size))
FORWARD(Lock, (sqlite3_file * f, int level), (p->real, level))
FORWARD(Unlock, (sqlite3_file * f, int level), (p->real, level))
FORWARD(CheckReservedLock, (sqlite3_file * f, int *out), (p->real, out))
FORWARD(FileControl, (sqlite3_file * f, int op, void *arg), (p->real, op, arg))
FORWARD(SectorSize, (sqlite3_file * f), (p->real))
FORWARD(DeviceCharacteristics, (sqlite3_file * f), (p->real))
FORWARD(ShmMap, (sqlite3_file * f, int pg, int pgsz, int extend, void volatile **out),
        (p->real, pg, pgsz, extend, out))
FORWARD(ShmLock, (sqlite3_file * f, int offset, int n, int flags), (p->real, offset, n, flags))
FORWARD(ShmUnmap, (sqlite3_file * f, int del), (p->real, del))
FORWARD(Fetch, (sqlite3_file * f, sqlite3_int64 off, int amt, void **out), (p->real, off, amt, out))
FORWARD(Unfetch, (sqlite3_file * f, sqlite3_int64 off, void *ptr), (p->real, off, ptr))

static void f_shm_barrier(sqlite3_file *f) {
  fault_file *p = (fault_file *)f;
  p->real->pMethods->xShmBarrier(p->real);
}

static const sqlite3_io_methods fault_io = {
    .iVersion = 3,
    .xClose = f_close,
    .xRead = f_read,
    .xWrite = f_write,
    .xTruncate = f_truncate,
    .xSync = f_sync,
    .xFileSize = f_FileSize,
    .xLock = f_Lock,
    .xUnlock = f_Unlock,
    .xCheckReservedLock = f_CheckReservedLock,
    .xFileControl = f_FileControl,
    .xSectorSize = f_SectorSize,
    .xDeviceCharacteristics = f_DeviceCharacteristics,
    .xShmMap = f_ShmMap,
    .xShmLock = f_ShmLock,
    .xShmBarrier = f_shm_barrier,
    .xShmUnmap = f_ShmUnmap,
    .xFetch = f_Fetch,
    .xUnfetch = f_Unfetch,
};

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags) {
  (void)vfs;
  fault_file *p = (fault_file *)f;
  p->real = (sqlite3_file *)(p + 1);
  int rc = real_vfs->xOpen(real_vfs, name, p->real, flags, out_flags);
  /* SQLite calls xClose only when pMethods is set; a failed open leaves it NULL. */
  p->base.pMethods = p->real->pMethods ? &fault_io : NULL;
  return rc;
}

#define VFORWARD(name, sig, args)  \
  static int v_##name sig {        \
    (void)vfs;                     \
    return real_vfs->x##name args; \
  }
VFORWARD(Delete, (sqlite3_vfs * vfs, const char *name, int sync), (real_vfs, name, sync))
VFORWARD(Access, (sqlite3_vfs * vfs, const char *name, int flags, int *out),
         (real_vfs, name, flags, out))
VFORWARD(FullPathname, (sqlite3_vfs * vfs, const char *name, int n, char *out),
         (real_vfs, name, n, out))
VFORWARD(Randomness, (sqlite3_vfs * vfs, int n, char *out), (real_vfs, n, out))
VFORWARD(Sleep, (sqlite3_vfs * vfs, int us), (real_vfs, us))
VFORWARD(CurrentTime, (sqlite3_vfs * vfs, double *out), (real_vfs, out))
VFORWARD(GetLastError, (sqlite3_vfs * vfs, int n, char *out), (real_vfs, n, out))
VFORWARD(CurrentTimeInt64, (sqlite3_vfs * vfs, sqlite3_int64 *out), (real_vfs, out))

static void *v_dlopen(sqlite3_vfs *vfs, const char *name) {
  (void)vfs;
  return real_vfs->xDlOpen(real_vfs, name);
}
static void v_dlerror(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  real_vfs->xDlError(real_vfs, n, out);
}
static void (*v_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void) {
  (void)vfs;
  return real_vfs->xDlSym(real_vfs, h, sym);
}
static void v_dlclose(sqlite3_vfs *vfs, void *h) {
  (void)vfs;
  real_vfs->xDlClose(real_vfs, h);
}

static sqlite3_vfs fault_vfs = {
    .iVersion = 2,
    .zName = "faultvfs",
    .xOpen = v_open,
    .xDelete = v_Delete,
    .xAccess = v_Access,
    .xFullPathname = v_FullPathname,
    .xDlOpen = v_dlopen,
    .xDlError = v_dlerror,
    .xDlSym = v_dlsym,
    .xDlClose = v_dlclose,
    .xRandomness = v_Randomness,
    .xSleep = v_Sleep,
    .xCurrentTime = v_CurrentTime,
    .xGetLastError = v_GetLastError,
    .xCurrentTimeInt64 = v_CurrentTimeInt64,
};

/* ---- libc interposers for the cache files (active under LD_PRELOAD) ---- */

#define MAX_TRACKED 16
static FILE *tracked[MAX_TRACKED];
static int tracked_fd[MAX_TRACKED];

static void *next_sym(const char *name) { return dlsym(RTLD_NEXT, name); }

static int is_cache_path(const char *path) {
  return path && strstr(path, "-clip-") && strstr(path, ".idx");
}

static int tracked_slot(const FILE *f) {
  for (int i = 0; f && i < MAX_TRACKED; i++)
    if (tracked[i] == f) return i;
  return -1;
}

static int fail_cache(void) {
  if (!should_fail(K_CACHE)) return 0;
  errno = st.full ? ENOSPC : EIO;
  return 1;
}

static FILE *open_tracked(const char *sym, const char *path, const char *mode) {
  typedef FILE *(*fopen_fn)(const char *, const char *);
  fopen_fn real = (fopen_fn)next_sym(sym);
  int writing = mode && (strchr(mode, 'w') || strchr(mode, 'a') || strchr(mode, '+'));
  if (is_cache_path(path) && writing && fail_cache()) return NULL;
  FILE *f = real(path, mode);
  if (f && is_cache_path(path) && writing) {
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_TRACKED; i++) {
      if (!tracked[i]) {
        tracked[i] = f;
        tracked_fd[i] = fileno(f);
        break;
      }
    }
    pthread_mutex_unlock(&lock);
  }
  return f;
}

EXPORT FILE *fopen(const char *path, const char *mode) { return open_tracked("fopen", path, mode); }

EXPORT FILE *fopen64(const char *path, const char *mode) {
  return open_tracked("fopen64", path, mode);
}

EXPORT size_t fwrite(const void *buf, size_t size, size_t n, FILE *f) {
  static size_t (*real)(const void *, size_t, size_t, FILE *);
  if (!real) real = (size_t(*)(const void *, size_t, size_t, FILE *))next_sym("fwrite");
  if (tracked_slot(f) >= 0 && fail_cache()) {
    if (!st.corrupt || size * n == 0) return 0;
    unsigned char *copy = malloc(size * n);
    if (!copy) return 0;
    memcpy(copy, buf, size * n);
    copy[(size * n) / 2] ^= 0x10;
    size_t done = real(copy, size, n, f);
    free(copy);
    return done;
  }
  return real(buf, size, n, f);
}

EXPORT int fflush(FILE *f) {
  static int (*real)(FILE *);
  if (!real) real = (int (*)(FILE *))next_sym("fflush");
  if (tracked_slot(f) >= 0 && fail_cache()) return EOF;
  return real(f);
}

EXPORT int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))next_sym("fsync");
  int mine = 0;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < MAX_TRACKED; i++) mine |= tracked[i] && tracked_fd[i] == fd;
  pthread_mutex_unlock(&lock);
  if (mine && fail_cache()) return -1;
  return real(fd);
}

EXPORT int fclose(FILE *f) {
  static int (*real)(FILE *);
  if (!real) real = (int (*)(FILE *))next_sym("fclose");
  int slot = tracked_slot(f);
  if (slot >= 0) {
    pthread_mutex_lock(&lock);
    tracked[slot] = NULL;
    pthread_mutex_unlock(&lock);
    if (fail_cache()) {
      real(f); /* the stream is gone either way, as after a failing fclose */
      errno = st.full ? ENOSPC : EIO;
      return EOF;
    }
  }
  return real(f);
}

EXPORT int rename(const char *from, const char *to) {
  static int (*real)(const char *, const char *);
  if (!real) real = (int (*)(const char *, const char *))next_sym("rename");
  if (is_cache_path(to) && fail_cache()) return -1;
  return real(from, to);
}

/* ---- SQL control ---- */

static int kind_of(const char *name) {
  for (int i = 0; name && i <= K_ANY; i++)
    if (strcmp(name, kind_names[i]) == 0) return i;
  return -1;
}

static void sql_arm(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  int kind = argc >= 3 ? kind_of((const char *)sqlite3_value_text(argv[0])) : -1;
  const char *err = argc >= 3 ? (const char *)sqlite3_value_text(argv[2]) : NULL;
  if (kind < 0 || !err ||
      (strcmp(err, "ioerr") && strcmp(err, "full") &&
       (strcmp(err, "corrupt") || kind != K_CACHE))) {
    sqlite3_result_error(ctx, "faultvfs_arm(kind, n, ioerr|full|corrupt [, persistent])", -1);
    return;
  }
  pthread_mutex_lock(&lock);
  memset(st.calls, 0, sizeof st.calls);
  st.injected = 0;
  st.armed_kind = kind;
  st.target = sqlite3_value_int64(argv[1]);
  st.full = strcmp(err, "full") == 0;
  st.corrupt = strcmp(err, "corrupt") == 0;
  st.persistent = argc > 3 && sqlite3_value_int(argv[3]);
  pthread_mutex_unlock(&lock);
  sqlite3_result_null(ctx);
}

static void sql_disarm(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  (void)argv;
  pthread_mutex_lock(&lock);
  st.armed_kind = -1;
  long injected = st.injected;
  pthread_mutex_unlock(&lock);
  sqlite3_result_int64(ctx, injected);
}

static void sql_count(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  int kind = kind_of((const char *)sqlite3_value_text(argv[0]));
  if (kind < 0) {
    sqlite3_result_error(ctx, "faultvfs_count(kind)", -1);
    return;
  }
  pthread_mutex_lock(&lock);
  long n = st.calls[kind];
  pthread_mutex_unlock(&lock);
  sqlite3_result_int64(ctx, n);
}

EXPORT int sqlite3_faultvfs_init(sqlite3 *db, char **errmsg, const sqlite3_api_routines *api) {
  SQLITE_EXTENSION_INIT2(api);
  (void)errmsg;
  if (!sqlite3_vfs_find("faultvfs")) {
    real_vfs = sqlite3_vfs_find(NULL);
    fault_vfs.szOsFile = (int)sizeof(fault_file) + real_vfs->szOsFile;
    fault_vfs.mxPathname = real_vfs->mxPathname;
    int rc = sqlite3_vfs_register(&fault_vfs, 0);
    if (rc != SQLITE_OK) return rc;
  }
  int flags = SQLITE_UTF8;
  int rc = sqlite3_create_function(db, "faultvfs_arm", -1, flags, NULL, sql_arm, NULL, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_create_function(db, "faultvfs_disarm", 0, flags, NULL, sql_disarm, NULL, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_create_function(db, "faultvfs_count", 1, flags, NULL, sql_count, NULL, NULL);
  /* Stay loaded: the VFS outlives this connection. */
  return rc == SQLITE_OK ? SQLITE_OK_LOAD_PERMANENTLY : rc;
}
