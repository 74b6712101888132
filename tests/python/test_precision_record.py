"""A clip table records the encoder precision (CLIPDB_PRECISION) of its images' vectors.

Each connection runs in its own process (the precision is chosen when a process loads the model).
What is recorded is checked against what was asked for and what the CPU offers (/proc/cpuinfo):
bf16 runs only with AVX512-BF16, otherwise float32; int8 runs everywhere (the C reference GEMM
without VNNI). Vectors of another precision are accepted
(bf16 keeps cosine >= 0.99999 to float32 on the fixtures) and the table then reports "mixed"."""
import json
import os
import subprocess

import pytest

from conftest import DEMO_DIR, MODEL_DIR

SCRIPT = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.enable_load_extension(True)
db.load_extension(sys.argv[2])
db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS photos USING clip()")
db.execute("BEGIN")
for path in sys.argv[3:]:
    db.execute("INSERT INTO photos(image) VALUES (?)", (path,))
db.execute("COMMIT")
print(db.execute("SELECT clip_index_info('photos')").fetchone()[0])
"""


def cpu_has_bf16():
    with open("/proc/cpuinfo") as f:
        return "avx512_bf16" in f.read().split()


def add_images(db_path, ext_path, precision, images, isa=None):
    env = dict(os.environ, CLIPDB_MODEL=str(MODEL_DIR), CLIPDB_PRECISION=precision)
    env.pop("CLIPDB_ISA", None)
    if isa:
        env["CLIPDB_ISA"] = isa
    r = subprocess.run(["/usr/bin/python3", "-c", SCRIPT, str(db_path), ext_path,
                        *map(str, images)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def images():
    return sorted(DEMO_DIR.glob("*.jpg"))[:4]


def test_a_table_records_the_precision_that_ran(tmp_path, ext_path, images):
    info = add_images(tmp_path / "f32.db", ext_path, "f32", images)
    assert info["precision"] == "f32"
    info = add_images(tmp_path / "bf16.db", ext_path, "bf16", images)
    assert info["precision"] == ("bf16" if cpu_has_bf16() else "f32")
    # A narrower kernel set runs bf16 requests as float32, and the table says so.
    info = add_images(tmp_path / "avx2.db", ext_path, "bf16", images, isa="avx2")
    assert info["precision"] == "f32"


@pytest.mark.parametrize("isa", [None, "avx2", "generic"])
def test_a_table_records_int8_on_every_kernel_set(tmp_path, ext_path, images, isa):
    info = add_images(tmp_path / "int8.db", ext_path, "int8", images, isa=isa)
    assert info["precision"] == "int8"
    assert info["count"] == len(images)


def test_no_precision_before_any_image_is_embedded(conn):
    conn.execute("CREATE VIRTUAL TABLE photos USING clip()")
    assert json.loads(conn.execute("SELECT clip_index_info('photos')").fetchone()[0])[
        "precision"] is None


def test_vectors_of_another_precision_make_the_table_mixed(tmp_path, ext_path, images):
    if not cpu_has_bf16():
        pytest.skip("no AVX512-BF16: every precision runs float32")
    db = tmp_path / "mixed.db"
    assert add_images(db, ext_path, "bf16", images[:2])["precision"] == "bf16"
    assert add_images(db, ext_path, "bf16", images[2:3])["precision"] == "bf16"
    info = add_images(db, ext_path, "f32", images[3:])
    assert info["precision"] == "mixed"
    assert info["count"] == 4
    # Once mixed, it stays mixed.
    assert add_images(db, ext_path, "bf16", images[:1])["precision"] == "mixed"
