"""The `clipdb` command line behaves like a well-mannered Unix tool: write errors fail, bad dates
and flags are usage errors of one line, TAB-separated text output, `clipdb help CMD`, and a
missing image path is an error rather than a text search.

Run through pipes (subprocess) on a small library of the demo images with the tiny model:
    CLIPDB_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/test_cli_habits.py
"""
import json
import os
import shutil
import subprocess

import pytest

COMMANDS = ["index", "search", "similar", "dedup", "classify", "info", "tokenize", "embed", "model",
            "serve"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_dir):
    home = tmp_path_factory.mktemp("home")
    e = dict(os.environ)
    e.update(CLIPDB_MODEL=model_dir, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
             XDG_CACHE_HOME=str(home / "cache"))
    return e


def run(clipdb_bin, env, *args, stdout=subprocess.PIPE, cwd=None):
    return subprocess.run([clipdb_bin, *map(str, args)], env=env, stdout=stdout, cwd=cwd,
                          stderr=subprocess.PIPE, text=True, timeout=120)


@pytest.fixture(scope="module")
def library(tmp_path_factory, demo_dir, clipdb_bin, env):
    photos = tmp_path_factory.mktemp("lib") / "photos"
    shutil.copytree(demo_dir, photos)
    db = photos.parent / "lib.db"
    p = run(clipdb_bin, env, "--db", db, "index", "--json", photos)
    assert p.returncode == 0, p.stderr
    return {"photos": photos, "db": db}


def one_usage_line(p):
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("clipdb: ") and p.stderr.count("\n") == 1, p.stderr
    return p.stderr


# ---- write errors ----

@pytest.mark.parametrize("args", [["search", "a red star"], ["search", "--json", "a red star"],
                                  ["info"], ["tokenize", "hello"], ["--help"], ["--version"]])
def test_write_error_on_stdout_fails(clipdb_bin, env, library, args):
    with open("/dev/full", "w") as full:
        p = run(clipdb_bin, env, "--db", library["db"], *args, stdout=full)
    assert p.returncode != 0, args
    assert p.stderr.count("\n") == 1 and "writing standard output" in p.stderr, p.stderr
    # the same command to a pipe succeeds
    assert run(clipdb_bin, env, "--db", library["db"], *args).returncode == 0


# ---- dates ----

@pytest.mark.parametrize("date", ["2020-13", "2020-00", "2021-02-29", "2020-04-31",
                                  "2020-01-01 24:00", "2020-01-01 10:60", "2020-01-01T10:00:61",
                                  "0000"])
@pytest.mark.parametrize("opt", ["--after", "--before"])
def test_impossible_dates_are_usage_errors(clipdb_bin, env, library, opt, date):
    for cmd in (["search", opt, date, "a red star"],
                ["similar", opt, date, next(library["photos"].rglob("*.png"))]):
        err = one_usage_line(run(clipdb_bin, env, "--db", library["db"], *cmd))
        assert f'{opt} "{date}" is not a valid date' in err


@pytest.mark.parametrize("date", ["2020", "2020-12", "2020-02-29", "2020-12-31 23:59",
                                  "2020-12-31T23:59:59"])
def test_real_dates_are_accepted(clipdb_bin, env, library, date):
    p = run(clipdb_bin, env, "--db", library["db"], "search", "--after", date, "--before", date,
            "a red star")
    assert p.returncode == 0, p.stderr


# ---- flags ----

@pytest.mark.parametrize("cmd", [["search", "a red star"], ["similar", "x.png"]])
def test_json_and_paths_conflict(clipdb_bin, env, library, cmd):
    for flags in (["--json", "--paths"], ["--paths", "--json"]):
        p = run(clipdb_bin, env, "--db", library["db"], cmd[0], *flags, cmd[1])
        assert "--json and --paths cannot be used together" in one_usage_line(p)
        assert p.stdout == ""


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("opt,shown", [("-Z", "-Z"), ("--frobnicate", "--frobnicate"),
                                       ("--frobnicate=3", "--frobnicate")])
def test_unknown_option_is_one_line_from_clipdb(clipdb_bin, env, cmd, opt, shown):
    args = [cmd, "pull", opt, "x"] if cmd == "model" else [cmd, opt, "x"]
    err = one_usage_line(run(clipdb_bin, env, *args))
    assert f"unknown option {shown}" in err
    assert "invalid option" not in err and "unrecognized option" not in err


@pytest.mark.parametrize("args,opt", [(["search", "x", "-n"], "-n"),
                                      (["search", "x", "--top"], "--top"),
                                      (["similar", "x.png", "--after"], "--after"),
                                      (["index", "--threads"], "--threads")])
def test_missing_option_value_is_one_line(clipdb_bin, env, args, opt):
    err = one_usage_line(run(clipdb_bin, env, *args))
    assert f"option {opt} needs a value" in err


# ---- text output ----

def test_text_hits_are_score_tab_path(clipdb_bin, env, library):
    for cmd in (["search", "a red star"], ["similar", next(library["photos"].rglob("*.png"))]):
        base = ["--db", library["db"], cmd[0], "-n", "5", cmd[1]]
        want = json.loads(run(clipdb_bin, env, *base, "--json").stdout)
        lines = run(clipdb_bin, env, *base).stdout.splitlines()
        assert len(lines) == len(want) == 5
        for line, hit in zip(lines, want):
            score, path = line.split("\t")
            assert path == hit["path"] and abs(float(score) - hit["score"]) < 1e-4


# ---- help ----

@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_command_shows_that_commands_help(clipdb_bin, env, cmd):
    p = run(clipdb_bin, env, "help", cmd)
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout == run(clipdb_bin, env, cmd, "--help").stdout
    assert p.stdout.startswith("usage: clipdb " + cmd)


def test_help_unknown_command_is_an_error(clipdb_bin, env):
    p = run(clipdb_bin, env, "help", "frobnicate")
    assert p.returncode == 2 and "unknown command" in p.stderr and p.stdout == ""


# ---- a missing image is an error, not a text ----

@pytest.mark.parametrize("query", ["nothere.png", "holiday/nothere.JPG", "./nothere",
                                   "photos/nothere", "/nonexistent/x", "sunset - nothere.webp",
                                   "2:photos/nothere.jpg + a red star"])
def test_search_with_missing_image_path_fails(clipdb_bin, env, library, query):
    p = run(clipdb_bin, env, "--db", library["db"], "search", query, cwd=library["photos"].parent)
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "no such image file" in p.stderr, p.stderr


@pytest.mark.parametrize("query", ["AC/DC", "a red star", "t-shirt", "version 2.0"])
def test_search_text_with_slash_or_dot_stays_text(clipdb_bin, env, library, query):
    p = run(clipdb_bin, env, "--db", library["db"], "search", "-n", "1", query,
            cwd=library["photos"].parent)
    assert p.returncode == 0 and p.stdout.count("\n") == 1, p.stderr


def test_search_with_existing_image_path_works(clipdb_bin, env, library):
    photo = next(library["photos"].rglob("*.png"))
    rel = f"photos/{photo.name}"
    p = run(clipdb_bin, env, "--db", library["db"], "search", "-n", "1", "--paths", rel,
            cwd=library["photos"].parent)
    assert p.returncode == 0 and p.stdout == f"{photo}\n", p.stderr


@pytest.mark.parametrize("image", ["nothere.png", "nothere", "photos/nothere.jpg"])
def test_similar_with_missing_image_fails(clipdb_bin, env, library, image):
    p = run(clipdb_bin, env, "--db", library["db"], "similar", image, cwd=library["photos"].parent)
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "nothere" in p.stderr, p.stderr


def test_failed_first_index_leaves_no_library(clipdb_bin, env, demo_dir, tmp_path):
    """A first `index` that fails (here: the model does not exist) removes the library file it
    made, with its -wal/-shm and lock files; a library that existed before is kept."""
    db = tmp_path / "new" / "lib.db"
    db.parent.mkdir()
    p = run(clipdb_bin, env, "--db", str(db), "--model", str(tmp_path / "missing"), "index",
            str(demo_dir))
    assert p.returncode == 1 and "missing" in p.stderr
    assert os.listdir(db.parent) == []
    ok = run(clipdb_bin, env, "--db", str(db), "index", str(demo_dir))
    assert ok.returncode == 0, ok.stderr
    p = run(clipdb_bin, env, "--db", str(db), "--model", str(tmp_path / "missing"), "index",
            str(demo_dir))
    assert db.exists()
    count = run(clipdb_bin, env, "--db", str(db), "info", "--json")
    assert count.returncode == 0 and json.loads(count.stdout)["rows"] > 0, count.stdout


@pytest.mark.parametrize("flags", [["-0"], ["--null"], ["--paths", "-0"]])
def test_null_separated_paths_keep_any_name(clipdb_bin, env, demo_dir, tmp_path, flags):
    """--null / -0 prints each path's raw bytes ended by NUL (for xargs -0): a name holding a
    newline comes back whole, in the same order as --json."""
    photos = tmp_path / "photos"
    photos.mkdir()
    odd = photos / "red\nstar.png"
    shutil.copy(demo_dir / "055-red-star-on-blue.png", odd)
    shutil.copy(demo_dir / "000-orange-circle-on-purple.jpg", photos / "circle.jpg")
    db = tmp_path / "lib.db"
    assert run(clipdb_bin, env, "--db", db, "index", photos).returncode == 0
    for cmd in (["search", "a red star"], ["similar", str(odd)]):
        p = subprocess.run([clipdb_bin, "--db", str(db), cmd[0], *flags, "-n", "2", cmd[1]],
                           env=env, capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr
        want = json.loads(run(clipdb_bin, env, "--db", db, cmd[0], "--json", "-n", "2",
                              cmd[1]).stdout)
        assert p.stdout.endswith(b"\0")
        got = p.stdout[:-1].split(b"\0")
        assert got == [os.fsencode(h["path"]) for h in want]
        if cmd[0] == "search":  # similar leaves out the photo it starts from
            assert os.fsencode(str(odd)) in got


def test_null_with_json_is_a_usage_error(clipdb_bin, env, library):
    p = run(clipdb_bin, env, "--db", library["db"], "search", "--json", "-0", "star")
    assert p.returncode == 2 and "--null" in one_usage_line(p) and p.stdout == ""


# ---- hidden files ----

def distinct_images(demo_dir, n):
    return [p for p in sorted(demo_dir.iterdir()) if "copy" not in p.name][:n]


def indexed_paths(clipdb_bin, env, db):
    p = run(clipdb_bin, env, "--db", db, "search", "--json", "-n", "1000", "a photo")
    assert p.returncode == 0, p.stderr
    return {h["path"] for h in json.loads(p.stdout)}


@pytest.fixture
def hidden_tree(tmp_path, demo_dir):
    """A folder with two visible photos and four hidden ones (dot file, dot folder, macOS ._
    file, Synology @eaDir), each a different image."""
    root = tmp_path / "photos"
    names = ["a.png", "sub/e.png", ".hidden.png", ".dir/b.png", "@eaDir/c.png", "sub/._d.png"]
    for name, image in zip(names, distinct_images(demo_dir, len(names))):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / name)
    return root, {str(root / n) for n in names[:2]}, {str(root / n) for n in names}


def test_index_skips_hidden_files_by_default(clipdb_bin, env, hidden_tree, tmp_path):
    root, visible, everything = hidden_tree
    db = tmp_path / "lib.db"
    p = run(clipdb_bin, env, "--db", db, "index", "--json", root)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["added"] == 2
    assert indexed_paths(clipdb_bin, env, db) == visible


def test_include_hidden_indexes_them_and_a_plain_run_drops_them(clipdb_bin, env, hidden_tree,
                                                                tmp_path):
    root, visible, everything = hidden_tree
    db = tmp_path / "lib.db"
    p = run(clipdb_bin, env, "--db", db, "index", "--include-hidden", "--json", root)
    assert p.returncode == 0, p.stderr
    assert indexed_paths(clipdb_bin, env, db) == everything
    p = run(clipdb_bin, env, "--db", db, "index", "--json", root)  # the rule the docs state
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["removed"] == len(everything) - len(visible)
    assert indexed_paths(clipdb_bin, env, db) == visible


def test_a_hidden_folder_named_on_the_command_line_is_walked(clipdb_bin, env, hidden_tree,
                                                              tmp_path):
    root, _, _ = hidden_tree
    db = tmp_path / "lib.db"
    p = run(clipdb_bin, env, "--db", db, "index", root / ".dir", root / ".hidden.png")
    assert p.returncode == 0, p.stderr
    assert indexed_paths(clipdb_bin, env, db) == {str(root / ".dir/b.png"),
                                                  str(root / ".hidden.png")}


# ---- search --under ----

@pytest.fixture(scope="module")
def folders(tmp_path_factory, demo_dir, clipdb_bin, env):
    """A library over root/{a,ab,b}: "ab" shares "a"'s prefix as a string, not as a folder."""
    root = tmp_path_factory.mktemp("under") / "root"
    images = distinct_images(demo_dir, 18)
    for i, image in enumerate(images):
        folder = root / ["a", "ab", "b"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / image.name)
    (root.parent / "link").symlink_to(root / "a")
    db = root.parent / "lib.db"
    p = run(clipdb_bin, env, "--db", db, "index", root)
    assert p.returncode == 0, p.stderr
    return root, db


def hits(clipdb_bin, env, db, *args, cwd=None, **extra):
    p = subprocess.run([clipdb_bin, "--db", str(db), *map(str, args)], env={**env, **extra},
                       cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [h["path"] for h in json.loads(p.stdout)]


@pytest.mark.parametrize("cmd", [["search", "a red star"], ["similar", "IMAGE"]])
def test_under_keeps_the_top_n_inside_the_folder(clipdb_bin, env, folders, cmd):
    """--under DIR returns the N best photos under DIR (not the best N filtered afterwards), in
    the order of the unrestricted results, and DIR/../ab does not match DIR=.../a."""
    root, db = folders
    if cmd[1] == "IMAGE":
        cmd = ["similar", str(next((root / "b").iterdir()))]
    everything = hits(clipdb_bin, env, db, cmd[0], "--json", "-n", "1000", cmd[1])
    inside = [p for p in everything if p.startswith(str(root / "a") + "/")]
    assert len(inside) == 6 and set(everything[:3]) - set(inside)  # the cut would lose some
    for under in (root / "a", str(root / "a") + "/", root.parent / "link"):
        got = hits(clipdb_bin, env, db, cmd[0], "--json", "-n", "3", "--under", under, cmd[1])
        assert got == inside[:3], under
    assert hits(clipdb_bin, env, db, cmd[0], "--json", "-n", "3", "--under", ".", cmd[1],
                cwd=root / "a") == inside[:3]


def test_under_cwd_by_default_from_the_environment(clipdb_bin, env, folders):
    root, db = folders
    everything = hits(clipdb_bin, env, db, "search", "--json", "-n", "1000", "a star")
    inside = [p for p in everything if p.startswith(str(root / "ab") + "/")]
    got = hits(clipdb_bin, env, db, "search", "--json", "-n", "1000", "a star", cwd=root / "ab",
               CLIPDB_SEARCH_UNDER_CWD="1")
    assert got == inside and len(inside) == 6
    got = hits(clipdb_bin, env, db, "search", "--json", "-n", "1000", "--under", "/", "a star",
               cwd=root / "ab", CLIPDB_SEARCH_UNDER_CWD="1")
    assert got == everything


@pytest.mark.parametrize("under", ["missing-folder", "FILE"])
def test_under_must_name_a_folder(clipdb_bin, env, folders, under):
    root, db = folders
    if under == "FILE":
        under = next((root / "a").iterdir())
    p = run(clipdb_bin, env, "--db", db, "search", "--under", under, "a star")
    line = one_usage_line(p)
    assert "--under" in line and ("not a folder" in line or "No such file" in line), line


# ---- terminals: escape sequences only where they work ----

def run_on_pty(clipdb_bin, env, *args, **extra):
    """Runs clipdb with stderr on a pseudo-terminal; (exit status, stdout, what the terminal
    got)."""
    import pty
    from conftest import read_pty
    e = {k: v for k, v in env.items() if k not in ("TERM", "NO_COLOR")}
    e.update({k: v for k, v in extra.items() if v is not None})
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([clipdb_bin, *map(str, args)], env=e, stdout=subprocess.PIPE,
                                stderr=follower)
        os.close(follower)
        follower = None
        shown = read_pty(leader)
        out, _ = proc.communicate(timeout=120)
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    return proc.returncode, out, shown


def redraws(shown):
    """Escape sequences or carriage returns that are not the terminal's own "\\r\\n"."""
    import re
    return b"\x1b" in shown or re.search(rb"\r(?!\n)", shown) is not None


@pytest.fixture
def twenty_photos(tmp_path, demo_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in distinct_images(demo_dir, 20):
        shutil.copy(p, photos)
    return photos


def test_live_progress_on_a_capable_terminal(clipdb_bin, env, twenty_photos, tmp_path):
    rc, out, shown = run_on_pty(clipdb_bin, env, "--db", tmp_path / "t.db", "index", twenty_photos,
                                TERM="xterm")
    assert rc == 0 and b"20 added" in out
    assert b"\r\x1b[Kindexing [" in shown and redraws(shown)


@pytest.mark.parametrize("term", [{"TERM": "dumb"}, {"TERM": None}, {"TERM": ""},
                                  {"TERM": "xterm", "NO_COLOR": "1"}])
def test_no_escape_sequences_on_a_dumb_terminal_or_with_no_color(clipdb_bin, env, twenty_photos,
                                                                 tmp_path, term):
    rc, out, shown = run_on_pty(clipdb_bin, env, "--db", tmp_path / "t.db", "index", twenty_photos,
                                **term)
    assert rc == 0 and b"20 added" in out
    assert not redraws(shown), shown


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_no_preview_escapes_on_a_dumb_terminal(clipdb_bin, env, library, term):
    """--preview draws nothing where TERM=dumb, even with TERM_PROGRAM naming iTerm2."""
    import pty
    from conftest import read_pty
    leader, follower = pty.openpty()
    proc = subprocess.Popen([clipdb_bin, "--db", str(library["db"]), "search", "-n", "2",
                             "--preview", "a red star"], stdout=follower, stderr=subprocess.PIPE,
                            env={**env, "TERM": term, "TERM_PROGRAM": "iTerm.app"})
    os.close(follower)
    shown = read_pty(leader)
    os.close(leader)
    assert proc.wait(timeout=60) == 0 and shown.count(b"\t") == 2, shown
    assert (b"\x1b]1337;File=" in shown) == (term == "xterm"), shown


# ---- similar - ----

def similar_stdin(clipdb_bin, env, db, data, *args, **extra):
    return subprocess.run([clipdb_bin, "--db", str(db), "similar", *map(str, args), "-"],
                          input=data, env={**env, **extra}, capture_output=True, timeout=120)


@pytest.mark.parametrize("fmt", [[], ["--json"], ["-0"]])
def test_similar_reads_the_image_from_stdin(clipdb_bin, env, library, tmp_path, fmt):
    """`similar -` with an image piped in gives what `similar FILE` gives for the same bytes in
    a file that is not in the library."""
    image = library["photos"] / "055-red-star-on-blue.png"
    outside = tmp_path / "query.png"
    shutil.copy(image, outside)
    want = subprocess.run([clipdb_bin, "--db", str(library["db"]), "similar", *fmt, "-n", "5",
                           str(outside)], env=env, capture_output=True, timeout=120)
    assert want.returncode == 0 and want.stdout, want.stderr
    got = similar_stdin(clipdb_bin, env, library["db"], image.read_bytes(), *fmt, "-n", "5")
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout


@pytest.mark.parametrize("data,shown", [(b"", "empty"), (b"hello\n", "standard input: "),
                                        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "standard input: ")])
def test_similar_stdin_that_is_not_an_image_fails(clipdb_bin, env, library, data, shown):
    p = similar_stdin(clipdb_bin, env, library["db"], data)
    assert p.returncode == 1 and p.stdout == b""
    line = p.stderr.decode()
    assert line.startswith("clipdb: similar: standard input") and shown in line, line
    assert line.count("\n") == 1


def test_similar_stdin_is_size_limited(clipdb_bin, env, library):
    data = (library["photos"] / "055-red-star-on-blue.png").read_bytes()
    p = similar_stdin(clipdb_bin, env, library["db"], data, CLIPDB_FETCH_MAX_BYTES=str(len(data) - 1))
    assert p.returncode == 1 and b"larger than" in p.stderr, p.stderr
    p = similar_stdin(clipdb_bin, env, library["db"], data, CLIPDB_FETCH_MAX_BYTES=str(len(data)))
    assert p.returncode == 0, p.stderr


def test_similar_stdin_refuses_a_terminal(clipdb_bin, env, library):
    import pty
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([clipdb_bin, "--db", str(library["db"]), "similar", "-"], env=env,
                           stdin=follower, capture_output=True, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert p.returncode == 1 and b"terminal" in p.stderr, p.stderr
