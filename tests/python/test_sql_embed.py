"""Embed-on-insert with the tiny shapes model: text->image, image->image, image->text search over
the demo images, agreement with clip_embed_* and the goldens, classification, model identity."""
import functools
import http.server
import json
import math
import os
import pathlib
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]


def vec(b):
    return np.frombuffer(b, dtype="<f4").astype(np.float64)


def demo_files(demo_dir):
    return sorted(p for p in demo_dir.iterdir() if p.is_file())


@pytest.fixture
def photos(conn, demo_dir, model_dir):
    conn.execute(f"create virtual table photos using clip(model='{model_dir}', name TEXT)")
    files = demo_files(demo_dir)
    with conn:
        for p in files:
            conn.execute("insert into photos(image, name) values (?, ?)", (str(p), p.name))
    return conn, files


def test_text_query_ranks_red_stars_first(photos, demo_dir):
    db, files = photos
    red_stars = [p.name for p in files if "red-star" in p.name]
    assert len(red_stars) >= 2
    got = db.execute("select name from photos where photos match 'a red star' and k = ?",
                     (len(red_stars),)).fetchall()
    assert sorted(r[0] for r in got) == sorted(red_stars)
    # Same through LIMIT and through clip_search.
    got = db.execute("select name from photos where photos match 'a red star' limit 2").fetchall()
    assert all("red-star" in r[0] for r in got)
    got = db.execute("select metadata from clip_search('photos', 'a red star', 2)").fetchall()
    assert all("red-star" in json.loads(r[0])["name"] for r in got)


def test_stored_embeddings_equal_function_outputs(photos, demo_dir):
    db, files = photos
    path = demo_dir / "055-red-star-on-blue.png"
    by_path = db.execute("select clip_embed_image(?)", (str(path),)).fetchone()[0]
    by_bytes = db.execute("select clip_embed_image(?)", (path.read_bytes(),)).fetchone()[0]
    stored = db.execute("select embedding from photos where name = ?", (path.name,)).fetchone()[0]
    assert len(by_path) == 64 * 4
    np.testing.assert_allclose(vec(by_path), vec(by_bytes), atol=1e-6)
    np.testing.assert_allclose(vec(stored), vec(by_path), atol=1e-6)
    assert abs(np.linalg.norm(vec(stored)) - 1) < 1e-5


def test_knn_equals_brute_force_over_images(photos):
    db, _ = photos
    rows = db.execute("select rowid, embedding from photos").fetchall()
    ids = np.array([r[0] for r in rows])
    m = np.array([vec(r[1]) for r in rows])
    for text in ["a blue square", "a green cross on a black background", "a white circle"]:
        q = vec(db.execute("select clip_embed_text(?)", (text,)).fetchone()[0])
        order = np.argsort(-(m @ q), kind="stable")[:5]
        got = db.execute("select rowid, distance from photos where photos match ? and k = 5",
                         (text,)).fetchall()
        assert [r[0] for r in got] == list(ids[order])
        np.testing.assert_allclose([r[1] for r in got], 1 - (m @ q)[order], atol=1e-5)


def test_image_to_image_finds_near_duplicate(photos, demo_dir):
    db, _ = photos
    src = demo_dir / "000-orange-circle-on-purple.jpg"
    got = db.execute("select name, distance from photos where photos match ? and k = 2",
                     (src.read_bytes(),)).fetchall()
    assert got[0][0] == src.name and got[0][1] < 1e-4
    assert got[1][0] == "000-orange-circle-on-purple-copy.jpg"


def test_image_to_text_over_captions(conn, demo_dir, model_dir):
    conn.execute(f"create virtual table captions using clip(model='{model_dir}')")
    with conn:
        for c in COLOURS:
            for s in SHAPES:
                conn.execute("insert into captions(text) values (?)", (f"a {c} {s}",))
    images = [p for p in demo_files(demo_dir) if p.name[:3].isdigit() and "copy" not in p.name]
    right = 0
    for p in images:
        colour, shape = p.name.split("-")[1:3]
        top = conn.execute("select text from captions where captions match ? and k = 1",
                           (p.read_bytes(),)).fetchone()[0]
        right += top == f"a {colour} {shape}"
    assert right / len(images) >= 0.95, f"{right}/{len(images)}"  # measured 58/60


def test_text_rows_embed_text_and_updates_reembed(conn, model_dir, demo_dir):
    conn.execute(f"create virtual table t using clip(model='{model_dir}')")
    conn.execute("insert into t(rowid, text) values (1, 'a red star')")
    stored = conn.execute("select embedding from t where rowid = 1").fetchone()[0]
    ref = conn.execute("select clip_embed_text('a red star')").fetchone()[0]
    np.testing.assert_allclose(vec(stored), vec(ref), atol=1e-6)
    conn.execute("update t set text = 'a blue square' where rowid = 1")
    ref = conn.execute("select clip_embed_text('a blue square')").fetchone()[0]
    np.testing.assert_allclose(vec(conn.execute("select embedding from t").fetchone()[0]),
                               vec(ref), atol=1e-6)
    img = demo_dir / "010-blue-star-on-orange.png"
    conn.execute("update t set image = ? where rowid = 1", (img.read_bytes(),))
    ref = conn.execute("select clip_embed_image(?)", (str(img),)).fetchone()[0]
    np.testing.assert_allclose(vec(conn.execute("select embedding from t").fetchone()[0]),
                               vec(ref), atol=1e-6)
    # A text edit on a row with an image keeps the image's vector.
    conn.execute("update t set text = 'caption' where rowid = 1")
    np.testing.assert_allclose(vec(conn.execute("select embedding from t").fetchone()[0]),
                               vec(ref), atol=1e-6)


def test_embed_text_matches_goldens(conn):
    """Every golden text through SQL, to about 10x the encoder's measured error (1.6e-7)."""
    goldens = json.loads((pathlib.Path(__file__).parents[1] / "data" / "goldens" /
                          "goldens.json").read_text())
    checked = 0
    for t in goldens["texts"]:
        if not t["text"].strip():
            continue  # clip_embed_text refuses an empty text (test_sql_functions)
        ref = np.array(t["embedding"], dtype=np.float64)
        got = vec(conn.execute("select clip_embed_text(?)", (t["text"],)).fetchone()[0])
        np.testing.assert_allclose(got, ref / np.linalg.norm(ref), rtol=0, atol=2e-6,
                                   err_msg=t["text"])
        checked += 1
    assert checked >= 38


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_classify_matches_reference(conn, demo_dir):
    goldens_scale = 2.974609375  # tests/data/goldens/goldens.json logit_scale
    img = str(demo_dir / "055-red-star-on-blue.png")
    labels = ["red star", "blue star", "red circle", "green square"]
    out = json.loads(conn.execute("select clip_classify(?, ?, ?, ?, ?)", [img] + labels)
                     .fetchone()[0])
    assert out[0]["label"] == "red star"
    assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
    e = vec(conn.execute("select clip_embed_image(?)", (img,)).fetchone()[0])
    t = [vec(conn.execute("select clip_embed_text(?)", (f"a photo of a {lab}.",)).fetchone()[0])
         for lab in labels]
    ref = softmax(np.exp(goldens_scale) * np.array([e @ x for x in t]))
    got = {o["label"]: o["score"] for o in out}
    np.testing.assert_allclose([got[lab] for lab in labels], ref, rtol=1e-4, atol=1e-6)
    # Template ensembling: normalise each prompt, average, renormalise.
    templates = ["a photo of a {}.", "a drawing of a {}"]
    out = json.loads(conn.execute("select clip_classify_templates(?, ?, ?, ?)",
                                  (img, json.dumps(templates), labels[0], labels[1])).fetchone()[0])
    cls = []
    for lab in labels[:2]:
        vs = [vec(conn.execute("select clip_embed_text(?)", (tp.replace("{}", lab),)).fetchone()[0])
              for tp in templates]
        m = np.mean(vs, axis=0)
        cls.append(m / np.linalg.norm(m))
    ref = softmax(np.exp(goldens_scale) * np.array([e @ x for x in cls]))
    got = {o["label"]: o["score"] for o in out}
    np.testing.assert_allclose([got[lab] for lab in labels[:2]], ref, rtol=1e-4, atol=1e-6)
    # A stored embedding may stand in for the image.
    emb = conn.execute("select clip_embed_image(?)", (img,)).fetchone()[0]
    out2 = json.loads(conn.execute("select clip_classify(?, 'red star', 'blue star')", (emb,))
                      .fetchone()[0])
    assert out2[0]["label"] == "red star"


def test_model_identity_is_enforced(tmp_path, ext_path, model_dir, monkeypatch):
    monkeypatch.delenv("CLIPDB_MODEL", raising=False)
    other = tmp_path / "other-model"
    other.mkdir()
    for f in (pytest.importorskip("pathlib").Path(model_dir)).iterdir():
        if f.name != "config.json":
            (other / f.name).symlink_to(f)
    (other / "config.json").write_text((pytest.importorskip("pathlib").Path(model_dir) /
                                        "config.json").read_text() + "\n")
    path = tmp_path / "m.db"
    db = sqlite3.connect(path)
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    info = json.loads(db.execute("select clip_model('shapes', ?)", (model_dir,)).fetchone()[0])
    assert info["dims"] == 64 and len(info["identity"]) == 64
    db.execute("create virtual table t using clip(model=shapes)")
    db.execute("insert into t(text) values ('a red star')")
    db.commit()
    db.close()
    db = sqlite3.connect(path)
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    # Precomputed-vector queries need no model at all.
    q = np.ones(64, dtype="<f4").tobytes()
    assert len(db.execute("select rowid from t where t match ? and k = 1", (q,)).fetchall()) == 1
    with pytest.raises(sqlite3.OperationalError, match="register it with"):
        db.execute("select rowid from t where t match 'a star' and k = 1").fetchall()
    db.execute("select clip_model('shapes', ?)", (str(other),))
    with pytest.raises(sqlite3.OperationalError, match="different model"):
        db.execute("select rowid from t where t match 'a star' and k = 1").fetchall()
    db.close()
    db = sqlite3.connect(path)
    db.enable_load_extension(True)
    db.load_extension(ext_path)
    db.execute("select clip_model('shapes', ?)", (model_dir,))
    assert db.execute("select text from t where t match 'a star' and k = 1").fetchone()[0] == \
        "a red star"
    db.close()


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="sqlite3 shell not installed")
def test_shell_text_search(ext_path, model_dir, demo_dir, tmp_path):
    db = tmp_path / "shell.db"
    stars = [p for p in demo_files(demo_dir) if "star" in p.name]
    stars = [p for p in stars if "red-star" in p.name] + [p for p in stars if "red" not in p.name][:4]
    sql = [f".load {ext_path}",
           f"create virtual table p using clip(model='{model_dir}', name TEXT)"]
    sql += [f"insert into p(image, name) values ('{p}', '{p.name}')" for p in stars]
    sql += ["select name from p where p match 'a red star' and k = 1"]
    out = subprocess.run(["sqlite3", str(db)] + sql, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "red-star" in out.stdout.strip()


@pytest.fixture
def http_demo(demo_dir):
    """A loopback HTTP server over the demo images."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(demo_dir))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_image_urls_are_fetched_and_stored_as_given(conn, model_dir, demo_dir, http_demo):
    conn.execute(f"create virtual table u using clip(model='{model_dir}')")
    url = f"{http_demo}/055-red-star-on-blue.png"
    conn.execute("insert into u(rowid, image) values (1, ?)", (url,))
    image, emb = conn.execute("select image, embedding from u where rowid = 1").fetchone()
    assert image == url
    ref = conn.execute("select clip_embed_image(?)", (str(demo_dir / "055-red-star-on-blue.png"),))
    np.testing.assert_allclose(vec(emb), vec(ref.fetchone()[0]), atol=1e-6)
    with pytest.raises(sqlite3.OperationalError, match="404|not found|HTTP"):
        conn.execute("insert into u(image) values (?)", (f"{http_demo}/missing.png",))
    assert conn.execute("select count(*) from u").fetchone()[0] == 1


def test_embedding_wins_over_image_and_image_over_text(conn, model_dir, demo_dir):
    """Documented precedence on INSERT: a non-NULL embedding is stored as given (normalised),
    else the image is embedded, else the text."""
    conn.execute(f"create virtual table t using clip(model='{model_dir}')")
    img = demo_dir / "010-blue-star-on-orange.png"
    given = np.zeros(64, dtype="<f4")
    given[5] = 2.0
    conn.execute("insert into t(rowid, image, text, embedding) values (1, ?, 'a red star', ?)",
                 (str(img), given.tobytes()))
    conn.execute("insert into t(rowid, image, text) values (2, ?, 'a red star')", (str(img),))
    conn.execute("insert into t(rowid, text, embedding) values (3, 'a red star', ?)",
                 (given.tobytes(),))
    stored = {r: vec(e) for r, e in conn.execute("select rowid, embedding from t")}
    unit5 = np.eye(64)[5]
    image = vec(conn.execute("select clip_embed_image(?)", (str(img),)).fetchone()[0])
    text = vec(conn.execute("select clip_embed_text('a red star')").fetchone()[0])
    assert np.array_equal(stored[1], unit5) and np.array_equal(stored[3], unit5)
    np.testing.assert_allclose(stored[2], image, rtol=0, atol=1e-6)
    assert abs(stored[2] @ text) < 0.999  # not the text's vector
    # the row keeps what it was given
    assert conn.execute("select image, text from t where rowid = 1").fetchone() == \
        (str(img), "a red star")


def test_clip_model_default_replaces_the_default(conn, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDB_MODEL", str(tmp_path / "no-model-here"))
    with pytest.raises(sqlite3.OperationalError, match="no-model-here\": no such directory"):
        conn.execute("select clip_embed_text('a red star')").fetchone()
    info = json.loads(conn.execute("select clip_model('default', ?)", (model_dir,)).fetchone()[0])
    assert info["name"] == "default" and info["dims"] == 64
    got = conn.execute("select clip_embed_text('a red star')").fetchone()[0]
    by_path = conn.execute("select clip_embed_text('a red star', ?)", (model_dir,)).fetchone()[0]
    assert got == by_path
    # a table created without model= uses it too
    conn.execute("create virtual table t using clip()")
    conn.execute("insert into t(text) values ('a red star')")
    assert conn.execute("select embedding from t").fetchone()[0] == got


def test_clip_model_resolves_cached_hub_names(conn, model_dir, tmp_path, monkeypatch, ext_path):
    """clip_model(name, REF) and clipdb.connect(model=REF) resolve REF as every other place does:
    a hub name pulled into the model cache, not only a folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copytree(model_dir, tmp_path / "cache" / "clipdb" / "models" / "shapes-org--tiny-clip")
    by_path = conn.execute("select clip_embed_text('a red star', ?)", (model_dir,)).fetchone()[0]
    by_name = conn.execute("select clip_embed_text('a red star', 'shapes-org/tiny-clip')").fetchone()[0]
    info = json.loads(conn.execute("select clip_model('default', 'shapes-org/tiny-clip')").fetchone()[0])
    assert info["dims"] == 64
    assert conn.execute("select clip_embed_text('a red star')").fetchone()[0] == by_path == by_name
    with pytest.raises(sqlite3.OperationalError, match="no-org/no-model.*model pull"):
        conn.execute("select clip_model('x', 'no-org/no-model')").fetchone()
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bindings" / "python"))
    try:
        import clipdb
        monkeypatch.setenv("CLIPDB_EXTENSION", ext_path)
        db = clipdb.connect(":memory:", model="shapes-org/tiny-clip")
        assert db.execute("select clip_embed_text('a red star')").fetchone()[0] == by_path
        db.close()
    finally:
        sys.path.pop(0)


def run_embed(ext_path, model_dir, env_extra, sql, params=()):
    """Runs one SQL query in a fresh process (environment variables are read once per process):
    prints its result as JSON, or {"error": message}; also reports the process's threads."""
    script = (
        "import json, os, sqlite3, sys\n"
        "db = sqlite3.connect(':memory:')\n"
        "db.enable_load_extension(True)\n"
        "db.load_extension(sys.argv[1])\n"
        "params = json.loads(sys.argv[3])\n"
        "try:\n"
        "    r = db.execute(sys.argv[2], params).fetchone()[0]\n"
        "    out = {'value': r.hex() if isinstance(r, bytes) else r}\n"
        "except sqlite3.Error as e:\n"
        "    out = {'error': str(e)}\n"
        "out['threads'] = len(os.listdir('/proc/self/task'))\n"
        "print(json.dumps(out))\n")
    env = dict(os.environ, CLIPDB_MODEL=model_dir, OMP_NUM_THREADS="1", **env_extra)
    r = subprocess.run([sys.executable, "-c", script, ext_path, sql, json.dumps(list(params))],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_max_image_pixels_from_the_environment(ext_path, model_dir, demo_dir):
    img = str(demo_dir / "010-blue-star-on-orange.png")
    w, h = struct.unpack(">II", (demo_dir / "010-blue-star-on-orange.png").read_bytes()[16:24])
    sql = "select clip_embed_image(?)"
    small = run_embed(ext_path, model_dir, {"CLIPDB_MAX_IMAGE_PIXELS": str(w * h - 1)}, sql, [img])
    assert f"image is {w}x{h} pixels, more than the {w * h - 1} allowed" in small["error"], small
    exact = run_embed(ext_path, model_dir, {"CLIPDB_MAX_IMAGE_PIXELS": str(w * h)}, sql, [img])
    assert "value" in exact, exact


def test_threads_from_the_environment(ext_path, model_dir, demo_dir):
    """CLIPDB_THREADS sizes the encoder's pool: the process gains that many threads less one
    (the caller works too) when it first embeds, and the embedding does not change."""
    img = str(demo_dir / "010-blue-star-on-orange.png")
    sql = "select clip_embed_image(?)"
    runs = {n: run_embed(ext_path, model_dir, {"CLIPDB_THREADS": str(n)}, sql, [img])
            for n in (1, 4)}
    assert runs[1]["value"] == runs[4]["value"]
    assert runs[4]["threads"] - runs[1]["threads"] == 3, runs


# ---------------------------------------------------------------- a numpy reference text tower

def load_checkpoint(model_dir):
    raw = (pathlib.Path(model_dir) / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    dtypes = {"F16": "<f2", "F32": "<f4", "I64": "<i8"}
    return {name: np.frombuffer(raw[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]],
                                dtype=dtypes[t["dtype"]]).reshape(t["shape"]).astype(np.float64)
            for name, t in header.items() if name != "__metadata__"}


def reference_text_features(weights, cfg, ids):
    """CLIP's text tower in float64 numpy (pre-LN transformer, causal attention, pooled at the
    first end-of-text token, projected), written from the published architecture."""
    tc = cfg["text_config"]
    width, heads, eps = tc["hidden_size"], tc["num_attention_heads"], tc["layer_norm_eps"]
    erf = np.vectorize(math.erf)
    act = {"quick_gelu": lambda x: x / (1 + np.exp(-1.702 * x)),
           "gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))}[tc["hidden_act"]]

    def w(name):
        return weights["text_model." + name]

    def norm(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w(name + ".weight") + w(name + ".bias")

    def linear(x, name):
        return x @ w(name + ".weight").T + w(name + ".bias")
    n = ids.index(49407) + 1  # causal: tokens after the first EOT do not change it
    x = (w("embeddings.token_embedding.weight")[ids[:n]] +
         w("embeddings.position_embedding.weight")[:n])
    mask = np.triu(np.full((n, n), -np.inf), 1)
    d = width // heads
    for layer in range(tc["num_hidden_layers"]):
        p = f"encoder.layers.{layer}."
        h = norm(x, p + "layer_norm1")
        q, k, v = (linear(h, p + f"self_attn.{m}_proj").reshape(n, heads, d).transpose(1, 0, 2)
                   for m in "qkv")
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d) + mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + linear((a @ v).transpose(1, 0, 2).reshape(n, width), p + "self_attn.out_proj")
        x = x + linear(act(linear(norm(x, p + "layer_norm2"), p + "mlp.fc1")), p + "mlp.fc2")
    pooled = norm(x, "final_layer_norm")[n - 1]
    return pooled @ weights["text_projection.weight"].T


def goldens_texts():
    return json.loads((pathlib.Path(__file__).parents[1] / "data" / "goldens" /
                       "goldens.json").read_text())["texts"]


def test_reference_text_tower_reproduces_the_goldens(model_dir):
    """The numpy reference is itself checked against the goldens of the reference CLIP."""
    weights = load_checkpoint(model_dir)
    cfg = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    for t in goldens_texts():
        got = reference_text_features(weights, cfg, t["ids"])
        np.testing.assert_allclose(got, t["embedding"], rtol=0, atol=1e-5, err_msg=t["text"])


def test_gelu_activation_end_to_end(conn, model_dir, tmp_path):
    """hidden_act = "gelu" (exact, erf-based) in config.json selects GELU in both towers: text
    embeddings agree with the numpy reference run with GELU, and differ from quick_gelu's."""
    d = tmp_path / "tiny-gelu"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["hidden_act"] = cfg["vision_config"]["hidden_act"] = "gelu"
    (d / "config.json").write_text(json.dumps(cfg))
    weights = load_checkpoint(d)
    worst = 0.0
    for t in goldens_texts()[:12]:
        ref = reference_text_features(weights, cfg, t["ids"])
        ref /= np.linalg.norm(ref)
        got = vec(conn.execute("select clip_embed_text(?, ?)", (t["text"], str(d))).fetchone()[0])
        quick = vec(conn.execute("select clip_embed_text(?)", (t["text"],)).fetchone()[0])
        worst = max(worst, float(np.max(np.abs(got - ref))))
        assert float(np.max(np.abs(quick - ref))) > 1e-3, t["text"]
    assert worst < 2e-6, worst


def bmp_bytes(w=4, h=3):
    """A valid 24-bit BMP (bottom-up rows padded to 4 bytes)."""
    import struct
    row = bytes([0, 0, 255] * w) + b"\0" * ((4 - 3 * w % 4) % 4)
    pixels = row * h
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


@pytest.mark.parametrize("kind", ["bmp", "ppm", "pgm"])
def test_formats_only_untrusted_decoders_read_say_not_supported(conn, kind):
    """libvips reads BMP and netpbm only through decoders it marks untrusted, which clipdb blocks:
    the error says so plainly instead of naming a blocked libvips operation."""
    data = {"bmp": bmp_bytes(), "ppm": b"P6\n2 2\n255\n" + bytes(range(12)),
            "pgm": b"P5\n2 2\n255\n\x00\x40\x80\xff"}[kind]
    with pytest.raises(sqlite3.OperationalError, match="format not supported") as e:
        conn.execute("select clip_embed_image(?)", (data,)).fetchone()
    assert "blocked" not in str(e.value) and "magick" not in str(e.value)
