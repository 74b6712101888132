"""clipdb's clip table next to sqlite-vec's vec0 through Python's sqlite3: the same clustered
vectors, inserted in one transaction, then the same k=10 queries (latency and recall@10 against
numpy brute force).

usage: /usr/bin/python3 bench/sqlite/bench_compare.py BUILD_DIR [VEC0_PATH] [rows] [dims] [queries]
VEC0_PATH: sqlite-vec's loadable vec0 (e.g. `cd /tmp && npm install sqlite-vec-linux-x64`,
then /tmp/node_modules/sqlite-vec-linux-x64/vec0); "-" skips it.
BENCH_INDEXES: the clip tables' index= options, ';'-separated (default "auto;flat"; e.g.
"'IVF1024,Flat'" at 1M rows, where auto's IVF4096 training takes many minutes on 2 cores)."""
import os
import sqlite3
import sys
import tempfile
import time

import numpy as np


def clustered(rng, n, d):
    centres = rng.standard_normal((max(16, n // 100), d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, len(centres), n)] + \
        1.4 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run(name, db, create, insert_sql, query_sql, x, queries, truth):
    db.execute(create)
    t0 = time.perf_counter()
    db.execute("begin")
    db.executemany(insert_sql, ((i + 1, v.tobytes()) for i, v in enumerate(x)))
    t1 = time.perf_counter()
    db.execute("commit")
    t2 = time.perf_counter()
    lat, hits = [], 0
    for rep in range(2):
        lat = []
        hits = 0
        for q, tr in zip(queries, truth):
            s = time.perf_counter()
            got = [r[0] for r in db.execute(query_sql, (q.tobytes(),))]
            lat.append(time.perf_counter() - s)
            hits += len(set(got) & set(tr))
    lat = np.array(lat) * 1e3
    print(f"{name:34s} insert {len(x) / (t1 - t0):8.0f} rows/s (+commit {t2 - t1:5.2f} s)  "
          f"knn p50 {np.median(lat):7.3f} ms p95 {np.percentile(lat, 95):7.3f} ms  "
          f"recall@10 {hits / (10 * len(queries)):.3f}", flush=True)


def main():
    build = sys.argv[1]
    vec0 = sys.argv[2] if len(sys.argv) > 2 else "-"
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
    d = int(sys.argv[4]) if len(sys.argv) > 4 else 512
    nq = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    rng = np.random.default_rng(0)
    x = clustered(rng, n, d)
    queries = x[rng.integers(0, n, nq)] + 0.5 * rng.standard_normal((nq, d)).astype(np.float32) / np.sqrt(d)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = [list(np.argsort(-(x @ q))[:10] + 1) for q in queries]
    print(f"rows {n}, dims {d}, queries {nq}, sqlite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, index in enumerate(os.environ.get("BENCH_INDEXES", "auto;flat").split(";")):
            db = sqlite3.connect(os.path.join(tmp, f"clip-{i}.db"), isolation_level=None)
            db.enable_load_extension(True)
            db.load_extension(os.path.join(build, "sqlite-ext", "clipdb"))
            run(f"clipdb clip(index={index})", db,
                f"create virtual table t using clip(dims={d}, index={index})",
                "insert into t(rowid, embedding) values (?, ?)",
                "select rowid from t where t match ? and k = 10", x, queries, truth)
            db.close()
        if vec0 != "-":
            db = sqlite3.connect(os.path.join(tmp, "vec.db"), isolation_level=None)
            db.enable_load_extension(True)
            db.load_extension(vec0)
            version = db.execute("select vec_version()").fetchone()[0]
            run(f"sqlite-vec {version} vec0 (exact)", db,
                f"create virtual table t using vec0(embedding float[{d}] distance_metric=cosine)",
                "insert into t(rowid, embedding) values (?, ?)",
                "select rowid from t where embedding match ? and k = 10", x, queries, truth)
            db.close()


if __name__ == "__main__":
    main()
