"""Crash consistency of the `clip` virtual table: a writer killed with SIGKILL at random points.

A child process bulk-inserts batches of precomputed vectors (one transaction per batch; batch b
always has size_of(b) rows, rowids b*100 + i; now and then it deletes an earlier batch, or runs
'train' / 'optimize') and, only AFTER each COMMIT returned, appends the batch to a report file
and fsyncs it (a deletion is announced before it starts and confirmed after its COMMIT).
The parent kills the child at a random moment, then reopens the database and checks:
  - INSERT INTO t(t) VALUES('integrity-check') passes;
  - every batch the child reported as committed is there, complete, and each of its rows is
    found as top-1 by a KNN query with its own vector (sampled; all rows in the last round);
  - batches confirmed deleted are gone; any other batch is all-or-nothing: complete or absent
    (a batch whose commit returned but was not yet reported may be there; a batch whose
    deletion was announced may be gone; a partial batch never);
  - a plain SELECT agrees with the KNN search (k covering the table returns every row).
Both journal modes are covered (rollback journal and WAL), with precomputed vectors and, in
rollback-journal mode, with texts the extension embeds itself: those rows wait in its pending
queue and are embedded in batches (of up to 64, some mid-transaction) before or at COMMIT, so a
kill lands inside that path too. Bounded: about 6 s per case.

Run: CLIPDB_BUILD_DIR=build-rel /usr/bin/python3 -m pytest tests/python/test_reliability_crash.py
"""
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import time

import pytest

DIMS = 32
ROUND_BUDGET_S = 6.0  # per journal mode

# The writer. argv: ext_path db_path report_path journal_mode seed source
CHILD = r"""
import os, random, sqlite3, struct, sys
ext, db_path, report, mode, seed, source = sys.argv[1:7]
rng = random.Random(int(seed))
DIMS = %(dims)d

def vec(rowid):
    r = random.Random(rowid * 7919 + 13)
    v = [r.gauss(0, 1) for _ in range(DIMS)]
    return struct.pack('<%%df' %% DIMS, *v)
def size_of(b):
    return 1 + (b * 7919) %% (40 if source == 'vector' else 99)

db = sqlite3.connect(db_path, isolation_level=None, timeout=10)
db.enable_load_extension(True)
db.load_extension(ext)
db.execute('PRAGMA journal_mode=' + mode)
db.execute('PRAGMA synchronous=FULL')
if source == 'vector':
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS t USING clip(dims=%(dims)d, index=auto, batch INT)")
else:  # the default model ($CLIPDB_MODEL) embeds the texts
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS t USING clip(index=auto, batch INT)")
rep = open(report, 'a')
def tell(line):
    rep.write(line + '\n'); rep.flush(); os.fsync(rep.fileno())
next_batch = db.execute('SELECT coalesce(max(batch), 0) FROM t').fetchone()[0] + 1
next_batch = max(next_batch, int(seed) * 1000)
while True:
    b = next_batch
    next_batch += 1
    n = size_of(b)
    base = b * 100
    db.execute('BEGIN')
    if source == 'vector':
        for i in range(n):
            db.execute('INSERT INTO t(rowid, embedding, batch) VALUES(?, ?, ?)',
                       (base + i, vec(base + i), b))
    else:
        db.executemany('INSERT INTO t(rowid, text, batch) VALUES(?, ?, ?)',
                       [(base + i, 'row %%d' %% (base + i), b) for i in range(n)])
    db.execute('COMMIT')
    tell('I %%d %%d' %% (b, n))
    x = rng.random()
    if x < 0.15:
        old = db.execute('SELECT batch FROM t ORDER BY random() LIMIT 1').fetchone()
        if old:
            tell('d %%d' %% old[0])
            db.execute('BEGIN')
            db.execute('DELETE FROM t WHERE batch = ?', old)
            db.execute('COMMIT')
            tell('D %%d' %% old[0])
    elif x < 0.20:
        db.execute("INSERT INTO t(t) VALUES('train')")
    elif x < 0.23:
        db.execute("INSERT INTO t(t) VALUES('optimize')")
""" % {"dims": DIMS}


def vec(rowid):
    r = random.Random(rowid * 7919 + 13)
    return struct.pack("<%df" % DIMS, *[r.gauss(0, 1) for _ in range(DIMS)])


def size_of(b, source):
    return 1 + (b * 7919) % (40 if source == "vector" else 99)


def expected(db, source, rowid):
    """The vector a row must hold: its normalised precomputed vector, or its text's embedding."""
    if source == "vector":
        v = struct.unpack("<%df" % DIMS, vec(rowid))
        norm = sum(x * x for x in v) ** 0.5
        return [x / norm for x in v]
    e = db.execute("SELECT clip_embed_text(?)", ("row %d" % rowid,)).fetchone()[0]
    return struct.unpack("<%df" % (len(e) // 4), e)


def read_report(path):
    """-> ({batch: rows} confirmed committed, confirmed deleted, announced deletions)."""
    inserted, deleted, deleting = {}, set(), set()
    if os.path.exists(path):
        for line in open(path):
            parts = line.split()
            if len(parts) == 3 and parts[0] == "I":
                inserted[int(parts[1])] = int(parts[2])
            elif len(parts) == 2 and parts[0] == "D":
                deleted.add(int(parts[1]))
            elif len(parts) == 2 and parts[0] == "d":
                deleting.add(int(parts[1]))
            # a torn last line (killed mid-write) is ignored: it was never fsync'd
    return inserted, deleted, deleting


def open_db(ext_path, path):
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    return db


def check_database(ext_path, path, report, rng, sample, source):
    """The post-crash checks; returns the number of rows verified by KNN."""
    inserted, deleted, deleting = read_report(report)
    db = open_db(ext_path, path)
    try:
        if db.execute("SELECT count(*) FROM sqlite_schema WHERE name = 't'").fetchone()[0] == 0:
            assert not inserted, "table missing although batches were reported committed"
            return 0
        db.execute("INSERT INTO t(t) VALUES('integrity-check')")
        rows = db.execute("SELECT rowid, batch, embedding FROM t").fetchall()
        by_batch = {}
        for rowid, batch, emb in rows:
            assert rowid // 100 == batch, f"row {rowid} in wrong batch {batch}"
            by_batch.setdefault(batch, []).append(rowid)
        for b in deleted:
            assert b not in by_batch, f"batch {b} confirmed deleted is still there"
        for b, n in inserted.items():
            assert n == size_of(b, source)
            if b not in deleting:
                assert len(by_batch.get(b, [])) == n, \
                    f"committed batch {b}: {len(by_batch.get(b, []))} of {n} rows"
        for b, ids in by_batch.items():  # all-or-nothing
            assert sorted(ids) == list(range(b * 100, b * 100 + size_of(b, source))), \
                f"batch {b} is partial: {len(ids)} of {size_of(b, source)} rows"
        # stored vectors are the normalised inserted ones / the texts' embeddings
        for rowid, _, emb in rng.sample(rows, min(len(rows), 20)):
            want = expected(db, source, rowid)
            got = struct.unpack("<%df" % (len(emb) // 4), emb)
            assert len(got) == len(want)
            assert max(abs(g - w) for g, w in zip(got, want)) < 1e-5, rowid
        # KNN: each checked row finds itself first
        check = rows if sample is None else rng.sample(rows, min(len(rows), sample))
        for rowid, _, _ in check:
            q = vec(rowid) if source == "vector" else "row %d" % rowid  # TEXT: embedded by t
            top = db.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 1", (q,)).fetchall()
            assert top == [(rowid,)], f"row {rowid} not found as top-1: {top}"
        # a k covering the table returns exactly the table
        if rows:
            k = len(rows)
            found = db.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = ? AND nprobe = 100000",
                               (rows[0][2], k)).fetchall()
            assert sorted(r[0] for r in found) == sorted(r[0] for r in rows)
        return len(check)
    finally:
        db.close()


@pytest.mark.parametrize("mode,source", [("delete", "vector"), ("wal", "vector"),
                                         ("delete", "text")])
def test_sigkill_during_bulk_insert(ext_path, model_dir, tmp_path, monkeypatch, mode, source):
    monkeypatch.setenv("CLIPDB_MODEL", model_dir)
    rng = random.Random(20261126 + len(mode) + len(source))
    path = str(tmp_path / "crash.db")
    report = str(tmp_path / "committed.txt")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    deadline = time.monotonic() + ROUND_BUDGET_S
    hard_deadline = deadline + ROUND_BUDGET_S  # a slow machine gets more time, not a pass
    rounds = verified = 0
    while time.monotonic() < hard_deadline and (
            time.monotonic() < deadline or rounds < 5 or len(read_report(report)[0]) < 5):
        rounds += 1
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, ext_path, path, report, mode, str(rounds), source],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 1.0))
        if child.poll() is not None:  # it must not exit on its own
            pytest.fail(f"writer exited with {child.returncode}: {child.stderr.read().decode()}")
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
        last = time.monotonic() >= deadline and rounds >= 5  # then every row is checked
        verified += check_database(ext_path, path, report, rng, None if last else 25, source)
    inserted, deleted, _ = read_report(report)
    assert rounds >= 5 and len(inserted) >= 5, (rounds, len(inserted))
    print(f"\n{mode}/{source}: {rounds} kills, {len(inserted)} batches committed, {len(deleted)} deleted, "
          f"{verified} KNN checks")
