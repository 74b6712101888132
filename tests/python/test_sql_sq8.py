"""The default trained index: 8-bit scalar codes (IVF<n>,SQ8) whose candidates are re-ranked
exactly from T_vectors, so the vectors are stored once at full size.

Checked against numpy's exact search on CLIP-like vectors (a common direction, ~100 intrinsic
dimensions, Zipf-sized clusters, as bench/sqlite/bench_bulk.py makes them): recall@10 at the
default nprobe, distances equal to the true ones, filters returning k, deletes, updates,
rollback and savepoints, reopening from the snapshot (ids only, codes re-encoded) and from the
cache file (codes), a damaged cache file, a read-only open, and a writer killed with SIGKILL."""
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from conftest import connect, flip_byte

DIMS = 128
ROWS = 12000  # past the 10k rows at which COMMIT trains
RECALL_MIN = 0.95
# Recall is the IVF part's (the lists probed): measured here 0.958 at the default nprobe 24 for
# both IVF256,Flat and IVF256,SQ8, 0.994 at nprobe 48. Searches below probe 48 lists; the default
# is compared with IVF,Flat's on the same data.
NPROBE = "AND nprobe = 48"


def clip_like(rng, n, d, intrinsic=100, clusters=60):
    basis = np.linalg.qr(rng.standard_normal((d, intrinsic + 1)))[0].T
    common, basis = basis[0], basis[1:]
    sizes = 1.0 / np.arange(1, clusters + 1) ** 1.1
    label = rng.choice(clusters, n, p=sizes / sizes.sum())
    centres = rng.standard_normal((clusters, intrinsic))
    z = centres[label] + 0.9 * rng.standard_normal((n, intrinsic))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    x = 0.55 * common + 0.83 * (z @ basis) + 0.05 * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blob(v):
    return np.asarray(v, dtype="<f4").tobytes()


def info(db):
    return json.loads(db.execute("SELECT clip_index_info('v')").fetchone()[0])


def cache_of(path):
    return str(path) + "-clip-v.idx"


class Truth:
    """rowid -> vector (unit), and each row's tag, as the table should hold them."""

    def __init__(self, x, tags):
        self.vec = {i + 1: v for i, v in enumerate(x)}
        self.tag = {i + 1: int(t) for i, t in enumerate(tags)}

    def exact(self, q, k, allowed=None):
        ids = np.array([r for r in self.vec if allowed is None or allowed(r)])
        sims = np.stack([self.vec[r] for r in ids]) @ q
        order = np.argsort(-sims, kind="stable")[:k]
        return ids[order].tolist(), dict(zip(ids.tolist(), (1.0 - sims).tolist()))

    def copy(self):
        t = Truth([], [])
        t.vec, t.tag = dict(self.vec), dict(self.tag)
        return t


def check(db, truth, queries, extra="", allowed=None, k=10, recall_min=RECALL_MIN,
          nprobe=NPROBE):
    """Every query returns k rows (or all allowed ones), each with its true distance, and
    recall@k against exact search >= recall_min on average. -> the recall."""
    hits = total = 0
    for q in queries:
        got = db.execute(f"SELECT rowid, distance FROM v WHERE v MATCH ? AND k = ? {extra} "
                         f"{nprobe}", (blob(q), k)).fetchall()
        want, dist = truth.exact(q, k, allowed)
        assert len(got) == len(want), (len(got), len(want))
        for rowid, d in got:
            assert rowid in dist, f"row {rowid} is not (allowed) in the table"
            assert abs(d - dist[rowid]) < 1e-5, (rowid, d, dist[rowid])
        assert all(a[1] <= b[1] for a, b in zip(got, got[1:])), "not best first"
        hits += len({r for r, _ in got} & set(want))
        total += len(want)
    recall = hits / max(total, 1)
    assert recall >= recall_min, f"recall@{k} {recall:.3f}"
    return recall


TRAINED = {}  # clip_index_info right after the base table's training


@pytest.fixture(scope="module")
def base(tmp_path_factory, ext_path):
    """A table of ROWS CLIP-like vectors with a tag column (10 % tag 3), trained at COMMIT."""
    rng = np.random.default_rng(16)
    x = clip_like(rng, ROWS, DIMS)
    tags = rng.integers(0, 10, ROWS)
    folder = tmp_path_factory.mktemp("sq8")
    path = folder / "base.db"
    db = connect(str(path), ext_path)
    db.execute(f"CREATE VIRTUAL TABLE v USING clip(dims={DIMS}, tag INTEGER)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO v(rowid, embedding, tag) VALUES (?, ?, ?)",
                   [(i + 1, blob(v), int(t)) for i, (v, t) in enumerate(zip(x, tags))])
    db.execute("COMMIT")
    TRAINED.update(info(db))
    db.close()
    noise = rng.standard_normal((20, DIMS)) / np.sqrt(DIMS)
    queries = x[rng.integers(0, ROWS, 20)] + 0.3 * noise
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    return path, Truth(x, tags), queries


@pytest.fixture
def table(base, tmp_path):
    """A fresh copy of the base database (and its cache file) for one test."""
    path, truth, queries = base
    dst = tmp_path / "t.db"
    shutil.copyfile(path, dst)
    if os.path.exists(cache_of(path)):
        shutil.copyfile(cache_of(path), cache_of(dst))
    return dst, truth.copy(), queries


def test_default_trained_index_is_sq8_with_exact_distances(table, ext_path, tmp_path):
    path, truth, queries = table
    db = connect(str(path), ext_path)
    i = info(db)
    assert i["kind"] == "ivf" and i["factory"].endswith(",SQ8"), i
    r = check(db, truth, queries)
    # at the default nprobe: what IVF,Flat finds on the same data (re-ranking loses nothing)
    flat = connect(str(tmp_path / "flat.db"), ext_path)
    flat.execute(f"CREATE VIRTUAL TABLE v USING clip(dims={DIMS}, index='IVF,Flat', tag INTEGER)")
    flat.execute("BEGIN")
    flat.executemany("INSERT INTO v(rowid, embedding, tag) VALUES (?, ?, ?)",
                     [(r, blob(v), truth.tag[r]) for r, v in truth.vec.items()])
    flat.execute("COMMIT")
    assert info(flat)["factory"] == i["factory"].replace(",SQ8", ",Flat")
    r_flat = check(flat, truth, queries, recall_min=0, nprobe="")
    r_default = check(db, truth, queries, recall_min=r_flat - 0.01, nprobe="")
    print(f"\nSQ8 recall@10 {r:.3f} at nprobe 48, {r_default:.3f} at the default "
          f"{i['nprobe']} (IVF,Flat {r_flat:.3f}, {i['factory']})")
    # k wider than the candidates re-ranked by default, and k = 1
    check(db, truth, queries[:5], k=100)
    check(db, truth, queries[:5], k=1)


def test_filters_return_k(table, ext_path):
    path, truth, queries = table
    db = connect(str(path), ext_path)
    check(db, truth, queries, "AND tag = 3", lambda r: truth.tag[r] == 3)
    rare = sorted(truth.vec)[::400]  # 30 rows: fewer candidates than k x 4
    check(db, truth, queries, f"AND rowid IN ({','.join(map(str, rare))})", lambda r: r in rare)
    check(db, truth, queries[:3], "AND rowid IN (5, 6)", lambda r: r in (5, 6))


def test_filters_at_the_default_nprobe(table, ext_path):
    """Filters SQLite would answer by reading every row are asked of the best candidates first
    (one row lookup each); those narrowed by a rowid range, and those that reject too many for
    lookups to pay, list the allowed rowids. Either way: k rows (or all allowed), all allowed,
    exact distances, recall at the default nprobe."""
    path, truth, queries = table
    db = connect(str(path), ext_path)
    db.execute("UPDATE v SET tag = 42 WHERE rowid IN (7, 70, 700, 7000)")
    for r in (7, 70, 700, 7000):
        truth.tag[r] = 42
    cases = [("AND tag = 3", lambda r: truth.tag[r] == 3, 0.95),
             ("AND tag < 5", lambda r: truth.tag[r] < 5, 0.95),
             ("AND tag IN (2, 7)", lambda r: truth.tag[r] in (2, 7), 0.95),
             ("AND tag = 3 AND rowid <= 1200", lambda r: truth.tag[r] == 3 and r <= 1200, 0.95),
             ("AND tag = 42", lambda r: truth.tag[r] == 42, 1.0),
             ("AND tag >= 3 AND tag <= 3", lambda r: truth.tag[r] == 3, 0.95)]
    for extra, allowed, recall_min in cases:
        r = check(db, truth, queries, extra, allowed, recall_min=recall_min, nprobe="")
        print(f"\n{extra}: recall@10 {r:.3f} at the default nprobe")
    check(db, truth, queries[:5], "AND tag = 3", lambda r: truth.tag[r] == 3, k=200,
          recall_min=0.9, nprobe="")


def snapshot_version(db):
    data = b"".join(bytes(d) for (d,) in db.execute("SELECT data FROM v_index ORDER BY piece"))
    return struct.unpack_from("<I", data, 8)[0], len(data)


def test_stored_once_snapshot_ids_cache_codes(table, ext_path):
    path, truth, queries = table
    raw = ROWS * DIMS * 4
    db = connect(str(path), ext_path)
    version, size = snapshot_version(db)
    nlist = info(db)["nlist"]
    assert version == 3
    assert size < ROWS * 8 + nlist * DIMS * 4 + 8 * DIMS + 4096, size  # ids, centroids, ranges
    with open(cache_of(path), "rb") as f:
        head = f.read(12)
    assert head[:8] == b"CDBIVF01" and struct.unpack_from("<I", head, 8)[0] == 3
    assert os.path.getsize(cache_of(path)) < 0.3 * raw  # a byte per dimension, ids, centroids
    db.close()


@pytest.mark.parametrize("source", ["snapshot", "cache-file"])
def test_reopen(table, ext_path, monkeypatch, source):
    path, truth, queries = table
    if source == "snapshot":
        monkeypatch.setenv("CLIPDB_INDEX_CACHE", "0")
    db = connect(str(path), ext_path)
    check(db, truth, queries, "AND tag = 3", lambda r: truth.tag[r] == 3)
    assert info(db)["mapped"] == (source == "cache-file")
    # the default nprobe measured at training comes back with the index
    assert info(db)["nprobe"] == TRAINED["nprobe"], (info(db), TRAINED)
    check(db, truth, queries)
    db.execute("INSERT INTO v(v) VALUES('integrity-check')")


def change_rows(db, truth, rng, rows):
    """Deletes rows[::2] and moves rows[1::2] to new vectors, in db and in truth."""
    for r in rows[::2]:
        db.execute("DELETE FROM v WHERE rowid = ?", (r,))
        del truth.vec[r]
    for r in rows[1::2]:
        v = rng.standard_normal(DIMS)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        db.execute("UPDATE v SET embedding = ? WHERE rowid = ?", (blob(v), r))
        truth.vec[r] = v


def test_deletes_updates_rollback_savepoints(table, ext_path):
    path, truth, queries = table
    rng = np.random.default_rng(4)
    db = connect(str(path), ext_path)
    committed = truth.copy()
    db.execute("BEGIN")
    top = truth.exact(queries[0], 10)[0]  # the best rows of a query are the ones that matter
    change_rows(db, truth, rng, top)
    check(db, truth, queries)
    db.execute("SAVEPOINT s")
    inner = truth.copy()
    change_rows(db, truth, rng, truth.exact(queries[1], 10)[0])
    check(db, truth, queries)
    db.execute("ROLLBACK TO s")
    check(db, inner, queries)
    db.execute("ROLLBACK")
    check(db, committed, queries)
    truth = committed.copy()
    db.execute("BEGIN")
    change_rows(db, truth, rng, top)
    db.execute("COMMIT")
    db.close()
    db = connect(str(path), ext_path)
    check(db, truth, queries, "AND tag = 3", lambda r: r in truth.vec and truth.tag[r] == 3)
    db.execute("INSERT INTO v(v) VALUES('integrity-check')")


def test_damaged_cache_file_is_detected_and_rebuilt(table, ext_path):
    path, truth, queries = table
    size = os.path.getsize(cache_of(path))
    good = open(cache_of(path), "rb").read()
    for pos in (100, size // 3, size // 2, size - size // 5, size - 8):
        open(cache_of(path), "wb").write(good)
        flip_byte(cache_of(path), pos, 0x5A)
        db = connect(str(path), ext_path)
        check(db, truth, queries[:5])
        db.close()
        open(cache_of(path), "wb").write(good)
        flip_byte(cache_of(path), pos, 0x5A)
        db = connect(str(path), ext_path)
        with pytest.raises(sqlite3.DatabaseError, match="cache file"):
            db.execute("INSERT INTO v(v) VALUES('integrity-check')")
        check(db, truth, queries[:5])
        db.close()
    db = connect(str(path), ext_path)  # the last connection wrote a fresh file
    check(db, truth, queries[:5])
    db.execute("INSERT INTO v(v) VALUES('integrity-check')")
    assert info(db)["mapped"]


def test_read_only_folder_gets_no_file(table, ext_path, tmp_path):
    """A copy without its cache file in a read-only folder, opened read-only and immutable:
    nothing appears beside it and searches are right."""
    path, truth, queries = table
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copyfile(path, folder / "t.db")
    os.chmod(folder / "t.db", 0o444)
    os.chmod(folder, 0o555)
    try:
        for how in ("mode=ro", "immutable=1"):
            db = sqlite3.connect(f"file:{folder / 't.db'}?{how}", uri=True, isolation_level=None)
            db.enable_load_extension(True)
            db.load_extension(ext_path)
            check(db, truth, queries[:5])
            check(db, truth, queries[:5], "AND tag = 3", lambda r: truth.tag[r] == 3)
            db.close()
            assert os.listdir(folder) == ["t.db"]
    finally:
        os.chmod(folder, 0o755)


USER_CACHE_CHILD = r"""
import json, os, sqlite3, sys
ext, uri = sys.argv[1:3]
db = sqlite3.connect(uri, uri=True, isolation_level=None)
db.enable_load_extension(True)
db.load_extension(ext)
q = db.execute("SELECT embedding FROM v WHERE rowid = 77").fetchone()[0]
rows = [r for r, in db.execute("SELECT rowid FROM v WHERE v MATCH ? AND k = 10", (q,))]
print(json.dumps({"rows": rows, "info": json.loads(
    db.execute("SELECT clip_index_info('v')").fetchone()[0])}))
"""


def world_readable_path(path):
    """Every folder above path can be entered by other users (the extension loads as nobody)."""
    path = os.path.abspath(path)
    while path != "/":
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True


def test_read_only_folder_keeps_its_cache_in_the_user_cache(table, ext_path):
    """A database whose file and folder the process cannot write (as another user when the tests
    run as root) keeps its cache file in the user's cache folder, named by the database's
    identity: the next process maps it (a fast cold start) and finds the same rows. A mode=ro
    open writes nothing there either."""
    path, truth, queries = table
    if os.geteuid() == 0 and not world_readable_path(ext_path):
        pytest.skip("the extension cannot be loaded by another user from here")
    folder, cache = tempfile.mkdtemp(), tempfile.mkdtemp()
    try:
        shutil.copyfile(path, os.path.join(folder, "t.db"))
        os.chmod(os.path.join(folder, "t.db"), 0o444)
        os.chmod(folder, 0o555)
        os.chmod(cache, 0o777)
        as_other = (lambda: (os.setgid(65534), os.setuid(65534))) if os.geteuid() == 0 else None
        env = dict(os.environ, CLIPDB_CACHE_DIR=cache)

        def child(uri):
            r = subprocess.run([sys.executable, "-c", USER_CACHE_CHILD, ext_path, uri], env=env,
                               capture_output=True, text=True, preexec_fn=as_other, timeout=120)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        uri = f"file:{folder}/t.db"
        first = child(uri)
        assert first["info"]["kind"] == "ivf" and not first["info"]["mapped"], first
        files = os.listdir(cache)
        assert len(files) == 1 and files[0].endswith("-v.idx"), files
        assert os.listdir(folder) == ["t.db"]
        second = child(uri)
        assert second["info"]["mapped"], second
        assert second["rows"] == first["rows"]
        q = np.array(truth.vec[77])
        assert first["rows"][0] == 77 and len(first["rows"]) == 10
        want, _ = truth.exact(q, 10)
        assert len(set(first["rows"]) & set(want)) >= 9
        os.remove(os.path.join(cache, files[0]))
        third = child(uri + "?mode=ro")
        assert third["rows"] == first["rows"] and os.listdir(cache) == []
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)
        shutil.rmtree(cache)


# ---- a writer killed with SIGKILL ----

CHILD = r"""
import os, random, sqlite3, struct, sys
ext, db_path, report, seed = sys.argv[1:5]
rng = random.Random(int(seed))
DIMS = %(dims)d

def vec(rowid, version):
    r = random.Random(rowid * 7919 + version)
    return struct.pack('<%%df' %% DIMS, *[r.gauss(0, 1) for _ in range(DIMS)])

db = sqlite3.connect(db_path, isolation_level=None, timeout=10)
db.enable_load_extension(True)
db.load_extension(ext)
rep = open(report, 'a')
def tell(line):
    rep.write(line + '\n'); rep.flush(); os.fsync(rep.fileno())
step = int(seed) * 1000
while True:
    step += 1
    x = rng.random()
    db.execute('BEGIN')
    if x < 0.5:  # a batch of new rows
        base = 100000 + step * 100
        db.executemany('INSERT INTO v(rowid, embedding, tag) VALUES(?, ?, ?)',
                       [(base + i, vec(base + i, 0), 1) for i in range(50)])
        db.execute('COMMIT')
        tell('I %%d' %% base)
    elif x < 0.8:  # updates and deletes of base rows
        rows = rng.sample(range(1, %(rows)d + 1), 40)
        for r in rows[:20]:
            db.execute('UPDATE v SET embedding = ? WHERE rowid = ?', (vec(r, step), r))
        db.execute('DELETE FROM v WHERE rowid IN (%%s)' %% ','.join(map(str, rows[20:])))
        db.execute('COMMIT')
        tell('U %%d %%s' %% (step, ' '.join(map(str, rows))))
    else:
        db.execute("INSERT INTO v(v) VALUES('train')" if x < 0.9 else
                   "INSERT INTO v(v) VALUES('optimize')")
        db.execute('COMMIT')
"""


def child_vec(rowid, version):
    r = random.Random(rowid * 7919 + version)
    v = np.array([r.gauss(0, 1) for _ in range(DIMS)])
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_sigkill_of_a_writer(table, ext_path, tmp_path):
    """Committed (reported) changes survive, nothing else is half there, and searches stay
    exact-distance and complete after each kill."""
    path, truth, queries = table
    report = tmp_path / "report.txt"
    rng = random.Random(7)
    code = CHILD % {"dims": DIMS, "rows": ROWS}
    for rnd in range(1, 5):
        child = subprocess.Popen([sys.executable, "-c", code, ext_path, str(path), str(report),
                                  str(rnd)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.3, 1.5))
        if child.poll() is not None:
            pytest.fail(f"writer exited with {child.returncode}: {child.stderr.read().decode()}")
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
        db = connect(str(path), ext_path)
        db.execute("INSERT INTO v(v) VALUES('integrity-check')")
        have = {r: np.frombuffer(e, dtype="<f4") for r, e in
                db.execute("SELECT rowid, embedding FROM v")}
        for line in open(report).read().splitlines():
            parts = line.split()
            if parts[0] == "I":
                base = int(parts[1])
                assert all(base + i in have for i in range(50)), f"batch {base} lost"
            elif parts[0] == "U":
                gone = [int(r) for r in parts[22:]]
                assert not any(r in have for r in gone), f"step {parts[1]}: deleted rows remain"
        new_batches = {r // 100 for r in have if r > 100000}
        for b in new_batches:  # all or nothing
            assert all(b * 100 + i in have for i in range(50)), f"batch {b * 100} partial"
        current = Truth([], [])
        current.vec = have
        check(db, current, queries[:5])
        for r in random.Random(rnd).sample(sorted(have), 10):
            top = db.execute("SELECT rowid, distance FROM v WHERE v MATCH ? AND k = 1",
                             (blob(have[r]),)).fetchall()
            assert top[0][1] < 1e-5, (r, top)
        db.close()


def test_optimize_after_most_rows_deleted_keeps_exact_vectors(table, ext_path):
    """'optimize' on a shrunk table relists it (back to exact search below 78 rows): the new
    lists are built from the stored vectors, not from the codes' approximations, so the exact
    index holds the stored vectors (integrity-check compares them) and distances stay exact."""
    path, truth, queries = table
    db = connect(str(path), ext_path)
    db.execute("DELETE FROM v WHERE rowid > 50")
    truth.vec = {r: v for r, v in truth.vec.items() if r <= 50}
    db.execute("INSERT INTO v(v) VALUES('optimize')")
    assert info(db)["kind"] == "flat"
    db.execute("INSERT INTO v(v) VALUES('integrity-check')")
    check(db, truth, queries, recall_min=1.0)


def test_cli_creates_libraries_with_16k_pages(clipdb_bin, model_dir, demo_dir, tmp_path):
    """A new library is made with 16 KiB pages (a 4 KiB page holds a single 512-d row)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(os.listdir(demo_dir))[:2]:
        shutil.copyfile(os.path.join(demo_dir, p), photos / p)
    env = dict(os.environ, CLIPDB_MODEL=model_dir, HOME=str(tmp_path),
               XDG_DATA_HOME=str(tmp_path / "data"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    lib = tmp_path / "lib.db"
    subprocess.run([clipdb_bin, "--db", str(lib), "index", str(photos)], env=env, check=True,
                   capture_output=True, timeout=120)
    db = sqlite3.connect(lib)
    assert db.execute("PRAGMA page_size").fetchone()[0] == 16384
    assert db.execute("SELECT count(*) FROM photos_vectors").fetchone()[0] == 2
