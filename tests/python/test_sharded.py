"""Sharded checkpoints (model.safetensors.index.json naming the shard of each tensor, as
transformers writes them for large models) load, pull and are found in the Hugging Face cache.

The sharded model is built here from the tiny fixture: its tensors split over three shard files
(each a valid safetensors file, 8-byte aligned as the reference writer pads them) and an index in
the layout transformers writes. The oracle: the same fixture loaded from its single file, whose
embeddings the sharded copy must reproduce bit for bit."""
import hashlib
import json
import os
import pathlib
import shutil
import sqlite3
import struct
import subprocess

import pytest

import hubserver
from conftest import connect
from test_hf_cache import build_hf_cache, dead_endpoint

INDEX = "model.safetensors.index.json"
REPO = "clipdb-test/tiny-shapes"
TEXTS = ["a red star", "a blue circle on a white background", "x"]
IMAGES = ["000-orange-circle-on-purple.jpg", "001-black-circle-on-red.png",
          "003-black-cross-on-white.webp"]


def read_safetensors(path):
    """path -> (metadata or None, {name: (dtype, shape, raw bytes)}) in file order."""
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    body = data[8 + n:]
    tensors = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        tensors[name] = (t["dtype"], t["shape"], body[start:end])
    return meta, tensors


def write_safetensors(path, tensors, meta=None):
    """{name: (dtype, shape, raw bytes)} -> a safetensors file, header padded to 8 bytes."""
    header, chunks, offset = {}, [], 0
    if meta is not None:
        header["__metadata__"] = meta
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    pathlib.Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def shard_name(i, n):
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def make_sharded(src, dst, n_shards=3):
    """A copy of the model folder src with its weights split over n_shards files and an index;
    returns {tensor: shard file}."""
    dst = pathlib.Path(dst)
    dst.mkdir(parents=True)
    for f in pathlib.Path(src).iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    meta, tensors = read_safetensors(pathlib.Path(src) / "model.safetensors")
    names = list(tensors)
    weight_map, total = {}, 0
    for i in range(n_shards):
        part = {k: tensors[k] for k in names[i * len(names) // n_shards:
                                             (i + 1) * len(names) // n_shards]}
        write_safetensors(dst / shard_name(i, n_shards), part, {"format": "pt"})
        weight_map.update({k: shard_name(i, n_shards) for k in part})
        total += sum(len(raw) for _, _, raw in part.values())
    write_index(dst, {"metadata": {"total_size": total},
                      "weight_map": dict(sorted(weight_map.items()))})
    return weight_map


def write_index(model, index):
    (pathlib.Path(model) / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def read_index(model):
    return json.loads((pathlib.Path(model) / INDEX).read_text())


def embeddings(db, model, demo_dir):
    """Every text and image embedding of the model (raw BLOBs), through SQL."""
    out = [db.execute("select clip_embed_text(?, ?)", (t, str(model))).fetchone()[0]
           for t in TEXTS]
    out += [db.execute("select clip_embed_image(?, ?)", (str(demo_dir / i), str(model)))
            .fetchone()[0] for i in IMAGES]
    return out


@pytest.fixture
def sharded(tmp_path, model_dir):
    path = tmp_path / "sharded"
    make_sharded(model_dir, path)
    return path


def test_sharded_model_embeds_bit_identically(sharded, model_dir, ext_path, demo_dir):
    assert not (sharded / "model.safetensors").exists()
    assert len(set(read_index(sharded)["weight_map"].values())) == 3
    db = connect(":memory:", ext_path)
    want = embeddings(db, model_dir, demo_dir)
    got = embeddings(db, sharded, demo_dir)
    assert all(isinstance(v, bytes) and len(v) == 64 * 4 for v in want)
    assert got == want
    db.close()


def test_single_file_wins_over_an_index(sharded, model_dir, ext_path, demo_dir):
    """With both, model.safetensors is loaded: a broken index next to it changes nothing."""
    shutil.copy(pathlib.Path(model_dir) / "model.safetensors", sharded / "model.safetensors")
    (sharded / INDEX).write_text("{broken")
    for shard in sharded.glob("model-*.safetensors"):
        shard.unlink()
    db = connect(":memory:", ext_path)
    assert embeddings(db, sharded, demo_dir) == embeddings(db, model_dir, demo_dir)
    db.close()


def test_sharded_table_identity_changes_with_a_shard(sharded, ext_path, tmp_path):
    """A table made with the sharded model refuses the model once any shard's weights change."""
    db = connect(str(tmp_path / "t.db"), ext_path)
    db.execute(f"create virtual table t using clip(model='{sharded}')")
    db.execute("insert into t(rowid, text) values (1, 'a red star')")
    db.close()
    last = sorted(sharded.glob("model-*.safetensors"))[-1]
    meta, tensors = read_safetensors(last)
    name = next(iter(tensors))
    dtype, shape, raw = tensors[name]
    tensors[name] = (dtype, shape, bytes([raw[0] ^ 1]) + raw[1:])
    write_safetensors(last, tensors, meta)
    db = connect(str(tmp_path / "t.db"), ext_path)
    with pytest.raises(sqlite3.OperationalError, match="now loads a different model"):
        db.execute("insert into t(rowid, text) values (2, 'a blue circle')")
    db.close()


# ---- bad input: each gets its own clear message, never a crash ----

def _set_value(model, tensor, value):
    index = read_index(model)
    index["weight_map"][tensor] = value
    write_index(model, index)


def _first_tensor(model):
    return next(iter(read_index(model)["weight_map"]))


def _outside_shard(model, name):
    """Points a tensor at a path outside the folder where a valid copy of its shard waits, so
    that only the name check can refuse it."""
    tensor = _first_tensor(model)
    shard = read_index(model)["weight_map"][tensor]
    target = (model / name) if not name.startswith("/") else pathlib.Path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model / shard, target)
    _set_value(model, tensor, name)


def _move_tensor(model):
    """The index names another shard for a tensor than the one holding it."""
    index = read_index(model)
    tensor = _first_tensor(model)
    other = [s for s in set(index["weight_map"].values()) if s != index["weight_map"][tensor]]
    _set_value(model, tensor, other[0])


def _tensor_in_two_shards(model):
    index = read_index(model)["weight_map"]
    tensor = _first_tensor(model)
    other = sorted(s for s in set(index.values()) if s != index[tensor])[0]
    _, source = read_safetensors(model / index[tensor])
    meta, tensors = read_safetensors(model / other)
    tensors[tensor] = source[tensor]
    write_safetensors(model / other, tensors, meta)


def _truncate_shard(model):
    shard = model / shard_name(1, 3)
    shard.write_bytes(shard.read_bytes()[:-100])


def _huge_header(model):
    shard = model / shard_name(2, 3)
    data = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", 1 << 60) + data[8:])


BAD = [
    ("not-json", lambda m: (m / INDEX).write_text('{"weight_map": {'),
     r"model\.safetensors\.index\.json: invalid JSON"),
    ("not-an-object", lambda m: (m / INDEX).write_text("[1, 2]"),
     r"index\.json: needs a \"weight_map\" object"),
    ("no-weight-map", lambda m: write_index(m, {"metadata": {"total_size": 1}}),
     r"index\.json: needs a \"weight_map\" object"),
    ("weight-map-array", lambda m: write_index(m, {"weight_map": ["a.safetensors"]}),
     r"index\.json: needs a \"weight_map\" object"),
    ("empty-weight-map", lambda m: write_index(m, {"weight_map": {}}),
     r"index\.json: the weight_map names no tensor"),
    ("number-value", lambda m: _set_value(m, _first_tensor(m), 3),
     r"weight_map\[\"[^\"]+\"\] is not a file name \(a JSON string\)"),
    ("null-value", lambda m: _set_value(m, _first_tensor(m), None),
     r"is not a file name \(a JSON string\)"),
    ("parent-dir", lambda m: _outside_shard(m, "../outside.safetensors"),
     r"= \"\.\./outside\.safetensors\" is not a file name in the model folder"),
    ("sub-dir", lambda m: _outside_shard(m, "sub/inner.safetensors"),
     r"= \"sub/inner\.safetensors\" is not a file name in the model folder"),
    ("absolute", lambda m: _outside_shard(m, str(m.parent / "abs.safetensors")),
     r"abs\.safetensors\" is not a file name in the model folder"),
    ("dot-dot", lambda m: _set_value(m, _first_tensor(m), ".."),
     r"= \"\.\.\" is not a file name in the model folder"),
    ("empty-name", lambda m: _set_value(m, _first_tensor(m), ""),
     r"= \"\" is not a file name in the model folder"),
    ("missing-shard", lambda m: (m / shard_name(1, 3)).unlink(),
     r"index\.json names the shard model-00002-of-00003\.safetensors: .*No such file"),
    ("tensor-not-in-its-shard", _move_tensor, r"index\.json puts tensor \S+ in .*which does not "
     r"hold it"),
    ("tensor-in-two-shards", _tensor_in_two_shards, r"tensor \S+ is in two shards"),
    ("truncated-shard", _truncate_shard,
     r"model-00002-of-00003\.safetensors: tensor \S+: data_offsets .* past the end"),
    ("huge-header", _huge_header, r"model-00003-of-00003\.safetensors: header length \d+ exceeds"),
]


@pytest.mark.parametrize("name,damage,message", BAD, ids=[b[0] for b in BAD])
def test_bad_sharded_checkpoint_is_refused_clearly(name, damage, message, sharded, ext_path):
    damage(sharded)
    db = connect(":memory:", ext_path)
    with pytest.raises(sqlite3.OperationalError, match=message):
        db.execute("select clip_embed_text('x', ?)", (str(sharded),)).fetchone()
    # The connection is still usable, and no model was half loaded.
    assert db.execute("select 1").fetchone() == (1,)
    db.close()


def test_cli_names_the_bad_shard(sharded, clipdb_bin):
    (sharded / shard_name(2, 3)).unlink()
    r = subprocess.run([clipdb_bin, "embed", "--model", str(sharded), "--text", "x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "model-00003-of-00003.safetensors" in r.stderr
    assert "Traceback" not in r.stderr and "Sanitizer" not in r.stderr


# ---- pull ----

@pytest.fixture
def hub(sharded, monkeypatch):
    """A hub serving the sharded model; shards are LFS files, as on huggingface.co."""
    monkeypatch.setattr(hubserver, "LFS_FILES",
                        hubserver.LFS_FILES | {p.name for p in sharded.glob("model-*")})
    server = hubserver.Hub(sharded, repo=REPO)
    yield server
    server.close()


@pytest.fixture
def cli(clipdb_bin, hub, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "CLIPDB_", "HUGGING")) and "proxy" not in k.lower()}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), HF_ENDPOINT=hub.url,
               CLIPDB_DOWNLOAD_BACKOFF_MS="20", CLIPDB_PRECISION="f32")

    def run(*args):
        return subprocess.run([clipdb_bin, *args], env=env, capture_output=True, text=True,
                              timeout=120)
    return run


PULLED = pathlib.Path("cache") / "clipdb" / "models" / "clipdb-test--tiny-shapes"


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def embed_cli(cli, model):
    r = cli("embed", "--model", str(model), "--text", "a red star")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_pull_of_a_sharded_repo(cli, hub, sharded, model_dir, tmp_path):
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    pulled = tmp_path / PULLED
    shards = sorted(p.name for p in sharded.glob("model-*"))
    assert sorted(p.name for p in pulled.glob("model-*")) == shards
    assert not (pulled / "model.safetensors").exists()
    for name in shards + [INDEX]:
        assert sha256(pulled / name) == sha256(sharded / name), name
    # Each shard was fetched once, through the hub's LFS redirect, and verified and recorded.
    for name in shards:
        assert [q["method"] for q in hub.requests("hub", name)] == ["GET"]
    record = {f["name"]: f for f in json.loads((pulled / ".clipdb-pull.json").read_text())["files"]}
    for name in shards:
        assert record[name]["sha256"] == sha256(sharded / name) and record[name]["verified"]
    assert record[INDEX]["sha256"] == sha256(sharded / INDEX)
    assert embed_cli(cli, pulled) == embed_cli(cli, model_dir)
    # A second pull keeps the unchanged shards (the hub names the same SHA-256s).
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    for name in shards:
        assert [q["method"] for q in hub.requests("hub", name)] == ["GET", "HEAD"]


@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_failed_shard_keeps_the_previous_model(fault, cli, hub, sharded, model_dir, tmp_path):
    single = {p.name: p.read_bytes() for p in pathlib.Path(model_dir).iterdir() if p.is_file()}
    sharded_files = dict(hub.files)
    hub.files = single
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    pulled = tmp_path / PULLED
    before = {p.name: sha256(p) for p in pulled.iterdir()}
    hub.files = sharded_files
    getattr(hub.faults, fault).add(shard_name(1, 3))
    r = cli("model", "pull", REPO)
    assert r.returncode == 1
    assert shard_name(1, 3) in r.stderr
    assert {p.name: sha256(p) for p in pulled.iterdir()} == before
    assert embed_cli(cli, pulled) == embed_cli(cli, model_dir)


def test_pull_refuses_an_index_naming_files_outside(cli, hub, tmp_path):
    index = json.loads(hub.files[INDEX])
    index["weight_map"][next(iter(index["weight_map"]))] = "../../escape.safetensors"
    hub.files[INDEX] = json.dumps(index).encode()
    r = cli("model", "pull", REPO)
    assert r.returncode == 1
    assert "is not a file name in the model folder" in r.stderr
    assert not any("escape" in q["path"] for q in hub.log)
    assert not (tmp_path / PULLED).exists()


def test_repo_without_any_weights_says_so(cli, hub):
    hub.faults.missing.add(INDEX)
    r = cli("model", "pull", REPO)
    assert r.returncode == 1
    assert "has no model.safetensors" in r.stderr and INDEX in r.stderr and "404" in r.stderr


# ---- the Hugging Face cache ----

@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", dead_endpoint())
    for var in ("HF_HOME", "CLIPDB_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "hub"


def test_sharded_hf_snapshot_is_used_in_place(hf_cache, sharded, model_dir, ext_path, demo_dir):
    snap = build_hf_cache(hf_cache, sharded)
    assert (snap / shard_name(0, 3)).is_symlink()
    db = connect(":memory:", ext_path)
    want = embeddings(db, model_dir, demo_dir)[:1]
    got = db.execute("select clip_embed_text(?, 'shapes-org/tiny-clip')", (TEXTS[0],)).fetchone()
    assert [got[0]] == want
    db.close()


@pytest.mark.parametrize("skip", [shard_name(2, 3), INDEX])
def test_hf_snapshot_missing_a_shard_is_not_used(skip, hf_cache, sharded, ext_path):
    build_hf_cache(hf_cache, sharded, skip=(skip,))
    db = connect(":memory:", ext_path)
    with pytest.raises(sqlite3.OperationalError, match="Hugging Face cache.*model pull"):
        db.execute("select clip_embed_text('x', 'shapes-org/tiny-clip')").fetchone()
    db.close()


def test_interrupted_sharded_pull_resumes(cli, hub, sharded, model_dir, tmp_path):
    """A shard cut off mid-way: the next pull continues from the staged index and shards,
    fetching neither again, and the model then loads."""
    cut = shard_name(0, 3)
    hub.faults.cut[cut] = [100_000, 1]
    r = cli("model", "pull", REPO, "--retries", "1")
    assert r.returncode == 1 and "run the same pull again to resume" in r.stderr
    r = cli("model", "pull", REPO)
    assert r.returncode == 0, r.stderr
    assert "continuing an interrupted pull" in r.stdout + r.stderr
    assert len(hub.requests("hub", INDEX)) == 1
    ranges = [q["range"] for q in hub.requests("cdn") if q["path"].endswith(hub.sha256(cut))]
    assert ranges[0] is None and ranges[-1] == "bytes=100000-", ranges
    pulled = tmp_path / PULLED
    assert sha256(pulled / cut) == sha256(sharded / cut)
    assert embed_cli(cli, pulled) == embed_cli(cli, model_dir)
