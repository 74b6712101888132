/* fetch.c: bounded HTTP(S) GET over libcurl (used for image URLs). */
#include "src/fetch.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Positive number from the environment variable name, or 0 when unset or malformed. */
static double env_positive(const char *name) {
  const char *s = getenv(name);
  if (!s || !s[0]) return 0;
  char *end;
  double v = strtod(s, &end);
  return (*end == '\0' && v > 0 && v < 1e15) ? v : 0;
}

cdb_fetch_limits cdb_fetch_default_limits(void) {
  cdb_fetch_limits lim = {.max_bytes = 64u << 20,
                          .timeout_ms = 30000,
                          .connect_timeout_ms = 10000,
                          .max_redirects = 5};
  double max_bytes = env_positive("CLIPDB_FETCH_MAX_BYTES");
  double timeout_s = env_positive("CLIPDB_FETCH_TIMEOUT");
  if (max_bytes >= 1) lim.max_bytes = (size_t)max_bytes;
  if (timeout_s > 0) lim.timeout_ms = timeout_s * 1000 < 1 ? 1 : (long)(timeout_s * 1000);
  if (lim.connect_timeout_ms > lim.timeout_ms) lim.connect_timeout_ms = lim.timeout_ms;
  return lim;
}

int cdb_is_url(const char *s) {
  return s && (strncasecmp(s, "http://", 7) == 0 || strncasecmp(s, "https://", 8) == 0);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }
void cdb_curl_init(void) { pthread_once(&curl_once, curl_init_once); }

typedef struct body {
  unsigned char *data;
  size_t len, cap, max;
  int too_large;
} body;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata) {
  body *b = userdata;
  size_t n = size * nmemb;
  if (b->len + n > b->max) {
    b->too_large = 1;
    return 0;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 65536;
    while (cap < b->len + n) cap *= 2;
    if (cap > b->max) cap = b->max;
    unsigned char *p = realloc(b->data, cap);
    if (!p) return 0;
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, ptr, n);
  b->len += n;
  return n;
}

void cdb_url_redact(const char *url, char *out, size_t cap) {
  const char *scheme_end = strstr(url, "://");
  const char *at = scheme_end ? strchr(scheme_end + 3, '@') : NULL;
  const char *slash = scheme_end ? strchr(scheme_end + 3, '/') : NULL;
  if (at && (!slash || at < slash))
    snprintf(out, cap, "%.*s%s", (int)(scheme_end + 3 - url), url, at + 1);
  else snprintf(out, cap, "%s", url);
}

void *cdb_fetch(const char *url, const cdb_fetch_limits *limits, size_t *len_out, cdb_error *err) {
  char shown[512];
  cdb_url_redact(url, shown, sizeof shown);
  if (!cdb_is_url(url)) {
    cdb_error_set(err, "fetch: %s: only http and https URLs are supported", shown);
    return NULL;
  }
  cdb_fetch_limits lim = limits ? *limits : cdb_fetch_default_limits();
  cdb_curl_init();
  CURL *h = curl_easy_init();
  if (!h) {
    cdb_error_set(err, "fetch: %s: cannot initialise libcurl", shown);
    return NULL;
  }
  body b = {.max = lim.max_bytes};
  char curl_msg[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(h, CURLOPT_MAXREDIRS, lim.max_redirects);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, lim.timeout_ms);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, lim.connect_timeout_ms);
  curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)lim.max_bytes);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "clipdb/0.1");
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_msg);
  CURLcode rc = curl_easy_perform(h);
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(h);
  if (b.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
    cdb_error_set(err, "fetch: %s: response larger than %zu bytes", shown, lim.max_bytes);
  } else if (rc == CURLE_OPERATION_TIMEDOUT) {
    cdb_error_set(err, "fetch: %s: timed out after %ld ms", shown, lim.timeout_ms);
  } else if (rc == CURLE_TOO_MANY_REDIRECTS) {
    cdb_error_set(err, "fetch: %s: more than %ld redirects", shown, lim.max_redirects);
  } else if (rc != CURLE_OK) {
    cdb_error_set(err, "fetch: %s: %s", shown, curl_msg[0] ? curl_msg : curl_easy_strerror(rc));
  } else if (status < 200 || status >= 300) {
    cdb_error_set(err, "fetch: %s: HTTP status %ld", shown, status);
  } else {
    if (len_out) *len_out = b.len;
    if (!b.data) b.data = malloc(1);
    return b.data;
  }
  free(b.data);
  return NULL;
}
