"""test_sql_cli_agree.py: the SQL functions and the CLI give the same answers in the same form.

References: `clipdb classify --json` against clip_classify on the same fixture (one prompt, one
JSON key), Python's json module and numpy's shortest float32 repr for the JSON numbers, the model
cache's own layout (XDG_CACHE_HOME/clipdb/models/ORG--NAME) for model names given to clip_model,
clipdb.connect and clip_classify.
"""
import json
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bindings" / "python"))
import clipdb  # noqa: E402

HUB_NAME = "openai/clip-vit-base-patch32"
LABELS = ["red star", "blue square", "green circle/disc"]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@pytest.fixture
def cached_model(tmp_path, model_dir, monkeypatch):
    """The tiny model placed in the clipdb model cache under HUB_NAME; no CLIPDB_MODEL."""
    cache = tmp_path / "cache"
    shutil.copytree(model_dir, cache / "clipdb" / "models" / HUB_NAME.replace("/", "--"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("CLIPDB_MODEL", str(tmp_path / "no-default-model"))
    return cache


def open_db(ext_path, path=":memory:"):
    db = sqlite3.connect(path)
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    db.enable_load_extension(False)
    return db


def significant_digits(token):
    mantissa = token.lower().split("e")[0].lstrip("-").replace(".", "")
    return len(mantissa.lstrip("0").rstrip("0")) or 1


def assert_float32_shortest(token):
    """token reads back as a float32 and has no more digits than the shortest such repr."""
    value = np.float32(float(token))
    assert np.float32(token) == value
    shortest = np.format_float_scientific(value, unique=True)
    assert significant_digits(token) <= significant_digits(shortest), (token, shortest)


def test_clip_model_resolves_a_cached_hub_name(ext_path, cached_model):
    db = open_db(ext_path)
    want = db.execute("SELECT clip_embed_text('a red star', ?)", (HUB_NAME,)).fetchone()[0]
    info = json.loads(db.execute("SELECT clip_model('default', ?)", (HUB_NAME,)).fetchone()[0])
    assert info["path"] == HUB_NAME and info["dims"] == 64
    assert db.execute("SELECT clip_embed_text('a red star')").fetchone()[0] == want
    db.close()


def test_connect_resolves_a_cached_hub_name(ext_path, cached_model, monkeypatch):
    monkeypatch.setenv("CLIPDB_EXTENSION", ext_path + ".so")
    db = clipdb.connect(":memory:", model=HUB_NAME)
    got = db.execute("SELECT clip_embed_text('a red star')").fetchone()[0]
    want = db.execute("SELECT clip_embed_text('a red star', ?)", (HUB_NAME,)).fetchone()[0]
    assert got == want
    db.close()


def test_classify_can_name_its_model(ext_path, cached_model, model_dir, demo_dir):
    db = open_db(ext_path)
    img = str(demo_dir / "055-red-star-on-blue.png")
    with pytest.raises(sqlite3.OperationalError, match="no-default-model"):
        db.execute("SELECT clip_classify(?, 'a', 'b')", (img,)).fetchone()
    by_name = db.execute("SELECT clip_classify(?, ?)",
                         (img, json.dumps({"labels": LABELS, "model": HUB_NAME}))).fetchone()[0]
    by_dir = db.execute("SELECT clip_classify(?, ?)",
                        (img, json.dumps({"model": model_dir, "labels": LABELS}))).fetchone()[0]
    assert by_name == by_dir and json.loads(by_name)[0]["label"] == "red star"
    # the positional form under the same model as the default gives the same JSON
    db.execute("SELECT clip_model('default', ?)", (model_dir,)).fetchone()
    assert db.execute("SELECT clip_classify(?, ?, ?, ?)", [img] + LABELS).fetchone()[0] == by_name
    templates = json.dumps(["a photo of a {}."])
    assert db.execute("SELECT clip_classify_templates(?, ?, ?)",
                      (img, templates, json.dumps({"labels": LABELS, "model": HUB_NAME}))
                      ).fetchone()[0] == by_name
    for bad, why in [({"labels": []}, "non-empty array"), ({"labels": ["a", 3]}, "non-empty"),
                     ({"labels": ["a"], "model": 5}, "model"), ({"labels": ["a"], "x": 1}, "keys")]:
        with pytest.raises(sqlite3.OperationalError, match=why):
            db.execute("SELECT clip_classify(?, ?)", (img, json.dumps(bad))).fetchone()
    db.close()


def test_sql_and_cli_classify_agree(ext_path, clipdb_bin, model_dir, demo_dir, tmp_path,
                                    monkeypatch):
    monkeypatch.setenv("CLIPDB_MODEL", model_dir)
    img = str(demo_dir / "055-red-star-on-blue.png")
    db = open_db(ext_path)
    sql_text = db.execute("SELECT clip_classify(?, ?, ?, ?)", [img] + LABELS).fetchone()[0]
    db.close()
    env = dict(os.environ, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    cli = subprocess.run([clipdb_bin, "classify", "--json", img, *LABELS], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    sql, out = json.loads(sql_text), json.loads(cli)
    assert [(r["label"], r["probability"]) for r in out] == \
        [(r["label"], r["probability"]) for r in sql]
    assert all(r["score"] == r["probability"] for r in sql)  # the older key stays
    assert "green circle/disc" in sql_text and "\\/" not in sql_text and "\\/" not in cli
    for token in NUMBER.findall(sql_text) + NUMBER.findall(cli):
        assert_float32_shortest(token)


def test_json_numbers_round_trip_at_float_precision(ext_path, model_dir, monkeypatch):
    monkeypatch.setenv("CLIPDB_MODEL", model_dir)
    db = open_db(ext_path)
    blob = db.execute("SELECT clip_embed_text('a red star')").fetchone()[0]
    text = db.execute("SELECT clip_vec_to_json(?)", (blob,)).fetchone()[0]
    want = np.frombuffer(blob, dtype="<f4")
    assert np.array_equal(np.array(json.loads(text), dtype=np.float32), want)
    for token in NUMBER.findall(text):
        assert_float32_shortest(token)
    # a value whose double repr is long, and one that needs all nine digits
    for v in [0.8018209, 1.0000001, 16777217.0, 1e-38, 3.4028235e38, 0.1]:
        f = np.float32(v)
        t = db.execute("SELECT clip_vec_to_json(?)", (f.tobytes(),)).fetchone()[0]
        assert np.float32(json.loads(t)[0]) == f and len(t) <= len(repr(float(f))) + 2, t
        assert_float32_shortest(t[1:-1])
    db.close()
