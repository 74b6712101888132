"""test_network.py: `clipdb model pull/list/info/rm` and image URLs against a loopback hub.

No internet: hubserver.Hub serves the tiny fixture model in Hugging Face layout on 127.0.0.1 (a
hub port plus a CDN port for LFS redirects) and injects faults. The references are independent
of the code under test: the fixture files' own SHA-256s, the fixture model's embeddings, and the
server's request log (what was actually asked, with which headers).
Run: CLIPDB_BUILD_DIR=build-XXX /usr/bin/python3 -m pytest tests/python/test_network.py
"""
import fcntl
import hashlib
import json
import os
import pathlib
import re
import sqlite3
import subprocess
import time
import types

import pytest

from conftest import read_pty
from hubserver import Hub

REPO = "clipdb-test/tiny-shapes"
TOKEN = "hf_SECRETtokenValue0123456789"
FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt",
         "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"]


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture
def hub(model_dir):
    server = Hub(model_dir, repo=REPO)
    yield server
    server.close()


@pytest.fixture
def env(hub, tmp_path):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("HF_", "CLIPDB_", "HUGGING")) and "proxy" not in k.lower()}
    e.update(XDG_CACHE_HOME=str(tmp_path / "cache"), HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN,
             CLIPDB_DOWNLOAD_BACKOFF_MS="20")
    return e


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache" / "clipdb" / "models"


@pytest.fixture
def cli(clipdb_bin, env):
    """Runs clipdb with the test environment; every call checks the token never shows."""
    def run(*args, timeout=60, **extra_env):
        result = subprocess.run([clipdb_bin, *args], env={**env, **extra_env},
                                capture_output=True, text=True, timeout=timeout)
        assert TOKEN not in result.stdout and TOKEN not in result.stderr
        return result
    return run


def assert_same_files(model_dir, pulled, names=FILES):
    for name in names:
        assert sha256(pulled / name) == sha256(pathlib.Path(model_dir) / name), name


def embed_text(cli, model, text="a red circle on a white background"):
    r = cli("embed", "--model", str(model), "--text", text)
    assert r.returncode == 0, r.stderr
    vector = json.loads(r.stdout)
    assert len(vector) == 64 and all(isinstance(x, float) for x in vector)
    return vector


def test_pull_matches_fixture_and_embeds_identically(cli, hub, cache_dir, model_dir):
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    pulled = cache_dir / "clipdb-test--tiny-shapes"
    assert str(pulled) in r.stdout
    assert_same_files(model_dir, pulled)
    assert not list(cache_dir.glob("*.tmp-*")), "staging folder left behind"
    assert embed_text(cli, pulled) == embed_text(cli, model_dir)
    # hub's standard URLs, revision main
    asked = {q["path"] for q in hub.requests("hub")}
    assert {f"/{REPO}/resolve/main/{f}" for f in FILES} <= asked
    assert "sha256 verified" in r.stderr  # model.safetensors, checked against X-Linked-Etag


def test_pull_records_the_commit_the_revision_resolved_to(cli, hub, cache_dir):
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    assert f"commit {hub.commit}" in r.stdout
    record = json.loads((cache_dir / "clipdb-test--tiny-shapes" / ".clipdb-pull.json").read_text())
    assert record["revision"] == "main" and record["commit"] == hub.commit


def test_token_sent_to_hub_but_not_to_other_host(cli, hub):
    assert cli("model", "pull", REPO).returncode == 0
    hub_auth = {q["authorization"] for q in hub.requests("hub")}
    assert hub_auth == {f"Bearer {TOKEN}"}
    cdn = hub.requests("cdn")
    assert cdn, "the LFS file was not fetched through the redirect"
    assert all(q["authorization"] is None for q in cdn)


def test_no_token_no_header(cli, hub):
    assert cli("model", "pull", REPO, HF_TOKEN="").returncode == 0
    assert all(q["authorization"] is None for q in hub.requests())


@pytest.mark.parametrize("where", ["HF_TOKEN_PATH", "HF_HOME", "default"])
def test_saved_login_token_is_sent(where, cli, hub, tmp_path):
    """Without HF_TOKEN, the token `huggingface-cli login` saved is used (first line, blanks
    stripped), as the hub tools do; never printed (the cli fixture checks every output)."""
    if where == "HF_TOKEN_PATH":
        path, extra = tmp_path / "tok", {"HF_TOKEN_PATH": str(tmp_path / "tok")}
    elif where == "HF_HOME":
        path, extra = tmp_path / "hfhome" / "token", {"HF_HOME": str(tmp_path / "hfhome")}
    else:  # $XDG_CACHE_HOME/huggingface/token, XDG_CACHE_HOME being the test's cache
        path, extra = tmp_path / "cache" / "huggingface" / "token", {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"  {TOKEN}\nsecond line\n")
    assert cli("model", "pull", REPO, HF_TOKEN="", **extra).returncode == 0
    assert {q["authorization"] for q in hub.requests("hub")} == {f"Bearer {TOKEN}"}
    assert all(q["authorization"] is None for q in hub.requests("cdn"))


def test_repull_keeps_unchanged_large_file(cli, hub, cache_dir, model_dir):
    assert cli("model", "pull", REPO).returncode == 0
    pulled = cache_dir / "clipdb-test--tiny-shapes"
    inode = (pulled / "model.safetensors").stat().st_ino
    cdn_before = len(hub.requests("cdn"))
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    assert "unchanged" in r.stderr
    assert len(hub.requests("cdn")) == cdn_before  # not downloaded again
    assert [q["method"] for q in hub.requests("hub", "model.safetensors")] == ["GET", "HEAD"]
    assert (pulled / "model.safetensors").stat().st_ino == inode
    assert_same_files(model_dir, pulled)
    # a changed file on the hub is downloaded again; a damaged cached copy is not reused
    with open(pulled / "model.safetensors", "r+b") as damaged:
        damaged.write(b"\0")
    r = cli("model", "pull", REPO)
    assert r.returncode == 0 and "unchanged" not in r.stderr
    assert len(hub.requests("cdn")) == cdn_before + 1
    assert_same_files(model_dir, pulled)


def test_connection_cut_resumes_with_range(cli, hub, cache_dir, model_dir):
    hub.faults.cut["model.safetensors"] = [3_000_000, 1]
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    cdn = hub.requests("cdn")
    assert [q["range"] for q in cdn] == [None, "bytes=3000000-"]
    assert_same_files(model_dir, cache_dir / "clipdb-test--tiny-shapes")


def test_interrupted_pull_resumes_in_next_run(cli, hub, cache_dir, model_dir):
    hub.faults.cut["model.safetensors"] = [2_500_000, 99]
    r = cli("model", "pull", REPO, "--retries", "2")
    assert r.returncode == 1
    assert "gave up after 2 attempts" in r.stderr and "resume" in r.stderr
    assert not (cache_dir / "clipdb-test--tiny-shapes").exists()
    parts = list(cache_dir.glob("clipdb-test--tiny-shapes.tmp-*/model.safetensors.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == 5_000_000  # 2 attempts, 2.5 MB each
    assert "interrupted pull" in cli("model", "list").stdout
    hub.faults.cut.clear()
    before = len(hub.requests("hub", "vocab.json"))
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    assert hub.requests("cdn")[-1]["range"] == "bytes=5000000-"
    assert len(hub.requests("hub", "vocab.json")) == before  # finished files are kept
    assert_same_files(model_dir, cache_dir / "clipdb-test--tiny-shapes")


def test_server_ignoring_range_restarts_the_file(cli, hub, cache_dir, model_dir):
    hub.faults.cut["model.safetensors"] = [3_000_000, 1]
    hub.faults.ignore_range.add("model.safetensors")
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    assert [q["range"] for q in hub.requests("cdn")] == [None, "bytes=3000000-"]
    assert_same_files(model_dir, cache_dir / "clipdb-test--tiny-shapes")


def test_oversized_part_is_started_over(cli, hub, cache_dir, model_dir):
    """A leftover .part as long as the file (HTTP 416 on resume) is discarded, not trusted."""
    staging = cache_dir / "clipdb-test--tiny-shapes.tmp-abc123"
    staging.mkdir(parents=True)
    (staging / ".clipdb-staging").write_text(f"{hub.url}\nmain\n")
    (staging / "model.safetensors.part").write_bytes(b"x" * (9 << 20))
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    assert "continuing an interrupted pull" in r.stderr
    assert [q["range"] for q in hub.requests("cdn")] == [f"bytes={9 << 20}-", None]
    assert_same_files(model_dir, cache_dir / "clipdb-test--tiny-shapes")
    assert not staging.exists()


def test_wrong_checksum_keeps_the_good_model(cli, hub, cache_dir, model_dir):
    assert cli("model", "pull", REPO).returncode == 0
    pulled = cache_dir / "clipdb-test--tiny-shapes"
    hub.files["model.safetensors"] += b" "  # a new version on the hub, served damaged
    hub.faults.corrupt.add("model.safetensors")
    r = cli("model", "pull", REPO)
    assert r.returncode == 1
    assert "SHA-256 mismatch" in r.stderr and hub.sha256("model.safetensors") in r.stderr
    assert_same_files(model_dir, pulled)
    assert not list(cache_dir.glob("**/*.part"))


def test_unusable_download_does_not_replace_model(cli, hub, cache_dir, model_dir):
    """Files without a digest (config.json) are checked by loading the model before the swap."""
    assert cli("model", "pull", REPO).returncode == 0
    hub.files["config.json"] = b'{"vision_config": "not an object"}'
    r = cli("model", "pull", REPO)
    assert r.returncode == 1
    assert "not form a usable model" in r.stderr
    assert_same_files(model_dir, cache_dir / "clipdb-test--tiny-shapes")
    assert not list(cache_dir.glob("*.tmp-*"))


def test_stalled_server_times_out(cli, hub, cache_dir):
    hub.faults.stall["vocab.json"] = 0.2
    start = time.monotonic()
    r = cli("model", "pull", REPO, "--timeout", "1", "--retries", "2", timeout=30)
    assert r.returncode == 1
    assert "timed out" in r.stderr and "vocab.json" in r.stderr
    assert len(hub.requests("hub", "vocab.json")) == 2  # one per try, each cut by --timeout
    assert time.monotonic() - start < 30  # 2 tries x 1 s, generously (the drip would take days)
    assert not (cache_dir / "clipdb-test--tiny-shapes").exists()


def test_transient_statuses_are_retried(cli, hub):
    hub.faults.statuses["config.json"] = [503, 429, 500]
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    assert len(hub.requests("hub", "config.json")) == 4


def test_persistent_5xx_gives_up(cli, hub):
    hub.faults.statuses["merges.txt"] = [502] * 10
    r = cli("model", "pull", REPO, "--retries", "3")
    assert r.returncode == 1 and "HTTP status 502" in r.stderr
    assert len(hub.requests("hub", "merges.txt")) == 3


def test_long_retry_after_stays_within_the_wait_budget(cli, hub):
    # Each 503 asks for a day's wait; the tries' waits together stay within max_wait_ms.
    hub.faults.statuses["merges.txt"] = [503] * 10
    hub.faults.retry_after = "86400"
    start = time.monotonic()
    r = cli("model", "pull", REPO, "--retries", "3", timeout=30, CLIPDB_DOWNLOAD_MAX_WAIT_MS="500")
    assert r.returncode == 1 and "HTTP status 503" in r.stderr
    assert len(hub.requests("hub", "merges.txt")) == 3
    assert time.monotonic() - start < 20  # 0.5 s of waits; a Retry-After each would be 120 s


def test_optional_files_may_be_missing(cli, hub, cache_dir):
    hub.faults.missing |= {"tokenizer_config.json", "special_tokens_map.json"}
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    pulled = cache_dir / "clipdb-test--tiny-shapes"
    assert not (pulled / "tokenizer_config.json").exists()
    assert (pulled / "model.safetensors").exists()


def test_missing_required_file_or_repo_fails_clearly(cli, hub, cache_dir):
    hub.faults.missing.add("model.safetensors")
    r = cli("model", "pull", REPO)
    assert r.returncode == 1 and "has no model.safetensors" in r.stderr and "404" in r.stderr
    r = cli("model", "pull", "clipdb-test/no-such-model")
    assert r.returncode == 1 and "has no config.json" in r.stderr
    r = cli("model", "pull", REPO, "--revision", "v9")
    assert r.returncode == 1 and "revision v9" in r.stderr
    assert not (cache_dir / "clipdb-test--tiny-shapes").exists()


def test_offline_never_touches_network(cli, hub):
    for extra, args in (({"HF_HUB_OFFLINE": "1"}, ()), ({}, ("--offline",))):
        r = cli("model", "pull", REPO, *args, **extra)
        assert r.returncode == 1 and "offline" in r.stderr
    assert hub.requests() == []


def test_redirect_to_other_scheme_is_refused(cli, hub, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me")
    hub.faults.redirect_to["model.safetensors"] = f"file://{secret}"
    r = cli("model", "pull", REPO)
    assert r.returncode == 1
    assert "protocol" in r.stderr.lower()


def test_redirect_loop_is_bounded(cli, hub):
    loop = f"{hub.url}/{REPO}/resolve/main/model.safetensors"
    hub.faults.redirect_to["model.safetensors"] = loop
    r = cli("model", "pull", REPO, timeout=30)
    assert r.returncode == 1 and "redirect" in r.stderr.lower()
    assert len(hub.requests("hub", "model.safetensors")) <= 7  # 1 + at most 5 redirects (+slack)


def test_bad_names_and_endpoints(cli, hub):
    for name in ("../etc", "noslash", "a/b/c", "a/.hidden"):
        r = cli("model", "pull", name)
        assert r.returncode == 2, name
    r = cli("model", "pull", REPO, HF_ENDPOINT="ftp://127.0.0.1/")
    assert r.returncode == 1 and "http" in r.stderr
    assert hub.requests() == []


def test_concurrent_pull_is_refused(cli, cache_dir):
    cache_dir.mkdir(parents=True)
    with open(cache_dir / "clipdb-test--tiny-shapes.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = cli("model", "pull", REPO)
    assert r.returncode == 1 and "another" in r.stderr


def test_pull_leaves_no_lock_file(cli, hub, cache_dir):
    """Neither a failed nor a successful pull leaves ORG--NAME.lock behind; a second pull after
    either takes the lock again."""
    hub.faults.statuses["config.json"] = [404]
    r = cli("model", "pull", REPO)
    assert r.returncode == 1
    assert not list(cache_dir.glob("*.lock")), list(cache_dir.iterdir())
    assert cli("model", "pull", REPO).returncode == 0
    assert not list(cache_dir.glob("*.lock")), list(cache_dir.iterdir())


def test_list_info_rm(cli, cache_dir, model_dir):
    r = cli("model", "list")
    assert r.returncode == 0 and r.stdout == ""
    assert cli("model", "pull", REPO).returncode == 0
    r = cli("model", "list")
    assert r.returncode == 0 and r.stdout.split()[0] == REPO and " main " in r.stdout
    r = cli("model", "info", REPO)
    assert r.returncode == 0, r.stderr
    size = (pathlib.Path(model_dir) / "model.safetensors").stat().st_size
    assert f"{size / 1e6:.1f} MB" in r.stdout
    assert sha256(pathlib.Path(model_dir) / "model.safetensors") in r.stdout
    assert "projection_dim=64" in r.stdout and "loads:    yes" in r.stdout
    r = cli("model", "info", model_dir)  # a plain folder works too
    assert r.returncode == 0 and "loads:    yes" in r.stdout
    r = cli("model", "rm", model_dir)
    assert r.returncode == 1 and (pathlib.Path(model_dir) / "config.json").exists()
    r = cli("model", "rm", REPO)
    assert r.returncode == 0
    assert not (cache_dir / "clipdb-test--tiny-shapes").exists()
    assert cli("model", "rm", REPO).returncode == 1


def test_progress_bar_on_a_terminal(clipdb_bin, env, hub):
    import pty
    leader, follower = pty.openpty()
    try:
        e = {k: v for k, v in env.items() if k != "NO_COLOR"}
        r = subprocess.run([clipdb_bin, "model", "pull", REPO], env={**e, "TERM": "xterm"},
                           stdout=subprocess.PIPE, stderr=follower, timeout=60)
        os.close(follower)
        follower = None
        shown = read_pty(leader).decode(errors="replace")
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    assert r.returncode == 0
    assert re.search(r"\r  model\.safetensors +\d+% +[\d.]+ / 8\.4 MB", shown)
    assert "sha256 verified" in shown
    assert TOKEN not in shown


# ---- image URLs (src/fetch.h, through the SQL function clip_embed_image) ----

@pytest.fixture
def url_conn(conn, hub, demo_dir, monkeypatch):
    images = sorted(p for p in demo_dir.iterdir() if p.suffix == ".png")
    hub.images["a.png"] = images[0].read_bytes()
    hub.images["big.png"] = images[0].read_bytes() + b"\0" * 300_000
    for k in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(k)
    return types.SimpleNamespace(execute=conn.execute, image_file=images[0])


def test_image_url_embeds_like_the_file(url_conn, hub):
    via_url = url_conn.execute("SELECT clip_embed_image(?)", (f"{hub.url}/img/a.png",)).fetchone()
    via_file = url_conn.execute("SELECT clip_embed_image(?)",
                                (str(url_conn.image_file),)).fetchone()
    assert via_url[0] == via_file[0]
    assert hub.requests("hub", "a.png")


def test_image_url_in_table_insert(url_conn, hub):
    url_conn.execute("CREATE VIRTUAL TABLE pics USING clip()")
    url_conn.execute("INSERT INTO pics(image) VALUES (?)", (f"{hub.url}/img/a.png",))
    stored, image = url_conn.execute("SELECT embedding, image FROM pics").fetchone()
    want, = url_conn.execute("SELECT clip_embed_image(?)", (str(url_conn.image_file),)).fetchone()
    assert stored == want and image == f"{hub.url}/img/a.png"
    with pytest.raises(sqlite3.OperationalError, match="404"):
        url_conn.execute("INSERT INTO pics(image) VALUES (?)", (f"{hub.url}/img/gone.png",))
    assert url_conn.execute("SELECT count(*) FROM pics").fetchone() == (1,)


def test_image_url_redirects(url_conn, hub, tmp_path):
    want = url_conn.execute("SELECT clip_embed_image(?)", (str(url_conn.image_file),)).fetchone()
    hub.faults.redirect_to["moved.png"] = f"{hub.url}/img/a.png"
    got = url_conn.execute("SELECT clip_embed_image(?)", (f"{hub.url}/img/moved.png",)).fetchone()
    assert got == want
    secret = tmp_path / "secret.png"
    secret.write_bytes(url_conn.image_file.read_bytes())
    hub.faults.redirect_to["local.png"] = f"file://{secret}"
    hub.faults.redirect_to["loop.png"] = f"{hub.url}/img/loop.png"
    for name, why in (("local.png", "protocol"), ("loop.png", "redirect")):
        with pytest.raises(sqlite3.OperationalError) as e:
            url_conn.execute("SELECT clip_embed_image(?)", (f"{hub.url}/img/{name}",)).fetchone()
        assert why in str(e.value).lower()
    assert len(hub.requests("hub", "loop.png")) == 6  # the first request and 5 redirects


def test_image_url_errors(url_conn, hub, monkeypatch):
    def error_of(url):
        with pytest.raises(sqlite3.OperationalError) as e:
            url_conn.execute("SELECT clip_embed_image(?)", (url,)).fetchone()
        return str(e.value)

    assert "404" in error_of(f"{hub.url}/img/missing.png")
    monkeypatch.setenv("CLIPDB_FETCH_MAX_BYTES", "100000")
    assert "larger than 100000 bytes" in error_of(f"{hub.url}/img/big.png")
    monkeypatch.setenv("CLIPDB_FETCH_TIMEOUT", "1")
    hub.faults.stall["a.png"] = 0.2
    start = time.monotonic()
    assert "timed out" in error_of(f"{hub.url}/img/a.png")
    assert time.monotonic() - start < 30  # CLIPDB_FETCH_TIMEOUT=1, generously


def test_image_url_through_the_cli(clipdb_bin, model_dir, url_conn, hub, tmp_path):
    """`clipdb embed --image URL` and an image-URL search term use the same bounded fetch."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    run = lambda *args: subprocess.run([clipdb_bin, "--model", model_dir, *args], env=env,
                                       capture_output=True, text=True, timeout=60)
    via_url = run("embed", "--image", f"{hub.url}/img/a.png")
    via_file = run("embed", "--image", str(url_conn.image_file))
    assert via_url.returncode == 0, via_url.stderr
    assert json.loads(via_url.stdout) == json.loads(via_file.stdout)
    missing = run("embed", "--image", f"{hub.url}/img/missing.png")
    assert missing.returncode == 1 and "404" in missing.stderr

    db = str(tmp_path / "lib.db")
    library = tmp_path / "photos"
    library.mkdir()
    (library / url_conn.image_file.name).write_bytes(url_conn.image_file.read_bytes())
    assert run("--db", db, "index", "--quiet", str(library)).returncode == 0
    found = run("--db", db, "search", "--json", f"{hub.url}/img/a.png")
    assert found.returncode == 0, found.stderr
    top = json.loads(found.stdout)
    assert top and top[0]["score"] > 0.999


def pull_on_pty(clipdb_bin, env, **term):
    """`model pull` with stderr on a pseudo-terminal: (exit status, what the terminal got)."""
    import pty
    e = {k: v for k, v in env.items() if k not in ("TERM", "NO_COLOR")}
    leader, follower = pty.openpty()
    try:
        r = subprocess.run([clipdb_bin, "model", "pull", REPO], env={**e, **term},
                           stdout=subprocess.PIPE, stderr=follower, timeout=60)
        os.close(follower)
        follower = None
        shown = read_pty(leader)
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    return r.returncode, shown


def assert_plain_pull_lines(shown):
    """A start and an outcome line per file, tenths of the 8.4 MB file, no redraw, no token."""
    assert "\x1b" not in shown and not re.search(r"\r(?!\n)", shown), shown
    assert TOKEN not in shown
    lines = shown.replace("\r\n", "\n").splitlines()
    for name in FILES:
        start = lines.index(f"  {name}: downloading")
        assert any(re.match(rf"  {re.escape(name)} +\S+ \S+ +(done|sha256 verified)$", line)
                   for line in lines[start + 1:]), (name, lines)
    tenths = [int(m.group(1)) for m in
              (re.match(r"  model\.safetensors: (\d+)% [\d.]+ / 8\.4 MB, [\d.]+ MB/s$", line)
               for line in lines) if m]
    assert tenths and tenths == sorted(set(tenths)) and tenths[-1] == 100, lines


def test_plain_progress_lines_through_a_pipe(cli):
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    assert_plain_pull_lines(r.stderr)


def test_plain_progress_lines_on_a_dumb_terminal(clipdb_bin, env, hub):
    rc, shown = pull_on_pty(clipdb_bin, env, TERM="dumb")
    assert rc == 0
    assert_plain_pull_lines(shown.decode(errors="replace"))


def test_live_progress_line_on_a_terminal_has_no_plain_lines(clipdb_bin, env, hub):
    rc, shown = pull_on_pty(clipdb_bin, env, TERM="xterm")
    assert rc == 0 and TOKEN.encode() not in shown
    assert b"\x1b[K" in shown and b": downloading" not in shown, shown
