#!/usr/bin/python3
"""bench_dedup.py: `clipdb dedup` on a library of N CLIP-like vectors (bench/sqlite/bench_bulk.py's
clip_like: a common direction, ~100 intrinsic dimensions, Zipf-sized clusters) in which 1 % of
the photos have a planted near-copy (cosine ~0.99, a re-encoded or resized photo). Prints the
wall and CPU time of the command and how many planted pairs it grouped (its recall), and the
groups it found beyond them.

usage: /usr/bin/python3 bench/cli/bench_dedup.py BUILD_DIR MODEL_DIR [N=100000] [DB]
MODEL_DIR must embed 512-d vectors (bench/data/clip-vit-b-32-random, made by
bench/embed/make_checkpoint.py); the library is created by `clipdb index` on an empty folder, so
its schema is the CLI's own. DB (default: a temporary file) is rebuilt."""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "sqlite")]
from bench_bulk import clip_like  # noqa: E402
from make_big_db import new_library  # noqa: E402


def make_library(build, model, db, n, rng):
    con, dims = new_library(build, model, db)
    n_copies = n // 100
    x = clip_like(rng, n - n_copies, dims)
    originals = rng.choice(len(x), n_copies, replace=False)
    noise = rng.standard_normal((n_copies, dims)).astype(np.float32) / np.sqrt(dims)
    copies = x[originals] + 0.12 * noise
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    x = np.concatenate([x, copies.astype(np.float32)])
    paths = [f"/photos/{i // 1000:03d}/IMG_{i:06d}.jpg" for i in range(n)]
    con.execute("BEGIN")
    con.executemany("INSERT INTO photos(image, path, size, mtime, hash, taken_at, date, width, "
                    "height, format, embedding) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    ((p, p, 3_000_000 + i, 1_600_000_000 + i, f"{i:064x}", None, None, 4000, 3000,
                      "jpeg", v.tobytes()) for i, (p, v) in enumerate(zip(paths, x))))
    con.execute("COMMIT")
    con.close()
    sims = np.einsum("ij,ij->i", x[originals], x[len(x) - n_copies:])
    pairs = {(paths[o], paths[len(x) - n_copies + j]) for j, o in enumerate(originals)}
    return pairs, sims


def main():
    build, model = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        db = sys.argv[4] if len(sys.argv) > 4 else os.path.join(tmp, "library.db")
        t0 = time.perf_counter()
        pairs, sims = make_library(build, model, db, n, rng)
        print(f"library: {n} photos, {len(pairs)} planted near-copies (cosine {sims.min():.3f} to "
              f"{sims.max():.3f}), built in {time.perf_counter() - t0:.1f} s", flush=True)
        print(f"load: {open('/proc/loadavg').read().strip()} on {os.cpu_count()} cores", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run([os.path.join(build, "cli", "clipdb"), "--db", db, "dedup", "--json"],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode:
            sys.exit(f"clipdb dedup failed: {r.stderr}")
        groups = json.loads(r.stdout)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        found = 0
        for a, b in pairs:
            found += any(a in g["paths"] and b in g["paths"] for g in groups)
        other = sum(1 for g in groups if not any(p in g["paths"] for pair in pairs for p in pair))
        print(f"clipdb dedup: {wall:.1f} s wall, {cpu:.1f} s CPU, {len(groups)} groups; planted "
              f"pairs grouped {found}/{len(pairs)} ({found / len(pairs):.3f}); groups without a "
              f"planted pair {other}", flush=True)
        print(f"load: {open('/proc/loadavg').read().strip()}", flush=True)


if __name__ == "__main__":
    main()
