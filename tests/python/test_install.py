"""test_install.py: `meson install` into a DESTDIR, then only the installed files are used.

The extension is loaded by name from the installed library directory (as sqlite3 and Python
resolve "clipdb": dlopen of clipdb.so, entry point sqlite3_clipdb_init), the installed clipdb runs
with the fixture model and agrees with the installed extension, `man -l` renders the page and
its ENVIRONMENT lists every variable the sources read (getenv or a CLIPDB_/HF_ name), the bash completion completes,
and a tiny C program compiles with `pkg-config --cflags --libs clipdb` and loads the extension.
The Python wheel is built from a copy of bindings/python and carries a platform tag.
"""
import json
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def meson_dirs(build_dir):
    opts = json.loads(subprocess.run(["meson", "introspect", "--buildoptions", str(build_dir)],
                                     capture_output=True, text=True, check=True).stdout)
    return {o["name"]: o["value"] for o in opts if o["section"] == "directory"}


@pytest.fixture(scope="module")
def installed(build_dir, tmp_path_factory):
    """{'root': DESTDIR, 'bin', 'lib', 'include', 'man', 'data'}: installed folders."""
    dest = tmp_path_factory.mktemp("destdir")
    subprocess.run(["meson", "install", "-C", str(build_dir), "--destdir", str(dest),
                    "--no-rebuild", "--quiet"], check=True, capture_output=True, timeout=300)
    d = meson_dirs(build_dir)
    under = lambda key: dest / os.path.join(d["prefix"], d[key]).lstrip("/")  # noqa: E731
    return {"root": dest, "prefix": d["prefix"], "libdir": d["libdir"], "bin": under("bindir"),
            "lib": under("libdir"), "include": under("includedir"), "man": under("mandir"),
            "data": under("datadir")}


def test_installs_the_extension_as_the_library_directory_expects(installed):
    so = installed["lib"] / "clipdb.so"
    assert so.is_file()
    # loaded by name through the library search path, from a folder holding nothing of clipdb
    code = ("import sqlite3; db = sqlite3.connect(':memory:'); db.enable_load_extension(True); "
            "db.load_extension('clipdb'); print(db.execute('select clip_version()').fetchone()[0])")
    env = dict(os.environ, LD_LIBRARY_PATH=str(installed["lib"]))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=installed["root"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("clipdb "), out.stderr
    if shutil.which("sqlite3"):
        shell = subprocess.run(["sqlite3", ":memory:", ".load clipdb", "select clip_version();"],
                               env=env, cwd=installed["root"], capture_output=True, text=True,
                               timeout=60)
        assert shell.stdout.startswith("clipdb "), shell.stderr
    # without the library path, the name is not found: the path above is what found it
    env.pop("LD_LIBRARY_PATH")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=installed["root"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 or installed["prefix"] == "/usr"


def test_installed_cli_agrees_with_installed_extension(installed, model_dir, demo_dir, tmp_path):
    env = dict(os.environ, CLIPDB_MODEL=model_dir, HOME=str(tmp_path),
               XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))
    exe = str(installed["bin"] / "clipdb")
    text = json.loads(subprocess.run([exe, "embed", "--text", "a red star"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    img = str(demo_dir / "055-red-star-on-blue.png")
    classified = json.loads(subprocess.run(
        [exe, "classify", "--json", img, "red star", "blue square"], env=env,
        capture_output=True, text=True, check=True).stdout)
    db = sqlite3.connect(":memory:")
    db.enable_load_extension(True)
    db.load_extension(str(installed["lib"] / "clipdb"))
    db.execute("select clip_model('default', ?)", (model_dir,)).fetchone()
    want = json.loads(db.execute("select clip_vec_to_json(clip_embed_text('a red star'))")
                      .fetchone()[0])
    assert text == pytest.approx(want, abs=1e-6)
    sql = json.loads(db.execute("select clip_classify(?, 'red star', 'blue square')", (img,))
                     .fetchone()[0])
    assert [(r["label"], r["probability"]) for r in classified] == \
        [(r["label"], r["probability"]) for r in sql]
    db.close()


def getenv_names():
    names = set()
    for folder in ("src", "embed", "index", "sqlite-ext", "cli"):
        for f in (ROOT / folder).rglob("*.c"):
            text = f.read_text(errors="replace")
            names.update(re.findall(r'getenv\("([A-Z_0-9]+)"\)', text))
            names.update(re.findall(r'"((?:CLIPDB|HF)_[A-Z_0-9]+)"', text))  # env_true("HF_...")
    return names


def test_man_page_documents_environment_and_files(installed):
    page = installed["man"] / "man1" / "clipdb.1"
    out = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MANPAGER="cat", MANWIDTH="100"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    sections = re.findall(r"^([A-Z][A-Z ]+)$", text, re.M)
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "ENVIRONMENT", "FILES", "EXIT STATUS"):
        assert name in sections, sections
    env_part = text.split("\nENVIRONMENT\n")[1].split("\nFILES\n")[0]
    missing = sorted(n for n in getenv_names() if n not in env_part)
    assert not missing, missing
    assert "HF_TOKEN" in env_part and "HF_HUB_OFFLINE" in env_part
    files_part = text.split("\nFILES\n")[1].split("\nEXIT STATUS\n")[0]
    for f in ("library.db", "-index.lock", ".idx", "clipdb/models", ".clipdb-pull.json", ".lock"):
        assert f in files_part, f


def test_bash_completion_completes(installed):
    comp = installed["data"] / "bash-completion" / "completions" / "clipdb"
    script = f"""source {comp}
COMP_WORDS=(clipdb se); COMP_CWORD=1; _clipdb; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(clipdb search --pa); COMP_CWORD=2; _clipdb; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(clipdb model p); COMP_CWORD=2; _clipdb; echo "${{COMPREPLY[@]}}"
complete -p clipdb"""
    out = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.splitlines()[:3] == ["search", "--paths", "pull"], out.stderr
    zsh = installed["data"] / "zsh" / "vendor-completions" / "_clipdb"
    assert zsh.read_text().startswith("#compdef clipdb")


def test_pkg_config_compiles_against_the_header(installed, tmp_path):
    env = dict(os.environ, PKG_CONFIG_PATH=str(installed["lib"] / "pkgconfig"),
               PKG_CONFIG_SYSROOT_DIR=str(installed["root"]))

    def pc(*args):
        return subprocess.run(["pkg-config", *args, "clipdb"], env=env, capture_output=True,
                              text=True, check=True).stdout.split()

    flags = pc("--cflags", "--libs")
    assert f"-I{installed['include']}" in flags
    extension = pc("--variable=extension")[0]
    assert extension == str(installed["lib"] / "clipdb")  # pkgconf puts the sysroot in front
    prog = tmp_path / "use.c"
    prog.write_text(r"""#include <clipdb.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
  sqlite3 *db;
  sqlite3_stmt *st;
  char *err = NULL;
  if (argc != 2 || sqlite3_open(":memory:", &db) != SQLITE_OK) return 2;
  sqlite3_enable_load_extension(db, 1);
  if (sqlite3_load_extension(db, argv[1], CLIPDB_ENTRY_POINT, &err) != SQLITE_OK) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  sqlite3_prepare_v2(db, "select clip_version()", -1, &st, NULL);
  if (sqlite3_step(st) != SQLITE_ROW) return 1;
  printf("%s|%s\n", sqlite3_column_text(st, 0), CLIPDB_CLASSIFY_TEMPLATE);
  sqlite3_finalize(st);
  return sqlite3_close(db);
}
""")
    exe = tmp_path / "use"
    subprocess.run(["cc", "-Wall", "-Werror", "-o", str(exe), str(prog), *flags], check=True,
                   capture_output=True, timeout=120)
    out = subprocess.run([str(exe), extension], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("clipdb "), out.stderr
    assert out.stdout.strip().endswith("|a photo of a {}.")


def test_python_wheel_is_platform_tagged_and_finds_the_installed_extension(installed, build_dir,
                                                                           tmp_path):
    src = tmp_path / "python"
    shutil.copytree(ROOT / "bindings" / "python", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = dict(os.environ, CLIPDB_EXTENSION=str(installed["lib"] / "clipdb.so"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                    "--no-deps", "-w", str(tmp_path / "dist"), str(src)], env=env, check=True,
                   capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl"), wheel.name
    assert "clipdb/clipdb.so" in zipfile.ZipFile(wheel).namelist()
    # the package's system search covers the library directory meson installs into
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    import clipdb
    places = [str(p) for _, p in clipdb._search_path()]
    for prefix in ("/usr", "/usr/local"):
        assert os.path.join(prefix, installed["libdir"], "clipdb.so") in places
