"""End-to-end tests of the `clipdb` command line on the demo images with the tiny model.

References are independent of the CLI's own search path: goldens.json for tokenize/embed, and
brute-force cosine similarity (numpy) over the vectors stored in the database's documented
shadow tables for search and similar. Run with /usr/bin/python3:
    CLIPDB_BUILD_DIR=build-cli /usr/bin/python3 -m pytest tests/python/test_cli.py
"""
import hashlib
import json
import os
import pathlib
import shutil
import sqlite3
import struct
import subprocess

import numpy as np
import pytest

from conftest import read_pty

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "tests" / "data" / "goldens" / "goldens.json"
COMMANDS = ["index", "search", "similar", "dedup", "classify", "info", "tokenize", "embed", "model"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".gif"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_dir):
    """Environment with the tiny model as default and XDG folders inside a temp dir."""
    home = tmp_path_factory.mktemp("home")
    e = dict(os.environ)
    e.update(CLIPDB_MODEL=model_dir, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
             XDG_CACHE_HOME=str(home / "cache"))
    e.pop("TERM_PROGRAM", None)
    e.pop("KITTY_WINDOW_ID", None)
    return e


def run(clipdb_bin, env, *args, check=True, cwd=None):
    p = subprocess.run([clipdb_bin, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"clipdb {args} failed ({p.returncode}): {p.stderr}")
    return p


def images_in(folder):
    return sorted(p for p in pathlib.Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXT)


@pytest.fixture(scope="module")
def library(tmp_path_factory, demo_dir, clipdb_bin, env):
    """A copy of the demo photos indexed into lib.db; the 'red' photos are dated 2001."""
    photos = tmp_path_factory.mktemp("lib") / "photos"
    shutil.copytree(demo_dir, photos)
    for p in images_in(photos):
        if "-red-" in p.name:
            os.utime(p, (978350400, 978350400))  # 2001-01-01 12:00 UTC
    db = photos.parent / "lib.db"
    first = json.loads(run(clipdb_bin, env, "--db", db, "index", "--json", photos).stdout)
    return {"photos": photos, "db": db, "first": first}


def stored_vectors(db):
    """rowid -> (path, unit vector) read straight from the shadow tables, no extension."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT r.rowid, r.path, v.embedding FROM photos_rows r "
                       "JOIN photos_vectors v ON v.rowid = r.rowid").fetchall()
    con.close()
    return {rid: (path, np.frombuffer(blob, dtype="<f4")) for rid, path, blob in rows}


def embed(clipdb_bin, env, *args):
    return np.array(json.loads(run(clipdb_bin, env, "embed", *args).stdout), dtype=np.float64)


def brute_force(vectors, q, k):
    scored = sorted(((float(v @ q), path) for path, v in vectors.values()), reverse=True)
    return scored[:k]


# ---- command line basics ----

def test_help_for_every_command(clipdb_bin, env):
    top = run(clipdb_bin, env, "--help")
    for name in COMMANDS:
        assert name in top.stdout
    for name in COMMANDS:
        p = run(clipdb_bin, env, name, "--help")
        assert p.stdout.startswith("usage: clipdb " + name), name


def test_usage_errors_are_one_clear_line(clipdb_bin, env, tmp_path):
    for args in (["frobnicate"], ["search"], ["search", "-n", "zero", "x"], ["index"],
                 ["embed", "--text", "a", "--image", "b"], ["classify", "x.jpg"],
                 ["search", "--after", "yesterday", "x"], ["--db"]):
        p = run(clipdb_bin, env, *args, check=False)
        assert p.returncode == 2, args
        assert p.stderr.startswith("clipdb: ") and p.stderr.count("\n") == 1, (args, p.stderr)


def test_missing_library_and_paths(clipdb_bin, env, tmp_path):
    p = run(clipdb_bin, env, "--db", tmp_path / "none.db", "search", "a red star", check=False)
    assert p.returncode == 1 and "clipdb index" in p.stderr
    assert not (tmp_path / "none.db").exists()
    p = run(clipdb_bin, env, "--db", tmp_path / "x.db", "index", tmp_path / "missing", check=False)
    assert p.returncode == 1 and p.stderr.startswith("clipdb: ") and "missing" in p.stderr
    p = run(clipdb_bin, env, "--model", tmp_path / "nomodel", "tokenize", "hi", check=False)
    assert p.returncode == 1 and "nomodel" in p.stderr


# ---- tokenize / embed against the goldens ----

def test_tokenize_matches_goldens(clipdb_bin, env, model_dir):
    goldens = json.loads(GOLDENS.read_text())
    for t in goldens["texts"]:
        out = run(clipdb_bin, env, "tokenize", "--model", model_dir, t["text"]).stdout
        assert json.loads(out) == t["ids"], t["text"]


def test_embed_pixels_matches_goldens(clipdb_bin, env, model_dir, tmp_path):
    goldens = json.loads(GOLDENS.read_text())
    for img in goldens["images"]:
        pixels = np.asarray(img["pixels"], dtype="<f4").reshape(-1)
        f = tmp_path / "pixels.f32"
        f.write_bytes(pixels.tobytes())
        got = embed(clipdb_bin, env, "--model", model_dir, "--pixels", f)
        want = np.asarray(img["embedding"], dtype=np.float64)
        want /= np.linalg.norm(want)
        assert np.abs(got - want).max() < 1e-4, img["file"]
        assert abs(np.linalg.norm(got) - 1) < 1e-5


def test_embed_text_matches_goldens(clipdb_bin, env, model_dir):
    goldens = json.loads(GOLDENS.read_text())
    for t in goldens["texts"][:6]:
        if not t["text"]:
            continue
        got = embed(clipdb_bin, env, "--model", model_dir, "--text", t["text"])
        want = np.asarray(t["embedding"], dtype=np.float64)
        assert np.abs(got - want / np.linalg.norm(want)).max() < 1e-4, t["text"]


def test_embed_pixels_rejects_wrong_size(clipdb_bin, env, model_dir, tmp_path):
    f = tmp_path / "short.f32"
    f.write_bytes(struct.pack("<4f", 0, 0, 0, 0))
    p = run(clipdb_bin, env, "embed", "--model", model_dir, "--pixels", f, check=False)
    assert p.returncode == 1 and "bytes" in p.stderr and p.stdout == ""


# ---- index ----

def test_first_index_adds_every_photo(library):
    n = len(images_in(library["photos"]))
    s = library["first"]
    assert s["failed"] == 0 and s["removed"] == 0 and s["skipped"] == 0
    assert s["added"] + s["reused"] == n
    assert s["embedded"] == s["added"]
    assert len(stored_vectors(library["db"])) == n


def test_stored_hashes_are_sha256_of_the_files(library):
    con = sqlite3.connect(library["db"])
    rows = con.execute("SELECT path, hash FROM photos_rows").fetchall()
    con.close()
    assert len(rows) == len(images_in(library["photos"]))
    for path, digest in rows:
        assert digest == hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest(), path


def test_reindex_embeds_nothing(library, clipdb_bin, env):
    s = json.loads(run(clipdb_bin, env, "--db", library["db"], "index", "--json",
                       library["photos"]).stdout)
    n = len(images_in(library["photos"]))
    assert (s["skipped"], s["added"], s["embedded"], s["removed"], s["failed"]) == (n, 0, 0, 0, 0)


def test_move_delete_add_and_change(tmp_path, demo_dir, clipdb_bin, env):
    photos = tmp_path / "p"
    photos.mkdir()
    names = ["055-red-star-on-blue.png", "010-blue-star-on-orange.png",
             "024-red-square-on-green.jpg", "040-blue-square-on-white.png"]
    for name in names:
        shutil.copy(demo_dir / name, photos / name)
    db = tmp_path / "t.db"
    s = json.loads(run(clipdb_bin, env, "--db", db, "index", "--json", photos).stdout)
    assert s["added"] == 4
    before = {path: v for path, v in stored_vectors(db).values()}

    (photos / "sub").mkdir()
    shutil.move(photos / names[0], photos / "sub" / "moved.png")        # moved
    (photos / names[1]).unlink()                                        # deleted
    shutil.copy(photos / names[2], photos / "copy-of-square.jpg")      # duplicated
    shutil.copy(demo_dir / "030-yellow-star-on-white.jpg", photos)      # new
    shutil.copy(demo_dir / "044-purple-square-on-black.jpg", photos / names[3])  # changed
    s = json.loads(run(clipdb_bin, env, "--db", db, "index", "--json", photos).stdout)
    assert (s["added"], s["reused"], s["removed"], s["updated"], s["skipped"]) == (1, 2, 2, 1, 1)
    assert s["embedded"] == 2  # the new photo and the changed one
    after = {path: v for path, v in stored_vectors(db).values()}
    assert sorted(after) == sorted(str(p) for p in images_in(photos))
    assert np.array_equal(after[str(photos / "sub" / "moved.png")], before[str(photos / names[0])])
    assert np.array_equal(after[str(photos / "copy-of-square.jpg")], before[str(photos / names[2])])
    assert not np.allclose(after[str(photos / names[3])], before[str(photos / names[3])])


def test_exclude_patterns(tmp_path, demo_dir, clipdb_bin, env):
    photos = tmp_path / "p"
    (photos / "skipme").mkdir(parents=True)
    shutil.copy(demo_dir / "055-red-star-on-blue.png", photos)
    shutil.copy(demo_dir / "010-blue-star-on-orange.png", photos / "skipme")
    shutil.copy(demo_dir / "024-red-square-on-green.jpg", photos)
    s = json.loads(run(clipdb_bin, env, "--db", tmp_path / "t.db", "index", "--json",
                       "--exclude", "skipme", "--exclude", "*.jpg", photos).stdout)
    assert s["added"] == 1
    assert [p for p, _ in stored_vectors(tmp_path / "t.db").values()] == \
        [str(photos / "055-red-star-on-blue.png")]


def test_bad_files_are_listed_and_skipped(tmp_path, demo_dir, bad_dir, clipdb_bin, env):
    photos = tmp_path / "p"
    shutil.copytree(bad_dir, photos)
    shutil.copy(demo_dir / "055-red-star-on-blue.png", photos)
    unreadable = photos / "locked.jpg"
    shutil.copy(demo_dir / "024-red-square-on-green.jpg", unreadable)
    unreadable.chmod(0)
    p = run(clipdb_bin, env, "--db", tmp_path / "t.db", "index", "--json", photos)
    s = json.loads(p.stdout)
    failed = {pathlib.Path(f["path"]).name: f["error"] for f in s["failures"]}
    expected = {"truncated.jpg", "not-an-image.jpg", "empty.png", "bomb-100000x100000.png"}
    if os.geteuid() != 0:
        expected.add("locked.jpg")
    assert expected <= set(failed), failed
    assert all(failed.values())
    assert s["added"] + s["failed"] == 6 and s["failed"] == len(failed)
    for name in expected:
        assert f"clipdb: skipped {photos / name}: " in p.stderr
    assert [q for q, _ in stored_vectors(tmp_path / "t.db").values()] != []


def test_local_database(tmp_path, demo_dir, clipdb_bin, env):
    photos = tmp_path / "p"
    photos.mkdir()
    for name in ["055-red-star-on-blue.png", "040-blue-square-on-white.png"]:
        shutil.copy(demo_dir / name, photos)
    run(clipdb_bin, env, "index", "--local", photos)
    assert (photos / ".clipdb").exists()
    assert not (pathlib.Path(env["XDG_DATA_HOME"]) / "clipdb" / "library.db").exists()
    out = run(clipdb_bin, env, "search", "--local", "--paths", "-n", "1", "a red star",
              cwd=photos).stdout
    assert out.strip() == str(photos / "055-red-star-on-blue.png")


def test_default_database_location(tmp_path, demo_dir, clipdb_bin, env):
    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(demo_dir / "055-red-star-on-blue.png", photos)
    e = dict(env, XDG_DATA_HOME=str(tmp_path / "xdg"))
    run(clipdb_bin, e, "index", photos)
    assert (tmp_path / "xdg" / "clipdb" / "library.db").exists()
    info = json.loads(run(clipdb_bin, e, "info", "--json").stdout)
    assert info["rows"] == 1


# ---- search ----

def test_search_text_red_star(library, clipdb_bin, env):
    hits = json.loads(run(clipdb_bin, env, "--db", library["db"], "search", "a red star",
                          "--json", "-n", "5").stdout)
    assert len(hits) == 5
    assert all("red-star" in pathlib.Path(h["path"]).name for h in hits[:2]), hits
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_search_matches_brute_force(library, clipdb_bin, env, model_dir):
    vectors = stored_vectors(library["db"])
    q = embed(clipdb_bin, env, "--model", model_dir, "--text", "a blue square")
    want = brute_force(vectors, q, 5)
    hits = json.loads(run(clipdb_bin, env, "search", "--db", library["db"], "--json", "-n", "5",
                          "a blue square").stdout)
    assert [h["path"] for h in hits] == [p for _, p in want]
    assert np.allclose([h["score"] for h in hits], [s for s, _ in want], atol=1e-4)


def test_query_arithmetic_matches_reference(library, clipdb_bin, env, model_dir):
    vectors = stored_vectors(library["db"])
    a = embed(clipdb_bin, env, "--model", model_dir, "--text", "a blue star")
    b = embed(clipdb_bin, env, "--model", model_dir, "--text", "blue")
    c = embed(clipdb_bin, env, "--model", model_dir, "--text", "red - green")
    q = 2 * a - 0.5 * b + c
    want = brute_force(vectors, q / np.linalg.norm(q), 5)
    hits = json.loads(run(clipdb_bin, env, "--db", library["db"], "search", "--json", "-n", "5",
                          '2:a blue star - 0.5:blue + "red - green"').stdout)
    assert [h["path"] for h in hits] == [p for _, p in want]
    assert np.allclose([h["score"] for h in hits], [s for s, _ in want], atol=1e-4)
    # several shell words are one query
    split = json.loads(run(clipdb_bin, env, "--db", library["db"], "search", "--json", "-n", "5",
                           "2:a", "blue", "star", "-", "0.5:blue", "+", '"red - green"').stdout)
    assert [h["path"] for h in split] == [h["path"] for h in hits]
    p = run(clipdb_bin, env, "--db", library["db"], "search", "a red star - a red star",
            check=False)
    assert p.returncode == 1 and "cancel" in p.stderr
    p = run(clipdb_bin, env, "--db", library["db"], "search", "a red star -", check=False)
    assert p.returncode == 2 and p.stderr.startswith("clipdb: ")


def test_search_by_image(library, clipdb_bin, env):
    query = library["photos"] / "010-blue-star-on-orange.png"
    hits = json.loads(run(clipdb_bin, env, "--db", library["db"], "search", "--json", "-n", "3",
                          query).stdout)
    assert hits[0]["path"] == str(query) and hits[0]["score"] > 0.999
    assert all("blue-star" in pathlib.Path(h["path"]).name for h in hits), hits
    # an image outside the library is embedded on the fly
    outside = library["photos"].parent / "outside.png"
    shutil.copy(query, outside)
    hits2 = json.loads(run(clipdb_bin, env, "--db", library["db"], "search", "--json", "-n", "3",
                           outside).stdout)
    assert hits2[0]["path"] == str(query) and hits2[0]["score"] > 0.999


def test_search_date_filters(library, clipdb_bin, env):
    args = ["--db", library["db"], "search", "--json", "-n", "100", "a shape"]
    old = json.loads(run(clipdb_bin, env, *args, "--before", "2002").stdout)
    new = json.loads(run(clipdb_bin, env, *args, "--after", "2002-01-01").stdout)
    red = {str(p) for p in images_in(library["photos"]) if "-red-" in p.name}
    assert {h["path"] for h in old} == red
    assert not red & {h["path"] for h in new}
    assert len(old) + len(new) == len(images_in(library["photos"]))
    assert all(h["date"].startswith("2001-01-01") for h in old)


def test_search_threshold_and_paths(library, clipdb_bin, env):
    base = ["--db", library["db"], "search", "-n", "20", "a yellow circle"]
    hits = json.loads(run(clipdb_bin, env, *base, "--json").stdout)
    cut = (hits[2]["score"] + hits[3]["score"]) / 2
    kept = json.loads(run(clipdb_bin, env, *base, "--json", "--threshold", cut).stdout)
    assert [h["path"] for h in kept] == [h["path"] for h in hits[:3]]
    paths = run(clipdb_bin, env, *base, "--paths").stdout.splitlines()
    assert paths == [h["path"] for h in hits]
    text = run(clipdb_bin, env, *base).stdout.splitlines()
    assert [line.split("\t", 1)[1] for line in text] == paths


def test_preview_prints_nothing_without_terminal(library, clipdb_bin, env):
    args = ["--db", library["db"], "search", "-n", "2", "a red star"]
    plain = run(clipdb_bin, env, *args).stdout
    assert run(clipdb_bin, dict(env, TERM="xterm-kitty"), *args, "--preview").stdout == plain


# ---- similar, dedup, classify, info ----

def test_similar_finds_the_copy(library, clipdb_bin, env):
    original = library["photos"] / "000-orange-circle-on-purple.jpg"
    hits = json.loads(run(clipdb_bin, env, "--db", library["db"], "similar", "--json", "-n", "3",
                          original).stdout)
    assert str(original) not in [h["path"] for h in hits]
    assert hits[0]["path"] == str(library["photos"] / "000-orange-circle-on-purple-copy.jpg")
    want = brute_force(stored_vectors(library["db"]), stored_vector_of(library, original), 4)
    assert [h["path"] for h in hits] == [p for _, p in want if p != str(original)][:3]


def stored_vector_of(library, path):
    return next(v for p, v in stored_vectors(library["db"]).values() if p == str(path))


def test_dedup_groups_planted_copies(library, clipdb_bin, env):
    groups = json.loads(run(clipdb_bin, env, "--db", library["db"], "dedup", "--json",
                            "--threshold", "0.97").stdout)
    group_of = {p: i for i, g in enumerate(groups) for p in g["paths"]}
    copies = [p for p in images_in(library["photos"]) if p.stem.endswith("-copy")]
    assert len(copies) == 3
    for copy in copies:
        original = next(p for p in images_in(library["photos"])
                        if p.stem == copy.stem[:-len("-copy")])
        assert group_of.get(str(copy)) is not None, copy
        assert group_of.get(str(copy)) == group_of.get(str(original)), (copy, groups)
    by_path = {p: v.astype(np.float64) for p, v in stored_vectors(library["db"]).values()}
    for g in groups:
        assert len(g["paths"]) >= 2 and 0.97 <= g["similarity"] <= 1.0001
        # "similarity": the group's highest pairwise cosine
        vs = [by_path[p] for p in g["paths"]]
        best = max(float(a @ b) for i, a in enumerate(vs) for b in vs[i + 1:])
        assert abs(g["similarity"] - best) < 1e-5, (g, best)
    # reference: every pair within the threshold is in one group
    vecs = list(stored_vectors(library["db"]).values())
    for i, (pa, va) in enumerate(vecs):
        for pb, vb in vecs[i + 1:]:
            if float(va @ vb) >= 0.9705:
                assert group_of.get(pa) is not None and group_of.get(pa) == group_of.get(pb)
    text = run(clipdb_bin, env, "--db", library["db"], "dedup", "--threshold", "0.97").stdout
    assert text.count("# group") == len(groups)


def union_find_groups(paths, vecs, threshold):
    """Groups of paths linked (transitively) by a pair with cosine >= threshold (numpy)."""
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i
    sims = vecs @ vecs.T
    for i, j in zip(*np.nonzero(np.triu(sims >= threshold, 1))):
        parent[max(find(i), find(j))] = min(find(i), find(j))
    groups = {}
    for i, p in enumerate(paths):
        groups.setdefault(find(i), set()).add(p)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def test_dedup_nprobe_on_a_trained_ivf_library(tmp_path, demo_dir, clipdb_bin, env, ext_path,
                                              model_dir):
    """On an IVF library, --nprobe covering every list groups exactly like a numpy scan of all
    pairs; --nprobe 1 misses pairs whose vectors fell into different lists."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(demo_dir / "010-blue-star-on-orange.png", photos)
    db = tmp_path / "ivf.db"
    run(clipdb_bin, env, "--db", db, "index", photos)
    rng = np.random.default_rng(4)
    base = rng.standard_normal((1500, 64))
    near = base[:400] + 0.12 * rng.standard_normal((400, 64))  # cosine about 0.72 to its base
    vecs = np.vstack([base, near])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    paths = [f"/synthetic/{i:05d}.png" for i in range(len(vecs))]
    con = sqlite3.connect(db)
    con.enable_load_extension(True)
    con.load_extension(ext_path)
    con.execute("SELECT clip_model('default', ?)", (model_dir,))
    with con:
        con.executemany("INSERT INTO photos(embedding, path) VALUES (?, ?)",
                        [(v.astype("<f4").tobytes(), p) for v, p in zip(vecs, paths)])
    with con:
        con.execute("INSERT INTO photos(photos) VALUES ('train')")
    info = json.loads(con.execute("SELECT clip_index_info('photos')").fetchone()[0])
    con.close()
    assert info["kind"] == "ivf" and info["nlist"] > 8, info
    threshold = 0.65
    sims = vecs @ vecs.T
    assert not np.any(np.abs(sims[np.triu_indices(len(vecs), 1)] - threshold) < 1e-4)
    want = union_find_groups(paths, vecs, threshold)
    assert len(want) > 100

    def dedup(nprobe):
        out = run(clipdb_bin, env, "--db", db, "dedup", "--json", "--threshold", threshold,
                  "--nprobe", nprobe).stdout
        return sorted(sorted(g["paths"]) for g in json.loads(out))
    assert dedup(info["nlist"]) == want
    fewer = dedup(1)
    assert len(fewer) < len(want)
    assert all(any(set(g) <= set(w) for w in want) for g in fewer)  # no false pairs


def test_classify_red_star(clipdb_bin, env, demo_dir):
    labels = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    out = run(clipdb_bin, env, "classify", "--json", demo_dir / "055-red-star-on-blue.png",
              *labels).stdout
    res = json.loads(out)
    assert res[0]["label"] == "red star"
    assert abs(sum(r["probability"] for r in res) - 1) < 1e-6
    assert sorted(r["label"] for r in res) == sorted(labels)
    # reference: softmax of exp(logit_scale) * cosine(image, "a photo of a LABEL.")
    logit_scale = json.loads(GOLDENS.read_text())["logit_scale"]
    image = embed(clipdb_bin, env, "--image", demo_dir / "055-red-star-on-blue.png")
    texts = np.array([embed(clipdb_bin, env, "--text", f"a photo of a {lab}.") for lab in labels])
    cos = texts @ image / np.linalg.norm(texts, axis=1) / np.linalg.norm(image)
    logits = np.exp(logit_scale) * cos
    ref = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = {r["label"]: r["probability"] for r in res}
    np.testing.assert_allclose([got[lab] for lab in labels], ref, rtol=1e-5, atol=1e-7)
    p = run(clipdb_bin, env, "classify", demo_dir / "missing.png", "a", "b", check=False)
    assert p.returncode == 1 and "missing.png" in p.stderr


def test_info(library, clipdb_bin, env, model_dir):
    info = json.loads(run(clipdb_bin, env, "--db", library["db"], "info", "--json").stdout)
    assert info["rows"] == len(images_in(library["photos"]))
    assert info["dims"] == 64
    assert info["model"] == str(pathlib.Path(model_dir).resolve())
    assert info["size_bytes"] > 0 and info["index_type"]
    state = info["index_state"]  # the live index, as clip_index_info reports it
    assert state["count"] == info["rows"] and state["kind"] == "flat"
    text = run(clipdb_bin, env, "info", "--db", library["db"]).stdout
    assert f"photos         {info['rows']}" in text
    assert f"exact search over {info['rows']} vectors" in text


def distinct_copies(demo_dir, dst, copies):
    """copies x the demo images, each file's bytes made unique (a tag after the image data,
    which decoders ignore) so that none is reused by hash: indexing takes seconds, far longer
    than the few milliseconds a test needs to signal it mid-way."""
    dst.mkdir()
    for k in range(copies):
        for p in images_in(demo_dir):
            (dst / f"{k}-{p.name}").write_bytes(p.read_bytes() + b"clipdb-copy-%d" % k)
    return dst


def test_killed_index_keeps_committed_batches_and_resumes(tmp_path, demo_dir, clipdb_bin, env):
    import signal
    import time
    photos = distinct_copies(demo_dir, tmp_path / "p", 3)
    n = len(images_in(photos))
    db = tmp_path / "t.db"
    proc = subprocess.Popen([clipdb_bin, "--db", str(db), "index", "--threads", "1",
                             "--commit-every", "4", "--quiet", str(photos)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = 0
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        try:  # a second connection sees only committed batches
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
            committed = con.execute("SELECT count(*) FROM photos_rows").fetchone()[0]
            con.close()
        except sqlite3.Error:
            committed = 0
        if committed >= 8:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "indexing finished before it could be killed"
    kept = len(stored_vectors(db))
    assert 8 <= kept < n and kept % 4 == 0
    s = json.loads(run(clipdb_bin, env, "--db", db, "index", "--json", photos).stdout)
    assert s["skipped"] == kept and s["added"] + s["reused"] == n - kept
    assert len(stored_vectors(db)) == n


def test_interrupt_commits_and_exits_130(tmp_path, demo_dir, clipdb_bin, env):
    import signal
    import time
    photos = distinct_copies(demo_dir, tmp_path / "p", 3)
    db = tmp_path / "t.db"
    proc = subprocess.Popen([clipdb_bin, "--db", str(db), "index", "--threads", "1", "--json",
                             "--quiet", str(photos)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not db.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)  # the library exists once the command is running
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    s = json.loads(out)
    assert proc.returncode == 130 and s["interrupted"], (proc.returncode, s)
    assert s["added"] + s["reused"] < len(images_in(photos))
    assert len(stored_vectors(db)) == s["added"] + s["reused"]


def test_progress_bar_on_a_terminal(tmp_path, demo_dir, clipdb_bin, env):
    import pty
    photos = tmp_path / "p"
    photos.mkdir()
    for p in list(images_in(demo_dir))[:20]:
        shutil.copy(p, photos)
    master, slave = pty.openpty()
    e = {k: v for k, v in env.items() if k != "NO_COLOR"}
    proc = subprocess.Popen([clipdb_bin, "--db", str(tmp_path / "t.db"), "index", str(photos)],
                            env={**e, "TERM": "xterm"}, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out, _ = proc.communicate(timeout=60)
    tty = read_pty(master).decode()
    os.close(master)
    assert proc.returncode == 0
    assert "indexing [" in tty and "20/20" in tty and "/s ETA" in tty
    assert b"20 added" in out


def with_exif_date(jpeg: bytes, date: str) -> bytes:
    """The JPEG with an APP1 EXIF segment holding DateTimeOriginal (IFD0 -> Exif IFD -> 0x9003)."""
    tiff = b"II*\x00" + struct.pack("<I", 8)
    tiff += struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, 26) + struct.pack("<I", 0)
    tiff += struct.pack("<H", 1) + struct.pack("<HHII", 0x9003, 2, 20, 44) + struct.pack("<I", 0)
    tiff += date.encode() + b"\x00"
    app1 = b"Exif\x00\x00" + tiff
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_exif_date_is_recorded_and_filters(tmp_path, demo_dir, clipdb_bin, env):
    photos = tmp_path / "p"
    photos.mkdir()
    src = (demo_dir / "024-red-square-on-green.jpg").read_bytes()
    (photos / "dated.jpg").write_bytes(with_exif_date(src, "2015:06:30 14:00:00"))
    shutil.copy(demo_dir / "030-yellow-star-on-white.jpg", photos / "undated.jpg")
    db = tmp_path / "t.db"
    run(clipdb_bin, env, "--db", db, "index", photos)
    con = sqlite3.connect(db)
    rows = dict(con.execute("SELECT path, taken_at FROM photos_rows").fetchall())
    meta = con.execute("SELECT width, height, format FROM photos_rows WHERE path LIKE '%dated.jpg'"
                       ).fetchall()
    con.close()
    assert rows[str(photos / "dated.jpg")] == "2015-06-30 14:00:00"
    assert rows[str(photos / "undated.jpg")] is None
    assert all(f == "jpeg" and w > 0 and h > 0 for w, h, f in meta)
    hits = json.loads(run(clipdb_bin, env, "--db", db, "search", "--json", "--after", "2015-06",
                          "--before", "2015-07", "a photo").stdout)
    assert [(h["path"], h["date"]) for h in hits] == [(str(photos / "dated.jpg"),
                                                       "2015-06-30 14:00:00")]
    hits = json.loads(run(clipdb_bin, env, "--db", db, "search", "--json", "--after",
                          "2015-06-30T14:00:01", "a photo").stdout)
    assert [h["path"] for h in hits] == [str(photos / "undated.jpg")]


def test_preview_sends_kitty_graphics_on_a_kitty_terminal(library, clipdb_bin, env):
    import base64
    import pty
    master, slave = pty.openpty()
    e = dict(env, TERM="xterm-kitty")
    proc = subprocess.Popen([clipdb_bin, "--db", str(library["db"]), "search", "-n", "2",
                             "--preview", "a red star"], env=e, stdout=slave,
                            stderr=subprocess.PIPE)
    os.close(slave)
    out = read_pty(master)
    os.close(master)
    proc.wait(timeout=60)
    assert proc.returncode == 0
    starts = out.count(b"\x1b_Gf=100,a=T,")
    assert starts == 2
    first = out.split(b"\x1b_Gf=100,a=T,", 1)[1]
    payload = first.split(b";", 1)[1].split(b"\x1b\\", 1)[0]
    assert base64.b64decode(payload[:12])[:8] == b"\x89PNG\r\n\x1a\n"
    plain = run(clipdb_bin, env, "--db", library["db"], "search", "-n", "2", "a red star").stdout
    for line in plain.splitlines():
        assert line.encode() in out


def test_invalid_utf8_is_an_error_not_a_crash(library, clipdb_bin, env, model_dir):
    for args in ([b"tokenize", b"--model", model_dir.encode(), b"caf\xc3"],
                 [b"--db", str(library["db"]).encode(), b"search", b"\xff\xfe red star"]):
        p = subprocess.run([clipdb_bin.encode(), *args], env=env, capture_output=True,
                           timeout=60)
        assert p.returncode == 1 and p.stderr.startswith(b"clipdb: ") and p.stdout == b""
        assert b"UTF-8" in p.stderr or b"utf-8" in p.stderr.lower()


def test_no_arguments_and_version(clipdb_bin, env):
    p = run(clipdb_bin, env, check=False)
    assert p.returncode == 2 and p.stderr.startswith("usage: clipdb")
    assert run(clipdb_bin, env, "--version").stdout.startswith("clipdb ")


def test_identical_files_in_one_run_are_embedded_once(tmp_path, demo_dir, clipdb_bin, env):
    photos = tmp_path / "p"
    (photos / "a").mkdir(parents=True)
    (photos / "b").mkdir()
    for sub in ("a", "b"):
        shutil.copy(demo_dir / "055-red-star-on-blue.png", photos / sub / "star.png")
        shutil.copy(demo_dir / "040-blue-square-on-white.png", photos / sub / "square.png")
    s = json.loads(run(clipdb_bin, env, "--db", tmp_path / "t.db", "index", "--json",
                       photos).stdout)
    assert (s["embedded"], s["added"], s["reused"]) == (2, 2, 2)
    vecs = {p: v for p, v in stored_vectors(tmp_path / "t.db").values()}
    for name in ("star.png", "square.png"):
        assert np.array_equal(vecs[str(photos / "a" / name)], vecs[str(photos / "b" / name)])


def test_library_keeps_its_model(tmp_path, demo_dir, clipdb_bin, env, model_dir):
    other = tmp_path / "other-model"
    other.mkdir()
    for f in pathlib.Path(model_dir).iterdir():
        os.symlink(f, other / f.name)
    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(demo_dir / "055-red-star-on-blue.png", photos)
    db = tmp_path / "t.db"
    run(clipdb_bin, env, "--db", db, "index", photos)
    p = run(clipdb_bin, env, "--db", db, "--model", other, "index", photos, check=False)
    assert p.returncode == 1 and "was indexed with model" in p.stderr
    p = run(clipdb_bin, env, "--db", db, "--model", other, "search", "--paths", "a red star")
    assert "indexed with model" in p.stderr and p.stdout.strip().endswith("055-red-star-on-blue.png")


LAYER_LINEAR = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                "self_attn.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")


def f32_copy_off_the_half_grid(model_dir, dst):
    """The tiny (F16) checkpoint as F32, every tensor widened exactly except the layers' linear
    weights, which are scaled by (1 + 2^-13): not representable in F16, yet less than half an
    F16 ulp away, so converting them back to F16 gives the original checkpoint's values."""
    shutil.copytree(model_dir, dst)
    raw = (dst / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data, out, offset = raw[8 + n:], {}, 0
    chunks = []
    for name, t in sorted(header.items(), key=lambda kv: kv[0]):
        if name == "__metadata__":
            out[name] = t
            continue
        a, b = t["data_offsets"]
        blob = data[a:b]
        if t["dtype"] == "F16":
            w = np.frombuffer(blob, dtype="<f2").astype(np.float32)
            if name.endswith(LAYER_LINEAR):
                w = w * np.float32(1 + 2 ** -13)
                assert np.array_equal(w.astype("<f2"), np.frombuffer(blob, dtype="<f2"))
            blob = w.astype("<f4").tobytes()
            t = dict(t, dtype="F32")
        out[name] = dict(t, data_offsets=[offset, offset + len(blob)])
        chunks.append(blob)
        offset += len(blob)
    h = json.dumps(out).encode()
    h += b" " * (-len(h) % 8)
    (dst / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def test_clipdb_weights_modes_on_an_f32_checkpoint(tmp_path, model_dir, clipdb_bin, env, demo_dir):
    """CLIPDB_WEIGHTS (README): by default the text tower's linear weights become half floats
    and the vision tower's stay F32; f32 keeps both, f16 halves both. On an F32 copy whose
    layer weights sit just off the half-float grid (rounding back to the F16 original), a
    halved tower embeds exactly like the original checkpoint and an F32 one does not."""
    copy = tmp_path / "tiny-f32"
    f32_copy_off_the_half_grid(model_dir, copy)
    image = demo_dir / "055-red-star-on-blue.png"

    def both(model, mode):
        e = dict(env, CLIPDB_WEIGHTS=mode) if mode else env
        return (embed(clipdb_bin, e, "--model", model, "--text", "a red star"),
                embed(clipdb_bin, e, "--model", model, "--image", image))
    text_a, image_a = both(model_dir, None)
    modes = {m: both(copy, m) for m in (None, "f32", "f16")}

    def same(x, y):
        return float(np.max(np.abs(x - y))) <= 2e-6

    def moved(x, y):  # measured: 3.8e-5 (text), 1.3e-4 (image)
        return float(np.max(np.abs(x - y))) >= 1e-5
    text, img = modes[None]
    assert same(text, text_a) and moved(img, image_a), "default: text halved, vision F32"
    text, img = modes["f32"]
    assert moved(text, text_a) and moved(img, image_a), "f32: both towers F32"
    # the documented cost of half-float text weights: up to 1.1e-4 per element
    assert float(np.max(np.abs(text - modes[None][0]))) <= 1.1e-4
    assert same(img, modes[None][1])
    text, img = modes["f16"]
    assert same(text, text_a) and same(img, image_a), "f16: both towers halved"


def test_text_query_does_not_start_libvips(library, clipdb_bin, env, demo_dir):
    """Starting libvips loads its modules (50-120 ms): a text query must not pay for it, an
    image query does. LD_DEBUG=files makes the loader report each library it opens."""
    e = dict(env, LD_DEBUG="files")
    image = images_in(demo_dir)[0]
    if "vips-modules" not in run(clipdb_bin, e, "embed", "--image", image).stderr:
        pytest.skip("this libvips loads no modules")
    for args in (["embed", "--text", "a red star"], ["--db", library["db"], "search", "a red star"]):
        p = run(clipdb_bin, e, *args)
        assert "vips-modules" not in p.stderr, f"{args} started libvips"
