"""Writes a database in the current storage format, for tests/python/test_legacy_fixture.py.

Run once per release that changes what it writes, with that release's build, and commit the
output under its version (v1.db was written by storage version 1, commit 6f340b1):
  /usr/bin/python3 tests/data/legacy/make_fixture.py build/sqlite-ext/clipdb tests/data/legacy/v1.db

Two tables: `vecs` (dims=8, a trained IVF4 index, user columns, some rows deleted and updated
after training, so both the snapshot and the change log are used) and `photos` (the tiny model
in tests/data/clip-tiny-shapes: six demo images and two texts). Everything the test checks is
recomputed from the generator below, never read from this file."""
import os
import random
import sqlite3
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODEL = os.path.join(ROOT, "tests", "data", "clip-tiny-shapes")
SHAPES = os.path.join(ROOT, "examples", "shapes")
DIMS = 8
N_ROWS = 300
DELETED = range(10, 40)            # deleted after training
UPDATED = range(100, 110)          # vector replaced after training by vec(rowid + 1000)
IMAGES = ["055-red-star-on-blue.png", "057-red-star-on-purple.webp",
          "000-orange-circle-on-purple.jpg", "001-black-circle-on-red-copy.jpg",
          "039-purple-star-on-orange.webp", "010-blue-star-on-orange.png"]
TEXTS = ["a red star", "a blue square"]


def vec(seed):
    r = random.Random(seed)
    return [r.gauss(0, 1) for _ in range(DIMS)]


def album(rowid):
    return ["Beach", "city", None][rowid % 3]


def live_vectors():
    """rowid -> (vector, album, n) of the rows `vecs` holds."""
    rows = {i: (vec(i), album(i), i * 7) for i in range(1, N_ROWS + 1) if i not in DELETED}
    for i in UPDATED:
        rows[i] = (vec(i + 1000), album(i), i * 7)
    return rows


def main(ext, out):
    if os.path.exists(out):
        os.remove(out)
    db = sqlite3.connect(out, isolation_level=None)
    db.enable_load_extension(True)
    db.load_extension(ext)
    db.execute("SELECT clip_model('default', ?)", (MODEL,))
    db.execute("CREATE VIRTUAL TABLE vecs USING clip(dims=8, index='IVF4,Flat', nprobe=4, "
               "autotrain=off, album TEXT, n INTEGER)")
    db.execute("BEGIN")
    for i in range(1, N_ROWS + 1):
        db.execute("INSERT INTO vecs(rowid, embedding, album, n) VALUES (?, ?, ?, ?)",
                   (i, struct.pack("<8f", *vec(i)), album(i), i * 7))
    db.execute("COMMIT")
    db.execute("INSERT INTO vecs(vecs) VALUES ('train')")
    db.execute("DELETE FROM vecs WHERE rowid BETWEEN ? AND ?", (DELETED[0], DELETED[-1]))
    for i in UPDATED:
        db.execute("UPDATE vecs SET embedding = ? WHERE rowid = ?",
                   (struct.pack("<8f", *vec(i + 1000)), i))
    db.execute("CREATE VIRTUAL TABLE photos USING clip(name TEXT)")
    for name in IMAGES:
        with open(os.path.join(SHAPES, name), "rb") as f:
            db.execute("INSERT INTO photos(image, name) VALUES (?, ?)", (f.read(), name))
    for text in TEXTS:
        db.execute("INSERT INTO photos(text, name) VALUES (?, ?)", (text, text))
    db.close()
    for suffix in ("-clip-vecs.idx", "-clip-photos.idx"):
        if os.path.exists(out + suffix):
            os.remove(out + suffix)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
