"""Hostile inputs through SQL and the CLI: each one gets a clear error and loses nothing.

The catalogue (also a table in docs/fuzzing.md): decompression bombs, truncated / non-image /
empty / mislabelled images, invalid UTF-8, 1 MB query strings, bad k, NaN/Inf and
huge-but-finite vectors, checkpoints whose header lies (offsets past the end, header longer than
the file, wrong shapes, wrong dtypes), configs with absurd sizes, unknown models, wrong SQL
argument types. Broken checkpoints are generated into tmp dirs from tests/data/clip-tiny-shapes.
After every refused write the table still has the same rows and passes 'integrity-check'.
"""
import json
import math
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import time

import pytest

DIMS = 64  # the tiny model's projection


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def unit(i, n=DIMS):
    v = [0.0] * n
    v[i % n] = 1.0
    return f32(v)


@pytest.fixture(scope="module", autouse=True)
def keep_extension_mapped(ext_path):
    """Holds one connection with the extension for the whole module, so that each test
    exercises its own subject; unloading/reloading has its own test below."""
    anchor = sqlite3.connect(":memory:")
    anchor.enable_load_extension(True)
    anchor.load_extension(ext_path)
    yield
    anchor.close()


UNLOAD_CYCLES = r"""
import os, sqlite3, sys
for i in range(10):
    db = sqlite3.connect(':memory:')
    db.enable_load_extension(True)
    db.load_extension(sys.argv[1])
    db.execute("SELECT clip_embed_text('a red star')").fetchone()
    db.close()
print('threads', len(os.listdir('/proc/self/task')))
"""


def test_extension_unload_and_reload_cycles(ext_path, model_dir):
    """SQLite unloads the extension when its last connection closes: the worker threads it
    started must not be left running in unmapped code (crash) or on re-initialised state
    (hang), and reloading must not start new threads each time."""
    try:
        r = subprocess.run([sys.executable, "-c", UNLOAD_CYCLES, ext_path], capture_output=True,
                           text=True, timeout=20, env=dict(os.environ, CLIPDB_MODEL=model_dir))
    except subprocess.TimeoutExpired:
        pytest.fail("host process hung (deadlock) in 10 load/unload cycles")
    assert r.returncode == 0, f"host process died with {r.returncode}: {r.stderr[-2000:]}"
    threads = int(r.stdout.split()[-1])
    assert threads <= 2 + os.cpu_count(), f"{threads} threads after 10 load/unload cycles"


def expect_error(db, sql, params, pattern):
    with pytest.raises(sqlite3.Error) as info:
        db.execute(sql, params).fetchall()
    msg = str(info.value)
    assert re.search(pattern, msg, re.I), f"{sql!r}: message {msg!r} does not match {pattern!r}"
    assert "SQL logic error" not in msg and "unknown error" not in msg, msg
    return msg


@pytest.fixture
def table(conn):
    """A clip table with three rows (two precomputed vectors and one text)."""
    conn.execute("CREATE VIRTUAL TABLE t USING clip(label TEXT)")
    conn.execute("INSERT INTO t(embedding, label) VALUES(?, 'e0'), (?, 'e1')", (unit(0), unit(1)))
    conn.execute("INSERT INTO t(text, label) VALUES('a red star', 'star')")
    conn.commit()
    return conn


def unchanged(db, n=3):
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == n
    db.execute("INSERT INTO t(t) VALUES('integrity-check')")


# ---------------------------------------------------------------- images

# Each pattern names the specific reason (never only the function's or argument's name, which
# every error of that function contains).
BAD_IMAGES = [
    ("bomb-100000x100000.png",
     r"100000x100000 pixels, more than the 100000000 allowed; raise CLIPDB_MAX_IMAGE_PIXELS"),
    ("truncated.jpg", r"cannot decode: VipsJpeg: Premature end of input file"),
    ("not-an-image.jpg", r"not an image in a format libvips can read"),
    ("empty.png", r"image is an empty BLOB|empty \(0 bytes\)"),
]


@pytest.mark.parametrize("name,pattern", BAD_IMAGES)
def test_bad_image_bytes_and_paths(table, bad_dir, name, pattern):
    data = (bad_dir / name).read_bytes()
    expect_error(table, "SELECT clip_embed_image(?)", (data,), pattern)
    expect_error(table, "SELECT clip_embed_image(?)", (str(bad_dir / name),), pattern)
    expect_error(table, "INSERT INTO t(image, label) VALUES(?, 'bad')", (data,), pattern)
    expect_error(table, "SELECT rowid FROM t WHERE t MATCH ? AND k = 1", (data,), pattern)
    # the bomb's message is the header check's: it is refused before any pixel is decoded
    unchanged(table)


def test_mislabelled_image_is_sniffed_not_trusted(table, tmp_path):
    src = os.path.join(os.path.dirname(__file__), "..", "data", "goldens", "images")
    png = next(p for p in sorted(os.listdir(src)) if p.endswith(".png"))
    data = open(os.path.join(src, png), "rb").read()
    fake = tmp_path / "really-a-png.jpg"
    fake.write_bytes(data)
    a = table.execute("SELECT clip_embed_image(?)", (data,)).fetchone()[0]
    b = table.execute("SELECT clip_embed_image(?)", (str(fake),)).fetchone()[0]
    assert a == b


def test_missing_and_non_file_image_paths(table, tmp_path):
    expect_error(table, "SELECT clip_embed_image(?)", (str(tmp_path / "nope.png"),),
                 r"nope\.png")
    expect_error(table, "SELECT clip_embed_image(?)", (str(tmp_path),), r"director|not a|file|read")


# ---------------------------------------------------------------- text

INVALID_UTF8 = [b"caf\xc3", b"\xff\xfe", b"over\xc0\xaflong", b"sur\xed\xa0\x80rogate"]


@pytest.mark.parametrize("raw", INVALID_UTF8, ids=["cut", "ff-fe", "overlong", "surrogate"])
def test_invalid_utf8_text(table, raw):
    table.text_factory = bytes
    expect_error(table, "SELECT clip_embed_text(CAST(? AS TEXT))", (raw,), r"utf-?8")
    expect_error(table, "INSERT INTO t(text) VALUES(CAST(? AS TEXT))", (raw,), r"utf-?8")
    expect_error(table, "SELECT rowid FROM t WHERE t MATCH CAST(? AS TEXT) AND k = 1", (raw,),
                 r"utf-?8")
    unchanged(table)


def test_text_that_cleans_to_nothing(table):
    """'&#1;' unescapes to a control character that cleanup removes (found by fuzz_tokenizer:
    it once reached memcpy with a NULL source); it embeds like a blank text."""
    blank = table.execute("SELECT clip_embed_text(' ')").fetchone()[0]
    for t in ["&#1;", "\x01", "&amp;#1;"]:
        assert table.execute("SELECT clip_embed_text(?)", (t,)).fetchone()[0] == blank, t


def test_one_megabyte_query_is_truncated_like_the_reference(table):
    """CLIP keeps the first 76 tokens + EOT: a 1 MB text embeds like its 120-token prefix."""
    phrase = "a red star "
    huge = phrase * (1_000_000 // len(phrase))
    t0 = time.monotonic()
    big = table.execute("SELECT clip_embed_text(?)", (huge,)).fetchone()[0]
    elapsed = time.monotonic() - t0
    small = table.execute("SELECT clip_embed_text(?)", (phrase * 40,)).fetchone()[0]
    assert table.execute("SELECT clip_similarity(?, ?)", (big, small)).fetchone()[0] > 0.99999
    # a hang guard only (truncation is checked above; the text normally takes ~0.1 s)
    assert elapsed < 60, f"1 MB text took {elapsed:.1f} s"
    rows = table.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 2", (huge,)).fetchall()
    assert len(rows) == 2


# ---------------------------------------------------------------- k and query shapes

@pytest.mark.parametrize("k", [-1, 0, 100001, 2**62, -2**63, "abc", 1.5, None])
def test_bad_k(table, k):
    expect_error(table, "SELECT rowid FROM t WHERE t MATCH ? AND k = ?", (unit(0), k),
                 r"k must be an integer from 1 to 100000")


def test_match_without_k_streams_every_row_by_distance(table):
    rows = table.execute("SELECT rowid, distance FROM t WHERE t MATCH 'a red star'").fetchall()
    assert len(rows) == 3 and [d for _, d in rows] == sorted(d for _, d in rows)
    assert rows[0][0] == 3  # the row inserted as 'a red star' is nearest


def test_largest_k_returns_every_row(table):
    rows = table.execute("SELECT rowid FROM t WHERE t MATCH ? AND k = 100000",
                         (unit(0),)).fetchall()
    assert len(rows) == 3


# ---------------------------------------------------------------- vectors

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_non_finite_vectors(table, bad):
    v = [0.1] * DIMS
    v[5] = bad
    blob = f32(v)
    pattern = r"element 5 is not finite"
    expect_error(table, "INSERT INTO t(embedding) VALUES(?)", (blob,), pattern)
    expect_error(table, "SELECT clip_similarity(?, ?)", (blob, unit(0)), pattern)
    expect_error(table, "SELECT clip_vec_normalize(?)", (blob,), pattern)
    expect_error(table, "SELECT rowid FROM t WHERE t MATCH ? AND k = 1", (blob,), pattern)
    expect_error(table, "UPDATE t SET embedding = ? WHERE label = 'e0'", (blob,), pattern)
    unchanged(table)


def test_arithmetic_overflow_is_an_error(table):
    """A result that overflows float is refused (docs/fuzzing.md), never clamped or returned."""
    big = f32([3e38] * DIMS)
    expect_error(table, "SELECT clip_vec_add(?, ?)", (big, big), r"result: element 0 is not finite")
    expect_error(table, "SELECT clip_vec_scale(?, 1e30)", (big,),
                 r"result: element 0 is not finite")
    expect_error(table, "SELECT clip_vec_from_json('[1e39, 1]')", (),
                 r"JSON array of finite numbers")
    # a sum just inside the float range is still a result
    near = f32([1e38] * DIMS)
    out = table.execute("SELECT clip_vec_add(?, ?)", (near, near)).fetchone()[0]
    assert out == f32([2e38] * DIMS)


@pytest.mark.parametrize("scale", [1e20, 1e-30], ids=["huge", "tiny"])
def test_similarity_of_extreme_but_finite_vectors(table, scale):
    """A vector is a direction: scaling it (within float range) changes nothing."""
    v = f32([scale * (1 + i % 3) for i in range(DIMS)])
    n = table.execute("SELECT clip_vec_normalize(?)", (v,)).fetchone()[0]
    plain = f32([1 + i % 3 for i in range(DIMS)])
    ref = table.execute("SELECT clip_vec_normalize(?)", (plain,)).fetchone()[0]
    got, want = struct.unpack("<64f", n), struct.unpack("<64f", ref)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-6
    sim = table.execute("SELECT clip_similarity(?, ?)", (v, v)).fetchone()[0]
    assert sim is not None and abs(sim - 1.0) < 1e-6, f"clip_similarity(v, v) = {sim}"


@pytest.mark.parametrize("blob,pattern", [
    (b"", r"64 float32 values \(256 bytes\), got a BLOB of 0 bytes"),
    (b"\x00\x00\x80", r"got a BLOB of 3 bytes"),
    (f32([1.0] * 32), r"got a BLOB of 128 bytes"),
    (bytes(4 * 65537), r"got a BLOB of 262148 bytes"),
    (f32([0.0] * DIMS), r"a zero vector cannot be normalised"),
], ids=["empty", "odd-length", "wrong-dims", "too-long", "zero"])
def test_malformed_vector_blobs_in_the_table(table, blob, pattern):
    expect_error(table, "INSERT INTO t(embedding) VALUES(?)", (blob,), pattern)
    unchanged(table)


# ---------------------------------------------------------------- wrong SQL argument types

WRONG_TYPES = [
    ("SELECT clip_embed_text(42)", (), r"the text argument must be TEXT"),
    ("SELECT clip_embed_text(NULL)", (), r"the text argument must be TEXT"),
    ("SELECT clip_embed_text(x'00ff')", (), r"the text argument must be TEXT"),
    ("SELECT clip_embed_text('x', 42)", (), r"the model argument must be TEXT"),
    ("SELECT clip_embed_image(42)", (), r"BLOB of image bytes or a TEXT path or URL, not a number"),
    ("SELECT clip_similarity('a', 'b')", (), r"argument 1 must be a float32 vector BLOB"),
    ("SELECT clip_similarity(?, 1.5)", ("UNIT",), r"argument 2 must be a float32 vector BLOB"),
    ("SELECT clip_similarity(?, ?)", ("UNIT", "UNIT32"), r"differ in size \(64 and 32 floats\)"),
    ("SELECT clip_vec_add(?, NULL)", ("UNIT",),
     r"argument 2 must be a float32 vector BLOB, not NULL"),
    ("SELECT clip_vec_scale(?, 'x')", ("UNIT",), r"the factor must be a finite number"),
    ("SELECT clip_vec_to_json(42)", (), r"argument 1 must be a float32 vector BLOB"),
    ("SELECT clip_vec_from_json('not json')", (), r"invalid JSON at byte 1"),
    ("SELECT clip_vec_from_json('{\"a\": 1}')", (), r"non-empty JSON array"),
    ("SELECT clip_vec_from_json('[1, \"x\"]')", (), r"array of finite numbers"),
    ("SELECT clip_classify(?)", ("UNIT",), r"give at least one label"),
    ("SELECT rowid FROM t WHERE t MATCH 42 AND k = 1", (),
     r"MATCH query must be TEXT.*not a number"),
    ("SELECT rowid FROM t WHERE t MATCH NULL AND k = 1", (), r"MATCH query is NULL"),
    ("INSERT INTO t(embedding) VALUES('text not blob')", (), r"got a non-BLOB of 13 bytes"),
    ("INSERT INTO t(text) VALUES(x'61')", (), r"text must be TEXT"),
    ("INSERT INTO t(image) VALUES(42)", (), r"image must be a BLOB of image bytes or a TEXT path"),
    ("INSERT INTO t(label) VALUES('nothing to embed')", (), r"image, a text or an embedding"),
    ("INSERT INTO t(t) VALUES('frobnicate')", (), r"unknown command \"frobnicate\""),
    ("INSERT INTO t(t) VALUES(42)", (), r"a command must be TEXT"),
    ("SELECT * FROM clip_search('no_such_table', 'x')", (), r"no_such_table is not a clip table"),
    ("SELECT * FROM clip_search('t', 'x', -5)", (), r"k must be an integer from 1 to 100000"),
]


@pytest.mark.parametrize("sql,params,pattern", WRONG_TYPES, ids=[w[0][:60] for w in WRONG_TYPES])
def test_wrong_sql_argument_types(table, sql, params, pattern):
    subst = {"UNIT": unit(0), "UNIT32": unit(0, 32)}
    expect_error(table, sql, tuple(subst.get(p, p) for p in params), pattern)
    unchanged(table)


# ---------------------------------------------------------------- models and checkpoints

def model_copy(model_dir, tmp_path, name="m"):
    dst = tmp_path / name
    shutil.copytree(model_dir, dst)
    return dst


def rewrite_header(path, edit):
    """Applies edit(header_dict) to a safetensors file, keeping the data section as is."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])


def first_float_tensor(header):
    return next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F16")


def _offsets_past_end(h):
    h[first_float_tensor(h)]["data_offsets"][1] = 10**12


def _transpose_token_embedding(h):
    name = next(k for k in h if k.endswith("token_embedding.weight"))
    h[name]["shape"] = list(reversed(h[name]["shape"]))


def _wrong_dtype(h):
    name = next(k for k in h if k.endswith("token_embedding.weight"))
    h[name]["dtype"] = "I16"


def _drop_tensor(h):
    del h[next(k for k in h if k.endswith("text_projection.weight"))]


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _header_longer_than_file(p):
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", len(raw) * 4) + raw[8:])


def _not_json_header(p):
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    p.write_bytes(raw[:8] + b"\xff" * n + raw[8 + n:])


def _config(edit):
    def apply(d):
        p = d / "config.json"
        cfg = json.loads(p.read_text())
        edit(cfg)
        p.write_text(json.dumps(cfg))
    return apply


BROKEN_MODELS = [
    ("offsets-past-end", lambda d: rewrite_header(d / "model.safetensors", _offsets_past_end),
     r"tensor logit_scale: data_offsets \[0, 1000000000000\] past the end of the data"),
    ("truncated-file", lambda d: _truncate(d / "model.safetensors"),
     r"data_offsets \[\d+, \d+\] past the end of the data \(\d+ bytes; file truncated\?\)"),
    ("header-longer-than-file", lambda d: _header_longer_than_file(d / "model.safetensors"),
     r"header length \d+ exceeds the file size \d+"),
    ("header-not-json", lambda d: _not_json_header(d / "model.safetensors"),
     r"model\.safetensors: header: invalid JSON at byte 0"),
    ("wrong-shape", lambda d: rewrite_header(d / "model.safetensors", _transpose_token_embedding),
     r"has shape \[64, 49408\] but the config needs \[49408, 64\]"),
    ("wrong-dtype", lambda d: rewrite_header(d / "model.safetensors", _wrong_dtype),
     r"has unsupported dtype I16"),
    ("missing-tensor", lambda d: rewrite_header(d / "model.safetensors", _drop_tensor),
     r"missing tensor text_projection\.weight"),
    ("no-weights-file", lambda d: (d / "model.safetensors").unlink(),
     r"has no model\.safetensors; run `clipdb model pull"),
    ("absurd-hidden", _config(lambda c: c["text_config"].update(hidden_size=10**9)),
     r'"hidden_size" = 1000000000 is out of range \[1, 8192\]'),
    ("absurd-layers", _config(lambda c: c["vision_config"].update(num_hidden_layers=10**6)),
     r'"num_hidden_layers" = 1000000 is out of range \[1, 256\]'),
    ("absurd-vocab", _config(lambda c: c["text_config"].update(vocab_size=2**40)),
     r'"vocab_size" = 1099511627776 is out of range'),
    ("absurd-image-size", _config(lambda c: c["vision_config"].update(image_size=10**6)),
     r'"image_size" = 1000000 is out of range'),
    ("negative-heads", _config(lambda c: c["text_config"].update(num_attention_heads=-2)),
     r'"num_attention_heads" = -2 is out of range'),
    ("ln-eps-underflows-float",
     _config(lambda c: c["text_config"].update(layer_norm_eps=1e-51)),
     r"layer_norm_eps 1e-51 out of range \[1e-12, 1\)"),
    ("string-size", _config(lambda c: c.update(projection_dim="64")),
     r'"projection_dim" must be an integer'),
    ("config-disagrees-with-weights", _config(lambda c: c["text_config"].update(hidden_size=128)),
     r"has shape \[49408, 64\] but the config needs \[49408, 128\]"),
    ("config-not-json", lambda d: (d / "config.json").write_text("{not json"),
     r"config\.json: invalid JSON at byte 1"),
    ("vocab-missing", lambda d: (d / "vocab.json").unlink(), r"no vocab\.json.*clipdb model pull"),
    ("merges-missing", lambda d: (d / "merges.txt").unlink(), r"no merges\.txt"),
]

# The tokenizer is loaded on first text use (a text query never needs the vision weights and
# vice versa): the model loads, text fails with the message, images still embed.
BROKEN_TOKENIZERS = [
    ("vocab-not-json", lambda d: (d / "vocab.json").write_text("[1, 2"),
     r"vocab\.json: expected a JSON object of token -> id"),
    ("merges-garbage", lambda d: (d / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe\n"),
     r"merges\.txt: not UTF-8 text"),
]


@pytest.mark.parametrize("name,breaker,pattern", BROKEN_MODELS, ids=[b[0] for b in BROKEN_MODELS])
def test_broken_checkpoints_sql(conn, model_dir, tmp_path, name, breaker, pattern):
    d = model_copy(model_dir, tmp_path, name)
    breaker(d)
    expect_error(conn, "SELECT clip_model('bad', ?)", (str(d),), pattern)
    expect_error(conn, "SELECT clip_embed_text('a red star', ?)", (str(d),), pattern)


@pytest.mark.parametrize("name,breaker,pattern", BROKEN_TOKENIZERS,
                         ids=[b[0] for b in BROKEN_TOKENIZERS])
def test_broken_tokenizer_files(conn, model_dir, tmp_path, name, breaker, pattern):
    d = model_copy(model_dir, tmp_path, name)
    breaker(d)
    info = json.loads(conn.execute("SELECT clip_model('bad', ?)", (str(d),)).fetchone()[0])
    assert info["dims"] == DIMS
    expect_error(conn, "SELECT clip_embed_text('a red star', 'bad')", (), pattern)
    img = os.path.join(os.path.dirname(__file__), "..", "data", "goldens", "images")
    png = os.path.join(img, next(p for p in sorted(os.listdir(img)) if p.endswith(".png")))
    v = conn.execute("SELECT clip_embed_image(?, 'bad')", (png,)).fetchone()[0]
    assert len(v) == 4 * DIMS


def test_empty_option_values(conn):
    for opt in ["model=''", "index=''", 'index=""', "dims=''"]:
        msg = expect_error(conn, f"CREATE VIRTUAL TABLE u USING clip({opt})", (),
                           r"option (model|index)= is empty|option dims=: expected an integer")
        assert "out of memory" not in msg


@pytest.mark.parametrize("name,breaker,pattern",
                         [b for b in BROKEN_MODELS if b[0] in
                          ("offsets-past-end", "header-longer-than-file", "absurd-hidden",
                           "wrong-shape")], ids=lambda x: x if isinstance(x, str) else "")
def test_broken_checkpoints_cli(clipdb_bin, model_dir, tmp_path, name, breaker, pattern):
    d = model_copy(model_dir, tmp_path, name)
    breaker(d)
    r = subprocess.run([clipdb_bin, "--model", str(d), "embed", "--text", "a red star"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert re.search(pattern, r.stderr, re.I), r.stderr
    assert "Sanitizer" not in r.stderr and "Segmentation" not in r.stderr


UNKNOWN_MODEL_REASONS = {
    "/nonexistent/model-dir": r'model "/nonexistent/model-dir": no such directory',
    "no-such-org/no-such-model": r'"no-such-org/no-such-model" is not in the cache .*; '
                                 r'run `clipdb model pull no-such-org/no-such-model',
    "../../etc": r"model directory /\S*/dotdot-root/etc has no config\.json",
    "bad name with spaces": r'model "bad name with spaces": no such directory',
    "": r'unset-model": no such directory',
}


@pytest.mark.parametrize("model", ["/nonexistent/model-dir", "no-such-org/no-such-model",
                                   "../../etc", "bad name with spaces", ""],
                         ids=["missing-dir", "unknown-hub-name", "dotdot", "spaces", "empty"])
def test_unknown_models(conn, tmp_path, monkeypatch, model):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # "../../etc" must resolve to a real folder without config.json wherever the checkout is
    root = tmp_path / "dotdot-root"
    (root / "etc").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(root / "a" / "b")
    if model == "":
        monkeypatch.setenv("CLIPDB_MODEL", str(tmp_path / "unset-model"))
    reason = UNKNOWN_MODEL_REASONS[model]
    msg = expect_error(conn, "SELECT clip_embed_text('x', ?)", (model or None,), reason)
    assert len(msg) < 2000
    opts = "model='%s'" % model.replace("'", "''") if model else ""  # "": the default model
    expect_error(conn, f"CREATE VIRTUAL TABLE u USING clip({opts})", (), reason)


def test_unknown_model_cli(clipdb_bin, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("CLIPDB_MODEL", None)
    r = subprocess.run([clipdb_bin, "--model", "no-such-org/no-such-model", "embed", "--text", "x"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stderr
    assert re.search(r'"no-such-org/no-such-model" is not in the cache .*; '
                     r"run `clipdb model pull no-such-org/no-such-model`", r.stderr), r.stderr


# ---------------------------------------------------------------- CLI

def test_cli_index_skips_bad_images_and_keeps_good_ones(clipdb_bin, model_dir, bad_dir, tmp_path):
    src = os.path.join(os.path.dirname(__file__), "..", "data", "goldens", "images")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    good = sorted(os.listdir(src))[:3]
    for g in good:
        shutil.copy(os.path.join(src, g), imgs / g)
    for b in os.listdir(bad_dir):
        shutil.copy(bad_dir / b, imgs / b)
    db = tmp_path / "cli.db"
    env = dict(os.environ, CLIPDB_MODEL=model_dir)
    r = subprocess.run([clipdb_bin, "--db", str(db), "index", str(imgs)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert "Sanitizer" not in r.stderr and "Segmentation" not in r.stderr
    for b in os.listdir(bad_dir):
        assert b in r.stderr, f"{b} not reported: {r.stderr}"
    r2 = subprocess.run([clipdb_bin, "--db", str(db), "search", "a red square", "-n", "10"],
                        capture_output=True, text=True, timeout=60, env=env)
    assert r2.returncode == 0, r2.stderr
    for g in good:
        assert g in r2.stdout, f"good image {g} missing: {r2.stdout}"
    for b in os.listdir(bad_dir):
        assert b not in r2.stdout


@pytest.mark.parametrize("args,code,pattern", [
    (["search", "x", "-n", "-1"], 2, r"-n|top|range|invalid"),
    (["search", "x", "-n", "99999999999999999999"], 2, r"-n|top|range|invalid"),
    (["search", "x", "-n", "abc"], 2, r"-n|top|number|invalid"),
    (["no-such-command"], 2, r"command|unknown"),
], ids=["k-negative", "k-huge", "k-text", "unknown-command"])
def test_cli_bad_arguments(clipdb_bin, model_dir, tmp_path, args, code, pattern):
    env = dict(os.environ, CLIPDB_MODEL=model_dir)
    r = subprocess.run([clipdb_bin, "--db", str(tmp_path / "x.db")] + args, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert re.search(pattern, r.stderr, re.I), r.stderr


def test_cli_long_query_and_invalid_utf8(clipdb_bin, model_dir, tmp_path):
    env = dict(os.environ, CLIPDB_MODEL=model_dir)
    db = str(tmp_path / "q.db")
    r = subprocess.run([clipdb_bin, "--db", db, "embed", "--text", "a red star " * 10000],
                       capture_output=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([clipdb_bin, "--db", db, "embed", "--text", b"caf\xc3 \xff"],
                       capture_output=True, timeout=60, env=env)
    assert r.returncode == 1 and re.search(rb"utf-?8", r.stderr, re.I), r.stderr


def tga_image(width=32, height=32):
    """An uncompressed 24-bit true-colour TGA (a format libvips reads only through its
    ImageMagick loader, which it marks untrusted): a red square on blue, bottom-up rows."""
    header = struct.pack("<BBBHHBHHHHBB", 0, 0, 2, 0, 0, 0, 0, 0, width, height, 24, 0)
    rows = []
    for y in range(height):
        inside = height // 4 <= y < 3 * height // 4
        rows.append(b"".join(b"\x00\x00\xff" if inside and width // 4 <= x < 3 * width // 4
                             else b"\xff\x00\x00" for x in range(width)))  # BGR
    return header + b"".join(rows)


def test_untrusted_libvips_loaders_are_refused(table, tmp_path):
    """libvips' ImageMagick loader (vips-magick) would decode this TGA; clipdb disables the
    loaders libvips marks untrusted and says the format is not supported."""
    tga = tmp_path / "square.tga"
    tga.write_bytes(tga_image())
    for source in (str(tga), tga.read_bytes()):
        expect_error(table, "SELECT clip_embed_image(?)", (source,), r"format not supported")
    expect_error(table, "INSERT INTO t(image, label) VALUES(?, 'tga')", (str(tga),),
                 r"format not supported")
    unchanged(table)
