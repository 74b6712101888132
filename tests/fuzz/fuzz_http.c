/* fuzz_http.c: libFuzzer target for what src/fetch.c and src/download.c do with a server's
 * responses: status lines, headers, redirects, Content-Length, chunked and truncated bodies,
 * ETag / X-Linked-Etag checksums (verified or mismatched), retries.
 *
 * A loopback server thread (127.0.0.1, an ephemeral port) answers each connection with the next
 * of the input's responses, separated by "\n#NEXT#\n" (the last one repeats), then closes it;
 * "@PORT@" in a response becomes the server's port, so redirects can lead back to it. Every
 * proxy variable points at the server too, so a redirect to any other host or an https URL also
 * ends there: nothing leaves 127.0.0.1. Byte 0 picks the call (% 3): cdb_fetch() into memory,
 * cdb_download() into a temporary folder (2 attempts, no backoff), cdb_download_probe().
 * A call must succeed or say why; a download leaves its file only on success, with the size
 * and SHA-256 it reports. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "src/download.h"
#include "src/fetch.h"
#include "tests/fuzz/fuzz_common.h"

#define SEPARATOR "\n#NEXT#\n"
#define MAX_RESPONSES 8

static int listen_fd, port;
static char tmp_dir[64], dest[128], url[64];

/* The responses of the current input; the server thread reads them under mu. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *responses[MAX_RESPONSES];
static size_t response_len[MAX_RESPONSES];
static int n_responses, next_response;

/* Reads the request head (bounded in size and time) so the client sees a complete exchange. */
static void read_request(int fd) {
  char buf[8192];
  size_t got = 0;
  struct pollfd p = {fd, POLLIN, 0};
  while (got < sizeof buf - 1 && poll(&p, 1, 2000) == 1) {
    ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
    if (n <= 0) break;
    got += (size_t)n;
    buf[got] = '\0';
    if (strstr(buf, "\r\n\r\n")) break;
  }
}

static void *serve(void *arg) {
  (void)arg;
  for (;;) {
    int fd = accept(listen_fd, NULL, NULL);
    if (fd < 0) continue;
    read_request(fd);
    pthread_mutex_lock(&mu);
    int i = next_response < n_responses ? next_response++ : n_responses - 1;
    if (i >= 0 && response_len[i]) (void)!send(fd, responses[i], response_len[i], MSG_NOSIGNAL);
    pthread_mutex_unlock(&mu);
    close(fd);
  }
  return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      listen(listen_fd, 16) != 0 || getsockname(listen_fd, (struct sockaddr *)&a, &alen) != 0)
    abort();
  port = ntohs(a.sin_port);
  char proxy[64];
  snprintf(proxy, sizeof proxy, "http://127.0.0.1:%d", port);
  const char *vars[] = {"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"};
  for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) setenv(vars[i], proxy, 1);
  unsetenv("no_proxy");
  unsetenv("NO_PROXY");
  setenv("CLIPDB_DOWNLOAD_BACKOFF_MS", "0", 1);
  setenv("CLIPDB_DOWNLOAD_MAX_WAIT_MS", "0", 1);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/model.safetensors", port);
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/fuzz_http.XXXXXX");
  if (!mkdtemp(tmp_dir)) abort();
  snprintf(dest, sizeof dest, "%s/model.safetensors", tmp_dir);
  cdb_curl_init();
  pthread_t t;
  if (pthread_create(&t, NULL, serve, NULL) != 0) abort();
  pthread_detach(t);
  return 0;
}

/* One response with "@PORT@" replaced by the port. */
static void add_response(const uint8_t *p, size_t len) {
  char port_text[8];
  int pl = snprintf(port_text, sizeof port_text, "%d", port);
  uint8_t *out = malloc(len * 2 + 1), *o = out;
  if (!out) abort();
  for (size_t i = 0; i < len;) {
    if (len - i >= 6 && memcmp(p + i, "@PORT@", 6) == 0) {
      memcpy(o, port_text, (size_t)pl), o += pl, i += 6;
    } else {
      *o++ = p[i++];
    }
  }
  responses[n_responses] = out;
  response_len[n_responses++] = (size_t)(o - out);
}

static void set_responses(const uint8_t *data, size_t size) {
  pthread_mutex_lock(&mu);
  n_responses = next_response = 0;
  while (n_responses < MAX_RESPONSES - 1) {
    size_t len1, len2;
    const uint8_t *rest;
    fuzz_split(data, size, SEPARATOR, &len1, &rest, &len2);
    add_response(data, len1);
    if (rest == data + size) break;
    data = rest, size = len2;
  }
  if (n_responses == MAX_RESPONSES - 1) add_response(data, size);
  pthread_mutex_unlock(&mu);
}

static void clear_responses(void) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < n_responses; i++) free(responses[i]);
  n_responses = next_response = 0;
  pthread_mutex_unlock(&mu);
}

static void check_download(int rc, const cdb_download_info *info, const cdb_error *err) {
  struct stat st;
  char part[160];
  snprintf(part, sizeof part, "%s.part", dest);
  if (rc == 0) {
    FUZZ_CHECK(stat(dest, &st) == 0 && st.st_size == info->bytes);
    char hex[65];
    FUZZ_CHECK(cdb_sha256_file(dest, hex, NULL) == 0 && strcmp(hex, info->sha256) == 0);
  } else {
    FUZZ_CHECK(err->msg[0] && stat(dest, &st) != 0);
  }
  unlink(dest);
  unlink(part);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  set_responses(data + 1, size - 1);
  cdb_error err = {{0}};
  switch (data[0] % 3) {
    case 0: {
      cdb_fetch_limits lim = cdb_fetch_default_limits();
      lim.max_bytes = 1 << 20, lim.timeout_ms = 5000, lim.connect_timeout_ms = 2000;
      size_t len = 0;
      void *body = cdb_fetch(url, &lim, &len, &err);
      FUZZ_CHECK(body ? len <= lim.max_bytes : err.msg[0] != 0);
      free(body);
      break;
    }
    case 1: {
      cdb_download_opts o = cdb_download_default_opts();
      o.connect_timeout_ms = 2000, o.stall_timeout_s = 2, o.max_attempts = 2, o.backoff_ms = 0;
      o.max_wait_ms = 0; /* a Retry-After would otherwise wait up to 60 s */
      cdb_download_info info;
      memset(&info, 0, sizeof info);
      int rc = cdb_download(url, dest, &o, &info, &err);
      check_download(rc, &info, &err);
      break;
    }
    case 2: {
      cdb_download_opts o = cdb_download_default_opts();
      o.connect_timeout_ms = 2000, o.stall_timeout_s = 2;
      char sha[65] = "x";
      int rc = cdb_download_probe(url, &o, sha, &err);
      FUZZ_CHECK(rc == 0 ? strlen(sha) == 0 || strlen(sha) == 64 : err.msg[0] != 0);
      break;
    }
  }
  clear_responses();
  return 0;
}
