"""Insert throughput of the clip table when it embeds the rows itself: batched (many rows in one
transaction: the table queues them and embeds 32 images / 64 texts per encoder call) against
one row per transaction (one encoder call per row, as every insert did before the queue), and
against the bare per-row encoder cost (SELECT clip_embed_image/clip_embed_text one row at a
time, no table). Images are the demo drawings (examples/shapes) as BLOBs read beforehand,
cycled to the requested count; texts are distinct short captions.

usage: /usr/bin/python3 bench/sqlite/bench_batch.py BUILD_DIR [MODEL_DIR] [images] [texts]
MODEL_DIR defaults to tests/data/clip-tiny-shapes; bench/data/clip-vit-b-32-random has the real
ViT-B/32 shapes (use fewer rows there: ~50 ms per image on 2 cores)."""
import json
import os
import pathlib
import sqlite3
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def connect(path, ext):
    db = sqlite3.connect(path, isolation_level=None)
    db.enable_load_extension(True)
    db.load_extension(ext)
    return db


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(ext, column, values, embed_fn):
    with tempfile.TemporaryDirectory() as tmp:
        db = connect(os.path.join(tmp, "b.db"), ext)
        db.execute("PRAGMA journal_mode=WAL")  # a usual bulk-load setting: commits stay cheap
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"SELECT {embed_fn}(?)", (values[0],))  # load the model and its tower
        for name in ("batched", "single"):
            db.execute(f"CREATE VIRTUAL TABLE {name} USING clip()")
        sql = "INSERT INTO {}(" + column + ") VALUES (?)"

        def batched():
            db.execute("BEGIN")
            db.executemany(sql.format("batched"), [(v,) for v in values])
            db.execute("COMMIT")

        def single():
            for v in values:
                db.execute(sql.format("single"), (v,))

        def direct():
            for v in values:
                db.execute(f"SELECT {embed_fn}(?)", (v,)).fetchone()

        out = {}
        for name, fn in (("direct", direct), ("single", single), ("batched", batched)):
            out[name] = len(values) / timed(fn)
        info = json.loads(db.execute("SELECT clip_index_info('batched')").fetchone()[0])
        out["batches"] = info.get("embed_batches", -1)  # -1: an extension before the queue
        db.close()
        return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ext = str(pathlib.Path(sys.argv[1]).resolve() / "sqlite-ext" / "clipdb")
    model = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "tests/data/clip-tiny-shapes")
    n_images = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    n_texts = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
    os.environ["CLIPDB_MODEL"] = model
    demo = sorted(p for p in (ROOT / "examples/shapes").iterdir()
                  if p.suffix in (".jpg", ".png", ".webp", ".gif"))
    blobs = [p.read_bytes() for p in demo]
    images = [blobs[i % len(blobs)] for i in range(n_images)]
    colours = ["red", "green", "blue", "black", "white", "orange", "purple", "yellow"]
    shapes = ["circle", "square", "star", "cross", "triangle"]
    texts = [f"a {colours[i % 8]} {shapes[i // 8 % 5]} number {i}" for i in range(n_texts)]
    print(f"model {model}; load average {os.getloadavg()[0]:.2f}")
    print("what                         rows  direct/s  1-row-txn/s  batched/s  speedup  batches")
    for what, column, values, fn in (("images (BLOB)", "image", images, "clip_embed_image"),
                                     ("texts", "text", texts, "clip_embed_text")):
        if not values:
            continue
        r = run(ext, column, values, fn)
        print(f"{what:<28} {len(values):5d} {r['direct']:9.1f} {r['single']:12.1f} "
              f"{r['batched']:10.1f} {r['batched'] / r['single']:7.2f}x {r['batches']:8d}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
