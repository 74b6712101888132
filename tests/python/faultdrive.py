"""Fault-injection sweeps over a clip table (driven by test_fault_injection.py).

Runs a workload (a bulk load, 'train', a mixed transaction, 'optimize', a reopen and a query)
over the faultvfs VFS (tests/fault/faultvfs.c) with the Nth call of one kind failing, for every
N from 1 to the number of such calls in a clean run (as SQLite's fault tests do). After each run,
first in the same connection and then in a fresh one without faults:
  - INSERT INTO t(t) VALUES('integrity-check') passes;
  - the rows are exactly the state before or after the step that failed (all-or-nothing; later
    steps did not run), with their vectors;
  - every row finds itself by KNN, and a k covering the table returns exactly the table;
  - both connections agree.
Must run with tests/fault/faultvfs.so in LD_PRELOAD for kind 'cache' (the cache-file writes go
through stdio, not the VFS); the test does that.

  LD_PRELOAD=build/tests/fault/faultvfs.so /usr/bin/python3 tests/python/faultdrive.py \
      --kind write --error full [--persistent] [--stride 1]
Exit status 1 and a message naming N on the first failure.
"""
import argparse
import os
import pathlib
import shutil
import sqlite3
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("CLIPDB_BUILD_DIR", ROOT / "build")).resolve()
EXT = str(BUILD / "sqlite-ext" / "clipdb")
FAULT = str(BUILD / "tests" / "fault" / "faultvfs")
DIMS = 4


def vec(i):
    """Row i's vector (never zero), the same formula as the SQL fill below."""
    return np.array([(i * 37) % 101 - 50, (i * 53) % 97 - 48, (i * 71) % 89 - 44,
                     (i * 13) % 83 - 40.5], dtype=np.float32)


def fill_sql(lo, hi, shift=0):
    return (f"WITH RECURSIVE n(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM n WHERE i < {hi}) "
            f"INSERT INTO t(rowid, embedding) SELECT i, clip_vec_from_json(json_array("
            f"((i + {shift}) * 37) % 101 - 50, ((i + {shift}) * 53) % 97 - 48, "
            f"((i + {shift}) * 71) % 89 - 44, ((i + {shift}) * 13) % 83 - 40.5)) FROM n")


# The workload: (label, [SQL statements of one transaction], effect on {rowid: source index}).
def steps():
    def load(s):
        return {**s, **{i: i for i in range(1, 121)}}

    def mixed(s):
        s = {r: v for r, v in s.items() if r > 20}
        s.update({i: i for i in range(201, 216)})
        s.update({i: i + 1000 for i in range(21, 26) if i in s})
        return s

    return [
        ("create", ["CREATE VIRTUAL TABLE t USING clip(dims=4, index='IVF2,Flat', nprobe=2, "
                    "autotrain=off, tag TEXT)"], lambda s: s),
        ("load", ["BEGIN", fill_sql(1, 120), "COMMIT"], load),
        ("train", ["INSERT INTO t(t) VALUES('train')"], lambda s: s),
        ("mixed", ["BEGIN", fill_sql(201, 215), "DELETE FROM t WHERE rowid <= 20",
                   "UPDATE t SET embedding = (SELECT clip_vec_from_json(json_array("
                   "((rowid + 1000) * 37) % 101 - 50, ((rowid + 1000) * 53) % 97 - 48, "
                   "((rowid + 1000) * 71) % 89 - 44, ((rowid + 1000) * 13) % 83 - 40.5))) "
                   "WHERE rowid BETWEEN 21 AND 25", "COMMIT"], mixed),
        ("optimize", ["INSERT INTO t(t) VALUES('optimize')"], lambda s: s),
        ("reopen", ["REOPEN", "SELECT rowid FROM t WHERE t MATCH clip_vec_from_json('[1,2,3,4]') "
                    "AND k = 3"], lambda s: s),
        ("train2", ["INSERT INTO t(t) VALUES('train')"], lambda s: s),
    ]


def connect(path, faulty):
    uri = f"file:{path}?vfs=faultvfs" if faulty else f"file:{path}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
    db.enable_load_extension(True)
    db.load_extension(FAULT)
    db.load_extension(EXT)
    return db


def run_workload(path, arm):
    """Runs the steps until one fails; -> (connection, states it may be in, failed label)."""
    db = connect(path, True)
    BOOT.execute("SELECT faultvfs_arm(?, ?, ?, ?)", arm)
    state, failed = {}, None
    for label, sqls, effect in steps():
        try:
            for sql in sqls:
                if sql == "REOPEN":
                    db.close()
                    db = None
                    db = connect(path, True)
                else:
                    db.execute(sql).fetchall()
        except sqlite3.Error as e:
            failed = f"{label}: {e}"
            try:
                if db is not None:
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return db, [state, effect(state)], failed
        state = effect(state)
    return db, [state], failed


def table_rows(db):
    if not db.execute("SELECT count(*) FROM sqlite_schema WHERE name = 't'").fetchone()[0]:
        return None
    return {r: np.frombuffer(e, dtype=np.float32)
            for r, e in db.execute("SELECT rowid, embedding FROM t").fetchall()}


def check(db, states, where):
    """-> the state found; raises AssertionError naming what is wrong."""
    rows = table_rows(db)
    if rows is None:
        assert {} in states, f"{where}: table missing but rows were committed"
        return None
    db.execute("INSERT INTO t(t) VALUES('integrity-check')")
    match = None
    for s in states:
        if set(s) == set(rows):
            match = s
    assert match is not None, (f"{where}: rows are neither the state before nor after the failed "
                               f"step ({len(rows)} rows, expected one of "
                               f"{[len(s) for s in states]})")
    for r, src in match.items():
        want = vec(src)
        want = want / np.linalg.norm(want)
        assert np.abs(rows[r] - want).max() < 1e-5, f"{where}: row {r} holds a wrong vector"
    ids = sorted(rows)
    for r in ids:
        got = db.execute("SELECT rowid, distance FROM t WHERE t MATCH ? AND k = 1",
                         (rows[r].tobytes(),)).fetchall()
        assert got and got[0][1] < 1e-4, f"{where}: row {r} not found by its own vector: {got}"
    if ids:
        q = rows[ids[0]].astype(np.float64)
        got = db.execute("SELECT rowid, distance FROM t WHERE t MATCH ? AND k = ?",
                         (rows[ids[0]].tobytes(), len(ids))).fetchall()
        assert sorted(r for r, _ in got) == ids, f"{where}: a full-k search differs from the table"
        for r, d in got:
            want = 1 - float(rows[r].astype(np.float64) @ q) / np.linalg.norm(q)
            assert abs(d - want) < 1e-4, f"{where}: row {r} at distance {d}, expected {want}"
    return match


BOOT = None  # a connection outside the workload: arms and disarms (the state is process-wide)


def one_run(workdir, arm):
    path = os.path.join(workdir, "f.db")
    for f in os.listdir(workdir):
        os.unlink(os.path.join(workdir, f))
    db, states, failed = run_workload(path, arm)
    injected = BOOT.execute("SELECT faultvfs_disarm()").fetchone()[0]
    where = f"arm={arm} failed at [{failed}]"
    live = None
    if db is not None:  # None: reopening failed
        try:
            live = check(db, states, where + " (same connection)")
        finally:
            db.close()
    db = connect(path, False)
    try:
        fresh = check(db, states, where + " (fresh connection)")
    finally:
        db.close()
    assert live is None or live == fresh, f"{where}: the live connection and a fresh one disagree"
    return injected, failed


def count_calls(workdir, kind):
    path = os.path.join(workdir, "f.db")
    db, _, failed = run_workload(path, (kind, 10**9, "ioerr", 0))
    assert failed is None, failed
    n = BOOT.execute("SELECT faultvfs_count(?)", (kind,)).fetchone()[0]
    db.close()
    for f in os.listdir(workdir):
        os.unlink(os.path.join(workdir, f))
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", required=True, choices=["read", "write", "sync", "any", "cache"])
    ap.add_argument("--error", default="ioerr", choices=["ioerr", "full", "corrupt"])
    ap.add_argument("--persistent", action="store_true")
    ap.add_argument("--stride", type=int, default=1)
    args = ap.parse_args(argv)
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    workdir = tempfile.mkdtemp(prefix="faultdrive-", dir=shm)
    try:
        global BOOT
        BOOT = sqlite3.connect(":memory:")
        BOOT.enable_load_extension(True)
        BOOT.load_extension(FAULT)  # registers the VFS before any URI names it
        total = count_calls(workdir, args.kind)
        assert total > 0, f"no {args.kind} calls seen (is faultvfs.so in LD_PRELOAD?)"
        runs = injected = errors = 0
        for n in range(1, total + 2, args.stride):
            got, failed = one_run(workdir, (args.kind, n, args.error, int(args.persistent)))
            runs += 1
            injected += got
            errors += failed is not None
        print(f"{args.kind}/{args.error}/{'persistent' if args.persistent else 'transient'}: "
              f"{total} calls, {runs} runs, {injected} faults injected, {errors} runs stopped by "
              "an error; all checks passed")
        return 0
    except AssertionError as e:
        print(f"FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
