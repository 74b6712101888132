"""Concurrency: one writer process and several reader processes on one WAL database.

The writer commits batches of precomputed vectors (batch b has size_of(b) rows, rowids
b*100 + i), sometimes deletes a whole earlier batch, sometimes runs 'train', and appends each
commit to a log file after COMMIT returns. A deletion is logged twice: its intent ('d') before the
DELETE starts, since a reader can see it committed before COMMIT returns to the writer, and
'D' after COMMIT returns. Each reader repeatedly:
  1. reads the log (batches known committed / deleted before its snapshot starts),
  2. opens a read transaction and, inside it, counts rows per batch, runs a KNN query whose k
     covers the table, and looks up a known row by its own vector,
  3. reads the log again (deletions that may have happened meanwhile, intents included).
Checks: every batch in the snapshot is complete (all-or-nothing); every batch known committed
before the snapshot (and not deleted by the end) is in it; batches known deleted are not; the
KNN result is exactly the snapshot's row set; a known row is its own top-1.
Busy policy: readers and writer use Python's default busy timeout (5 s). No reader or writer
may see SQLITE_BUSY / "database is locked" or any other error. A separate test checks that the
CLI waits for a lock held by another connection instead of failing (its busy_timeout).
"""
import json
import os
import random
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import pytest

DIMS = 24
RUN_S = 6.0
READERS = 3

COMMON = r"""
import json, os, random, sqlite3, struct, sys, time
DIMS = %(dims)d
def size_of(b):
    return 1 + (b * 7919) %% 17
def vec(rowid):
    r = random.Random(rowid * 104729 + 7)
    return struct.pack('<%%df' %% DIMS, *[r.gauss(0, 1) for _ in range(DIMS)])
def connect(ext, path):
    db = sqlite3.connect(path, isolation_level=None)  # default busy timeout: 5 s
    db.enable_load_extension(True)
    db.load_extension(ext)
    return db
def read_log(path):
    # -> (batches committed, batches whose deletion committed, batches possibly deleted)
    ins, dels, maybe_dels = set(), set(), set()
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) != 2: continue
            if p[0] == 'I': ins.add(int(p[1]))
            if p[0] == 'D': dels.add(int(p[1]))
            if p[0] in ('d', 'D'): maybe_dels.add(int(p[1]))
    return ins, dels, maybe_dels
""" % {"dims": DIMS}

WRITER = COMMON + r"""
ext, path, log, run_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
rng = random.Random(1)
db = connect(ext, path)
out = open(log, 'a')
end = time.monotonic() + run_s
b, commits = 0, 0
while time.monotonic() < end:
    b += 1
    db.execute('BEGIN IMMEDIATE')
    for i in range(size_of(b)):
        db.execute('INSERT INTO t(rowid, embedding, batch) VALUES(?, ?, ?)',
                   (b * 100 + i, vec(b * 100 + i), b))
    db.execute('COMMIT')
    out.write('I %d\n' % b); out.flush()
    commits += 1
    x = rng.random()
    if x < 0.1 and b > 3:
        victim = rng.randint(1, b - 1)
        out.write('d %d\n' % victim); out.flush()
        db.execute('BEGIN IMMEDIATE')
        db.execute('DELETE FROM t WHERE batch = ?', (victim,))
        db.execute('COMMIT')
        out.write('D %d\n' % victim); out.flush()
    elif x < 0.13:
        db.execute("INSERT INTO t(t) VALUES('train')")
print(json.dumps({'commits': commits}))
"""

READER = COMMON + r"""
ext, path, log = sys.argv[1:4]
run_s, seed = float(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
db = connect(ext, path)
end = time.monotonic() + run_s
snapshots = knn_checks = 0
while time.monotonic() < end:
    known, deleted_before, _ = read_log(log)
    db.execute('BEGIN')
    counts = dict(db.execute('SELECT batch, count(*) FROM t GROUP BY batch').fetchall())
    ids = sorted(r[0] for r in db.execute('SELECT rowid FROM t'))
    knn = []
    if ids:
        knn = sorted(r[0] for r in db.execute(
            'SELECT rowid FROM t WHERE t MATCH ? AND k = ?', (vec(ids[0]), len(ids))))
    alive = sorted(b for b in known if b in counts)
    top = None
    if alive:
        b = rng.choice(alive)
        top = (b * 100, db.execute('SELECT rowid FROM t WHERE t MATCH ? AND k = 1',
                                   (vec(b * 100),)).fetchall())
    db.execute('COMMIT')
    _, _, maybe_deleted_after = read_log(log)
    for b, n in counts.items():
        assert n == size_of(b), 'torn batch %d: %d of %d rows' % (b, n, size_of(b))
    for b in known - maybe_deleted_after:
        assert b in counts, 'committed batch %d missing from a later snapshot' % b
    for b in deleted_before:
        assert b not in counts, 'deleted batch %d visible' % b
    assert knn == ids, 'KNN with k=count returned %d of %d rows' % (len(knn), len(ids))
    if top:
        assert top[1] == [(top[0],)], 'row %d not its own top-1: %r' % top
        knn_checks += 1
    snapshots += 1
print(json.dumps({'snapshots': snapshots, 'knn_checks': knn_checks}))
"""


def test_one_writer_many_readers_wal(ext_path, tmp_path):
    path = str(tmp_path / "conc.db")
    log = tmp_path / "log.txt"
    log.write_text("")
    db = sqlite3.connect(path, isolation_level=None)
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.execute(f"CREATE VIRTUAL TABLE t USING clip(dims={DIMS}, index=flat, batch INT)")
    db.close()

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, ext_path, path, str(log), str(RUN_S)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    for i in range(READERS):
        procs.append(subprocess.Popen(
            [sys.executable, "-c", READER, ext_path, path, str(log), str(RUN_S), str(i)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=RUN_S + 60)
        assert p.returncode == 0, f"process failed:\n{err[-3000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    writer, readers = results[0], results[1:]
    assert writer["commits"] >= 5, writer
    for r in readers:
        assert r["snapshots"] >= 5 and r["knn_checks"] >= 1, r
    print(f"\nwriter {writer}, readers {readers}")


def test_cli_waits_for_a_held_write_lock(ext_path, clipdb_bin, model_dir, tmp_path):
    """Another connection holds the write lock for 1.5 s: a CLI write waits (busy_timeout)
    and succeeds instead of failing with 'database is locked'."""
    path = tmp_path / "lock.db"
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    src = os.path.join(os.path.dirname(__file__), "..", "data", "goldens", "images")
    first, second = sorted(os.listdir(src))[:2]
    with open(os.path.join(src, first), "rb") as f:
        (img_dir / first).write_bytes(f.read())
    env = dict(os.environ, CLIPDB_MODEL=model_dir)
    # create the database with the CLI first
    r = subprocess.run([clipdb_bin, "--db", str(path), "index", str(img_dir)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    holder = sqlite3.connect(str(path), isolation_level=None, timeout=0, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with open(os.path.join(src, second), "rb") as f:
            (img_dir / second).write_bytes(f.read())
        t0 = time.monotonic()
        r = subprocess.run([clipdb_bin, "--db", str(path), "index", str(img_dir)], env=env,
                           capture_output=True, text=True, timeout=60)
        waited = time.monotonic() - t0
    finally:
        release.join()
        holder.close()
    assert r.returncode == 0, f"CLI failed on a held lock: {r.stderr}"
    assert "locked" not in r.stderr.lower()
    assert waited >= 1.0, f"CLI did not wait for the lock ({waited:.2f} s)"


def test_reads_never_need_the_write_lock(ext_path, tmp_path):
    """With busy timeout 0 and another connection holding an open write transaction, KNN,
    clip_search and scans still succeed (WAL readers must not wait or get SQLITE_BUSY);
    'integrity-check' is an INSERT, so it does wait for (here: fails on) the write lock."""
    path = str(tmp_path / "busy.db")
    rng = random.Random(3)

    def vec():
        return struct.pack("<8f", *[rng.gauss(0, 1) for _ in range(8)])

    def connect(timeout):
        db = sqlite3.connect(path, isolation_level=None, timeout=timeout)
        db.enable_load_extension(True)
        db.load_extension(ext_path)
        return db

    writer = connect(5)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE VIRTUAL TABLE t USING clip(dims=8, index=auto)")
    writer.execute("BEGIN")
    for _ in range(300):
        writer.execute("INSERT INTO t(embedding) VALUES(?)", (vec(),))
    writer.execute("COMMIT")
    reader = connect(0)
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 300
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t(embedding) VALUES(?)", (vec(),))
    try:
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 300
        assert len(reader.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 3",
                                  (vec(),)).fetchall()) == 3
        assert len(reader.execute("SELECT * FROM clip_search('t', ?, 2)", (vec(),)).fetchall()) == 2
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            reader.execute("INSERT INTO t(t) VALUES('integrity-check')")
    finally:
        writer.execute("COMMIT")
    # after the commit the reader's next snapshot sees the new row through the index too
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 301
    found = reader.execute("SELECT count(*) FROM t WHERE t MATCH ? AND k = 1000", (vec(),))
    assert found.fetchone()[0] == 301
    reader.close()
    writer.close()
