"""The cold-start cache file (<db>-clip-<table>.idx) never serves wrong results.

Results are checked against numpy brute force over the vectors the test inserted: after a
rolled-back 'train' (and a ROLLBACK TO after one), after bytes of the file are damaged, and
read-only opens must leave the folder exactly as it was."""
import json
import os
import pathlib
import pwd
import shutil
import sqlite3
import tempfile
import traceback

import numpy as np
import pytest

from conftest import connect, flip_byte


def blob(v):
    return np.asarray(v, dtype="<f4").tobytes()


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def v200_vectors():
    """The vectors of the V200 statement below, by rowid 1..200."""
    i = np.arange(1, 201)
    return {int(r): v for r, v in zip(i, np.stack(
        [(i * 37) % 101 - 50, (i * 53) % 97 - 48, (i * 71) % 89 - 44, (i * 13) % 83 - 41], 1))}


V200 = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200) "
        "INSERT INTO v(rowid, embedding) SELECT i, clip_vec_from_json(json_array((i*37)%101-50,"
        "(i*53)%97-48,(i*71)%89-44,(i*13)%83-41)) FROM n")


def check_knn(db, truth, q, k, nprobe):
    """The k nearest rows (cosine distance) equal brute force over `truth` (rowid -> vector);
    ties may come in any order, so distances are compared rank by rank and each returned row's
    distance must be its true one."""
    ids = np.array(list(truth))
    vecs = unit(np.stack([truth[i] for i in ids]))
    dist = 1.0 - vecs @ unit(q)
    ref = np.sort(dist)[:k]
    got = db.execute("SELECT rowid, distance FROM v WHERE v MATCH ? AND k = ? AND nprobe = ?",
                     (blob(q), k, nprobe)).fetchall()
    assert len(got) == len(ref), got
    true_dist = dict(zip(ids.tolist(), dist))
    assert len({r for r, _ in got}) == len(got), f"duplicate rows: {got}"
    for (rowid, d), want in zip(got, ref):
        assert rowid in true_dist, f"row {rowid} does not exist"
        assert abs(d - true_dist[rowid]) < 1e-5, (rowid, d, true_dist[rowid])
        assert abs(d - want) < 1e-5, (got, ref)


def info(db):
    return json.loads(db.execute("SELECT clip_index_info('v')").fetchone()[0])


def cache_of(path):
    return str(path) + "-clip-v.idx"


# ---- a rolled-back snapshot never reaches the file ----

def rolled_back_train_then_committed_train(db, rollback_to):
    db.execute("CREATE VIRTUAL TABLE v USING clip(dims=4, index='IVF2,Flat', autotrain=off)")
    db.execute(V200)
    db.execute("BEGIN")
    db.execute("UPDATE v SET embedding = clip_vec_from_json('[1,0,0,0]') WHERE rowid = 1")
    db.execute("INSERT INTO v(v) VALUES('train')")
    if rollback_to:
        db.execute("SAVEPOINT s")
        db.execute("UPDATE v SET embedding = clip_vec_from_json('[0,0,1,0]') WHERE rowid = 2")
        db.execute("ROLLBACK TO s")
        db.execute("SELECT rowid FROM v WHERE v MATCH clip_vec_from_json('[1,0,0,0]') "
                   "AND k = 1 AND nprobe = 2").fetchall()
    else:
        db.execute("INSERT INTO v(v) VALUES('integrity-check')")
    db.execute("ROLLBACK")


@pytest.mark.parametrize("rollback_to", [False, True], ids=["rollback", "rollback-to"])
def test_rolled_back_train_does_not_poison_the_cache_file(tmp_path, ext_path, rollback_to):
    path = tmp_path / "r.db"
    db = connect(str(path), ext_path)
    rolled_back_train_then_committed_train(db, rollback_to)
    assert not os.path.exists(cache_of(path)), "an uncommitted snapshot reached the cache file"
    db.execute("BEGIN")
    db.execute("UPDATE v SET embedding = clip_vec_from_json('[0,1,0,0]') WHERE rowid = 1")
    db.execute("INSERT INTO v(v) VALUES('train')")
    db.execute("COMMIT")
    db.close()
    truth = v200_vectors()
    truth[1] = np.array([0, 1, 0, 0])
    for _ in range(2):  # the first fresh connection writes the file, the second maps it
        db = connect(str(path), ext_path)
        for q in ([0, 1, 0, 0], [1, 0, 0, 0], truth[86], truth[199]):
            check_knn(db, truth, np.array(q, dtype=float), 5, 2)
        db.execute("INSERT INTO v(v) VALUES('integrity-check')")
        db.close()
    assert os.path.exists(cache_of(path))


# ---- damage in the file is detected ----

def build_table(path, ext_path, rows):
    """A trained IVF table with its cache file written; returns the vectors by rowid."""
    db = connect(str(path), ext_path)
    if rows == 200:
        db.execute("CREATE VIRTUAL TABLE v USING clip(dims=4, index='IVF2,Flat', autotrain=off)")
        db.execute(V200)
        db.execute("INSERT INTO v(v) VALUES('train')")
        truth = v200_vectors()
    else:  # defaults: trained automatically at commit once past 10k rows
        rng = np.random.default_rng(12)
        centres = rng.standard_normal((40, 16))
        vecs = centres[rng.integers(0, 40, rows)] + 0.3 * rng.standard_normal((rows, 16))
        db.execute("CREATE VIRTUAL TABLE v USING clip(dims=16)")
        db.execute("BEGIN")
        db.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                       [(i + 1, blob(v)) for i, v in enumerate(vecs)])
        db.execute("COMMIT")
        truth = {i + 1: v for i, v in enumerate(vecs)}
    db.close()
    db = connect(str(path), ext_path)  # the first load writes the cache file
    nlist = info(db)["nlist"]
    assert nlist > 1 and info(db)["count"] == rows
    db.close()
    assert os.path.exists(cache_of(path))
    return truth, nlist


def smash(path):
    """Huge floats or made-up ids at three places in the list data."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for pos in (size // 3, size // 2, 3 * size // 4):
            f.seek(pos & ~7)
            f.write(b"\x7f" * 8)


def positions(size, nlist):
    trailer = 8 * nlist + 40  # list checksums, then the trailer's five fields
    return sorted({12, 40, 100, 300, size // 3, size // 2, size - size // 4,
                   size - trailer - 1, size - trailer - 5, size - trailer - 8,
                   size - trailer, size - 20, size - 8, size - 1})


@pytest.mark.parametrize("rows", [200, 12000])
def test_damaged_cache_file_is_never_served(tmp_path, ext_path, rows):
    path = tmp_path / "d.db"
    truth, nlist = build_table(path, ext_path, rows)
    good = tmp_path / "good.idx"
    shutil.copyfile(cache_of(path), good)
    size = os.path.getsize(good)
    rng = np.random.default_rng(3)
    own = [truth[r] for r in (1, 7, len(truth) // 2, len(truth) - 1, len(truth))]
    queries = own + list(rng.standard_normal((3, len(own[0]))))
    for pos in positions(size, nlist):
        shutil.copyfile(good, cache_of(path))
        flip_byte(cache_of(path), pos, 0x01)
        db = connect(str(path), ext_path)
        for q in queries:
            check_knn(db, truth, q, 10, nlist)
        assert info(db)["count"] == len(truth), pos
        db.execute("INSERT INTO v(v) VALUES('integrity-check')")
        db.close()


@pytest.mark.parametrize("rows", [200, 12000])
def test_integrity_check_finds_cache_file_damage(tmp_path, ext_path, rows):
    path = tmp_path / "i.db"
    truth, nlist = build_table(path, ext_path, rows)
    good = tmp_path / "good.idx"
    shutil.copyfile(cache_of(path), good)
    size = os.path.getsize(good)
    for pos in (size // 2, size - 8 * nlist - 40 - 4, size - 8):
        shutil.copyfile(good, cache_of(path))
        flip_byte(cache_of(path), pos, 0x01)
        db = connect(str(path), ext_path)
        with pytest.raises(sqlite3.DatabaseError, match="cache file"):
            db.execute("INSERT INTO v(v) VALUES('integrity-check')")
        check_knn(db, truth, truth[1], 10, nlist)  # and the table still answers right
        db.execute("INSERT INTO v(v) VALUES('integrity-check')")
        db.close()


def test_damage_found_after_the_file_was_mapped(tmp_path, ext_path):
    """Lists are checked when first touched: damage to a list no query has read yet, made while
    a connection has the file mapped, is still found."""
    path = tmp_path / "m.db"
    truth, nlist = build_table(path, ext_path, 12000)
    db = connect(str(path), ext_path)
    assert info(db)["mapped"]
    smash(cache_of(path))  # in place: the mapping sees it
    rng = np.random.default_rng(8)
    for q in [truth[r] for r in list(truth)[::500]] + list(rng.standard_normal((20, 16))):
        check_knn(db, truth, q, 10, nlist)
    db.execute("INSERT INTO v(v) VALUES('integrity-check')")
    db.close()


# ---- read-only opens write nothing ----

def folder_state(folder):
    return {n: (os.stat(folder / n).st_size, os.stat(folder / n).st_mtime_ns)
            for n in os.listdir(folder)}


def query_read_only(uri, ext_path, truth, nlist):
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    for r in (1, 50, 199):
        check_knn(db, truth, truth[r], 5, nlist)
    assert info(db)["count"] == len(truth)
    db.close()


@pytest.mark.parametrize("with_cache_file", [False, True], ids=["no-file", "valid-file"])
@pytest.mark.parametrize("how", ["mode=ro", "immutable=1"])
def test_read_only_open_writes_nothing(tmp_path, ext_path, how, with_cache_file):
    folder = tmp_path / "lib"
    folder.mkdir()
    path = folder / "ro.db"
    truth, nlist = build_table(path, ext_path, 200)
    if not with_cache_file:
        os.remove(cache_of(path))
    before = folder_state(folder)
    query_read_only(f"file:{path}?{how}", ext_path, truth, nlist)
    assert folder_state(folder) == before


def run_unprivileged(fn):
    """Runs fn() as `nobody` in a forked child when the tests run as root (root may write
    read-only files and folders); fails with the child's traceback if fn raised."""
    if os.geteuid() != 0:
        fn()
        return
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged check failed (see stderr)"


def test_read_only_file_and_folder_write_nothing(ext_path):
    work = pathlib.Path(tempfile.mkdtemp(prefix="clipdb-ro-"))  # outside root-only pytest dirs
    try:
        work.chmod(0o755)
        folder = work / "lib"
        folder.mkdir()
        path = folder / "ro.db"
        truth, nlist = build_table(path, ext_path, 200)
        os.remove(cache_of(path))
        os.chmod(path, 0o444)
        if os.geteuid() == 0:  # the folder is writable by the reader, the file is not
            nobody = pwd.getpwnam("nobody")
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        before = folder_state(folder)
        run_unprivileged(lambda: query_read_only(f"file:{path}", ext_path, truth, nlist))
        assert folder_state(folder) == before
        os.chmod(folder, 0o555)
        run_unprivileged(lambda: query_read_only(f"file:{path}", ext_path, truth, nlist))
        assert folder_state(folder) == before
    finally:
        os.chmod(work / "lib", 0o755)
        shutil.rmtree(work)


def test_damaged_file_under_writes_and_rollbacks(tmp_path, ext_path):
    """Writes to an index mapped from a damaged file (committed or rolled back, to a savepoint
    or all of it) end with the right rows: the file is checked before any write reads it."""
    path = tmp_path / "w.db"
    truth, nlist = build_table(path, ext_path, 12000)
    good = tmp_path / "good.idx"
    shutil.copyfile(cache_of(path), good)
    extra = np.ones(16)
    for step in ("rollback", "rollback-to", "commit"):
        shutil.copyfile(good, cache_of(path))
        smash(cache_of(path))
        db = connect(str(path), ext_path)
        db.execute("BEGIN")
        if step == "rollback-to":
            db.execute("SAVEPOINT s")
        db.execute("INSERT INTO v(rowid, embedding) VALUES (?, ?)", (99999, blob(extra)))
        db.execute("DELETE FROM v WHERE rowid = 5")
        db.execute({"rollback": "ROLLBACK", "rollback-to": "ROLLBACK TO s",
                    "commit": "COMMIT"}[step])
        if step == "rollback-to":
            db.execute("COMMIT")
        if step == "commit":
            truth[99999] = extra
            del truth[5]
        rng = np.random.default_rng(4)
        for q in [extra, truth[6], truth[12000]] + list(rng.standard_normal((10, 16))):
            check_knn(db, truth, q, 10, nlist)
        db.execute("INSERT INTO v(v) VALUES('integrity-check')")
        db.close()


def bulk_load(path, ext_path, rows, create="CREATE VIRTUAL TABLE v USING clip(dims=16)"):
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((rows, 16))
    db = connect(str(path), ext_path)
    db.execute(create)
    db.execute("BEGIN")
    db.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                   [(i + 1, blob(v)) for i, v in enumerate(vecs)])
    db.execute("COMMIT")
    return db, vecs


def test_commit_that_trains_writes_the_cache_file(tmp_path, ext_path):
    path = tmp_path / "c.db"
    db, vecs = bulk_load(path, ext_path, 11000)  # COMMIT trains and writes the snapshot
    assert os.path.exists(cache_of(path))  # before any query: a new process maps it at once
    other = connect(str(path), ext_path)
    q = blob(vecs[7])
    sql = "SELECT rowid FROM v WHERE v MATCH ? AND k = 10"
    assert other.execute(sql, (q,)).fetchall() == db.execute(sql, (q,)).fetchall()
    assert info(other)["mapped"]
    other.execute("INSERT INTO v(v) VALUES ('integrity-check')")
    other.close()
    db.close()


def test_cache_file_is_not_written_for_state_other_than_the_snapshot(tmp_path, ext_path):
    path = tmp_path / "c.db"
    db, vecs = bulk_load(path, ext_path, 11000,
                         "CREATE VIRTUAL TABLE v USING clip(dims=16, autotrain=off)")
    db.execute("BEGIN")
    db.execute("INSERT INTO v(v) VALUES ('train')")
    db.execute("ROLLBACK")
    assert not os.path.exists(cache_of(path))
    db.execute("BEGIN")
    db.execute("INSERT INTO v(v) VALUES ('train')")
    db.execute("DELETE FROM v WHERE rowid = 8")  # after the snapshot, in the same transaction
    db.execute("COMMIT")
    assert not os.path.exists(cache_of(path))
    other = connect(str(path), ext_path)
    nlist = info(other)["nlist"]
    got = [r for (r,) in other.execute(
        "SELECT rowid FROM v WHERE v MATCH ? AND k = 3 AND nprobe = ?", (blob(vecs[7]), nlist))]
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    sims = unit @ unit[7]
    sims[7] = -np.inf  # row 8 was deleted
    assert got == list(np.argsort(-sims)[:3] + 1)
    other.close()
    db.close()
