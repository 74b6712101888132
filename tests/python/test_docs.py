"""test_docs.py: the README's SQL block runs as written in the sqlite3 shell.

The block is taken from README.md (the first ```sql block after "## SQL"), its `.load` line
pointed at the build under test, and run from the repository root (its paths are relative to
it) with -bail: any failing statement fails the test. The answers are checked against the
demo's known nearest image.
"""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def readme_sql_block():
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## SQL\n", 1)[1]
    return re.search(r"```sql\n(.*?)```", section, re.S).group(1)


@pytest.mark.skipif(not shutil.which("sqlite3"), reason="needs the sqlite3 shell")
def test_readme_sql_block_runs(ext_path, tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPDB_MODEL", raising=False)
    block = readme_sql_block()
    assert ".load ./build/sqlite-ext/clipdb" in block
    block = block.replace(".load ./build/sqlite-ext/clipdb", f".load {ext_path}")
    out = subprocess.run(["sqlite3", "-bail", "-batch", str(tmp_path / "photos.db")],
                         input=block, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and not out.stderr, out.stderr
    lines = out.stdout.splitlines()
    # the image query and the liked-rows query find row 1, the red star inserted first
    assert any(re.fullmatch(r"1\|0\.\d+", line) for line in lines), lines
    assert any("red star" in line and "probability" in line for line in lines), lines


def test_manual_long_form_lists_the_same_environment():
    """docs/clipdb.1.md's ENVIRONMENT names every variable the installed roff page names."""
    roff = (ROOT / "docs" / "clipdb.1").read_text()
    roff_env = roff.split(".SH ENVIRONMENT")[1].split(".SH FILES")[0]
    names = set(re.findall(r"\b((?:CLIPDB|HF|XDG)_[A-Z_]+|HOME|TERM_PROGRAM|TERM|KITTY_WINDOW_ID)\b",
                           re.sub(r"\\f[BIRP]", " ", roff_env)))
    md = (ROOT / "docs" / "clipdb.1.md").read_text()
    md_env = md.split("## ENVIRONMENT")[1].split("## FILES")[0]
    assert len(names) >= 20 and not sorted(n for n in names if f"`{n}" not in md_env)
