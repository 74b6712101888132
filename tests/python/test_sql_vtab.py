"""The clip virtual table with precomputed vectors (no encoder needed): KNN against a numpy
brute-force reference over the vectors the test wrote (never ones read back through the
extension), filters, writes, transactions, two connections, reopening, a killed writer,
commands, rename, clip_search, IVF nprobe/nlist."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import connect

DIMS = 16


def blob(v):
    return np.asarray(v, dtype="<f4").tobytes()


def unit(rng, n, dims=DIMS):
    x = rng.standard_normal((n, dims)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stored(db, table="p"):
    """All stored (rowid, embedding) read back through SQL (checked against a Mirror)."""
    rows = db.execute(f"select rowid, embedding from {table}").fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vecs = np.array([np.frombuffer(r[1], dtype="<f4") for r in rows]).reshape(len(rows), -1)
    return ids, vecs


class Mirror:
    """The (rowid, vector) pairs a test wrote, kept in numpy: the brute-force reference's input.
    Vectors are kept normalised in float64, as the table stores them normalised."""

    def __init__(self, ids=(), vecs=()):
        self.rows = {}
        for i, v in zip(ids, vecs):
            self.put(i, v)

    def put(self, rowid, v):
        v = np.asarray(v, dtype=np.float64)
        self.rows[int(rowid)] = v / np.linalg.norm(v)

    def delete(self, rowid):
        del self.rows[int(rowid)]

    def arrays(self):
        ids = np.array(sorted(self.rows), dtype=np.int64)
        return ids, np.array([self.rows[i] for i in ids])


def brute_force(ids, vecs, q, k):
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q)
    sims = vecs.astype(np.float64) @ q
    order = np.argsort(-sims, kind="stable")[:k]
    return list(ids[order]), list(1.0 - sims[order])


def knn(db, q, k, where="", table="p", params=()):
    sql = (f"select rowid, distance from {table} where {table} match ? and k = ? {where} "
           "order by distance")
    return db.execute(sql, (blob(q), k) + tuple(params)).fetchall()


@pytest.fixture
def dbpath(tmp_path):
    return str(tmp_path / "v.db")


@pytest.fixture
def filled(dbpath, ext_path):
    """500 random unit vectors with an album (a/b/c, 15 rows 'rare') and a year."""
    rng = np.random.default_rng(7)
    db = connect(dbpath, ext_path)
    db.execute("create virtual table p using clip(dims=16, album TEXT, year INTEGER)")
    vecs = unit(rng, 500)
    albums = ["rare" if i % 33 == 0 else "abc"[i % 3] for i in range(500)]
    db.execute("begin")
    db.executemany("insert into p(embedding, album, year) values (?, ?, ?)",
                   [(blob(v), a, 1990 + i % 30) for i, (v, a) in enumerate(zip(vecs, albums))])
    db.execute("commit")
    yield db, rng, Mirror(range(1, 501), vecs)
    db.close()


def assert_same_ranking(got, ref_ids, ref_dist):
    assert [r[0] for r in got] == [int(i) for i in ref_ids]
    np.testing.assert_allclose([r[1] for r in got], ref_dist, atol=1e-5)


def test_knn_equals_brute_force(filled):
    db, rng, mirror = filled
    ids, vecs = mirror.arrays()
    got_ids, got_vecs = stored(db)
    assert list(got_ids) == list(ids)
    np.testing.assert_allclose(got_vecs, vecs, rtol=0, atol=1e-7)  # stored as written
    for q in unit(rng, 20):
        ref_ids, ref_dist = brute_force(ids, vecs, q, 10)
        assert_same_ranking(knn(db, q, 10), ref_ids, ref_dist)


def test_limit_without_k_and_offset(filled):
    db, rng, mirror = filled
    ids, vecs = mirror.arrays()
    q = unit(rng, 1)[0]
    ref_ids, _ = brute_force(ids, vecs, q, 150)
    got = db.execute("select rowid from p where p match ? order by distance limit 150",
                     (blob(q),)).fetchall()
    assert [r[0] for r in got] == [int(i) for i in ref_ids]
    got = db.execute("select rowid from p where p match ? limit 5 offset 3", (blob(q),)).fetchall()
    assert [r[0] for r in got] == [int(i) for i in ref_ids[3:8]]


def test_filters_apply_before_top_k(filled):
    db, rng, mirror = filled
    ids, vecs = mirror.arrays()
    # the metadata the fixture wrote (row i + 1 of its list)
    albums = {i + 1: "rare" if i % 33 == 0 else "abc"[i % 3] for i in range(500)}
    years = {i + 1: 1990 + i % 30 for i in range(500)}
    q = unit(rng, 1)[0]
    cases = [
        ("and album = ?", ("rare",), lambda i: albums[i] == "rare"),
        ("and album in ('rare', 'b')", (), lambda i: albums[i] in ("rare", "b")),
        ("and year between ? and ?", (1995, 1997), lambda i: 1995 <= years[i] <= 1997),
        ("and year > ? and album != 'a'", (2010,), lambda i: years[i] > 2010 and albums[i] != "a"),
        ("and rowid < 40", (), lambda i: i < 40),
    ]
    for where, params, keep in cases:
        mask = np.array([keep(int(i)) for i in ids])
        ref_ids, ref_dist = brute_force(ids[mask], vecs[mask], q, 10)
        got = knn(db, q, 10, where, params=params)
        assert len(got) == 10, where
        assert_same_ranking(got, ref_ids, ref_dist)


def test_distance_bound(filled):
    db, rng, mirror = filled
    ids, vecs = mirror.arrays()
    q = vecs[5]
    ref_ids, ref_dist = brute_force(ids, vecs, q, 500)
    expected = [i for i, d in zip(ref_ids, ref_dist) if d < 0.8]
    got = db.execute("select rowid from p where p match ? and distance < 0.8", (blob(q),))
    assert sorted(r[0] for r in got) == sorted(int(i) for i in expected)
    got = db.execute("select rowid from p where p match ? and k = 3 and distance < 0.8",
                     (blob(q),)).fetchall()
    assert [r[0] for r in got] == [int(i) for i in expected[:3]]


def test_columns_and_scan(filled):
    db, _, _ = filled
    row = db.execute("select rowid, image, text, album, year, distance from p where rowid = 34") \
        .fetchone()
    assert row == (34, None, None, "rare", 1990 + 33 % 30, None)
    assert db.execute("select count(*) from p where album = 'rare'").fetchone()[0] == 16
    assert db.execute("select count(*) from p").fetchone()[0] == 500
    names = [r[1] for r in db.execute("pragma table_info(p)")]
    assert names == ["image", "text", "embedding", "album", "year"]


def test_update_and_delete(filled):
    db, rng, mirror = filled
    q = unit(rng, 1)[0]
    top = knn(db, q, 3)
    db.execute("delete from p where rowid = ?", (top[0][0],))
    mirror.delete(top[0][0])
    assert top[0][0] not in [r[0] for r in knn(db, q, 10)]
    # Moving row 7's vector onto the query makes it the nearest.
    db.execute("update p set embedding = ? where rowid = 7", (blob(q),))
    mirror.put(7, q)
    got = knn(db, q, 1)
    assert got[0][0] == 7 and got[0][1] < 1e-5
    # Metadata-only update keeps the vector.
    db.execute("update p set album = 'moved' where rowid = 7")
    assert knn(db, q, 1)[0][0] == 7
    assert db.execute("select album from p where rowid = 7").fetchone()[0] == "moved"
    # Changing the rowid moves row and vector.
    db.execute("update p set rowid = 100000 where rowid = 7")
    mirror.put(100000, q)
    mirror.delete(7)
    assert knn(db, q, 1)[0][0] == 100000
    ids, vecs = mirror.arrays()
    ref_ids, ref_dist = brute_force(ids, vecs, q, 10)
    assert_same_ranking(knn(db, q, 10), ref_ids, ref_dist)
    db.execute("insert into p(p) values('integrity-check')")


def test_insert_conflicts(filled):
    db, rng, _ = filled
    v = unit(rng, 1)[0]
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
        db.execute("insert into p(rowid, embedding) values (3, ?)", (blob(v),))
    db.execute("insert or replace into p(rowid, embedding, album) values (3, ?, 'r')", (blob(v),))
    assert knn(db, v, 1)[0][0] == 3
    assert db.execute("select album from p where rowid = 3").fetchone()[0] == "r"
    db.execute("insert or ignore into p(rowid, embedding, album) values (3, ?, 'x')", (blob(-v),))
    assert db.execute("select album from p where rowid = 3").fetchone()[0] == "r"
    cur = db.execute("insert into p(embedding) values (?)", (blob(v),))
    assert cur.lastrowid == 501
    db.execute("insert into p(p) values('integrity-check')")


def snapshot_results(db, queries):
    return [knn(db, q, 10) for q in queries]


def test_rollback_leaves_no_trace(filled):
    db, rng, _ = filled
    queries = unit(rng, 5)
    before = snapshot_results(db, queries)
    db.execute("begin")
    for q in queries:
        db.execute("insert into p(embedding, album) values (?, 'tmp')", (blob(q),))
    db.execute("delete from p where rowid in (select rowid from p where p match ? and k = 3)",
               (blob(queries[1]),))
    db.execute("update p set embedding = ? where rowid = 11", (blob(queries[2]),))
    assert knn(db, queries[0], 1)[0][1] < 1e-5  # visible inside the transaction
    db.execute("rollback")
    assert snapshot_results(db, queries) == before
    db.execute("insert into p(p) values('integrity-check')")


def test_savepoints(filled):
    db, rng, mirror = filled
    a, b, c = unit(rng, 3)
    db.execute("begin")
    db.execute("insert into p(rowid, embedding) values (9001, ?)", (blob(a),))
    db.execute("savepoint s1")
    db.execute("insert into p(rowid, embedding) values (9002, ?)", (blob(b),))
    db.execute("savepoint s2")
    db.execute("insert into p(rowid, embedding) values (9003, ?)", (blob(c),))
    db.execute("delete from p where rowid = 9001")
    db.execute("rollback to s2")
    assert knn(db, a, 1)[0][0] == 9001
    assert knn(db, b, 1)[0][0] == 9002
    assert knn(db, c, 1)[0][0] != 9003
    db.execute("rollback to s1")
    assert knn(db, b, 1)[0][0] != 9002
    db.execute("release s1")
    db.execute("commit")
    assert knn(db, a, 1)[0][0] == 9001
    mirror.put(9001, a)
    ids, vecs = mirror.arrays()
    ref_ids, ref_dist = brute_force(ids, vecs, c, 10)
    assert_same_ranking(knn(db, c, 10), ref_ids, ref_dist)


def test_failed_statement_is_undone(filled):
    db, rng, _ = filled
    v = unit(rng, 1)[0]
    # The second row conflicts: the statement fails and its first row must vanish too.
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("insert into p(rowid, embedding) values (7777, ?), (5, ?)", (blob(v), blob(v)))
    assert knn(db, v, 1)[0][0] != 7777
    assert db.execute("select count(*) from p where rowid = 7777").fetchone()[0] == 0


def test_two_connections(filled, dbpath, ext_path):
    db, rng, mirror = filled
    other = connect(dbpath, ext_path)
    q = unit(rng, 1)[0]
    assert knn(other, q, 5) == knn(db, q, 5)
    db.execute("insert into p(rowid, embedding) values (5000, ?)", (blob(q),))
    assert knn(other, q, 1)[0][0] == 5000  # committed row visible at the next query
    other.execute("delete from p where rowid = 5000")
    assert knn(db, q, 1)[0][0] != 5000
    # Compaction by one connection (log truncated) makes the other reload fully.
    other.execute("insert into p(p) values('optimize')")
    db.execute("insert into p(rowid, embedding) values (5001, ?)", (blob(q),))
    assert knn(other, q, 1)[0][0] == 5001
    mirror.put(5001, q)
    ids, vecs = mirror.arrays()
    ref_ids, ref_dist = brute_force(ids, vecs, q, 10)
    assert_same_ranking(knn(other, q, 10), ref_ids, ref_dist)
    other.close()


def test_reopen(filled, dbpath, ext_path):
    db, rng, _ = filled
    queries = unit(rng, 3)
    before = snapshot_results(db, queries)
    db.close()
    db = connect(dbpath, ext_path)
    assert snapshot_results(db, queries) == before
    db.close()


def test_ivf_index_snapshot_and_nprobe(dbpath, ext_path):
    rng = np.random.default_rng(3)
    db = connect(dbpath, ext_path)
    db.execute("create virtual table p using clip(dims=16, index='IVF8,Flat')")
    vecs = unit(rng, 2000)
    db.execute("begin")
    db.executemany("insert into p(embedding) values (?)", [(blob(v),) for v in vecs])
    db.execute("commit")
    db.execute("insert into p(p) values('train')")
    assert db.execute("select count(*) from p_index").fetchone()[0] >= 1
    assert db.execute("select value from p_config where key='snapshot_seq'").fetchone()[0] > 0
    # Changes after the snapshot are replayed from the log on load.
    extra = unit(rng, 1)[0]
    db.execute("insert into p(rowid, embedding) values (99999, ?)", (blob(extra),))
    db.close()
    db = connect(dbpath, ext_path)
    ids, stored_vecs = Mirror(list(range(1, 2001)) + [99999], list(vecs) + [extra]).arrays()
    for q in list(unit(rng, 10)) + [extra]:
        ref_ids, ref_dist = brute_force(ids, stored_vecs, q, 10)
        got = knn(db, q, 10, "and nprobe = 8")  # all lists: exact
        assert_same_ranking(got, ref_ids, ref_dist)
    db.execute("insert into p(p) values('integrity-check')")
    db.close()


def test_cold_start_cache_file(dbpath, ext_path):
    rng = np.random.default_rng(5)
    db = connect(dbpath, ext_path)
    db.execute("create virtual table p using clip(dims=16, index='IVF8,Flat')")
    db.execute("begin")
    vecs = unit(rng, 1000)
    db.executemany("insert into p(embedding) values (?)", [(blob(v),) for v in vecs])
    db.execute("commit")
    db.execute("insert into p(p) values('train')")
    db.close()
    mirror = Mirror(range(1, 1001), vecs)
    cache = dbpath + "-clip-p.idx"
    queries = unit(rng, 5)

    def check_fresh_connection():
        db = connect(dbpath, ext_path)
        ids, vecs = mirror.arrays()
        for q in queries:
            ref_ids, ref_dist = brute_force(ids, vecs, q, 10)
            assert_same_ranking(knn(db, q, 10, "and nprobe = 8"), ref_ids, ref_dist)
        return db

    assert os.path.getsize(cache) > 1000 * 16 * 4  # written by the COMMIT of 'train'
    os.remove(cache)
    first = check_fresh_connection()  # a load from the snapshot writes it again
    assert index_info(first)["mapped"] is False
    first.close()
    assert os.path.getsize(cache) > 1000 * 16 * 4
    second = check_fresh_connection()  # second load maps it
    assert index_info(second)["mapped"] is True
    second.execute("insert into p(rowid, embedding) values (5000, ?)", (blob(queries[0]),))
    assert index_info(second)["mapped"] is False  # the first write reads it into memory
    second.execute("delete from p where rowid = 5000")
    second.close()
    with open(cache, "wb") as f:      # a corrupt cache file is ignored and rewritten
        f.write(b"garbage" * 100)
    check_fresh_connection().close()
    assert os.path.getsize(cache) > 1000 * 16 * 4
    # A stale file (older generation) is not used: changes made after it are visible.
    db = connect(dbpath, ext_path)
    db.execute("delete from p where rowid <= 500")
    db.execute("insert into p(p) values('optimize')")
    db.close()
    for rowid in range(1, 501):
        mirror.delete(rowid)
    check_fresh_connection().close()
    db = connect(dbpath, ext_path)
    db.execute("drop table p")
    db.close()
    assert not os.path.exists(cache)


KILL_SCRIPT = textwrap.dedent("""
    import sqlite3, sys, numpy as np
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.enable_load_extension(True)
    db.load_extension(sys.argv[2])
    rng = np.random.default_rng(1)
    db.execute("begin")
    print("started", flush=True)
    for i in range(10**7):
        v = rng.standard_normal(16).astype('<f4')
        db.execute("insert into p(embedding, album) values (?, 'doomed')", (v.tobytes(),))
""")


def test_kill_during_bulk_insert(filled, dbpath, ext_path, tmp_path):
    db, rng, _ = filled
    q = unit(rng, 1)[0]
    before = knn(db, q, 10)
    db.close()
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), dbpath, ext_path],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    db = connect(dbpath, ext_path)
    db.execute("insert into p(p) values('integrity-check')")
    assert db.execute("select count(*) from p").fetchone()[0] == 500
    assert db.execute("select count(*) from p where album = 'doomed'").fetchone()[0] == 0
    assert knn(db, q, 10) == before
    db.close()


def test_commands(filled):
    db, rng, _ = filled
    q = unit(rng, 1)[0]
    before = knn(db, q, 10)
    for cmd in ("optimize", "rebuild", "train", "integrity-check"):
        db.execute("insert into p(p) values(?)", (cmd,))
        assert knn(db, q, 10) == before, cmd
    with pytest.raises(sqlite3.OperationalError, match="unknown command"):
        db.execute("insert into p(p) values('vacuum')")
    # integrity-check notices a shadow table damaged behind the extension's back.
    db.execute("delete from p_vectors where rowid = 10")
    with pytest.raises(sqlite3.DatabaseError, match="integrity-check of p failed"):
        db.execute("insert into p(p) values('integrity-check')")


def test_rebuild_drops_vectors_of_rows_deleted_behind_its_back(filled):
    db, rng, mirror = filled
    ids, vecs = mirror.arrays()
    victim = int(ids[7])
    db.execute("delete from p_rows where rowid = ?", (victim,))
    with pytest.raises(sqlite3.DatabaseError, match="1 vectors without a row"):
        db.execute("insert into p(p) values('integrity-check')")
    db.execute("insert into p(p) values('rebuild')")
    db.execute("insert into p(p) values('integrity-check')")
    keep = ids != victim
    assert db.execute("select count(*) from p_vectors").fetchone()[0] == int(keep.sum())
    got, _ = zip(*knn(db, vecs[7], 10))
    want, _ = brute_force(ids[keep], vecs[keep], vecs[7], 10)
    assert victim not in got and list(got) == want


def test_rename(filled):
    db, rng, _ = filled
    q = unit(rng, 1)[0]
    before = knn(db, q, 5)
    db.execute("alter table p rename to photos2")
    assert knn(db, q, 5, table="photos2") == before
    tables = {r[0] for r in db.execute("select name from sqlite_schema where type = 'table'")}
    assert {"photos2_rows", "photos2_vectors", "photos2_config"} <= tables
    assert not any(t.startswith("p_") for t in tables)
    db.execute("insert into photos2(embedding) values (?)", (blob(q),))
    assert knn(db, q, 1, table="photos2")[0][1] < 1e-5


def test_clip_search(filled):
    db, rng, _ = filled
    db.execute("create virtual table other using clip(dims=16, note TEXT)")
    db.execute("insert into other(embedding, note) values (?, 'hello')", (blob(unit(rng, 1)[0]),))
    q = unit(rng, 1)[0]
    got = db.execute("select rowid, distance, metadata from clip_search('p', ?, 7)",
                     (blob(q),)).fetchall()
    assert [(r[0], r[1]) for r in got] == knn(db, q, 7)
    assert '"album"' in got[0][2] and '"year"' in got[0][2]
    assert len(db.execute("select * from clip_search('p', ?)", (blob(q),)).fetchall()) == 10
    row = db.execute("select rowid, metadata from clip_search('other', ?, 5)", (blob(q),)).fetchall()
    assert row == [(1, '{"note":"hello"}')]
    with pytest.raises(sqlite3.OperationalError, match="not a clip table"):
        db.execute("select * from clip_search('p_rows', ?)", (blob(q),)).fetchall()
    with pytest.raises(sqlite3.OperationalError, match="not a clip table"):
        db.execute("select * from clip_search('nope', ?)", (blob(q),)).fetchall()


def test_shadow_tables_are_protected(filled, dbpath, ext_path):
    db, _, _ = filled
    names = {r[0] for r in db.execute("select name from sqlite_schema")}
    assert {"p_config", "p_rows", "p_vectors", "p_changes", "p_index"} <= names
    db.close()
    # In defensive mode (xShadowName) ordinary SQL may read but not write the shadow tables.
    out = subprocess.run(["sqlite3", dbpath, f".load {ext_path}", ".dbconfig defensive on",
                          "select count(*) from p_vectors", "delete from p_vectors"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "500"
    assert "may not be modified" in out.stderr


def test_knn_per_row_of_a_join(filled):
    db, rng, _ = filled
    queries = unit(rng, 3)
    db.execute("create table queries(id integer primary key, v blob)")
    db.executemany("insert into queries(v) values (?)", [(blob(q),) for q in queries])
    got = db.execute("select q.id, p.rowid from queries q join p on p match q.v and p.k = 2 "
                     "order by q.id, p.distance").fetchall()
    expected = [(i + 1, r[0]) for i, q in enumerate(queries) for r in knn(db, q, 2)]
    assert got == expected


@pytest.mark.parametrize("autotrain", ["on", "off"])
def test_commit_trains_once_large_enough(dbpath, ext_path, autotrain):
    rng = np.random.default_rng(11)
    db = connect(dbpath, ext_path)
    db.execute(f"create virtual table p using clip(dims=8, autotrain={autotrain})")
    vecs = unit(rng, 10000, 8)
    db.execute("begin")
    db.executemany("insert into p(embedding) values (?)", [(blob(v),) for v in vecs])
    db.execute("commit")
    pieces = db.execute("select count(*) from p_index").fetchone()[0]
    assert (pieces > 0) == (autotrain == "on")
    if autotrain == "off":
        db.execute("insert into p(p) values('train')")
        assert db.execute("select count(*) from p_index").fetchone()[0] > 0
    q = vecs[123]
    got = knn(db, q, 1)
    assert got[0][0] == 124 and got[0][1] < 1e-5
    db.execute("insert into p(p) values('integrity-check')")
    db.close()


def test_deserialized_database_writes_no_cache_file(ext_path, tmp_path, monkeypatch):
    """sqlite3_deserialize names its memdb database "x": no "x-clip-*.idx" may appear in the
    working directory, and the trained index still answers like brute force."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(7)
    src = connect(":memory:", ext_path)
    src.execute("create virtual table v using clip(dims=16, index='IVF2,Flat')")
    vecs = unit(rng, 200)
    for v in vecs:
        src.execute("insert into v(embedding) values (?)", (blob(v),))
    src.execute("insert into v(v) values('train')")
    image = src.serialize()
    db = connect(":memory:", ext_path)
    db.deserialize(image)
    q = unit(rng, 1)[0]
    got = [r[0] for r in db.execute("select rowid from v where v match ? and k = 5 and nprobe = 2",
                                    (blob(q),))]
    ids, want_vecs = Mirror(range(1, 201), vecs).arrays()
    assert got == brute_force(ids, want_vecs, q, 5)[0]
    assert list(tmp_path.iterdir()) == []


def test_clip_index_info_reports_the_live_index(ext_path, tmp_path):
    """clip_index_info follows training and other connections' commits."""
    import json
    rng = np.random.default_rng(11)
    path = str(tmp_path / "info.db")
    db = connect(path, ext_path)
    db.execute("create virtual table v using clip(dims=16, index='IVF4,Flat', autotrain=off)")
    db.execute("begin")
    for vec in unit(rng, 400):
        db.execute("insert into v(embedding) values (?)", (blob(vec),))
    db.execute("commit")
    before = json.loads(db.execute("select clip_index_info('v')").fetchone()[0])
    assert before["kind"] == "flat" and before["count"] == 400
    db.execute("insert into v(v) values('train')")
    after = json.loads(db.execute("select clip_index_info('v')").fetchone()[0])
    assert after["kind"] == "ivf" and after["nlist"] == 4 and after["count"] == 400
    other = connect(path, ext_path)
    other.execute("delete from v where rowid <= 10")
    seen = json.loads(db.execute("select clip_index_info('v')").fetchone()[0])
    assert seen["count"] == 390
    with pytest.raises(sqlite3.OperationalError, match="no clip table named"):
        db.execute("select clip_index_info('missing')").fetchone()


# ---------------------------------------------------------------- a trained IVF64 table

def recall(got, want):
    return len(set(r[0] for r in got) & set(int(i) for i in want)) / len(want)


@pytest.fixture
def ivf64(dbpath, ext_path):
    """A trained IVF64 table of 6000 random unit vectors whose default nprobe is 2."""
    rng = np.random.default_rng(21)
    db = connect(dbpath, ext_path)
    db.execute("create virtual table p using clip(dims=16, index='IVF64,Flat', nprobe=2, "
               "autotrain=off)")
    vecs = unit(rng, 6000)
    db.execute("begin")
    db.executemany("insert into p(embedding) values (?)", [(blob(v),) for v in vecs])
    db.execute("commit")
    db.execute("insert into p(p) values('train')")
    yield db, rng, Mirror(range(1, 6001), vecs)
    db.close()


def index_info(db, table="p"):
    return json.loads(db.execute("select clip_index_info(?)", (table,)).fetchone()[0])


def test_ivf64_nprobe_all_lists_is_exact_and_one_list_loses_recall(ivf64):
    db, rng, mirror = ivf64
    info = index_info(db)
    assert (info["kind"], info["nlist"], info["nprobe"], info["count"]) == ("ivf", 64, 2, 6000)
    ids, vecs = mirror.arrays()
    recalls = {1: [], 2: [], 16: []}
    for q in unit(rng, 30):
        ref_ids, ref_dist = brute_force(ids, vecs, q, 10)
        assert_same_ranking(knn(db, q, 10, "and nprobe = 64"), ref_ids, ref_dist)
        assert_same_ranking(knn(db, q, 10, "and nprobe = 1000"), ref_ids, ref_dist)  # clamped
        for nprobe in recalls:
            got = knn(db, q, 10, f"and nprobe = {nprobe}")
            # each row returned is a real row at its true distance, only fewer of the nearest
            true = {int(i): 1 - float(v @ (q / np.linalg.norm(q))) for i, v in zip(ids, vecs)}
            assert all(abs(d - true[r]) < 1e-5 for r, d in got)
            recalls[nprobe].append(recall(got, ref_ids))
    mean = {n: float(np.mean(r)) for n, r in recalls.items()}
    assert mean[1] < 0.8, mean           # one list of 64 misses most of the true neighbours
    assert mean[1] < mean[2] < mean[16] < 1.0, mean


def test_ivf64_table_nprobe_is_the_default_and_clip_search_takes_one(ivf64):
    db, rng, mirror = ivf64
    ids, vecs = mirror.arrays()
    differs = 0
    for q in unit(rng, 10):
        default = knn(db, q, 10)
        assert default == knn(db, q, 10, "and nprobe = 2")   # the table's nprobe=2
        differs += default != knn(db, q, 10, "and nprobe = 64")
        for nprobe in (1, 2, 64):
            got = db.execute("select rowid, distance from clip_search('p', ?, 10, ?)",
                             (blob(q), nprobe)).fetchall()
            assert got == knn(db, q, 10, f"and nprobe = {nprobe}"), nprobe
        ref_ids, ref_dist = brute_force(ids, vecs, q, 10)
        assert_same_ranking(db.execute("select rowid, distance from clip_search('p', ?, 10, 64)",
                                       (blob(q),)).fetchall(), ref_ids, ref_dist)
    assert differs >= 5, "nprobe=2 answered like an exhaustive search"


def test_nlist_option_is_reported_and_used(dbpath, ext_path):
    rng = np.random.default_rng(22)
    db = connect(dbpath, ext_path)
    db.execute("create virtual table p using clip(dims=16, nlist=32, nprobe=32, autotrain=off)")
    vecs = unit(rng, 3000)
    db.execute("begin")
    db.executemany("insert into p(embedding) values (?)", [(blob(v),) for v in vecs])
    db.execute("commit")
    assert index_info(db)["kind"] == "flat"
    db.execute("insert into p(p) values('train')")
    info = index_info(db)
    assert (info["kind"], info["nlist"], info["nprobe"]) == ("ivf", 32, 32), info
    assert "IVF32," in info["factory"], info
    ids, want = Mirror(range(1, 3001), vecs).arrays()
    for q in unit(rng, 10):  # nprobe = nlist: exact
        assert_same_ranking(knn(db, q, 10), *brute_force(ids, want, q, 10))
    db.close()


def test_index_cache_off_writes_no_file(dbpath, ext_path, tmp_path):
    """CLIPDB_INDEX_CACHE=0: no cold-start file is written or read; results stay exact."""
    rng = np.random.default_rng(6)
    vecs = unit(rng, 1000)
    db = connect(dbpath, ext_path)
    db.execute("create virtual table p using clip(dims=16, index='IVF8,Flat')")
    db.execute("begin")
    db.executemany("insert into p(embedding) values (?)", [(blob(v),) for v in vecs])
    db.execute("commit")
    db.execute("insert into p(p) values('train')")
    db.close()
    os.remove(dbpath + "-clip-p.idx")  # written by the COMMIT of 'train', with the cache on
    script = textwrap.dedent("""
        import json, sqlite3, sys
        import numpy as np
        db = sqlite3.connect(sys.argv[1])
        db.enable_load_extension(True)
        db.load_extension(sys.argv[2])
        q = np.frombuffer(bytes.fromhex(sys.argv[3]), dtype="<f4")
        rows = db.execute("select rowid from p where p match ? and k = 10 and nprobe = 8",
                          (q.tobytes(),)).fetchall()
        info = json.loads(db.execute("select clip_index_info('p')").fetchone()[0])
        print(json.dumps({"rows": [r[0] for r in rows], "mapped": info["mapped"]}))
    """)
    q = unit(rng, 1)[0]
    ids, want = Mirror(range(1, 1001), vecs).arrays()
    expected = [int(i) for i in brute_force(ids, want, q, 10)[0]]
    env = dict(os.environ, CLIPDB_INDEX_CACHE="0")
    for _ in range(2):  # a second process would map the file if there were one
        out = subprocess.run([sys.executable, "-c", script, dbpath, ext_path, blob(q).hex()],
                             env=env, capture_output=True, text=True, timeout=120, check=True)
        got = json.loads(out.stdout)
        assert got == {"rows": expected, "mapped": False}
        assert not os.path.exists(dbpath + "-clip-p.idx")
    # the same with the cache on: the second process maps the file
    env["CLIPDB_INDEX_CACHE"] = "1"
    outs = [json.loads(subprocess.run([sys.executable, "-c", script, dbpath, ext_path,
                                       blob(q).hex()], env=env, capture_output=True, text=True,
                                      timeout=120, check=True).stdout) for _ in range(2)]
    assert outs == [{"rows": expected, "mapped": False}, {"rows": expected, "mapped": True}]
    assert os.path.exists(dbpath + "-clip-p.idx")


def test_commit_retrains_after_fourfold_growth(dbpath, ext_path):
    """autotrain: the first COMMIT at 10,000 rows trains; the index is trained again only
    once it has grown 4-fold since (index/ivf.h), and answers exactly with all lists probed."""
    rng = np.random.default_rng(12)
    vecs = unit(rng, 40000, 8)
    db = connect(dbpath, ext_path)
    db.execute("create virtual table p using clip(dims=8)")

    def add(lo, hi):
        db.execute("begin")
        db.executemany("insert into p(rowid, embedding) values (?, ?)",
                       [(i + 1, blob(vecs[i])) for i in range(lo, hi)])
        db.execute("commit")
        return index_info(db)

    assert add(0, 9999)["kind"] == "flat"
    first = add(9999, 10000)
    assert (first["kind"], first["trained_at_count"]) == ("ivf", 10000), first
    grown = add(10000, 39999)  # 3.9999-fold: not yet
    assert grown["trained_at_count"] == 10000 and grown["nlist"] == first["nlist"], grown
    again = add(39999, 40000)
    assert again["trained_at_count"] == 40000 and again["nlist"] > first["nlist"], again
    ids, want = Mirror(range(1, 40001), vecs).arrays()
    for q in unit(rng, 5, 8):
        got = knn(db, q, 10, f"and nprobe = {again['nlist']}")
        assert_same_ranking(got, *brute_force(ids, want, q, 10))
    db.close()
