"""Bulk load of CLIP-like vectors through SQL, clipdb's clip table next to sqlite-vec's vec0 on the
same data: one transaction of INSERTs (embedding + an integer tag, 10 % of rows tag = 3), then
COMMIT (clipdb trains its IVF index there), the files' size against the raw float32 vectors, the
first query of a new process, KNN k=10 and k=10 filtered to tag = 3 (p50, recall@10 against
numpy's exact search over the allowed rows). FAISS used directly (bench/sqlite/faiss_direct.c,
built with the other bench programs) gets the same data and queries: the clip table's own factory
and nprobe (from clip_index_info after COMMIT), and IVF<nlist>,Flat for reference (up to 200k rows).

The vectors look like CLIP embeddings: a common direction shared by all (cosine ~0.5 to it),
~100 intrinsic dimensions, clusters with Zipf-distributed sizes.

usage: /usr/bin/python3 bench/sqlite/bench_bulk.py BUILD_DIR [VEC0_PATH|-] [rows] [dims] [queries]
BUILD_DIR may list several builds as LABEL=DIR,LABEL=DIR (e.g. before=/tmp/base/build,after=build):
each gets a row, in that order, on the same data.
BENCH_PAGE_SIZE (default 16384) is the page size set by PRAGMA page_size before the first table of
each database (clipdb's CLI creates its libraries with 16384: one 2 KiB vector per 4 KiB page
otherwise).
VEC0_PATH: sqlite-vec 0.1.9's vec0 (`cd /tmp && npm install sqlite-vec-linux-x64@0.1.9`, then
/tmp/node_modules/sqlite-vec-linux-x64/vec0.so); "-" skips it. BENCH_KEEP=DIR keeps the
databases there."""
import glob
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np

PAGE_SIZE = int(os.environ.get("BENCH_PAGE_SIZE", "16384"))

FIRST_QUERY = r"""
import sqlite3, sys, time
q = open(sys.argv[3], 'rb').read()
t0 = time.perf_counter()
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.enable_load_extension(True)
db.load_extension(sys.argv[2])
db.execute(sys.argv[4], (q,)).fetchall()
print((time.perf_counter() - t0) * 1000)
"""


def clip_like(rng, n, d, intrinsic=100, clusters=None):
    clusters = clusters or max(32, n // 200)
    basis = np.linalg.qr(rng.standard_normal((d, intrinsic + 1)))[0].T.astype(np.float32)
    common, basis = basis[0], basis[1:]
    sizes = 1.0 / np.arange(1, clusters + 1) ** 1.1
    label = rng.choice(clusters, n, p=sizes / sizes.sum())
    centres = rng.standard_normal((clusters, intrinsic)).astype(np.float32)
    z = centres[label] + 0.9 * rng.standard_normal((n, intrinsic)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    x = 0.55 * common + 0.83 * (z @ basis)
    x += 0.05 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x, q, allowed=None, k=10):
    s = x @ q
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    return set((np.argpartition(-s, k)[:k] + 1).tolist())


def timed_queries(db, sql, queries, truths):
    lat, hits = [], 0
    for rep in range(2):  # the first pass warms the page cache
        lat, hits = [], 0
        for q, tr in zip(queries, truths):
            s = time.perf_counter()
            got = [r[0] for r in db.execute(sql, (q.tobytes(),))]
            lat.append(time.perf_counter() - s)
            hits += len(set(got) & tr)
    return np.median(lat) * 1e3, hits / (10 * len(queries))


def first_query(path, ext, sql, q, tmp):
    qpath = os.path.join(tmp, "q.bin")
    q.tofile(qpath)
    r = subprocess.run([sys.executable, "-c", FIRST_QUERY, path, ext, qpath, sql],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"first query failed: {r.stderr}")
    return float(r.stdout)


def index_info(db):
    """clip_index_info of table t (factory, nlist, nprobe), or why it is unavailable."""
    try:
        return json.loads(db.execute("select clip_index_info('t')").fetchone()[0])
    except (sqlite3.Error, TypeError, ValueError) as e:
        return {"kind": None, "error": str(e)}


def run(name, path, ext, create, match, x, tags, queries, truths, tmp, info=False):
    db = sqlite3.connect(path, isolation_level=None)
    db.enable_load_extension(True)
    db.load_extension(ext)
    db.execute(f"pragma page_size = {PAGE_SIZE}")
    db.execute(create)
    t0 = time.perf_counter()
    db.execute("begin")
    db.executemany(f"insert into t(rowid, embedding, tag) values (?, ?, ?)",
                   ((i + 1, v.tobytes(), int(g)) for i, (v, g) in enumerate(zip(x, tags))))
    t1 = time.perf_counter()
    db.execute("commit")
    t2 = time.perf_counter()
    index = index_info(db) if info else None
    db.close()
    knn = f"select rowid from t where {match} match ? and k = 10"
    first = [first_query(path, ext, knn, q, tmp) for q in queries[:3]]
    files = {os.path.basename(f): os.path.getsize(f) for f in glob.glob(path + "*")}
    size = sum(files.values())
    db = sqlite3.connect(path, isolation_level=None)
    db.enable_load_extension(True)
    db.load_extension(ext)
    truth, ftruth = truths
    p50, recall = timed_queries(db, knn, queries, truth)
    fp50, frecall = timed_queries(db, knn + " and tag = 3", queries, ftruth)
    db.close()
    n = len(x)
    r = dict(insert=n / (t1 - t0), commit=t2 - t1, e2e=n / (t2 - t0), size=size / x.nbytes,
             first=first[0], p50=p50, recall=recall, fp50=fp50, frecall=frecall, index=index)
    print(f"{name:26s} insert {r['insert']:7.0f} rows/s  commit {r['commit']:6.2f} s  "
          f"end-to-end {r['e2e']:7.0f} rows/s  files {r['size']:4.2f}x raw  "
          f"first query {r['first']:6.1f} ms  knn p50 {p50:6.2f} ms recall {recall:.3f}  "
          f"tag=3 p50 {fp50:6.2f} ms recall {frecall:.3f}", flush=True)
    print("  files: " + ", ".join(f"{k} {v / x.nbytes:.3f}x" for k, v in sorted(files.items())) +
          "; first queries of 3 new processes: " + " ".join(f"{t:.1f}" for t in first) + " ms",
          flush=True)
    return r


FLAT_MAX_ROWS = 200000  # above this the IVF,Flat reference line (training + add) is skipped


def recall_of(path, truths):
    got = np.fromfile(path, dtype=np.int64).reshape(len(truths), 10)
    return sum(len(set(g.tolist()) & t) for g, t in zip(got, truths)) / (10 * len(truths))


def faiss_direct(program, factory, nprobe, x, truths, tmp):
    """FAISS alone on the same data (faiss_direct.c): a result dict, or None after saying why."""
    name = f"faiss {factory} direct"
    try:
        r = subprocess.run([program, tmp, factory, str(nprobe), str(x.shape[1])],
                           capture_output=True, text=True)
    except OSError as e:
        print(f"{name:26s} failed: cannot run {program} ({e.strerror}); build it with "
              f"ninja -C BUILD bench/sqlite/faiss_direct", flush=True)
        return None
    if r.returncode:
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        print(f"{name:26s} failed (exit status {r.returncode}): {why}", flush=True)
        return None
    f = dict(zip(*[iter(r.stdout.split())] * 2))
    if f.get("n") != str(len(x)):
        print(f"{name:26s} failed: unexpected output {r.stdout.strip()!r}", flush=True)
        return None
    n, train_s, add_s = len(x), float(f["train_s"]), float(f["add_s"])
    res = dict(e2e=n / (train_s + add_s), size=int(f["size_bytes"]) / x.nbytes,
               p50=float(f["p50_ms"]), recall=recall_of(os.path.join(tmp, "knn.i64"), truths[0]),
               fp50=float(f["fp50_ms"]),
               frecall=recall_of(os.path.join(tmp, "tag3.i64"), truths[1]))
    print(f"{name:26s} add    {n / add_s:7.0f} rows/s  train  {train_s:6.2f} s  "
          f"end-to-end {res['e2e']:7.0f} rows/s  index {res['size']:4.2f}x raw  "
          f"first query    n/a    knn p50 {res['p50']:6.2f} ms recall {res['recall']:.3f}  "
          f"tag=3 p50 {res['fp50']:6.2f} ms recall {res['frecall']:.3f}", flush=True)
    order = "FAISS's own order" + (", no exact re-ranking" if "Flat" not in factory else "")
    print(f"  faiss direct: nlist {f['nlist']}, FAISS k-means on {f['train_n']} vectors, nprobe "
          f"{f['nprobe']}, one query per search call; tag=3 through an IDSelectorBatch of "
          f"{f['allowed']} ids (built once, untimed), nprobe {f['fnprobe']}; recall as is "
          f"({order})", flush=True)
    return res


def faiss_rows(build, index, x, truths, tmp):
    """The FAISS direct rows: the clip table's factory and nprobe, then IVF,Flat for reference."""
    if "error" in index:
        print(f"faiss direct: skipped, clip_index_info failed: {index['error']}", flush=True)
        return None
    if index.get("kind") != "ivf":
        print(f"faiss direct: skipped, the clip table holds no trained IVF index "
              f"(kind {index.get('kind')}, factory {index.get('factory')})", flush=True)
        return None
    x.tofile(os.path.join(tmp, "x.f32"))
    program = os.path.join(os.path.abspath(build), "bench", "sqlite", "faiss_direct")
    same = faiss_direct(program, index["factory"], index["nprobe"], x, truths, tmp)
    flat = f"IVF{index['nlist']},Flat"
    if len(x) > FLAT_MAX_ROWS:
        print(f"faiss {flat} direct: skipped at {len(x)} rows (> {FLAT_MAX_ROWS}: its "
              f"training and add would add minutes to the run)", flush=True)
    elif flat != index["factory"]:
        faiss_direct(program, flat, index["nprobe"], x, truths, tmp)
    return same


def main():
    builds = [b.split("=", 1) if "=" in b else ["clipdb", b] for b in sys.argv[1].split(",")]
    vec0 = sys.argv[2] if len(sys.argv) > 2 else "-"
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
    d = int(sys.argv[4]) if len(sys.argv) > 4 else 512
    nq = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    rng = np.random.default_rng(0)
    x = clip_like(rng, n, d)
    tags = rng.integers(0, 10, n)
    noise = rng.standard_normal((nq, d)).astype(np.float32) / np.sqrt(d)
    queries = x[rng.integers(0, n, nq)] + 0.3 * noise
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    print(f"rows {n}, dims {d}, queries {nq}, raw vectors {x.nbytes / 2**20:.0f} MiB, "
          f"sqlite {sqlite3.sqlite_version}, page size {PAGE_SIZE}", flush=True)
    print(f"load: {open('/proc/loadavg').read().strip()} on {os.cpu_count()} cores", flush=True)
    allowed = tags == 3
    truths = ([exact_top(x, q) for q in queries], [exact_top(x, q, allowed) for q in queries])
    keep = os.environ.get("BENCH_KEEP")
    with tempfile.TemporaryDirectory() as tmp:
        where = keep or tmp
        for i, (label, build) in enumerate(builds):
            ours = run(f"{label} clip(index=auto)", os.path.join(where, f"clip{i}.db"),
                       os.path.join(os.path.abspath(build), "sqlite-ext", "clipdb"),
                       f"create virtual table t using clip(dims={d}, tag INTEGER)", "t",
                       x, tags, queries, truths, tmp, info=True)
        ratios = []
        if vec0 != "-":
            vec = run("sqlite-vec vec0 (exact)", os.path.join(where, "vec.db"), vec0,
                      f"create virtual table t using vec0(embedding float[{d}] "
                      f"distance_metric=cosine, tag integer)", "embedding", x, tags, queries,
                      truths, tmp)
            ratios.append(f"{builds[-1][0]}/sqlite-vec: " + "  ".join(
                f"{k} {ours[k] / vec[k]:.2f}" for k in ("e2e", "size", "first", "p50", "fp50")))
        queries.tofile(os.path.join(tmp, "q.f32"))
        tags.astype(np.int32).tofile(os.path.join(tmp, "tags.i32"))
        fai = faiss_rows(builds[-1][1], ours["index"], x, truths, tmp)
        ratios.append(f"{builds[-1][0]}/faiss: " + ("  ".join(
            f"{k} {ours[k] / fai[k]:.2f}" for k in ("e2e", "size", "p50", "fp50"))
            if fai else "n/a (no FAISS direct result)"))
        print("ratio " + "   ".join(ratios), flush=True)
    print(f"load: {open('/proc/loadavg').read().strip()}", flush=True)

if __name__ == "__main__":
    main()
