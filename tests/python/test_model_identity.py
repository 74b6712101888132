"""A clip table's record of its model covers the weights, and is checked on every path.

The model identity a table stores is SHA-256(config.json + SHA-256 of model.safetensors); the
identities expected here are recomputed with hashlib from the files. A model whose weights change
under the table's model name (one value flipped, same shapes: the earlier identity, config.json +
the safetensors header, could not tell it apart) is refused by SQL MATCH with a text, by writes,
by clip_search, by the Python bindings and by `clipdb search`, `similar` and `index`; the message
names both identities and the way out. 'rebuild' moves the table to the new model, embedding every
row again (compared with clip_embed_* on another connection). Tables storing the earlier identity
are accepted when it matches and upgraded by their next commit (tests/data/legacy/v1.db)."""
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import sqlite3
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, ROOT, connect

LEGACY_DB = DATA / "legacy" / "v1.db"


def flip_weight_bit(model_dir, tensors=("text_projection.weight", "visual_projection.weight")):
    """Flips the lowest bit of the first value of each tensor in place (same shapes, finite)."""
    path = pathlib.Path(model_dir) / "model.safetensors"
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for name in tensors:
        data[8 + n + header[name]["data_offsets"][0]] ^= 1
    path.write_bytes(bytes(data))


def copy_model(model_dir, dst):
    shutil.copytree(model_dir, dst)
    return str(dst)


def identity(model_dir):
    d = pathlib.Path(model_dir)
    weights = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    return hashlib.sha256((d / "config.json").read_bytes() + weights.encode()).hexdigest()


def legacy_identity(model_dir):
    d = pathlib.Path(model_dir)
    data = (d / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return hashlib.sha256((d / "config.json").read_bytes() + data[:8 + n]).hexdigest()


@pytest.fixture(scope="module")
def changed_model(tmp_path_factory, model_dir):
    dst = copy_model(model_dir, tmp_path_factory.mktemp("changed") / "model")
    flip_weight_bit(dst)
    return dst


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Digests of weights files are remembered under XDG_CACHE_HOME: one per test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CLIPDB_MODEL", raising=False)


def open_with(path, ext_path, model):
    db = connect(str(path), ext_path)
    db.execute("SELECT clip_model('shapes', ?)", (model,))
    return db


def config_identity(db, table="t"):
    return db.execute(f"SELECT value FROM {table}_config WHERE key = 'model_identity'").fetchone()[0]


def make_table(path, ext_path, model, demo_dir):
    db = open_with(path, ext_path, model)
    db.execute("CREATE VIRTUAL TABLE t USING clip(model=shapes, name TEXT)")
    db.execute("BEGIN")
    for text in ("a red star", "a blue square", "a green circle"):
        db.execute("INSERT INTO t(text, name) VALUES (?, ?)", (text, text))
    for image in sorted(demo_dir.iterdir())[:4]:
        db.execute("INSERT INTO t(image, name) VALUES (?, ?)", (str(image), image.name))
    db.execute("COMMIT")
    db.close()


def refused(excinfo_or_text, old, new):
    text = str(excinfo_or_text)
    return old in text and new in text and "'rebuild'" in text and "clip_model" in text


def test_identity_covers_the_weights(ext_path, model_dir, changed_model):
    db = connect(":memory:", ext_path)
    a = json.loads(db.execute("SELECT clip_model('a', ?)", (model_dir,)).fetchone()[0])
    b = json.loads(db.execute("SELECT clip_model('b', ?)", (changed_model,)).fetchone()[0])
    assert a["identity"] == identity(model_dir) and b["identity"] == identity(changed_model)
    assert a["identity"] != b["identity"]
    # What the earlier identity covered is the same for both models.
    assert legacy_identity(model_dir) == legacy_identity(changed_model)
    db.close()


def test_sql_paths_refuse_a_changed_model(tmp_path, ext_path, model_dir, changed_model,
                                          demo_dir):
    make_table(tmp_path / "m.db", ext_path, model_dir, demo_dir)
    old, new = identity(model_dir), identity(changed_model)
    db = open_with(tmp_path / "m.db", ext_path, changed_model)
    with pytest.raises(sqlite3.OperationalError) as e:
        db.execute("SELECT rowid FROM t WHERE t MATCH 'a red star' AND k = 3").fetchall()
    assert refused(e.value, old, new), e.value
    with pytest.raises(sqlite3.OperationalError) as e:
        db.execute("SELECT rowid FROM clip_search('t', 'a red star')").fetchall()
    assert refused(e.value, old, new), e.value
    with pytest.raises(sqlite3.OperationalError) as e:
        db.execute("INSERT INTO t(text) VALUES ('a yellow cross')")
    assert refused(e.value, old, new), e.value
    # A query vector needs no model: the stored vectors still answer it.
    q = db.execute("SELECT embedding FROM t WHERE name = 'a red star'").fetchone()[0]
    top = db.execute("SELECT name FROM t WHERE t MATCH ? AND k = 1", (q,)).fetchone()[0]
    assert top == "a red star"
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 7
    assert config_identity(db) == old
    db.close()


def test_python_bindings_refuse_a_changed_model(tmp_path, ext_path, model_dir, changed_model,
                                                demo_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bindings" / "python"))
    monkeypatch.setenv("CLIPDB_BUILD_DIR", str(pathlib.Path(ext_path).parents[1]))
    import clipdb
    make_table(tmp_path / "m.db", ext_path, model_dir, demo_dir)
    db = clipdb.connect(tmp_path / "m.db")
    db.execute("SELECT clip_model('shapes', ?)", (changed_model,))
    with pytest.raises(sqlite3.OperationalError) as e:
        db.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 3", ("a red star",)).fetchall()
    assert refused(e.value, identity(model_dir), identity(changed_model)), e.value
    db.close()


def stored(db):
    return {name: np.frombuffer(v, "<f4") for name, v in
            db.execute("SELECT name, embedding FROM t")}


def test_rebuild_moves_the_table_to_the_new_model(tmp_path, ext_path, model_dir, changed_model,
                                                  demo_dir):
    make_table(tmp_path / "m.db", ext_path, model_dir, demo_dir)
    old, new = identity(model_dir), identity(changed_model)
    db = open_with(tmp_path / "m.db", ext_path, changed_model)
    before = stored(db)
    db.execute("BEGIN")
    db.execute("INSERT INTO t(t) VALUES ('rebuild')")
    db.execute("ROLLBACK")
    assert config_identity(db) == old
    with pytest.raises(sqlite3.OperationalError) as e:
        db.execute("SELECT rowid FROM t WHERE t MATCH 'a red star' AND k = 3").fetchall()
    assert refused(e.value, old, new), e.value
    db.execute("INSERT INTO t(t) VALUES ('rebuild')")
    assert config_identity(db) == new
    info = json.loads(db.execute("SELECT clip_index_info('t')").fetchone()[0])
    assert (info["model"], info["model_identity"]) == ("shapes", new)
    # Every vector is the new model's, as another connection computes it.
    ref = connect(":memory:", ext_path)
    ref.execute("SELECT clip_model('new', ?)", (changed_model,))
    after = stored(db)
    for name, v in after.items():
        fn = "clip_embed_text" if name.startswith("a ") else "clip_embed_image"
        arg = name if name.startswith("a ") else str(demo_dir / name)
        want = np.frombuffer(ref.execute(f"SELECT {fn}(?, 'new')", (arg,)).fetchone()[0], "<f4")
        assert np.allclose(v, want, atol=1e-5), name
        assert not np.array_equal(v, before[name]), name
    top = db.execute("SELECT name FROM t WHERE t MATCH 'a red star' AND k = 1").fetchone()[0]
    assert top == "a red star"
    db.execute("INSERT INTO t(t) VALUES ('integrity-check')")
    db.close()
    # Now the original model is the one refused.
    db = open_with(tmp_path / "m.db", ext_path, model_dir)
    with pytest.raises(sqlite3.OperationalError) as e:
        db.execute("SELECT rowid FROM t WHERE t MATCH 'a red star' AND k = 3").fetchall()
    assert refused(e.value, new, old), e.value
    db.close()
    ref.close()


def test_rebuild_that_cannot_embed_a_row_changes_nothing(tmp_path, ext_path, model_dir,
                                                          changed_model, demo_dir):
    make_table(tmp_path / "m.db", ext_path, model_dir, demo_dir)
    copied = tmp_path / "copy.png"
    shutil.copy(sorted(demo_dir.iterdir())[5], copied)
    db = open_with(tmp_path / "m.db", ext_path, model_dir)
    db.execute("INSERT INTO t(image, name) VALUES (?, 'copy')", (str(copied),))
    gone = db.execute("SELECT rowid FROM t WHERE name = 'copy'").fetchone()[0]
    db.close()
    copied.unlink()
    db = open_with(tmp_path / "m.db", ext_path, changed_model)
    before = stored(db)
    with pytest.raises(sqlite3.OperationalError, match=f"row {gone} needs a vector from the new"):
        db.execute("INSERT INTO t(t) VALUES ('rebuild')")
    assert config_identity(db) == identity(model_dir)
    after = stored(db)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)
    with pytest.raises(sqlite3.OperationalError) as e:
        db.execute("SELECT rowid FROM t WHERE t MATCH 'a red star' AND k = 3").fetchall()
    assert refused(e.value, identity(model_dir), identity(changed_model)), e.value
    db.close()


def test_legacy_identity_is_accepted_and_upgraded(tmp_path, ext_path, model_dir, changed_model):
    path = tmp_path / "v1.db"
    shutil.copy(LEGACY_DB, path)
    db = connect(str(path), ext_path)
    db.execute("SELECT clip_model('default', ?)", (model_dir,))
    assert config_identity(db, "photos") == legacy_identity(model_dir)
    got = db.execute("SELECT name FROM photos WHERE photos MATCH 'a red star' AND k = 1").fetchone()
    assert got == ("a red star",)
    assert config_identity(db, "photos") == legacy_identity(model_dir)  # a query writes nothing
    db.execute("BEGIN")
    db.execute("INSERT INTO photos(text, name) VALUES ('a green circle', 'new')")
    db.execute("ROLLBACK")
    assert config_identity(db, "photos") == legacy_identity(model_dir)
    db.execute("INSERT INTO photos(text, name) VALUES ('a green circle', 'new')")
    assert config_identity(db, "photos") == identity(model_dir)
    info = json.loads(db.execute("SELECT clip_index_info('photos')").fetchone()[0])
    assert info["model_identity"] == identity(model_dir) and info["model"] == ""
    db.execute("INSERT INTO photos(photos) VALUES ('integrity-check')")
    db.close()
    # Upgraded, the table now tells the changed weights apart.
    db = connect(str(path), ext_path)
    db.execute("SELECT clip_model('default', ?)", (changed_model,))
    with pytest.raises(sqlite3.OperationalError) as e:
        db.execute("SELECT name FROM photos WHERE photos MATCH 'a red star' AND k = 1").fetchall()
    assert refused(e.value, identity(model_dir), identity(changed_model)), e.value
    db.close()


def test_weights_digest_is_remembered_by_file_version(tmp_path, ext_path, model_dir):
    mine = copy_model(model_dir, tmp_path / "model")
    db = connect(":memory:", ext_path)
    db.execute("SELECT clip_model('a', ?)", (mine,))
    entries = list((tmp_path / "cache" / "clipdb" / "digests").iterdir())
    assert len(entries) == 1
    weights = hashlib.sha256((pathlib.Path(mine) / "model.safetensors").read_bytes()).hexdigest()
    assert entries[0].read_text().strip() == weights
    db.close()
    flip_weight_bit(mine)  # in place: another version of the file gets its own entry
    db = connect(":memory:", ext_path)
    got = json.loads(db.execute("SELECT clip_model('a', ?)", (mine,)).fetchone()[0])
    assert got["identity"] == identity(mine)
    assert len(list((tmp_path / "cache" / "clipdb" / "digests").iterdir())) == 2
    db.close()


# ---- the command line ----

def cli_env(tmp_path, model):
    e = dict(os.environ)
    e.update(CLIPDB_MODEL=model, HOME=str(tmp_path / "home"),
             XDG_DATA_HOME=str(tmp_path / "home" / "data"),
             XDG_CACHE_HOME=str(tmp_path / "home" / "cache"))
    return e


def cli(clipdb_bin, env, *args):
    return subprocess.run([clipdb_bin, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=120)


def cli_library(tmp_path, clipdb_bin, model_dir, demo_dir):
    model = copy_model(model_dir, tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted(demo_dir.iterdir())[:6]:
        shutil.copy(image, photos)
    env = cli_env(tmp_path, model)
    p = cli(clipdb_bin, env, "--db", tmp_path / "lib.db", "index", "--quiet", photos)
    assert p.returncode == 0, p.stderr
    return model, photos, env


def test_cli_refuses_a_changed_model_on_every_path(tmp_path, clipdb_bin, model_dir, demo_dir):
    model, photos, env = cli_library(tmp_path, clipdb_bin, model_dir, demo_dir)
    db = tmp_path / "lib.db"
    old = identity(model)
    info = json.loads(cli(clipdb_bin, env, "--db", db, "info", "--json").stdout)
    assert (info["model"], info["model_identity"]) == (model, old)
    flip_weight_bit(model)  # the same model directory now holds other weights
    new = identity(model)
    image = sorted(photos.iterdir())[0]
    outside = tmp_path / "outside.png"
    shutil.copy(sorted(demo_dir.iterdir())[10], outside)
    (photos / "new.png").write_bytes(outside.read_bytes())
    # The library's model wins over $CLIPDB_MODEL (here the unchanged original).
    env = {**env, "CLIPDB_MODEL": model_dir}
    for args in (("search", "a red star"), ("search", "red - blue"), ("similar", image),
                 ("similar", outside), ("index", "--quiet", photos),
                 ("classify", outside, "red", "blue"), ("embed", "--text", "a red star"),
                 ("tokenize", "a red star")):
        p = cli(clipdb_bin, env, "--db", db, *args)
        assert p.returncode == 1 and refused(p.stderr, old, new), (args, p.stderr)
    # --model names the model to use for commands that need no library.
    p = cli(clipdb_bin, env, "--db", db, "--model", model_dir, "embed", "--text", "a red star")
    assert p.returncode == 0 and len(json.loads(p.stdout)) == 64, p.stderr
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM photos_rows").fetchone()[0] == 6
    con.close()
    info = json.loads(cli(clipdb_bin, env, "--db", db, "info", "--json").stdout)
    assert info["model_identity"] == old  # info reads the library's record, whatever the model


def test_cli_library_from_an_earlier_version(tmp_path, clipdb_bin, model_dir, demo_dir):
    """Earlier versions kept the model's name in clipdb_cli_meta too, and stored the earlier
    identity: such a library searches as before, and its next index upgrades the identity."""
    model, photos, env = cli_library(tmp_path, clipdb_bin, model_dir, demo_dir)
    db = tmp_path / "lib.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE clipdb_cli_meta(key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO clipdb_cli_meta VALUES ('model', ?), ('schema', '1')", (model,))
    con.execute("UPDATE photos_config SET value = ? WHERE key = 'model_identity'",
                (legacy_identity(model),))
    con.commit()
    con.close()
    p = cli(clipdb_bin, env, "--db", db, "search", "--paths", "-n", "1", "a red star")
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    shutil.copy(sorted(demo_dir.iterdir())[10], photos / "new.png")
    p = cli(clipdb_bin, env, "--db", db, "index", "--json", "--quiet", photos)
    assert p.returncode == 0 and json.loads(p.stdout)["added"] == 1, p.stderr
    info = json.loads(cli(clipdb_bin, env, "--db", db, "info", "--json").stdout)
    assert info["model_identity"] == identity(model)


def test_pull_remembers_the_weights_digest(tmp_path, clipdb_bin, model_dir):
    """A pulled model's first use needs no pass over its weights: the digest the pull computed
    (and checked against the hub's) is remembered for the file it left in the cache."""
    from hubserver import Hub
    hub = Hub(model_dir, repo="clipdb-test/tiny-shapes")
    try:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HF_", "CLIPDB_", "HUGGING")) and "proxy" not in k.lower()}
        env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), HF_ENDPOINT=hub.url)
        p = cli(clipdb_bin, env, "model", "pull", "clipdb-test/tiny-shapes")
        assert p.returncode == 0, p.stderr
    finally:
        hub.close()
    pulled = tmp_path / "cache" / "clipdb" / "models" / "clipdb-test--tiny-shapes"
    st = os.stat(pulled / "model.safetensors")
    name = "%x-%x-%x-%d.%09d-%d.%09d.sha256" % (st.st_dev, st.st_ino, st.st_size,
                                                st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9,
                                                st.st_ctime_ns // 10**9, st.st_ctime_ns % 10**9)
    entry = tmp_path / "cache" / "clipdb" / "digests" / name
    weights = hashlib.sha256((pulled / "model.safetensors").read_bytes()).hexdigest()
    assert entry.read_text().strip() == weights
    p = cli(clipdb_bin, env, "model", "info", pulled)
    assert f"identity: {identity(pulled)}" in p.stdout, p.stdout
