"""Fault injection: I/O errors and a full disk at every Nth read / write / sync of the database
(the faultvfs VFS) and at every Nth cache-file write (stdio interposers), over a bulk load,
'train', a mixed transaction, 'optimize' and a reopen. After each run integrity-check passes, the
rows are exactly the state before or after the failed step, every row is found by KNN, and the
live connection agrees with a fresh one (tests/python/faultdrive.py does the sweep and checks).

CI sweeps every Nth call for the small kinds and every 2nd / 3rd call for the larger ones (about
30 s); the full sweeps on demand:
  LD_PRELOAD=build/tests/fault/faultvfs.so /usr/bin/python3 tests/python/faultdrive.py \
      --kind write --error ioerr --stride 1
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# (kind, error, persistent, stride)
SWEEPS = [
    ("write", "ioerr", False, 3),
    ("write", "full", False, 3),
    ("write", "ioerr", True, 3),
    ("sync", "ioerr", False, 1),
    ("read", "ioerr", False, 1),
    ("any", "ioerr", True, 4),
    ("cache", "ioerr", False, 1),
    ("cache", "full", True, 2),
    ("cache", "corrupt", False, 2),
]


@pytest.mark.parametrize("kind,error,persistent,stride", SWEEPS,
                         ids=[f"{k}-{e}-{'persistent' if p else 'transient'}"
                              for k, e, p, _ in SWEEPS])
def test_fault_sweep(build_dir, kind, error, persistent, stride):
    shim = build_dir / "tests" / "fault" / "faultvfs.so"
    if not shim.exists():
        pytest.fail(f"fault shim not built: {shim} (run scripts/setup)")
    # the shim after whatever is preloaded already (a sanitizer runtime must stay first)
    preload = " ".join(x for x in (os.environ.get("LD_PRELOAD", ""), str(shim)) if x)
    env = dict(os.environ, LD_PRELOAD=preload, CLIPDB_BUILD_DIR=str(build_dir),
               PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, os.path.join(HERE, "faultdrive.py"), "--kind", kind, "--error", error,
           "--stride", str(stride)] + (["--persistent"] if persistent else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout
