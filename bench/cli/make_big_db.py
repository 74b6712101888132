#!/usr/bin/python3
"""make_big_db.py: fills a `clipdb` library with N rows of random unit vectors (precomputed
embeddings written through the extension's writable `embedding` column) for the search benchmark.

usage: /usr/bin/python3 bench/cli/make_big_db.py BUILD_DIR DB MODEL_DIR [N=100000]
The table is created by `clipdb index` on an empty folder, so its schema is the CLI's own."""
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np


def new_library(build, model, db):
    """An empty library at db (replaced) made by `clipdb index` of an empty folder, so its
    schema is the CLI's own. -> (connection with the extension loaded, dims)"""
    if os.path.exists(db):
        os.remove(db)
    with tempfile.TemporaryDirectory() as empty:
        subprocess.run([os.path.join(build, "cli", "clipdb"), "--db", db, "--model", model,
                        "index", "--quiet", empty], check=True, stdout=subprocess.DEVNULL)
    con = sqlite3.connect(db)
    con.enable_load_extension(True)
    con.load_extension(os.path.join(build, "sqlite-ext", "clipdb"))
    dims = int(con.execute("SELECT value FROM photos_config WHERE key = 'dims'").fetchone()[0])
    return con, dims


def main():
    build, db, model = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 100000
    con, dims = new_library(build, model, db)
    rng = np.random.default_rng(1)
    t0 = time.time()
    batch = 5000
    for start in range(0, n, batch):
        vecs = rng.standard_normal((min(batch, n - start), dims)).astype("<f4")
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        rows = []
        for j, v in enumerate(vecs):
            i = start + j
            path = f"/photos/{i // 1000:03d}/IMG_{i:06d}.jpg"
            date = f"20{10 + i % 14:02d}-{1 + i % 12:02d}-{1 + i % 28:02d} 12:00:00"
            rows.append((path, path, 3_000_000 + i, 1_600_000_000 + i, f"{i:064x}", date, date,
                         4000, 3000, "jpeg", v.tobytes()))
        con.executemany("INSERT INTO photos(image, path, size, mtime, hash, taken_at, date, width, "
                        "height, format, embedding) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        con.commit()
    con.execute("INSERT INTO photos(photos) VALUES ('optimize')")
    con.commit()
    con.close()
    print(f"{n} rows of {dims} dims in {time.time() - t0:.1f} s -> {db}")


if __name__ == "__main__":
    main()
