/* download.c: one file over HTTP(S) with resume (Range on DEST.part), SHA-256 check, retries.
 *
 * Each attempt opens DEST.part, asks for the bytes after what it holds, and writes the body of the
 * final response of the redirect chain into it: a 206 continues the file (only when its
 * Content-Range starts where the file ends), a 200 starts it over. Headers of every response in
 * the chain are read for the digest (see download.h). */
#include "src/download.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "src/fetch.h"

/* An attempt whose rate stays under this for stall_timeout_s is abandoned (then retried). */
#define STALL_BYTES_PER_S 1024L
/* Backoff doubles up to this; a server's Retry-After is honoured up to RETRY_AFTER_CAP_S. All the
 * waits of one download together stay within max_wait_ms (default MAX_WAIT_MS). */
#define BACKOFF_CAP_MS 30000L
#define RETRY_AFTER_CAP_S 60L
#define MAX_WAIT_MS 60000L
#define PROGRESS_INTERVAL_NS 100000000LL
#define PLAIN_MIN_BYTES 1000000LL       /* plain progress: percentage lines from this size on */
#define PLAIN_INTERVAL_NS 5000000000LL /* plain progress of a file of unknown size */

/* The variable's value when it is a number of milliseconds in [0, cap], else fallback. */
static long env_ms(const char *name, long fallback, long cap) {
  const char *env = getenv(name);
  if (!env || !env[0]) return fallback;
  char *end;
  long v = strtol(env, &end, 10);
  return *end == '\0' && v >= 0 && v <= cap ? v : fallback;
}

cdb_download_opts cdb_download_default_opts(void) {
  cdb_download_opts o = {.connect_timeout_ms = 15000,
                         .stall_timeout_s = 30,
                         .max_redirects = 5,
                         .max_attempts = 5,
                         .backoff_ms = 1000,
                         .max_wait_ms = MAX_WAIT_MS};
  o.backoff_ms = env_ms("CLIPDB_DOWNLOAD_BACKOFF_MS", o.backoff_ms, BACKOFF_CAP_MS);
  o.max_wait_ms = env_ms("CLIPDB_DOWNLOAD_MAX_WAIT_MS", o.max_wait_ms, MAX_WAIT_MS);
  return o;
}

/* State of one attempt, shared with libcurl's callbacks. */
typedef struct transfer {
  const cdb_download_opts *opts;
  int fd;                /* DEST.part */
  long long part_size;   /* bytes in DEST.part before this attempt (0 after a 200 restart) */
  long status;           /* status of the response whose headers were read last */
  int responses;         /* responses seen in the redirect chain */
  long long range_start; /* Content-Range start of the current response, -1 when absent */
  long long linked_size; /* X-Linked-Size, -1 when absent */
  long retry_after_s;    /* Retry-After in seconds, -1 when absent */
  bool body_started, bad_range;
  int write_errno;
  char linked_etag[65]; /* X-Linked-Etag of any response, when 64 hex digits */
  char first_etag[65];  /* ETag of the first response, when 64 hex digits */
  char repo_commit[41]; /* X-Repo-Commit of any response, when 40 hex digits */
  long long started_ns, drawn_ns;
  bool drew;
  int plain_tenths; /* plain progress: the last tenth of the file reported */
} transfer;

typedef enum {
  ATTEMPT_DONE,
  ATTEMPT_RETRY,
  ATTEMPT_RESTART,
  ATTEMPT_FAIL,
  ATTEMPT_NOT_FOUND
} outcome;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ms(long ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Copies a 64-hex-digit entity tag (quoted, maybe weak: W/"...") lowercased into out[65]. */
static void parse_sha256_etag(const char *value, char out[65]) {
  if (strncmp(value, "W/", 2) == 0) value += 2;
  if (*value == '"') value++;
  char hex[65];
  for (int i = 0; i < 64; i++) {
    if (!g_ascii_isxdigit(value[i])) return;
    hex[i] = g_ascii_tolower(value[i]);
  }
  if (value[64] != '"' && value[64] != '\0') return;
  hex[64] = '\0';
  memcpy(out, hex, sizeof hex);
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata) {
  transfer *t = userdata;
  size_t n = size * nitems;
  char line[512];
  size_t len = n < sizeof line - 1 ? n : sizeof line - 1;
  memcpy(line, buf, len);
  while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n')) len--;
  line[len] = '\0';
  if (strncmp(line, "HTTP/", 5) == 0) {
    const char *sp = strchr(line, ' ');
    t->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    t->responses++;
    t->range_start = -1;
    t->retry_after_s = -1;
    return n;
  }
  char *colon = strchr(line, ':');
  if (!colon) return n;
  *colon = '\0';
  const char *value = colon + 1;
  while (*value == ' ' || *value == '\t') value++;
  if (g_ascii_strcasecmp(line, "x-linked-etag") == 0) {
    parse_sha256_etag(value, t->linked_etag);
  } else if (g_ascii_strcasecmp(line, "etag") == 0 && t->responses == 1) {
    parse_sha256_etag(value, t->first_etag);
  } else if (g_ascii_strcasecmp(line, "x-repo-commit") == 0) {
    if (strlen(value) == 40 && strspn(value, "0123456789abcdef") == 40)
      memcpy(t->repo_commit, value, 41);
  } else if (g_ascii_strcasecmp(line, "x-linked-size") == 0) {
    t->linked_size = g_ascii_strtoll(value, NULL, 10);
  } else if (g_ascii_strcasecmp(line, "content-range") == 0) {
    if (g_ascii_strncasecmp(value, "bytes ", 6) == 0 && g_ascii_isdigit(value[6]))
      t->range_start = g_ascii_strtoll(value + 6, NULL, 10);
  } else if (g_ascii_strcasecmp(line, "retry-after") == 0 && g_ascii_isdigit(value[0])) {
    t->retry_after_s = strtol(value, NULL, 10);
  }
  return n;
}

static bool status_has_body(long status) { return status == 200 || status == 206; }

static const char *progress_label(const transfer *t) {
  return t->opts->label ? t->opts->label : "download";
}

/* Plain progress: the line that opens a transfer (once the body starts). */
static void print_plain_start(transfer *t) {
  t->drawn_ns = now_ns();
  if (t->status == 206 && t->part_size > 0)
    fprintf(stderr, "  %s: resuming at %.1f MB\n", progress_label(t), t->part_size / 1e6);
  else fprintf(stderr, "  %s: downloading\n", progress_label(t));
  fflush(stderr);
}

/* Positions DEST.part for the first body byte: after its content for a matching 206, at 0 for a
 * 200. */
static int start_body(transfer *t) {
  t->body_started = true;
  if (t->status == 206 && t->range_start != t->part_size) {
    t->bad_range = true;
    return -1;
  }
  if (t->status == 200) {
    t->part_size = 0;
    if (ftruncate(t->fd, 0) != 0) {
      t->write_errno = errno;
      return -1;
    }
  }
  if (lseek(t->fd, (off_t)t->part_size, SEEK_SET) < 0) {
    t->write_errno = errno;
    return -1;
  }
  return 0;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
  transfer *t = userdata;
  size_t n = size * nmemb;
  if (!status_has_body(t->status)) return n; /* an error page: not part of the file */
  if (!t->body_started) {
    if (start_body(t) != 0) return 0;
    if (t->opts->show_progress && t->opts->plain_progress) print_plain_start(t);
  }
  for (size_t done = 0; done < n;) {
    ssize_t w = write(t->fd, ptr + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      t->write_errno = w < 0 ? errno : EIO;
      return 0;
    }
    done += (size_t)w;
  }
  return n;
}

static void draw_progress(transfer *t, long long now, long long total) {
  double mb = 1e6, secs = (double)(now_ns() - t->started_ns) / 1e9;
  const char *label = progress_label(t);
  if (total > 0)
    fprintf(stderr, "\r  %-26.26s %3d%% %8.1f / %.1f MB", label, (int)(100.0 * now / total),
            now / mb, total / mb);
  else fprintf(stderr, "\r  %-26.26s %8.1f MB", label, now / mb);
  if (secs > 0.2) fprintf(stderr, "  %6.1f MB/s", (now - t->part_size) / mb / secs);
  fputs("\033[K", stderr);
  fflush(stderr);
  t->drew = true;
}

/* Plain progress: a line at each new tenth of a large file, or every 5 s when the size is
 * unknown. */
static void print_plain_progress(transfer *t, long long now, long long total) {
  long long ns = now_ns();
  double secs = (double)(ns - t->started_ns) / 1e9;
  double rate = secs > 0 ? (now - t->part_size) / 1e6 / secs : 0;
  if (total >= PLAIN_MIN_BYTES) {
    int tenths = (int)(10 * now / total);
    if (tenths <= t->plain_tenths) return;
    t->plain_tenths = tenths;
    fprintf(stderr, "  %s: %d%% %.1f / %.1f MB, %.1f MB/s\n", progress_label(t), 10 * tenths,
            now / 1e6, total / 1e6, rate);
  } else if (total <= 0 && ns - t->drawn_ns >= PLAIN_INTERVAL_NS) {
    t->drawn_ns = ns;
    fprintf(stderr, "  %s: %.1f MB, %.1f MB/s\n", progress_label(t), now / 1e6, rate);
  }
  fflush(stderr);
}

static int on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
  (void)ultotal;
  (void)ulnow;
  transfer *t = clientp;
  long long ns = now_ns(), base = t->status == 206 ? t->part_size : 0;
  if (!status_has_body(t->status)) return 0;
  if (t->opts->plain_progress) {
    if (!t->body_started) return 0;
    print_plain_progress(t, base + dlnow, dltotal > 0 ? base + dltotal : 0);
    return 0;
  }
  if (ns - t->drawn_ns < PROGRESS_INTERVAL_NS) return 0;
  t->drawn_ns = ns;
  draw_progress(t, base + dlnow, dltotal > 0 ? base + dltotal : 0);
  return 0;
}

static bool transient_curl_error(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return true;
    default: return false;
  }
}

static void configure(CURL *h, const char *url, transfer *t, struct curl_slist *headers,
                      char *range, char *curl_msg) {
  const cdb_download_opts *o = t->opts;
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(h, CURLOPT_MAXREDIRS, o->max_redirects);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, STALL_BYTES_PER_S);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, o->stall_timeout_s);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "clipdb/0.1");
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_msg);
  if (headers) curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  if (range) curl_easy_setopt(h, CURLOPT_RANGE, range);
  if (o->show_progress) {
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, t);
  }
}

/* The Authorization header list for a bearer token (NULL without one). The token is wiped from
 * memory by free_auth_headers. */
static struct curl_slist *auth_headers(const char *token) {
  if (!token || !token[0]) return NULL;
  char *auth = g_strdup_printf("Authorization: Bearer %s", token);
  struct curl_slist *headers = curl_slist_append(NULL, auth); /* copies the string */
  explicit_bzero(auth, strlen(auth));
  g_free(auth);
  return headers;
}

static void free_auth_headers(struct curl_slist *headers) {
  for (struct curl_slist *h = headers; h; h = h->next) explicit_bzero(h->data, strlen(h->data));
  curl_slist_free_all(headers);
}

/* Runs libcurl once for url into t->fd; returns its code, the final status in *status. */
static CURLcode perform(const char *url, transfer *t, long *status, char *curl_msg) {
  const cdb_download_opts *o = t->opts;
  CURL *h = curl_easy_init();
  if (!h) return CURLE_FAILED_INIT;
  struct curl_slist *headers = auth_headers(o->bearer_token);
  char range[32];
  snprintf(range, sizeof range, "%lld-", t->part_size);
  configure(h, url, t, headers, t->part_size > 0 ? range : NULL, curl_msg);
  CURLcode rc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup(h);
  free_auth_headers(headers);
  return rc;
}

static outcome classify(CURLcode rc, long status, const transfer *t, const char *shown,
                        const char *curl_msg, cdb_error *err) {
  if (t->bad_range) {
    cdb_error_set(err, "download: %s: the server resumed at byte %lld, not %lld", shown,
                  t->range_start, t->part_size);
    return ATTEMPT_RESTART;
  }
  if (t->write_errno) {
    cdb_error_set(err, "download: %s: writing the file: %s", shown, strerror(t->write_errno));
    return ATTEMPT_FAIL;
  }
  if (rc != CURLE_OK) {
    const char *why = curl_msg[0] ? curl_msg : curl_easy_strerror(rc);
    if (rc == CURLE_OPERATION_TIMEDOUT)
      cdb_error_set(err, "download: %s: timed out (%s)", shown, why);
    else cdb_error_set(err, "download: %s: %s", shown, why);
    return transient_curl_error(rc) ? ATTEMPT_RETRY : ATTEMPT_FAIL;
  }
  if (status_has_body(status)) return ATTEMPT_DONE;
  if (status == 416) { /* .part already as long as the file or longer: start over */
    cdb_error_set(err, "download: %s: HTTP 416 for a resumed download", shown);
    return ATTEMPT_RESTART;
  }
  if (status == 404) {
    cdb_error_set(err, "download: %s: not found (HTTP 404)", shown);
    return ATTEMPT_NOT_FOUND;
  }
  if (status == 401 || status == 403) {
    cdb_error_set(err,
                  "download: %s: access denied (HTTP %ld); for a gated or private model set "
                  "HF_TOKEN to a token with read access",
                  shown, status);
    return ATTEMPT_FAIL;
  }
  cdb_error_set(err, "download: %s: HTTP status %ld", shown, status);
  return (status == 429 || (status >= 500 && status <= 599)) ? ATTEMPT_RETRY : ATTEMPT_FAIL;
}

static outcome run_attempt(const char *url, const char *part, transfer *t, const char *shown,
                           cdb_error *err) {
  t->fd = open(part, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  struct stat st;
  if (t->fd < 0 || fstat(t->fd, &st) != 0) {
    cdb_error_set(err, "download: %s: %s", part, strerror(errno));
    if (t->fd >= 0) close(t->fd);
    return ATTEMPT_FAIL;
  }
  t->part_size = st.st_size;
  t->started_ns = now_ns();
  char curl_msg[CURL_ERROR_SIZE] = "";
  long status = 0;
  CURLcode rc = perform(url, t, &status, curl_msg);
  if (rc == CURLE_OK && status == 200 && !t->body_started && ftruncate(t->fd, 0) != 0)
    t->write_errno = errno; /* an empty 200 body still replaces what .part held */
  if (rc == CURLE_OK && status_has_body(status) && fsync(t->fd) != 0) t->write_errno = errno;
  if (t->drew) fputs("\r\033[K", stderr); /* the caller prints the file's outcome there */
  if (close(t->fd) != 0 && !t->write_errno) t->write_errno = errno;
  return classify(rc, status, t, shown, curl_msg, err);
}

int cdb_sha256_file(const char *path, char hex[65], cdb_error *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return cdb_error_set(err, "sha256: %s: %s", path, strerror(errno));
  GChecksum *sum = g_checksum_new(G_CHECKSUM_SHA256);
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = g_malloc(CHUNK);
  ssize_t n;
  while ((n = read(fd, buf, CHUNK)) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    g_checksum_update(sum, buf, (gssize)n);
  }
  int saved = errno;
  close(fd);
  g_free(buf);
  if (n < 0) {
    g_checksum_free(sum);
    return cdb_error_set(err, "sha256: %s: %s", path, strerror(saved));
  }
  g_strlcpy(hex, g_checksum_get_string(sum), 65);
  g_checksum_free(sum);
  return 0;
}

/* Checks the finished .part (size, digest) and renames it to dest. Returns 0, -1, or 1 when the
 * digest did not match (the .part is then removed). */
static int finish(const char *part, const char *dest, const transfer *t, const char *shown,
                  cdb_download_info *info, cdb_error *err) {
  struct stat st;
  if (stat(part, &st) != 0) return cdb_error_set(err, "download: %s: %s", part, strerror(errno));
  if (t->linked_size >= 0 && st.st_size != t->linked_size) {
    unlink(part);
    cdb_error_set(err, "download: %s: got %lld bytes, the server announced %lld", shown,
                  (long long)st.st_size, t->linked_size);
    return 1;
  }
  if (cdb_sha256_file(part, info->sha256, err) != 0) return -1;
  const char *expected = t->linked_etag[0] ? t->linked_etag : t->first_etag;
  if (expected[0] && strcmp(expected, info->sha256) != 0) {
    unlink(part);
    cdb_error_set(err,
                  "download: %s: SHA-256 mismatch: the server announced %s, the download is %s",
                  shown, expected, info->sha256);
    return 1;
  }
  if (rename(part, dest) != 0)
    return cdb_error_set(err, "download: renaming %s: %s", part, strerror(errno));
  info->bytes = st.st_size;
  info->verified = expected[0] != '\0';
  memcpy(info->repo_commit, t->repo_commit, sizeof info->repo_commit);
  cdb_error_clear(err); /* drop what an earlier, retried attempt reported */
  return 0;
}

static long retry_delay_ms(const cdb_download_opts *o, int attempt, long retry_after_s) {
  long ms = o->backoff_ms;
  for (int i = 1; i < attempt && ms < BACKOFF_CAP_MS; i++) ms *= 2;
  if (ms > BACKOFF_CAP_MS) ms = BACKOFF_CAP_MS;
  if (retry_after_s > 0) {
    long server_ms = (retry_after_s < RETRY_AFTER_CAP_S ? retry_after_s : RETRY_AFTER_CAP_S) * 1000;
    if (server_ms > ms) ms = server_ms;
  }
  return ms;
}

int cdb_download(const char *url, const char *dest, const cdb_download_opts *opts,
                 cdb_download_info *info, cdb_error *err) {
  cdb_download_opts o = opts ? *opts : cdb_download_default_opts();
  if (o.max_attempts < 1) o.max_attempts = 1;
  cdb_download_info local;
  if (!info) info = &local;
  memset(info, 0, sizeof *info);
  char shown[512];
  cdb_url_redact(url, shown, sizeof shown);
  if (!cdb_is_url(url))
    return cdb_error_set(err, "download: %s: only http and https URLs are supported", shown);
  cdb_curl_init();
  char *part = g_strconcat(dest, ".part", NULL);
  int result = -1;
  bool gave_up = true;
  long waited_ms = 0;
  for (int attempt = 1; attempt <= o.max_attempts; attempt++) {
    transfer t = {.opts = &o, .range_start = -1, .linked_size = -1, .retry_after_s = -1};
    outcome oc = run_attempt(url, part, &t, shown, err);
    info->attempts = attempt;
    bool resumed = t.status == 206 && t.part_size > 0;
    info->resumed = info->resumed || resumed;
    if (oc == ATTEMPT_DONE) {
      int fin = finish(part, dest, &t, shown, info, err);
      if (fin == 1 && resumed) continue; /* the kept part may be what was wrong: once more, whole */
      result = fin == 0 ? 0 : -1;
      gave_up = false;
      break;
    }
    if (oc == ATTEMPT_NOT_FOUND || oc == ATTEMPT_FAIL) {
      struct stat st;
      if (oc == ATTEMPT_NOT_FOUND || (stat(part, &st) == 0 && st.st_size == 0)) unlink(part);
      result = oc == ATTEMPT_NOT_FOUND ? CDB_DOWNLOAD_NOT_FOUND : -1;
      gave_up = false;
      break;
    }
    if (oc == ATTEMPT_RESTART) {
      unlink(part);
      continue;
    }
    if (attempt < o.max_attempts) {
      long ms = retry_delay_ms(&o, attempt, t.retry_after_s), left = o.max_wait_ms - waited_ms;
      if (ms > left) ms = left > 0 ? left : 0;
      sleep_ms(ms);
      waited_ms += ms;
    }
  }
  if (gave_up && o.max_attempts > 1)
    cdb_error_prefix(err, "gave up after %d attempts", info->attempts);
  g_free(part);
  return result;
}

int cdb_download_probe(const char *url, const cdb_download_opts *opts, char sha256[65],
                       cdb_error *err) {
  cdb_download_opts o = opts ? *opts : cdb_download_default_opts();
  o.show_progress = false;
  sha256[0] = '\0';
  char shown[512];
  cdb_url_redact(url, shown, sizeof shown);
  if (!cdb_is_url(url))
    return cdb_error_set(err, "download: %s: only http and https URLs are supported", shown);
  cdb_curl_init();
  CURL *h = curl_easy_init();
  if (!h) return cdb_error_set(err, "download: %s: cannot initialise libcurl", shown);
  transfer t = {.opts = &o, .fd = -1, .range_start = -1, .linked_size = -1, .retry_after_s = -1};
  char curl_msg[CURL_ERROR_SIZE] = "";
  struct curl_slist *headers = auth_headers(o.bearer_token);
  configure(h, url, &t, headers, NULL, curl_msg);
  curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  CURLcode rc = curl_easy_perform(h);
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(h);
  free_auth_headers(headers);
  if (rc != CURLE_OK)
    return cdb_error_set(err, "download: %s: %s", shown,
                         curl_msg[0] ? curl_msg : curl_easy_strerror(rc));
  if (status == 404) {
    cdb_error_set(err, "download: %s: not found (HTTP 404)", shown);
    return CDB_DOWNLOAD_NOT_FOUND;
  }
  if (status < 200 || status >= 400)
    return cdb_error_set(err, "download: %s: HTTP status %ld", shown, status);
  memcpy(sha256, t.linked_etag[0] ? t.linked_etag : t.first_etag, 65);
  return 0;
}
