"""Shared pytest fixtures: where the build, the extension, the tiny model and the demo are.

Run with Debian's interpreter (/usr/bin/python3), whose sqlite3 module can load extensions.
CLIPDB_BUILD_DIR selects the build folder (default: build/ at the repository root)."""
import os
import pathlib
import sqlite3

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("CLIPDB_BUILD_DIR", ROOT / "build")).resolve()
DATA = ROOT / "tests" / "data"
MODEL_DIR = DATA / "clip-tiny-shapes"
DEMO_DIR = ROOT / "examples" / "shapes"
BAD_DIR = DATA / "bad"
# The goldens and tolerances are float32's; tests of other precisions set CLIPDB_PRECISION.
os.environ.setdefault("CLIPDB_PRECISION", "f32")


def connect(path, ext_path):
    """An autocommit connection (explicit BEGIN/COMMIT in tests) with clipdb loaded."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    return db


def flip_byte(path, pos, mask):
    """XORs the byte at pos of the file at path with mask (damage for checksum tests)."""
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ mask]))


def read_pty(fd):
    """Everything written to a pseudo-terminal until its other side is closed (as bytes)."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO once the writer has closed its end
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


@pytest.fixture(scope="session")
def build_dir():
    return BUILD


@pytest.fixture(scope="session")
def ext_path():
    """Path to the loadable extension without its .so suffix (as load_extension accepts)."""
    so = BUILD / "sqlite-ext" / "clipdb.so"
    if not so.exists():
        pytest.fail(f"extension not built: {so} (run scripts/setup)")
    return str(so.with_suffix(""))


@pytest.fixture(scope="session")
def clipdb_bin():
    exe = BUILD / "cli" / "clipdb"
    if not exe.exists():
        pytest.fail(f"clipdb executable not built: {exe} (run scripts/setup)")
    return str(exe)


@pytest.fixture(scope="session")
def model_dir():
    return str(MODEL_DIR)


@pytest.fixture(scope="session")
def demo_dir():
    return DEMO_DIR


@pytest.fixture(scope="session")
def bad_dir():
    return BAD_DIR


@pytest.fixture
def conn(ext_path, model_dir, tmp_path, monkeypatch):
    """A connection to a fresh database file with clipdb loaded and the tiny model as default."""
    monkeypatch.setenv("CLIPDB_MODEL", model_dir)
    db = sqlite3.connect(tmp_path / "test.db")
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    db.enable_load_extension(False)
    yield db
    db.close()
