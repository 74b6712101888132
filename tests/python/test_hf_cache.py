"""Models in the Hugging Face hub cache (what transformers and open_clip fill) are used in place:
a cache is built here in the real layout (models--ORG--NAME/refs/main naming a commit,
snapshots/COMMIT/ holding symbolic links into blobs/ named by content hash), and every way of
naming a model finds it there; `model pull` fetches nothing for it. The oracle: the same model
loaded from its plain folder."""
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess

import pytest

from conftest import connect

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hf_cache(root, model_dir, name="shapes-org/tiny-clip", commit=COMMIT, skip=()):
    """Writes model_dir's files into an HF hub cache under root in the real layout."""
    org, repo = name.split("/")
    base = root / f"models--{org}--{repo}"
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(os.listdir(model_dir)):
        if f in skip or not (model_dir / f).is_file():
            continue
        data = (model_dir / f).read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f).symlink_to(os.path.relpath(blob, snap))
    return snap


def dead_endpoint():
    """An http address on which nothing listens: any download attempt fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def hf_env(tmp_path, model_dir, monkeypatch):
    import pathlib
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # clipdb's own cache: empty
    monkeypatch.setenv("HF_ENDPOINT", dead_endpoint())
    for var in ("HF_HUB_CACHE", "HF_HOME", "CLIPDB_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return pathlib.Path(model_dir)


@pytest.mark.parametrize("where", ["HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"])
def test_sql_finds_a_model_in_the_hf_cache(where, hf_env, tmp_path, monkeypatch, ext_path):
    if where == "HF_HUB_CACHE":
        root = tmp_path / "hubcache"
        monkeypatch.setenv("HF_HUB_CACHE", str(root))
    elif where == "HF_HOME":
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
        root = tmp_path / "hfhome" / "hub"
    elif where == "XDG_CACHE_HOME":
        root = tmp_path / "xdg" / "huggingface" / "hub"
    else:
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        root = tmp_path / "home" / ".cache" / "huggingface" / "hub"
    build_hf_cache(root, hf_env)
    db = connect(":memory:", ext_path)
    want = db.execute("select clip_embed_text('a red star', ?)", (str(hf_env),)).fetchone()[0]
    got = db.execute("select clip_embed_text('a red star', 'shapes-org/tiny-clip')").fetchone()[0]
    assert got == want
    info = json.loads(db.execute("select clip_model('hf', 'shapes-org/tiny-clip')").fetchone()[0])
    assert info["dims"] == 64
    db.execute("create virtual table t using clip(model='shapes-org/tiny-clip')")
    db.execute("insert into t(rowid, text) values (1, 'a red star'), (2, 'a blue circle')")
    hit = db.execute("select rowid from t where t match 'a red star' and k = 1").fetchone()
    assert hit == (1,)
    db.close()


def test_incomplete_snapshot_is_not_used(hf_env, tmp_path, monkeypatch, ext_path):
    """A snapshot without the safetensors weights (a .bin-only download) is not a usable model:
    the error says how to pull it."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    build_hf_cache(tmp_path / "hub", hf_env, skip=("model.safetensors",))
    db = connect(":memory:", ext_path)
    with pytest.raises(sqlite3.OperationalError, match="Hugging Face cache.*model pull"):
        db.execute("select clip_embed_text('x', 'shapes-org/tiny-clip')").fetchone()
    db.close()


def test_unsafe_ref_is_not_followed(hf_env, tmp_path, monkeypatch, ext_path):
    """refs/main naming a path outside snapshots/ is refused, not followed."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    build_hf_cache(tmp_path / "hub", hf_env)
    elsewhere = tmp_path / "hub" / "models--shapes-org--tiny-clip"
    shutil.copytree(hf_env, elsewhere / "outside")
    (elsewhere / "refs" / "main").write_text("../outside")
    db = connect(":memory:", ext_path)
    with pytest.raises(sqlite3.OperationalError, match="model pull"):
        db.execute("select clip_embed_text('x', 'shapes-org/tiny-clip')").fetchone()
    db.close()


@pytest.mark.parametrize("offline", [False, True])
def test_pull_fetches_nothing_for_a_model_in_the_hf_cache(offline, hf_env, tmp_path, monkeypatch,
                                                           clipdb_bin, demo_dir):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = build_hf_cache(tmp_path / "hub", hf_env)
    out = subprocess.run([clipdb_bin, "model", "pull", "shapes-org/tiny-clip"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "already in the Hugging Face cache" in out.stdout and str(snap) in out.stdout
    assert not (tmp_path / "xdg" / "clipdb" / "models" / "shapes-org--tiny-clip").exists()
    # the CLI indexes and searches with it by name, with nothing fetched
    lib = tmp_path / "lib.db"
    base = [clipdb_bin, "--db", str(lib), "--model", "shapes-org/tiny-clip"]
    run = subprocess.run(base + ["index", str(demo_dir)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    found = subprocess.run(base + ["search", "--paths", "-n", "2", "a red star"],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert all("red-star" in line for line in found.stdout.splitlines()), found.stdout


def test_clipdb_cache_comes_first(hf_env, tmp_path, monkeypatch, ext_path):
    """A model pulled by clipdb wins over a same-named one in the HF cache (here a damaged one,
    which would fail to load)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = build_hf_cache(tmp_path / "hub", hf_env)
    (snap / "config.json").unlink()
    (snap / "config.json").write_text("{not json")
    db = connect(":memory:", ext_path)
    with pytest.raises(sqlite3.OperationalError, match="config.json"):
        db.execute("select clip_embed_text('x', 'shapes-org/tiny-clip')").fetchone()
    shutil.copytree(hf_env, tmp_path / "xdg" / "clipdb" / "models" / "shapes-org--tiny-clip")
    want = db.execute("select clip_embed_text('x', ?)", (str(hf_env),)).fetchone()[0]
    assert db.execute("select clip_embed_text('x', 'shapes-org/tiny-clip')").fetchone()[0] == want
    db.close()
