"""Starting `clipdb serve` for the tests: a library of the demo photos, the server on a free port
(port 0, the address read from its first line), ready once /api/status answers."""
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request


def index_demo(clipdb_bin, model_dir, demo_dir, tmp_path, env, sub=0):
    """A library of a copy of the demo photos (so that tests may add files to the folder), with
    copies of the last `sub` demo photos in photos/sub too."""
    photos = tmp_path / "photos"
    shutil.copytree(demo_dir, photos)
    if sub:
        (photos / "sub").mkdir()
        for p in sorted(demo_dir.iterdir())[-sub:]:
            shutil.copy(p, photos / "sub" / p.name)
    db = tmp_path / "lib.db"
    subprocess.run([clipdb_bin, "--db", str(db), "--model", model_dir, "index", str(photos)],
                   check=True, env=env, capture_output=True)
    return db, photos


def request(url, data=None, headers=None, method=None):
    """(status, headers, body bytes) of a request; 4xx/5xx are answers, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url, **kw):
    status, headers, body = request(url, **kw)
    return status, json.loads(body)


class Server:
    """`clipdb serve` as a child process; stop() sends SIGTERM and returns its exit status."""

    def __init__(self, clipdb_bin, db, env, *args):
        self.proc = subprocess.Popen([clipdb_bin, "--db", str(db), "serve", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "serving on " not in line:
            self.proc.kill()
            raise RuntimeError(f"serve did not start: {line!r} {self.proc.stderr.read()!r}")
        self.url = line.split("serving on ")[1].split()[0]
        self.base = self.url.split("?")[0].rstrip("/")
        self.token = self.url.split("?token=")[1] if "?token=" in self.url else None
        self.wait_ready()

    def wait_ready(self, timeout=60):
        """Polls /api/status until it answers (200, or 401 when a token is required)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, _, _ = request(self.base + "/api/status")
                if status in (200, 401):
                    return
            except OSError:
                pass
        raise RuntimeError("serve never answered /api/status")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        finally:
            self.proc.stdout.close()
            self.stderr = self.proc.stderr.read()
            self.proc.stderr.close()
        return self.proc.returncode


def serve_env(tmp_path):
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env.pop("CLIPDB_MODEL", None)
    return env
