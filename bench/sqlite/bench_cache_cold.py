"""Cold start with the index cache file: the first query of a fresh process on a trained table.

usage: bench_cache_cold.py build DB ROWS DIMS EXT   (a clustered table, trained at COMMIT)
       bench_cache_cold.py query DB EXT [REPEATS]   (writes the cache file once, then times
                                                     the first query of REPEATS new processes)
Prints the median and the spread of the first query (connect + load + KNN k=10) in ms, page
cache warm. Run with Debian's /usr/bin/python3."""
import statistics
import subprocess
import sys
import time

import numpy as np

FIRST_QUERY = r"""
import sqlite3, sys, time, numpy as np
q = np.random.default_rng(int(sys.argv[3])).standard_normal(int(sys.argv[4])).astype('<f4')
t0 = time.perf_counter()
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.enable_load_extension(True)
db.load_extension(sys.argv[2])
db.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 10", (q.tobytes(),)).fetchall()
print((time.perf_counter() - t0) * 1000)
"""


def build(path, rows, dims, ext):
    import sqlite3
    db = sqlite3.connect(path, isolation_level=None)
    db.enable_load_extension(True)
    db.load_extension(ext)
    db.execute(f"CREATE VIRTUAL TABLE t USING clip(dims={dims})")
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((256, dims)).astype(np.float32)
    db.execute("BEGIN")
    for start in range(0, rows, 10000):
        n = min(10000, rows - start)
        v = centres[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, dims)).astype(np.float32)
        db.executemany("INSERT INTO t(embedding) VALUES (?)", [(x.astype('<f4').tobytes(),) for x in v])
    t0 = time.perf_counter()
    db.execute("COMMIT")
    print(f"commit (training) {time.perf_counter() - t0:.1f} s")


def first_query(path, ext, seed, dims):
    out = subprocess.run([sys.executable, "-c", FIRST_QUERY, path, ext, str(seed), str(dims)],
                         check=True, capture_output=True, text=True).stdout
    return float(out)


def main():
    if sys.argv[1] == "build":
        build(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    path, ext = sys.argv[2], sys.argv[3]
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    import sqlite3
    db = sqlite3.connect(path)
    dims = len(db.execute("SELECT embedding FROM t_vectors LIMIT 1").fetchone()[0]) // 4
    db.close()
    print(f"writing the cache file: {first_query(path, ext, 0, dims):.0f} ms")
    times = [first_query(path, ext, s + 1, dims) for s in range(repeats)]
    print(f"first query: median {statistics.median(times):.1f} ms, "
          f"min {min(times):.1f}, max {max(times):.1f} ({repeats} processes)")


if __name__ == "__main__":
    main()
