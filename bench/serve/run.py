#!/usr/bin/env python3
"""Benchmarks `clipdb serve` on loopback (numbers in bench/README.md, section serve).

usage: /usr/bin/python3 bench/serve/run.py [BUILD_DIR=build] [MODEL_DIR=tests/data/clip-tiny-shapes]
       [N_ROWS=100000]

1. a library of N_ROWS random unit vectors (bench/cli/make_big_db.py); warm text searches, one
   client: the server's own time (its Server-Timing header) and the client's, p50/p99;
2. the same with 8 concurrent clients: requests/s;
3. a library of the demo photos plus one 12 MP JPEG: the first thumbnail of the 12 MP photo and
   a cached thumbnail (server time). Outputs under bench/out/serve/ (reused between runs)."""
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from serve_helpers import Server  # noqa: E402

QUERIES = ["a red star", "a blue circle on white", "2:a green square - yellow", "a purple cross"]


def timed_get(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
        server = float(r.headers["Server-Timing"].split("dur=")[1])
    return (time.perf_counter() - t) * 1e3, server


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def search_url(s, i):
    return s.base + "/api/search?k=24&q=" + urllib.parse.quote(QUERIES[i % len(QUERIES)])


def bench_search(s, n=400):
    for i in range(20):
        timed_get(search_url(s, i))
    client, server = zip(*(timed_get(search_url(s, i)) for i in range(n)))
    print(f"text search, 1 client, {n} requests: server p50 {pct(server, .5):.2f} ms "
          f"p99 {pct(server, .99):.2f} ms; client p50 {pct(client, .5):.2f} ms "
          f"p99 {pct(client, .99):.2f} ms")


def bench_clients(s, clients=8, per=200):
    def run(c):
        for i in range(per):
            timed_get(search_url(s, c + i))
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    print(f"text search, {clients} clients x {per}: {clients * per / dt:.0f} requests/s")


def make_12mp(path):
    from PIL import Image
    import numpy as np
    y, x = np.mgrid[0:3000, 0:4000]
    rng = np.random.default_rng(1)
    rgb = np.stack([x * 255 // 4000, y * 255 // 3000, (x + y) * 255 // 7000], -1)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype("uint8")
    Image.fromarray(rgb).save(path, quality=90)


def bench_thumbs(build, model, out, env):
    photos = out / "photos"
    if not photos.exists():
        shutil.copytree(ROOT / "examples" / "shapes", photos)
        make_12mp(photos / "big-12mp.jpg")
    db = out / f"thumbs-{pathlib.Path(model).name}.db"
    subprocess.run([str(build / "cli" / "clipdb"), "--db", str(db), "--model", model, "index",
                    str(photos)], check=True, env=env, capture_output=True)
    shutil.rmtree(out / "cache", ignore_errors=True)
    s = Server(str(build / "cli" / "clipdb"), db, env, "--listen", "127.0.0.1:0")
    try:
        import json
        with urllib.request.urlopen(s.base + "/api/search?k=100&q=x") as r:
            hits = json.loads(r.read())["results"]
        big = next(h["id"] for h in hits if h["path"].endswith("big-12mp.jpg"))
        firsts = []
        for _ in range(5):  # the cache emptied before each: 5 first thumbnails
            for f in (out / "cache" / "clipdb" / "thumbs").glob("*.jpg"):
                f.unlink()
            firsts.append(timed_get(s.base + f"/api/thumb?id={big}"))
        first = (statistics.median(f[0] for f in firsts), statistics.median(f[1] for f in firsts))
        cached = [timed_get(s.base + f"/api/thumb?id={big}") for _ in range(200)]
        print(f"first thumbnail of a 12 MP JPEG, median of 5: server {first[1]:.1f} ms "
              f"(client {first[0]:.1f} ms)")
        server_p50 = pct([c[1] for c in cached], .5)
        print(f"cached thumbnail, 200 requests: server p50 {server_p50:.3f} ms, "
              f"client p50 {pct([c[0] for c in cached], .5):.2f} ms")
    finally:
        s.stop()


def main():
    build = (ROOT / (sys.argv[1] if len(sys.argv) > 1 else "build")).resolve()
    model = sys.argv[2] if len(sys.argv) > 2 else "tests/data/clip-tiny-shapes"
    model = str((ROOT / model).resolve())
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
    out = ROOT / "bench" / "out" / "serve"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(out / "cache"))
    db = out / f"big-{pathlib.Path(model).name}-{n}.db"
    if not db.exists():
        subprocess.run(["/usr/bin/python3", str(ROOT / "bench/cli/make_big_db.py"), str(build),
                        str(db), model, str(n)], check=True)
    s = Server(str(build / "cli" / "clipdb"), db, env, "--listen", "127.0.0.1:0", "--threads", "8")
    try:
        print(f"library: {n} rows, model {pathlib.Path(model).name}, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}")
        bench_search(s)
        bench_clients(s)
    finally:
        s.stop()
    bench_thumbs(build, model, out, env)


main()
