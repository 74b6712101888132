"""The extension loads into the sqlite3 shell and into Python's sqlite3, and exposes its SQL."""
import shutil
import sqlite3
import subprocess

import pytest


def test_loads_into_python(ext_path):
    db = sqlite3.connect(":memory:")
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    assert db.execute("select clip_version()").fetchone()[0].startswith("clipdb ")
    vec = db.execute("select clip_vec_from_json('[3, 4]')").fetchone()[0]
    assert db.execute("select clip_vec_to_json(clip_vec_normalize(?))", (vec,)).fetchone()[0] == \
        "[0.6,0.8]"  # the shortest decimals that read back as the same float32
    db.close()


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="sqlite3 shell not installed")
def test_loads_into_sqlite3_shell(ext_path):
    out = subprocess.run(
        ["sqlite3", ":memory:", f".load {ext_path}",
         "select clip_similarity(clip_vec_from_json('[1,0]'), clip_vec_from_json('[1,1]'))"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout.strip()) - 0.5 ** 0.5) < 1e-6


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="sqlite3 shell not installed")
def test_shell_virtual_table_roundtrip(ext_path, tmp_path):
    db = tmp_path / "shell.db"
    sql = [f".load {ext_path}",
           "create virtual table v using clip(dims=2, tag TEXT)",
           "insert into v(embedding, tag) values (clip_vec_from_json('[1,0]'), 'x'),"
           " (clip_vec_from_json('[0,1]'), 'y')",
           "select tag from v where v match clip_vec_from_json('[0.1,1]') and k = 1"]
    out = subprocess.run(["sqlite3", str(db)] + sql, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "y"


def test_only_entry_point_exported(build_dir):
    so = build_dir / "sqlite-ext" / "clipdb.so"
    out = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("nm unavailable")
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert names == ["sqlite3_clipdb_init"]
