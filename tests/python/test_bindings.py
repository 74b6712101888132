"""test_bindings.py: the `clipdb` Python package (bindings/python) over the standard sqlite3 module.

References: the PyTorch goldens (tests/data/goldens) for embeddings, brute-force numpy cosine
search for the virtual table's answers, struct for the byte layout. The package is imported from
the source tree. Run with Debian's interpreter (its sqlite3 can load extensions):
  CLIPDB_BUILD_DIR=build-XXX /usr/bin/python3 -m pytest tests/python/test_bindings.py
"""
import array
import json
import os
import pathlib
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bindings" / "python"))
import clipdb  # noqa: E402

GOLDENS = ROOT / "tests" / "data" / "goldens"


@pytest.fixture(autouse=True)
def extension_env(ext_path, monkeypatch):
    """The package finds the extension of the build under test through CLIPDB_BUILD_DIR."""
    monkeypatch.delenv("CLIPDB_EXTENSION", raising=False)
    monkeypatch.delenv("CLIPDB_MODEL", raising=False)
    monkeypatch.setenv("CLIPDB_BUILD_DIR", str(pathlib.Path(ext_path).parents[1]))


@pytest.fixture(scope="module")
def goldens():
    return json.loads((GOLDENS / "goldens.json").read_text())


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture
def db(tmp_path, model_dir):
    conn = clipdb.connect(tmp_path / "t.db", model=model_dir)
    yield conn
    conn.close()


def shapes(demo_dir, n):
    return sorted(p for p in demo_dir.iterdir() if "copy" not in p.name)[:n]


# ---- finding and loading the extension ----

def test_loadable_path_finds_the_build(ext_path):
    assert clipdb.loadable_path() == str(pathlib.Path(ext_path + ".so").resolve())


def test_loadable_path_explicit_env(ext_path, monkeypatch):
    monkeypatch.setenv("CLIPDB_EXTENSION", ext_path)  # without the suffix, as sqlite accepts
    assert clipdb.loadable_path() == str(pathlib.Path(ext_path + ".so").resolve())
    monkeypatch.setenv("CLIPDB_EXTENSION", "/nonexistent/clipdb.so")
    with pytest.raises(clipdb.ExtensionNotFound, match="/nonexistent/clipdb.so"):
        clipdb.loadable_path()


def test_loadable_path_error_lists_places(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDB_BUILD_DIR", str(tmp_path / "empty-build"))
    monkeypatch.setattr(clipdb, "_PACKAGE_DIR", tmp_path / "pkg" / "a" / "clipdb")
    places = [p for _, p in clipdb._search_path()]
    if any(p.is_file() for p in places):
        pytest.skip("a clipdb extension is installed system-wide")
    with pytest.raises(clipdb.ExtensionNotFound) as e:
        clipdb.loadable_path()
    for p in places:
        assert str(p) in str(e.value)
    assert "CLIPDB_EXTENSION" in str(e.value)


def test_no_extension_loading_names_the_fix():
    class NoLoading:  # what sqlite3 connections of such interpreters look like
        def execute(self, *a):
            raise AssertionError("must not be used")

    with pytest.raises(clipdb.ExtensionLoadingUnavailable) as e:
        clipdb.load(NoLoading())
    msg = str(e.value)
    assert "--enable-loadable-sqlite-extensions" in msg and "/usr/bin/python3" in msg
    assert "pysqlite3" in msg


def test_load_embeds_like_goldens(model_dir, goldens):
    conn = clipdb.load(sqlite3.connect(":memory:"))
    conn.execute("SELECT clip_model('tiny', ?)", (model_dir,)).fetchone()
    for t in goldens["texts"][:4]:
        blob, = conn.execute("SELECT clip_embed_text(?, 'tiny')", (t["text"],)).fetchone()
        v = clipdb.deserialize(blob)
        assert v.dtype == np.float32 and v.shape == (goldens["embed_dim"],)
        np.testing.assert_allclose(v, unit(t["embedding"]), rtol=0, atol=2e-6, err_msg=t["text"])
    for im in goldens["images"][:3]:
        blob, = conn.execute("SELECT clip_embed_image(?, 'tiny')",
                             (str(GOLDENS / im["file"]),)).fetchone()
        got, want = clipdb.deserialize(blob), unit(im["embedding"])
        if im["file"].lower().endswith((".jpg", ".jpeg")):
            # JPEGs are shrunk on load by default (CLIPDB_RESIZE=exact gives reference pixels);
            # its documented bound, as tests/embed's embed-image-fast checks it
            assert float(got @ want) >= 0.999, im["file"]
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=im["file"])
    # extension loading is switched off again afterwards ('x' does not exist either: with loading
    # on, the error would be "cannot open shared object file")
    with pytest.raises(sqlite3.OperationalError, match="^not authorized$"):
        conn.execute("SELECT load_extension('x')").fetchone()
    conn.close()


def test_bad_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(clipdb.ClipdbError) as e:
        clipdb.connect(tmp_path / "t.db", model=str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(e.value)


# ---- vectors ----

def test_serialize_round_trip_and_layout():
    rng = np.random.default_rng(7)
    v = rng.standard_normal(64).astype(np.float32)
    blob = clipdb.serialize(v)
    assert isinstance(blob, bytes) and len(blob) == 256
    assert struct.unpack("<64f", blob) == tuple(float(x) for x in v)  # explicit little-endian
    back = clipdb.deserialize(blob)
    assert back.dtype == np.float32 and np.array_equal(back, v)
    assert back.flags.writeable  # a copy the caller may modify
    back[0] = 1.0
    assert clipdb.serialize(v.astype(np.float64)) == blob  # converted to float32
    assert clipdb.serialize(v.astype(">f4")) == blob  # big-endian arrays too
    assert clipdb.serialize(list(v)) == blob
    plain = clipdb.deserialize(blob, numpy=False)
    assert isinstance(plain, array.array) and plain.typecode == "f" and list(plain) == list(v)
    assert clipdb.serialize(plain) == blob
    with pytest.raises(ValueError):
        clipdb.deserialize(b"\0" * 7)
    with pytest.raises(ValueError):
        clipdb.serialize(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("vector", [
    [1e40], [1.0, -1e39], [float("inf")], [0.5, float("nan")], [10**400],
    np.array([1.0, 1e40]), np.array([np.inf], np.float32), array.array("f", [float("-inf")]),
    [], np.zeros(0, np.float32)])
def test_serialize_refuses_what_float32_cannot_hold(vector):
    """Out of float32's range, NaN, infinite or empty: an error, never a silent inf."""
    with pytest.raises(ValueError, match="serialize"):
        clipdb.serialize(vector)


def test_serialize_keeps_the_float32_extremes():
    edge = [float(np.finfo(np.float32).max), float(-np.finfo(np.float32).max), 1e-45, 0.0]
    assert struct.unpack("<4f", clipdb.serialize(edge)) == struct.unpack(
        "<4f", struct.pack("<4f", *edge))


@pytest.mark.parametrize("blob", [b"", b"\0" * 9, bytearray(3), memoryview(b"\0" * 5)])
def test_deserialize_refuses_blobs_that_are_not_vectors(blob):
    with pytest.raises(ValueError, match="deserialize"):
        clipdb.deserialize(blob)
    with pytest.raises(ValueError, match="deserialize"):
        clipdb.deserialize(blob, numpy=False)


@pytest.mark.parametrize("value", [8, 0, "abcd", None, 2.0])
def test_deserialize_refuses_what_is_not_a_blob(value):
    """deserialize(8) must not read as bytes(8), eight zero bytes."""
    with pytest.raises(TypeError, match="deserialize"):
        clipdb.deserialize(value)


def test_deserialize_of_8_bytes_is_a_2_vector_as_sql_sees_it(db):
    """An 8-byte BLOB is a valid 2-dimensional vector (a clip table accepts dims=2)."""
    blob = struct.pack("<2f", 0.25, -2.0)
    assert list(clipdb.deserialize(blob, numpy=False)) == [0.25, -2.0]
    as_json, = db.execute("SELECT clip_vec_to_json(?)", (blob,)).fetchone()
    assert json.loads(as_json) == [0.25, -2.0]


def test_vectors_interoperate_with_sql(db):
    blob, = db.execute("SELECT clip_embed_text('a blue square')").fetchone()
    v = clipdb.deserialize(blob)
    assert abs(np.linalg.norm(v) - 1) < 1e-5
    sim, = db.execute("SELECT clip_similarity(?, ?)", (clipdb.serialize(v), blob)).fetchone()
    assert abs(sim - 1) < 1e-6
    as_json, = db.execute("SELECT clip_vec_to_json(?)", (clipdb.serialize(v),)).fetchone()
    assert np.allclose(json.loads(as_json), v, atol=1e-6)


# ---- tables and search ----

def brute_force(query, vectors):
    """(rowid, 1 - cosine) sorted by distance."""
    q = unit(query)
    dist = {rid: 1 - float(np.dot(q, unit(v))) for rid, v in vectors.items()}
    return sorted(dist.items(), key=lambda kv: kv[1])


def stored_vectors(db, table):
    return {rid: clipdb.deserialize(e)
            for rid, e in db.execute(f"SELECT rowid, embedding FROM {table}")}


def test_index_folder_and_search_text_to_image(db, demo_dir):
    files = shapes(demo_dir, 24)
    db.execute("CREATE VIRTUAL TABLE photos USING clip(album TEXT)")
    with db:
        for i, p in enumerate(files):
            db.execute("INSERT INTO photos(image, album) VALUES (?, ?)", (str(p), f"a{i % 2}"))
    vectors = stored_vectors(db, "photos")
    assert len(vectors) == len(files)
    # the stored vector is the image's embedding
    first, = db.execute("SELECT clip_embed_image(?)", (str(files[0]),)).fetchone()
    assert np.allclose(vectors[1], clipdb.deserialize(first), atol=1e-6)
    for query in ("a red circle", "a blue star on an orange background"):
        qv = clipdb.deserialize(db.execute("SELECT clip_embed_text(?)", (query,)).fetchone()[0])
        got = db.execute("SELECT rowid, distance FROM photos WHERE photos MATCH ? AND k = 5",
                         (query,)).fetchall()
        want = brute_force(qv, vectors)[:5]
        assert [r for r, _ in got] == [r for r, _ in want]
        assert np.allclose([d for _, d in got], [d for _, d in want], atol=1e-4)
        # the same through clip_search and through a vector query
        via_fn = db.execute("SELECT rowid FROM clip_search('photos', ?, 5)", (query,)).fetchall()
        assert [r for r, in via_fn] == [r for r, _ in want]
        via_vec = db.execute("SELECT rowid FROM photos WHERE photos MATCH ? AND k = 5",
                             (clipdb.serialize(qv),)).fetchall()
        assert [r for r, in via_vec] == [r for r, _ in want]


def test_search_image_to_text(db, demo_dir):
    captions = ["a red circle", "a blue square", "a green triangle", "a yellow star",
                "a purple cross", "an orange circle on a white background"]
    db.execute("CREATE VIRTUAL TABLE captions USING clip()")
    with db:
        db.executemany("INSERT INTO captions(text) VALUES (?)", [(c,) for c in captions])
    vectors = stored_vectors(db, "captions")
    image = next(p for p in demo_dir.iterdir() if "orange-circle-on-white" in p.name)
    qv = clipdb.deserialize(db.execute("SELECT clip_embed_image(?)", (str(image),)).fetchone()[0])
    got = db.execute("SELECT rowid, text, distance FROM captions WHERE captions MATCH ? AND k = 3",
                     (image.read_bytes(),)).fetchall()  # image bytes as the query
    want = brute_force(qv, vectors)[:3]
    assert [r for r, _, _ in got] == [r for r, _ in want]
    assert all(text == captions[r - 1] for r, text, _ in got)


def test_two_threads_with_separate_connections(tmp_path, model_dir, demo_dir):
    path = tmp_path / "shared.db"
    setup = clipdb.connect(path, model=model_dir)
    setup.execute("CREATE VIRTUAL TABLE photos USING clip()")
    with setup:
        for p in shapes(demo_dir, 10):
            setup.execute("INSERT INTO photos(image) VALUES (?)", (str(p),))
    queries = ["a red circle", "a green square", "a yellow star", "a white cross"]
    expected = {q: setup.execute("SELECT rowid FROM photos WHERE photos MATCH ? AND k = 3",
                                 (q,)).fetchall() for q in queries}
    setup.close()
    results, errors = {}, []

    def worker(name):
        try:
            conn = clipdb.connect(path, model=model_dir)
            for _ in range(3):
                for q in queries:
                    got = conn.execute("SELECT rowid FROM photos WHERE photos MATCH ? AND k = 3",
                                       (q,)).fetchall()
                    results.setdefault((name, q), []).append(got)
            conn.close()
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    for (name, q), runs in results.items():
        assert all(r == expected[q] for r in runs), (name, q)
    assert len(results) == 2 * len(queries)


# ---- installing ----

def test_offline_install_bundles_the_extension(tmp_path, ext_path, model_dir):
    """The documented offline install works and the installed package carries the extension."""
    if not shutil.which("pip3") and subprocess.run(
            [sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not installed")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "bindings" / "python", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "CLIPDB_EXTENSION": ext_path + ".so"}
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                        "--no-deps", "--target", str(tmp_path / "site"), str(src)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    installed = tmp_path / "site" / "clipdb"
    assert (installed / "clipdb.so").is_file()
    probe = ("import clipdb, sys; c = clipdb.connect(':memory:', model=sys.argv[1]); "
             "print(clipdb.loadable_path()); "
             "print(len(clipdb.deserialize(c.execute(\"SELECT clip_embed_text('hi')\").fetchone()[0])))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLIPDB_")}
    r = subprocess.run([sys.executable, "-c", probe, model_dir], cwd=tmp_path,
                       env={**clean, "PYTHONPATH": str(tmp_path / "site")},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    where, dims = r.stdout.split()
    assert where == str(installed / "clipdb.so") and dims == "64"
