"""The snapshot of a trained index (T_index) holds its quantizer (and SQ8's ranges) and each
list's ids, not the vectors or codes: a connection without the cache file rebuilds the index from
those ids and T_vectors (format 2 for IVF,Flat, 3 for the default IVF,SQ8, whose codes are
re-encoded). Checked against numpy's exact search (nprobe = nlist makes IVF,Flat exact, and SQ8's
exactly re-ranked candidates hold the exact top 10 here), with filters, after changes logged since
the snapshot, after a rollback, and for a version-1 snapshot (vectors inside) rewritten as ids by
'train'."""
import json
import shutil
import struct

import numpy as np
import pytest

from conftest import DATA, connect

DIMS = 16
ROWS = 11000  # past the 10k rows at which COMMIT trains


def blob(v):
    return np.asarray(v, dtype="<f4").tobytes()


def info(db, table="v"):
    return json.loads(db.execute("SELECT clip_index_info(?)", (table,)).fetchone()[0])


def snapshot(db, table="v"):
    """(format version, total bytes) of the pieces in T_index."""
    pieces = [bytes(d) for (d,) in db.execute(f"SELECT data FROM {table}_index ORDER BY piece")]
    data = b"".join(pieces)
    return struct.unpack_from("<I", data, 8)[0], len(data)


def exact(truth, q, k, allowed=None):
    ids = np.array([r for r in truth if allowed is None or allowed(r)])
    m = np.array([truth[r] / np.linalg.norm(truth[r]) for r in ids])
    order = np.argsort(-(m @ (q / np.linalg.norm(q))), kind="stable")
    return set(ids[order[:k]].tolist())


def knn(db, q, k, nlist, extra=""):
    return [r for (r,) in db.execute(
        f"SELECT rowid FROM v WHERE v MATCH ? AND k = ? AND nprobe = ? {extra}",
        (blob(q), k, nlist))]


def check_exact(db, truth, rng, nlist):
    for _ in range(5):
        q = rng.standard_normal(DIMS)
        assert set(knn(db, q, 10, nlist)) == exact(truth, q, 10)
        got = knn(db, q, 10, nlist, "AND grp = 3")
        assert len(got) == 10 and set(got) == exact(truth, q, 10, lambda r: r % 7 == 3)


FORMAT = {"IVF,Flat": 2, "auto": 3}  # snapshot format of each index option once trained


@pytest.fixture(params=["IVF,Flat", "auto"])
def trained(tmp_path, ext_path, monkeypatch, request):
    """A table trained at COMMIT; connections made by the test never use a cache file."""
    monkeypatch.setenv("CLIPDB_INDEX_CACHE", "0")
    path = str(tmp_path / "t.db")
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((30, DIMS))
    vecs = centres[rng.integers(0, 30, ROWS)] + 0.4 * rng.standard_normal((ROWS, DIMS))
    db = connect(path, ext_path)
    db.execute(f"CREATE VIRTUAL TABLE v USING clip(dims={DIMS}, index='{request.param}', "
               "grp INTEGER)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO v(rowid, embedding, grp) VALUES (?, ?, ?)",
                   [(i + 1, blob(v), (i + 1) % 7) for i, v in enumerate(vecs)])
    db.execute("COMMIT")
    db.close()
    return path, {i + 1: v for i, v in enumerate(vecs)}, FORMAT[request.param]


def test_snapshot_holds_ids_not_vectors(trained, ext_path):
    path, truth, fmt = trained
    db = connect(path, ext_path)
    version, size = snapshot(db)
    nlist = info(db)["nlist"]
    assert version == fmt and nlist > 1
    assert size < ROWS * 8 + nlist * DIMS * 4 + 4096  # ids and centroids, no vectors
    check_exact(db, truth, np.random.default_rng(1), nlist)
    db.execute("INSERT INTO v(v) VALUES ('integrity-check')")
    db.close()


def test_changes_after_the_snapshot_and_rollback(trained, ext_path):
    path, truth, fmt = trained
    rng = np.random.default_rng(2)
    db = connect(path, ext_path)
    nlist = info(db)["nlist"]
    db.execute("BEGIN")
    for r in range(1, 200, 3):
        truth[r] = rng.standard_normal(DIMS)
        db.execute("UPDATE v SET embedding = ? WHERE rowid = ?", (blob(truth[r]), r))
    for r in range(2, 200, 3):
        del truth[r]
        db.execute("DELETE FROM v WHERE rowid = ?", (r,))
    for r in range(ROWS + 1, ROWS + 50):
        truth[r] = rng.standard_normal(DIMS)
        db.execute("INSERT INTO v(rowid, embedding, grp) VALUES (?, ?, ?)",
                   (r, blob(truth[r]), r % 7))
    db.execute("COMMIT")
    db.execute("BEGIN")
    db.execute("DELETE FROM v WHERE rowid < 5000")
    db.execute("UPDATE v SET embedding = ? WHERE rowid = 6000", (blob(rng.standard_normal(DIMS)),))
    db.execute("ROLLBACK")
    db.close()
    db = connect(path, ext_path)  # snapshot ids + T_vectors, then the log since the snapshot
    assert snapshot(db)[0] == fmt and info(db)["count"] == len(truth)
    check_exact(db, truth, rng, nlist)
    db.execute("INSERT INTO v(v) VALUES ('integrity-check')")
    db.close()


def test_version_1_snapshot_is_rewritten_as_ids(tmp_path, ext_path, monkeypatch):
    monkeypatch.setenv("CLIPDB_INDEX_CACHE", "0")
    path = tmp_path / "v1.db"
    shutil.copy(DATA / "legacy" / "v1.db", path)
    db = connect(str(path), ext_path)
    assert snapshot(db, "vecs")[0] == 1
    truth = {r: np.frombuffer(e, "<f4") for r, e in
             db.execute("SELECT rowid, embedding FROM vecs_vectors")}
    db.execute("INSERT INTO vecs(vecs) VALUES ('train')")
    db.close()
    db = connect(str(path), ext_path)
    assert snapshot(db, "vecs")[0] == (3 if info(db, "vecs")["factory"].endswith(",SQ8") else 2)
    nlist = info(db, "vecs")["nlist"]
    for seed in range(5):
        q = np.random.default_rng(seed).standard_normal(len(next(iter(truth.values()))))
        got = [r for (r,) in db.execute(
            "SELECT rowid FROM vecs WHERE vecs MATCH ? AND k = 10 AND nprobe = ?",
            (blob(q), nlist))]
        assert set(got) == exact(truth, q, 10)
    db.execute("INSERT INTO vecs(vecs) VALUES ('integrity-check')")
    db.close()
