"""Recall@10 and latency against nprobe for a clip table, ground truth by numpy brute force.

Builds an N x D table of clustered vectors (bench_compare.clustered: N/100 centres + noise) with
the given index, then runs Q held-out queries at each nprobe through SQL.

usage: /usr/bin/python3 bench/sqlite/recall_sweep.py BUILD_DIR [rows=1000000] [index='IVF1024,Flat']
       [nprobes=48,96,192,384] [queries=50]"""
import os
import sqlite3
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compare import clustered  # noqa: E402


def main():
    build = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000000
    index = sys.argv[3] if len(sys.argv) > 3 else "'IVF1024,Flat'"
    nprobes = [int(p) for p in (sys.argv[4] if len(sys.argv) > 4 else "48,96,192,384").split(",")]
    nq = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    d = 512
    x = clustered(np.random.default_rng(1), n + nq, d)
    queries, x = x[n:], x[:n]
    truth = [set((np.argsort(-(x @ q))[:10] + 1).tolist()) for q in queries]
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "sweep.db"), isolation_level=None)
        db.enable_load_extension(True)
        db.load_extension(os.path.join(build, "sqlite-ext", "clipdb"))
        db.execute(f"create virtual table t using clip(dims={d}, index={index})")
        t0 = time.perf_counter()
        db.execute("begin")
        db.executemany("insert into t(rowid, embedding) values (?, ?)",
                       ((i + 1, v.tobytes()) for i, v in enumerate(x)))
        db.execute("commit")
        info = db.execute("select clip_index_info('t')").fetchone()[0]
        print(f"built {n} rows in {time.perf_counter() - t0:.0f} s: {info}", flush=True)
        for nprobe in nprobes:
            lat, hits = [], 0
            for q, tr in zip(queries, truth):
                s = time.perf_counter()
                got = [r[0] for r in db.execute(
                    "select rowid from t where t match ? and k = 10 and nprobe = ?",
                    (q.tobytes(), nprobe))]
                lat.append(time.perf_counter() - s)
                hits += len(set(got) & tr)
            print(f"nprobe {nprobe}: p50 {np.median(lat) * 1e3:.1f} ms "
                  f"recall@10 {hits / (10 * nq):.3f}", flush=True)
        db.close()


if __name__ == "__main__":
    main()
