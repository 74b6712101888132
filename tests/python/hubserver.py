"""hubserver.py: a loopback stand-in for the Hugging Face hub, for network tests without internet.

Two HTTP servers on 127.0.0.1 (port 0, so each test gets free ports):
  hub  serves {org}/{name}/resolve/{revision}/{file} like huggingface.co: small files directly
       (ETag = git blob SHA-1, 40 hex digits), large "LFS" files as a 302 redirect to the CDN with
       X-Linked-Etag: "<sha256>" and X-Linked-Size.
  cdn  serves /blobs/<sha256> with Range support; its own ETag is a different 64-hex value, as a
       real CDN's may be, so a client that trusted it would fail verification.
Every request is logged (server, path, Range, Authorization). Faults are switched per file name:
missing (404), corrupt (wrong bytes under the right digest), cut (close the connection after N
body bytes, a given number of times), stall (drip bytes slowly), statuses (answer these HTTP
statuses first), redirect_to (send the LFS redirect elsewhere), ignore_range (answer 200). Also serves /img/<name> for
image-URL tests with the same fault switches.
"""
import hashlib
import http.server
import pathlib
import socket
import threading
import time

LFS_FILES = {"model.safetensors"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Faults:
    def __init__(self):
        self.missing = set()
        self.corrupt = set()
        self.cut = {}  # name -> [bytes to send before cutting, times left]
        self.stall = {}  # name -> seconds between 1-byte writes
        self.statuses = {}  # name -> list of statuses to answer first
        self.retry_after = "0"  # the Retry-After those statuses carry
        self.redirect_to = {}  # name -> Location to send instead of the CDN
        self.ignore_range = set()  # names served whole (200) even when a Range is asked


class Hub:
    def __init__(self, model_dir, repo="clipdb-test/tiny-shapes", revision="main"):
        self.repo = repo
        self.revision = revision
        self.commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()  # X-Repo-Commit
        self.files = {p.name: p.read_bytes() for p in pathlib.Path(model_dir).iterdir()
                      if p.is_file()}
        self.images = {}
        self.faults = Faults()
        self.log = []
        self.lock = threading.Lock()
        self.hub = self._serve("hub")
        self.cdn = self._serve("cdn")

    # ---- lifecycle ----
    def _serve(self, role):
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub, Handler.role = hub, role
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        return server

    @property
    def url(self):
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    @property
    def cdn_url(self):
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def close(self):
        for s in (self.hub, self.cdn):
            s.shutdown()
            s.server_close()

    # ---- log queries ----
    def requests(self, role=None, name=None):
        with self.lock:
            return [r for r in self.log if (role is None or r["role"] == role)
                    and (name is None or r["path"].endswith("/" + name))]

    def sha256(self, name):
        return hashlib.sha256(self.files[name]).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub = None
    role = None

    def log_message(self, *args):  # keep pytest output clean
        pass

    head = False

    def do_HEAD(self):
        self.head = True
        self.do_GET()

    def do_GET(self):
        hub = self.hub
        with hub.lock:
            hub.log.append({"role": self.role, "method": self.command, "path": self.path,
                            "range": self.headers.get("Range"),
                            "authorization": self.headers.get("Authorization")})
        try:
            if self.role == "hub":
                self._hub_get()
            else:
                self._cdn_get()
        except (BrokenPipeError, ConnectionResetError):
            pass

    # hub: /{org}/{name}/resolve/{rev}/{file}, /img/{file}
    def _hub_get(self):
        hub, f = self.hub, self.hub.faults
        if self.path.startswith("/img/"):
            name = self.path[len("/img/"):]
            if name in f.redirect_to:
                self._plain(302, b"", {"Location": f.redirect_to[name]})
            elif name in hub.images and not self._fault_status(name):
                self._send_body(name, hub.images[name], {})
            elif name not in hub.images:
                self._plain(404, b"not found")
            return
        prefix = f"/{hub.repo}/resolve/{hub.revision}/"
        name = self.path[len(prefix):] if self.path.startswith(prefix) else None
        if name is None or name not in hub.files or name in f.missing:
            self._plain(404, b"Entry not found")
            return
        if self._fault_status(name):
            return
        data = hub.files[name]
        if name in LFS_FILES:
            sha = hub.sha256(name)
            location = f.redirect_to.get(name, f"{hub.cdn_url}/blobs/{sha}")
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("ETag", f'"{sha}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_body(name, data, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": hub.commit})

    def _cdn_get(self):
        hub = self.hub
        sha = self.path[len("/blobs/"):] if self.path.startswith("/blobs/") else None
        names = [n for n in hub.files if hub.sha256(n) == sha]
        if not names:
            self._plain(404, b"no such blob")
            return
        data = hub.files[names[0]]
        cdn_etag = hashlib.sha256(b"cdn" + data).hexdigest()
        self._send_body(names[0], data, {"ETag": f'"{cdn_etag}"'})

    def _fault_status(self, name):
        statuses = self.hub.faults.statuses.get(name)
        if statuses:
            self._plain(statuses.pop(0), b"try again", {"Retry-After": self.hub.faults.retry_after})
            return True
        return False

    def _plain(self, status, body, headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self.head:
            self.wfile.write(body)

    def _send_body(self, name, data, headers):
        f = self.hub.faults
        if name in f.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-") and name not in f.ignore_range:
            start = int(rng[len("bytes="):-1])
            if start >= len(data):
                self._plain(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.head:
            return
        cut = f.cut.get(name)
        if cut and cut[1] > 0:
            cut[1] -= 1
            self.wfile.write(body[:cut[0]])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if name in f.stall:
            deadline = time.monotonic() + 15  # never hold a test server thread for long
            for i in range(len(body)):
                if time.monotonic() > deadline:
                    break
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(f.stall[name])
            self.close_connection = True
            return
        self.wfile.write(body)
