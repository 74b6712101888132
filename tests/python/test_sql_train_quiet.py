"""Training at COMMIT prints nothing: k-means runs on a bounded sample smaller than FAISS's own
rule of thumb (39 points per centroid), and FAISS's warning about it would land on the
application's stderr. Checked in a child process whose stderr is captured."""
import subprocess
import sys

CHILD = r"""
import json, sqlite3, sys
import numpy as np
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.enable_load_extension(True)
db.load_extension(sys.argv[2])
rng = np.random.default_rng(3)
vecs = rng.standard_normal((20000, 8)).astype('<f4')
db.execute("CREATE VIRTUAL TABLE v USING clip(dims=8)")
db.execute("BEGIN")
db.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
               [(i + 1, v.tobytes()) for i, v in enumerate(vecs)])
db.execute("COMMIT")
print(json.loads(db.execute("SELECT clip_index_info('v')").fetchone()[0])["nlist"])
"""


def test_commit_training_writes_nothing_to_stderr(tmp_path, ext_path):
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "t.db"), ext_path],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 1  # trained: a sample of 32 x nlist < 39 x nlist vectors
    assert out.stderr == ""
