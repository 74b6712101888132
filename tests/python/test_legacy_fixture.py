"""Databases written by earlier releases keep working: tests/data/legacy/v1.db (storage version 1,
written by tests/data/legacy/make_fixture.py) opens, passes integrity-check and searches with the
results exact search gives over the rows the generator wrote. A copy is used, so the fixture
itself is never modified."""
import importlib.util
import shutil
import struct

import numpy as np
import pytest

from conftest import DATA, DEMO_DIR, connect

LEGACY = DATA / "legacy"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_fixture", LEGACY / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def legacy_db(ext_path, model_dir, tmp_path):
    path = tmp_path / "v1.db"
    shutil.copy(LEGACY / "v1.db", path)
    db = connect(str(path), ext_path)
    db.execute("SELECT clip_model('default', ?)", (model_dir,))
    yield db
    db.close()


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def exact_knn(rows, query, k):
    """rowids by descending cosine over {rowid: vector}."""
    q = unit(query)
    scored = sorted(rows, key=lambda r: (-float(unit(rows[r]) @ q), r))
    return scored[:k]


def embed_text(db, text):
    return np.frombuffer(db.execute("SELECT clip_embed_text(?)", (text,)).fetchone()[0], "<f4")


def test_v1_integrity_and_counts(legacy_db):
    gen = load_generator()
    legacy_db.execute("INSERT INTO vecs(vecs) VALUES ('integrity-check')")
    legacy_db.execute("INSERT INTO photos(photos) VALUES ('integrity-check')")
    live = gen.live_vectors()
    assert legacy_db.execute("SELECT count(*) FROM vecs").fetchone()[0] == len(live)
    got = dict((r, (a, n)) for r, a, n in legacy_db.execute("SELECT rowid, album, n FROM vecs"))
    assert got == {r: (a, n) for r, (_, a, n) in live.items()}
    info = legacy_db.execute("SELECT clip_index_info('vecs')").fetchone()[0]
    assert '"nlist":4' in info.replace(" ", "") and f'"count":{len(live)}' in info.replace(" ", "")


@pytest.mark.parametrize("seed", range(5))
def test_v1_knn_matches_exact_search(legacy_db, seed):
    gen = load_generator()
    live = gen.live_vectors()
    vectors = {r: v for r, (v, _, _) in live.items()}
    query = gen.vec(5000 + seed)
    blob = struct.pack("<8f", *query)
    got = [r for (r,) in legacy_db.execute(
        "SELECT rowid FROM vecs WHERE vecs MATCH ? AND k = 10", (blob,))]
    assert got == exact_knn(vectors, query, 10)
    beach = {r: v for r, (v, a, _) in live.items() if a == "Beach"}
    got = [r for (r,) in legacy_db.execute(
        "SELECT rowid FROM vecs WHERE vecs MATCH ? AND k = 7 AND album = 'Beach'", (blob,))]
    assert got == exact_knn(beach, query, 7)


def test_v1_model_table_searches_and_accepts_writes(legacy_db):
    gen = load_generator()
    images = {}
    for name in gen.IMAGES:
        blob = legacy_db.execute("SELECT clip_embed_image(?)", (str(DEMO_DIR / name),)).fetchone()[0]
        images[name] = np.frombuffer(blob, dtype="<f4")
    texts = {t: embed_text(legacy_db, t) for t in gen.TEXTS}
    got = [n for (n,) in legacy_db.execute(
        "SELECT name FROM photos WHERE photos MATCH 'a blue star' AND k = 4")]
    assert got == exact_knn({**images, **texts}, embed_text(legacy_db, "a blue star"), 4)
    got = [n for (n,) in legacy_db.execute(
        "SELECT name FROM photos WHERE photos MATCH 'a red star' AND k = 3")]
    assert got[0] == "a red star"
    assert set(got[1:]) == {"055-red-star-on-blue.png", "057-red-star-on-purple.webp"}
    legacy_db.execute("INSERT INTO photos(text, name) VALUES ('a green circle', 'new')")
    legacy_db.execute("INSERT INTO vecs(rowid, embedding) VALUES (1000, ?)",
                      (struct.pack("<8f", *gen.vec(1)),))
    legacy_db.execute("INSERT INTO vecs(vecs) VALUES ('train')")
    legacy_db.execute("INSERT INTO vecs(vecs) VALUES ('integrity-check')")
    top = legacy_db.execute("SELECT rowid FROM vecs WHERE vecs MATCH ? AND k = 2",
                            (struct.pack("<8f", *gen.vec(1)),)).fetchall()
    assert sorted(r for (r,) in top) == [1, 1000]
