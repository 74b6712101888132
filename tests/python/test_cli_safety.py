"""The `clipdb` command line must not lose, duplicate or touch what it should not: folders it
could not list keep their photos, concurrent `index` runs store each path once, read-only
commands never write (and refuse databases that are not libraries), and machine-readable
output stays parseable whatever the file names.

The oracle for a library's content is an ordinary sqlite3 connection (no extension) reading the
clip table's documented shadow table photos_rows, compared with the files on disk. Tests that
need a folder the CLI cannot read run the CLI as `nobody` (setpriv) when they run as root, who
reads any folder. Run with /usr/bin/python3:
    CLIPDB_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/test_cli_safety.py
"""
import base64
import fcntl
import json
import os
import pathlib
import pwd
import shutil
import sqlite3
import subprocess
import tempfile

import pytest

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
LOCKED_MSG = "another clipdb index is running on this library"


@pytest.fixture
def env(tmp_path, model_dir):
    home = tmp_path / "home"
    home.mkdir()
    e = dict(os.environ)
    e.update(CLIPDB_MODEL=model_dir, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
             XDG_CACHE_HOME=str(home / "cache"))
    return e


def run(clipdb_bin, env, *args, prefix=(), check=None):
    """The CLI's exit status, stdout and stderr as bytes; check: the expected exit status."""
    p = subprocess.run([*prefix, clipdb_bin, *map(str, args)], env=env, capture_output=True,
                       timeout=300)
    if check is not None and p.returncode != check:
        raise AssertionError(f"clipdb {args} exited {p.returncode}, not {check}: "
                             f"{p.stderr.decode(errors='replace')}")
    return p


def images_on_disk(folder):
    return sorted(os.fsencode(p) for p in pathlib.Path(folder).rglob("*")
                  if p.suffix.lower() in IMAGE_EXT and p.is_file())


def stored_paths(db):
    """Every row's path as bytes, duplicates included, through an ordinary sqlite3 connection."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.text_factory = bytes
    paths = sorted(p for p, in con.execute("SELECT path FROM photos_rows"))
    con.close()
    return paths


def copy_demo(demo_dir, folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(demo_dir / name, folder / name)


def demo_names(demo_dir, n):
    return sorted(p.name for p in demo_dir.iterdir() if p.suffix.lower() in IMAGE_EXT)[:n]


def file_state(path):
    """Bytes and mtime of a file, and the names next to it (a -wal or -shm appearing counts)."""
    p = pathlib.Path(path)
    return p.read_bytes(), p.stat().st_mtime_ns, sorted(os.listdir(p.parent))


# ---- running the CLI as a user who cannot read a chmod 000 folder ----

@pytest.fixture
def unprivileged(tmp_path, model_dir):
    """(command prefix, a work folder that user may write, the model folder that user may read):
    nothing when not root, else setpriv to nobody, a folder of nobody's outside pytest's
    root-only temp folder, and a copy of the model in it (the checkout may be private)."""
    if os.geteuid() != 0:
        yield (), tmp_path, model_dir
        return
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder unreadable")
    nobody = pwd.getpwnam("nobody")
    work = pathlib.Path(tempfile.mkdtemp(prefix="clipdb-safety-"))
    os.chown(work, nobody.pw_uid, nobody.pw_gid)
    work.chmod(0o755)
    prefix = ("setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups")
    model = work / "model"
    shutil.copytree(model_dir, model)
    yield prefix, work, str(model)
    for root, dirs, _ in os.walk(work):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(work)


def work_env(env, work, model):
    """The CLI's environment for a run as the unprivileged user: home and model it may read."""
    return dict(env, CLIPDB_MODEL=model, HOME=str(work), XDG_DATA_HOME=str(work / "data"),
                XDG_CACHE_HOME=str(work / "cache"))


def test_unreadable_folder_keeps_its_photos(unprivileged, demo_dir, clipdb_bin, env):
    prefix, work, model = unprivileged
    env = work_env(env, work, model)
    names = demo_names(demo_dir, 8)
    photos, sub = work / "photos", work / "photos" / "sub"
    copy_demo(demo_dir, photos, names[:3])
    copy_demo(demo_dir, sub, names[3:])
    db = work / "lib.db"
    run(clipdb_bin, env, "--db", db, "index", "--quiet", photos, prefix=prefix, check=0)
    assert stored_paths(db) == images_on_disk(photos)

    (photos / names[0]).unlink()  # a photo really gone: still removed
    sub.chmod(0)
    try:
        p = run(clipdb_bin, env, "--db", db, "index", "--quiet", "--json", photos, prefix=prefix)
    finally:
        sub.chmod(0o777)
    assert p.returncode == 3, p.stderr
    summary = json.loads(p.stdout)
    assert [u["path"] for u in summary["not_listed"]] == [str(sub)]
    assert summary["removed"] == 1 and summary["failed"] == 0
    assert f"cannot list {sub}".encode() in p.stderr
    assert b"incomplete" in p.stderr
    assert stored_paths(db) == images_on_disk(photos)  # the 5 photos in sub are kept

    p = run(clipdb_bin, env, "--db", db, "index", "--quiet", "--json", photos, prefix=prefix,
            check=0)
    assert json.loads(p.stdout)["not_listed"] == []
    assert stored_paths(db) == images_on_disk(photos)


def test_folder_too_deep_to_list_keeps_its_photos(tmp_path, demo_dir, clipdb_bin, env):
    """The same listing failure without permissions (runs as any user): a folder nested deeper
    than the walk goes is not listed, so what is under it cannot be declared gone."""
    photos = tmp_path / "photos"
    shallow_root = photos / "/".join(["d"] * 10)
    deep = shallow_root / "/".join(["d"] * 60)
    names = demo_names(demo_dir, 3)
    copy_demo(demo_dir, photos, names[:1])
    copy_demo(demo_dir, deep, names[1:])
    db = tmp_path / "lib.db"
    run(clipdb_bin, env, "--db", db, "index", "--quiet", photos / names[0], shallow_root, check=0)
    assert stored_paths(db) == images_on_disk(photos)

    p = run(clipdb_bin, env, "--db", db, "index", "--quiet", "--json", photos)
    assert p.returncode == 3, p.stderr
    summary = json.loads(p.stdout)
    assert len(summary["not_listed"]) == 1 and summary["removed"] == 0
    assert "too deep" in summary["not_listed"][0]["error"]
    assert stored_paths(db) == images_on_disk(photos)


# ---- one index at a time ----

def many_photos(demo_dir, folder, copies):
    """copies x the demo photos under distinct names (identical bytes reuse vectors)."""
    folder.mkdir()
    for i in range(copies):
        for src in sorted(demo_dir.iterdir()):
            if src.suffix.lower() in IMAGE_EXT:
                shutil.copy(src, folder / f"{i}-{src.name}")
    return images_on_disk(folder)


def index_twice_at_once(clipdb_bin, env, db, photos):
    """Two `index` processes started together; each must succeed or be refused as locked."""
    cmd = [clipdb_bin, "--db", str(db), "index", "--quiet", "--json", "--commit-every", "16",
           str(photos)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert any(rc == 0 for _, _, rc in outs), outs
    for _, err, rc in outs:
        assert rc == 0 or (rc == 1 and LOCKED_MSG.encode() in err), (rc, err)


def test_concurrent_index_runs_store_each_path_once(tmp_path, demo_dir, clipdb_bin, env):
    photos = tmp_path / "photos"
    files = many_photos(demo_dir, photos, 5)
    assert len(files) >= 300
    for db in [tmp_path / "a.db", tmp_path / "b.db"]:  # new libraries: both create the table
        index_twice_at_once(clipdb_bin, env, db, photos)
        assert stored_paths(db) == files
    for f in files[len(files) // 2:]:  # an existing library: half the files changed
        os.utime(f, (1, 1))
    index_twice_at_once(clipdb_bin, env, db, photos)
    assert stored_paths(db) == files
    s = json.loads(run(clipdb_bin, env, "--db", db, "index", "--json", "--quiet", photos,
                       check=0).stdout)
    assert (s["skipped"], s["removed"], s["duplicates_removed"]) == (len(files), 0, 0)


def test_index_is_refused_while_another_runs(tmp_path, demo_dir, clipdb_bin, env):
    """Deterministic: the test holds the library's writer lock (documented in clipdb(1)) as a
    running index would."""
    names = demo_names(demo_dir, 3)
    photos = tmp_path / "photos"
    copy_demo(demo_dir, photos, names[:2])
    for db in [tmp_path / "existing.db", tmp_path / "new.db"]:
        if db.name == "existing.db":
            run(clipdb_bin, env, "--db", db, "index", "--quiet", photos, check=0)
        before = stored_paths(db) if db.exists() else None
        copy_demo(demo_dir, photos, names[2:])
        with open(f"{db}-index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            p = run(clipdb_bin, env, "--db", db, "index", "--quiet", photos)
        assert p.returncode == 1 and LOCKED_MSG.encode() in p.stderr, p.stderr
        assert (stored_paths(db) if db.exists() else None) == before
        (photos / names[2]).unlink()


def test_duplicate_rows_are_reported_when_removed(tmp_path, demo_dir, clipdb_bin, env, ext_path):
    """Rows left twice for one path (by a concurrent run of an older version) are removed by the
    next run and counted as such, not as '0 removed'."""
    photos = tmp_path / "photos"
    copy_demo(demo_dir, photos, demo_names(demo_dir, 2))
    db = tmp_path / "lib.db"
    run(clipdb_bin, env, "--db", db, "index", "--quiet", photos, check=0)
    con = sqlite3.connect(db, isolation_level=None)
    con.enable_load_extension(True)
    con.load_extension(ext_path)
    con.execute("INSERT INTO photos(path, size, mtime, hash, date, embedding) "
                "SELECT path, size, mtime, hash, date, embedding FROM photos WHERE rowid = 1")
    con.close()
    assert len(stored_paths(db)) == 3
    s = json.loads(run(clipdb_bin, env, "--db", db, "index", "--json", "--quiet", photos,
                       check=0).stdout)
    assert (s["removed"], s["duplicates_removed"]) == (0, 1)
    assert stored_paths(db) == images_on_disk(photos)


# ---- read-only commands ----

READ_COMMANDS = [("search", "red"), ("info",), ("dedup",), ("similar", "IMAGE")]


def read_args(cmd, image):
    return [image if a == "IMAGE" else a for a in cmd]


def test_a_database_that_is_not_a_library_is_refused_and_untouched(tmp_path, demo_dir,
                                                                   clipdb_bin, env):
    app = tmp_path / "app.db"
    con = sqlite3.connect(app)
    con.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO users(name) VALUES ('ada')")
    con.commit()
    con.close()
    image = demo_dir / demo_names(demo_dir, 1)[0]
    before = file_state(app)
    for cmd in READ_COMMANDS + [("index", str(demo_dir))]:
        p = run(clipdb_bin, env, "--db", app, *read_args(cmd, image))
        assert p.returncode == 1, (cmd, p.stderr)
        assert b"not a clipdb library" in p.stderr, (cmd, p.stderr)
        assert file_state(app) == before, cmd
    con = sqlite3.connect(app)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert con.execute("SELECT name FROM users").fetchall() == [("ada",)]
    con.close()
    fake = tmp_path / "photo.db"  # not a database at all
    shutil.copy(image, fake)
    before = file_state(fake)
    for cmd in READ_COMMANDS + [("index", str(demo_dir))]:
        p = run(clipdb_bin, env, "--db", fake, *read_args(cmd, image))
        assert p.returncode == 1 and b"not a database" in p.stderr, (cmd, p.stderr)
        assert file_state(fake) == before, cmd


def test_a_read_only_library_can_be_searched(unprivileged, demo_dir, clipdb_bin, env):
    """In a read-only folder (no -shm can be made) and as a read-only file in a writable folder;
    the files stay as they were, and the answers are those of the writable original."""
    prefix, work, model = unprivileged
    env = work_env(env, work, model)
    photos = work / "photos"
    copy_demo(demo_dir, photos, demo_names(demo_dir, 12))
    original = work / "lib.db"
    run(clipdb_bin, env, "--db", original, "index", "--quiet", photos, check=0)
    image = photos / demo_names(demo_dir, 1)[0]
    expected = {cmd: run(clipdb_bin, env, "--db", original, *read_args(cmd, image),
                         check=0).stdout for cmd in READ_COMMANDS if cmd[0] != "info"}
    ro_dir, rw_dir = work / "ro", work / "rw"
    for d in (ro_dir, rw_dir):
        d.mkdir()
        shutil.copy(original, d / "lib.db")
        (d / "lib.db").chmod(0o444)
        d.chmod(0o777)
    ro_dir.chmod(0o555)
    try:
        for db in (ro_dir / "lib.db", rw_dir / "lib.db"):
            before = file_state(db)
            for cmd in READ_COMMANDS:
                p = run(clipdb_bin, env, "--db", db, *read_args(cmd, image), prefix=prefix)
                assert p.returncode == 0, (db, cmd, p.stderr)
                if cmd in expected:
                    assert p.stdout == expected[cmd], (db, cmd)
                assert file_state(db)[:2] == before[:2], (db, cmd)
    finally:
        ro_dir.chmod(0o755)


def test_search_leaves_a_library_as_it_was(tmp_path, demo_dir, clipdb_bin, env):
    """A read-only open changes neither the file nor its journal mode, even on a rollback-journal
    library (a library copied or vacuumed into another mode by sqlite3)."""
    photos = tmp_path / "photos"
    copy_demo(demo_dir, photos, demo_names(demo_dir, 6))
    db = tmp_path / "lib.db"
    run(clipdb_bin, env, "--db", db, "index", "--quiet", photos, check=0)
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    before = file_state(db)
    image = photos / demo_names(demo_dir, 1)[0]
    for cmd in READ_COMMANDS:
        run(clipdb_bin, env, "--db", db, *read_args(cmd, image), check=0)
        assert file_state(db) == before, cmd


# ---- output that scripts parse ----

def decode_path_line(line):
    """A --paths line back to the path's bytes: as is, or through bash for $'...' quoting."""
    if not line.startswith(b"$'"):
        return line
    return subprocess.run(["bash", "-c", b"printf %s " + line], capture_output=True,
                          check=True).stdout


def odd_names_library(tmp_path, demo_dir, clipdb_bin, env):
    photos = tmp_path / "photos"
    names = demo_names(demo_dir, 5)
    photos.mkdir()
    odd = [b"new\nline.png", b"tab\tand 'quote'.png", b"back\\slash $x.png", b"latin1-\xe9t\xe9.jpg",
           b"plain.jpg"]
    for src, name in zip(names, odd):
        shutil.copy(demo_dir / src, os.path.join(os.fsencode(photos), name))
    shutil.copy(demo_dir / names[3], os.path.join(os.fsencode(photos), b"copy-\xff.jpg"))
    db = tmp_path / "lib.db"
    run(clipdb_bin, env, "--db", db, "index", "--quiet", photos, check=0)
    assert stored_paths(db) == images_on_disk(photos)
    return db, photos


def test_paths_output_keeps_one_path_per_line(tmp_path, demo_dir, clipdb_bin, env):
    db, photos = odd_names_library(tmp_path, demo_dir, clipdb_bin, env)
    for args in (["search", "--paths", "-n", "20", "red"], ["search", "-n", "20", "red"]):
        out = run(clipdb_bin, env, "--db", db, *args, check=0).stdout
        lines = out.split(b"\n")
        assert lines[-1] == b"" and len(lines) - 1 == len(stored_paths(db)), out
        if args[1] != "--paths":
            lines = [line.split(b"\t", 1)[1] for line in lines[:-1]]
        else:
            lines = lines[:-1]
        assert sorted(decode_path_line(line) for line in lines) == stored_paths(db)


def test_json_output_is_valid_utf8_and_keeps_the_exact_path(tmp_path, demo_dir, clipdb_bin, env):
    db, photos = odd_names_library(tmp_path, demo_dir, clipdb_bin, env)
    hits = json.loads(run(clipdb_bin, env, "--db", db, "search", "--json", "-n", "20", "red",
                          check=0).stdout.decode("utf-8"))  # strict: invalid UTF-8 raises

    def exact(obj, key):
        if key + "_bytes" in obj:
            return base64.b64decode(obj[key + "_bytes"])
        return obj[key].encode()

    assert sorted(exact(h, "path") for h in hits) == stored_paths(db)
    latin = next(h for h in hits if exact(h, "path").endswith(b"latin1-\xe9t\xe9.jpg"))
    assert latin["path"].endswith("latin1-\ufffdt\ufffd.jpg")
    groups = json.loads(run(clipdb_bin, env, "--db", db, "dedup", "--json",
                            check=0).stdout.decode("utf-8"))
    group, = [g for g in groups if any(p.endswith("copy-\ufffd.jpg") for p in g["paths"])]
    exact_paths = [base64.b64decode(b) for b in group["paths_bytes"]]
    assert [p.decode("utf-8", "replace") for p in exact_paths] == group["paths"]
    assert set(exact_paths) <= set(stored_paths(db))
    assert {os.path.join(os.fsencode(photos), n) for n in [b"copy-\xff.jpg",
                                                           b"latin1-\xe9t\xe9.jpg"]} <= set(exact_paths)
