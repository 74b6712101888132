"""Videos through the `clipdb` command line with the tiny model: `index` stores each kept frame
of a video as a row (its t in photos_frames), `search` and `similar` list a video once with its
best moment, `info` counts videos and frames.

The videos are generated with Debian's ffmpeg (video_helpers.py): shapes.mp4 shows a red star
from 3 s to 5 s and a blue square from 7 s to 9 s. References are independent of the CLI's
search: the vectors and times read straight from the database's tables with Python's sqlite3,
scored by numpy against the query's embedding (`clipdb embed`), grouped per file here."""
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from video_helpers import SHAPES, audio_only, needs_ffmpeg, shapes_video, static_video

pytestmark = needs_ffmpeg
PHOTOS = ["010-blue-star-on-orange.png", "019-purple-star-on-yellow.png",
          "031-red-square-on-green.png", "001-black-circle-on-red.png"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_dir):
    home = tmp_path_factory.mktemp("home")
    e = dict(os.environ)
    e.update(CLIPDB_MODEL=model_dir, HOME=str(home), XDG_DATA_HOME=str(home / "data"))
    return e


def run(clipdb_bin, env, *args, check=True):
    p = subprocess.run([clipdb_bin, *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"clipdb {args} failed ({p.returncode}): {p.stderr}")
    return p


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Made once: copied into each test's folder."""
    d = tmp_path_factory.mktemp("clips")
    return {"shapes": Path(shapes_video(d / "shapes.mp4")),
            "static": Path(static_video(d / "static.mp4", seconds=30)),
            "long_gop": Path(shapes_video(d / "long_gop.mp4", gop=100)),
            "audio": Path(audio_only(d / "audio.m4a"))}


@pytest.fixture
def folder(tmp_path, clips):
    """Photos and two videos (a shapes clip in a subfolder, a static clip)."""
    f = tmp_path / "lib"
    (f / "clips").mkdir(parents=True)
    for name in PHOTOS:
        shutil.copy(SHAPES / name, f / name)
    shutil.copy(clips["shapes"], f / "clips" / "shapes.mp4")
    shutil.copy(clips["static"], f / "static.mov")
    return f


def index(clipdb_bin, env, db, *args, check=True):
    p = run(clipdb_bin, env, "--db", db, "index", "--json", "--quiet", *args, check=check)
    return json.loads(p.stdout)


@pytest.fixture
def lib(tmp_path, folder, clipdb_bin, env):
    db = tmp_path / "lib.db"
    first = index(clipdb_bin, env, db, folder)
    return {"db": db, "folder": folder, "first": first, "shapes": str(folder / "clips/shapes.mp4"),
            "static": str(folder / "static.mov")}


def rows(db):
    """rowid -> (path, t or None, unit vector), read without the extension."""
    con = sqlite3.connect(db)
    got = con.execute("SELECT r.rowid, r.path, f.t, v.embedding FROM photos_rows r "
                      "JOIN photos_vectors v ON v.rowid = r.rowid "
                      "LEFT JOIN photos_frames f ON f.rowid = r.rowid").fetchall()
    con.close()
    return {rid: (path, t, np.frombuffer(blob, "<f4")) for rid, path, t, blob in got}


def frame_times(db, path):
    return sorted(t for p, t, _ in rows(db).values() if p == path)


def reference(db, q, k):
    """[(path, best score, best t, [(t, score) of the other frames, best first])] by brute
    force: every row scored, the best row of each file first."""
    scored = sorted(((float(v @ q), path, t) for path, t, v in rows(db).values()), reverse=True)
    out = {}
    for s, path, t in scored:
        if path in out:
            out[path][3].append((t, s))
        else:
            out[path] = [path, s, t, []]
    return list(out.values())[:k]


def embed_text(clipdb_bin, env, text):
    return np.array(json.loads(run(clipdb_bin, env, "embed", "--text", text).stdout))


def search(clipdb_bin, env, db, *args):
    return run(clipdb_bin, env, "--db", db, "search", *args).stdout


def moment(text):
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + int(s)


# ---- index ----

def test_index_stores_the_kept_frames_with_their_time(lib):
    first = lib["first"]
    assert first["added"] == len(PHOTOS) + 2 and first["failed"] == 0
    # 12 s sampled every 2 s: six frames, each a scene change; the static 30 s shot: one
    assert frame_times(lib["db"], lib["shapes"]) == pytest.approx([0, 2, 4, 6, 8, 10], abs=0.15)
    assert frame_times(lib["db"], lib["static"]) == [0]
    assert first["frames"] == 7 and first["embedded"] == len(PHOTOS) + 6 + 15
    photos = [t for p, t, _ in rows(lib["db"]).values() if p.endswith(".png")]
    assert photos == [None] * len(PHOTOS)
    con = sqlite3.connect(lib["db"])
    assert set(con.execute("SELECT width, height, format, hash FROM photos_rows WHERE path = ?",
                           (lib["shapes"],))) == {(320, 240, "mp4", None)}
    con.close()


def test_reindex_unchanged_embeds_nothing(lib, clipdb_bin, env):
    before = rows(lib["db"])
    again = index(clipdb_bin, env, lib["db"], lib["folder"])
    assert again["embedded"] == 0 and again["frames"] == 0
    assert again["skipped"] == len(PHOTOS) + 2 and again["added"] == again["updated"] == 0
    assert again["stages"]["encode_seconds"] == 0
    assert rows(lib["db"]).keys() == before.keys()


def test_changed_video_has_its_frames_replaced(lib, clips, clipdb_bin, env):
    shutil.copy(clips["static"], lib["shapes"])  # other content under the same name
    again = index(clipdb_bin, env, lib["db"], lib["folder"])
    assert again["updated"] == 1 and again["frames"] == 1
    now = {rid: t for rid, (p, t, _) in rows(lib["db"]).items() if p == lib["shapes"]}
    assert list(now.values()) == [0]  # one frame now (SQLite may reuse a deleted rowid)
    con = sqlite3.connect(lib["db"])  # no time left behind for a deleted row
    assert con.execute("SELECT count(*) FROM photos_frames WHERE rowid NOT IN "
                       "(SELECT rowid FROM photos_rows)").fetchone()[0] == 0
    con.close()
    line = search(clipdb_bin, env, lib["db"], "a red star", "-n", "1")
    assert "shapes.mp4" not in line


def test_touched_video_is_read_again(lib, clipdb_bin, env):
    st = os.stat(lib["shapes"])
    os.utime(lib["shapes"], (st.st_atime, st.st_mtime + 10))
    again = index(clipdb_bin, env, lib["db"], lib["folder"])
    assert again["updated"] == 1 and again["frames"] == 6
    assert frame_times(lib["db"], lib["shapes"]) == pytest.approx([0, 2, 4, 6, 8, 10], abs=0.15)


def test_removed_video_loses_its_frames(lib, clipdb_bin, env):
    os.unlink(lib["shapes"])
    again = index(clipdb_bin, env, lib["db"], lib["folder"])
    assert again["removed"] == 1
    assert frame_times(lib["db"], lib["shapes"]) == []
    con = sqlite3.connect(lib["db"])
    assert con.execute("SELECT count(*) FROM photos_frames").fetchone()[0] == 1  # the static
    con.close()


def test_no_videos(tmp_path, folder, clipdb_bin, env):
    db = tmp_path / "photos-only.db"
    first = index(clipdb_bin, env, db, "--no-videos", folder)
    assert first["added"] == len(PHOTOS) and first["frames"] == 0
    assert all(p.endswith(".png") for p, _, _ in rows(db).values())
    with_videos = index(clipdb_bin, env, db, folder)
    assert with_videos["added"] == 2 and with_videos["frames"] == 7
    # videos already in the library stay when a later run leaves videos out
    again = index(clipdb_bin, env, db, "--no-videos", folder)
    assert again["removed"] == 0 and len(rows(db)) == len(PHOTOS) + 7


def test_bad_videos_fail_alone(tmp_path, folder, clips, clipdb_bin, env):
    bad = folder / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "garbage.mkv").write_bytes(bytes(range(256)) * 64)
    (bad / "truncated.mp4").write_bytes(clips["shapes"].read_bytes()[:2000])
    shutil.copy(clips["audio"], bad / "audio.mp4")
    db = tmp_path / "bad.db"
    out = index(clipdb_bin, env, db, folder)
    failures = {Path(f["path"]).name: f["error"] for f in out["failures"]}
    assert failures == {
        "empty.mp4": "empty file",
        "garbage.mkv": "not a video in a container clipdb reads: Invalid data found when "
                       "processing input",
        "truncated.mp4": "not a video in a container clipdb reads: Invalid data found when "
                         "processing input",
        "audio.mp4": "no video stream (audio only?)"}
    assert out["failed"] == 4 and out["added"] == len(PHOTOS) + 2 and out["frames"] == 7
    paths = {p for p, _, _ in rows(db).values()}
    assert not any("/bad/" in p for p in paths) and len(paths) == len(PHOTOS) + 2
    text = run(clipdb_bin, env, "--db", db, "index", folder).stderr
    assert "skipped " + str(bad / "audio.mp4") + ": no video stream (audio only?)" in text


def test_video_over_budget_fails_alone(tmp_path, clips, clipdb_bin, env):
    folder = tmp_path / "f"
    folder.mkdir()
    shutil.copy(SHAPES / PHOTOS[0], folder / PHOTOS[0])
    shutil.copy(clips["long_gop"], folder / "endless.mp4")  # every frame decoded: 120
    out = index(clipdb_bin, dict(env, CLIPDB_VIDEO_MAX_FRAMES="40"), tmp_path / "b.db", folder)
    assert [(Path(f["path"]).name, f["error"]) for f in out["failures"]] == \
        [("endless.mp4", "more than 40 frames decoded, over the budget per file")]
    assert out["added"] == 1 and [p for p, _, _ in rows(tmp_path / "b.db").values()] == \
        [str(folder / PHOTOS[0])]


# ---- search ----

def test_search_prints_the_best_moment(lib, clipdb_bin, env):
    for text, lo, hi in [("a red star", 3, 5), ("a blue square", 7, 9)]:
        first = search(clipdb_bin, env, lib["db"], text).splitlines()[0].split("\t")
        assert first[1] == lib["shapes"] and lo <= moment(first[2]) <= hi, first


def test_search_lists_each_video_once_like_brute_force(lib, clipdb_bin, env):
    q = embed_text(clipdb_bin, env, "a red star")
    want = reference(lib["db"], q, 5)
    hits = json.loads(search(clipdb_bin, env, lib["db"], "--json", "-n", "5", "a red star"))
    assert [h["path"] for h in hits] == [w[0] for w in want]
    assert len({h["path"] for h in hits}) == 5  # -n counts files, not frames
    for h, (path, score, t, others) in zip(hits, want):
        assert h["score"] == pytest.approx(score, abs=1e-4)
        assert h["t"] == (pytest.approx(t) if t is not None else None)
        assert [m["t"] for m in h["moments"]] == pytest.approx([o[0] for o in others])
        assert [m["score"] for m in h["moments"]] == pytest.approx([o[1] for o in others],
                                                                   abs=1e-4)
    video = hits[0]
    assert video["path"] == lib["shapes"] and 3 <= video["t"] <= 5
    assert len(video["moments"]) == 5


def test_paths_print_a_video_once(lib, clipdb_bin, env):
    paths = search(clipdb_bin, env, lib["db"], "--paths", "-n", "6", "a red star").splitlines()
    assert sorted(paths) == sorted({p for p, _, _ in rows(lib["db"]).values()})
    nul = run(clipdb_bin, env, "--db", lib["db"], "search", "-0", "-n", "2", "a blue square")
    parts = nul.stdout.split("\0")
    assert parts[0] == lib["shapes"] and len(parts) == 3 and parts[1] != parts[0] and not parts[2]


def test_threshold_keeps_only_matching_moments(lib, clipdb_bin, env):
    every = json.loads(search(clipdb_bin, env, lib["db"], "--json", "-n", "1", "a blue square"))
    hits = json.loads(search(clipdb_bin, env, lib["db"], "--json", "--threshold", "0.2",
                             "a blue square"))
    assert hits[0]["path"] == every[0]["path"] == lib["shapes"]
    assert all(h["score"] >= 0.2 for h in hits)
    assert hits[0]["moments"] == [m for m in every[0]["moments"] if m["score"] >= 0.2]
    assert 0 < len(hits[0]["moments"]) < len(every[0]["moments"])


# ---- similar, info ----

def test_similar_from_a_frame(lib, tmp_path, clipdb_bin, env):
    copy = tmp_path / "copy.mp4"  # not in the library: the frame is decoded from the file
    shutil.copy(lib["shapes"], copy)
    hits = json.loads(run(clipdb_bin, env, "--db", lib["db"], "similar", "--json",
                          f"{copy}@0:04").stdout)
    assert hits[0]["path"] == lib["shapes"] and hits[0]["t"] == pytest.approx(4, abs=0.15)
    assert hits[0]["score"] == pytest.approx(1, abs=1e-3)
    # an indexed video's frame: the stored one, the video itself left out
    _, _, v4 = next(r for r in rows(lib["db"]).values()
                    if r[0] == lib["shapes"] and abs(r[1] - 4) < 0.2)
    want = [w for w in reference(lib["db"], v4.astype(np.float64), 10) if w[0] != lib["shapes"]]
    hits = json.loads(run(clipdb_bin, env, "--db", lib["db"], "similar", "--json",
                          f"{lib['shapes']}@4").stdout)
    assert [h["path"] for h in hits] == [w[0] for w in want]
    # a photo query lists the video with its best moment
    star = lib["folder"] / "010-blue-star-on-orange.png"
    lines = run(clipdb_bin, env, "--db", lib["db"], "similar", star).stdout.splitlines()
    video = [line.split("\t") for line in lines if "shapes.mp4" in line]
    assert len(video) == 1 and len(video[0]) == 3
    bad = run(clipdb_bin, env, "--db", lib["db"], "similar", f"{lib['shapes']}@x", check=False)
    assert bad.returncode != 0


def test_info_counts_videos_and_frames(lib, clipdb_bin, env):
    info = json.loads(run(clipdb_bin, env, "--db", lib["db"], "info", "--json").stdout)
    assert (info["photos"], info["videos"], info["frames"]) == (len(PHOTOS), 2, 7)
    assert info["rows"] == len(rows(lib["db"]))
    text = run(clipdb_bin, env, "--db", lib["db"], "info").stdout
    assert f"photos         {len(PHOTOS)}\n" in text and "videos         2\n" in text
    assert "video frames   7\n" in text


def test_library_from_before_videos(tmp_path, folder, clipdb_bin, env):
    """A library without photos_frames (as earlier versions wrote) opens read-only for search
    and info, and the next index adds the table and the videos."""
    db = tmp_path / "old.db"
    index(clipdb_bin, env, db, "--no-videos", folder)
    con = sqlite3.connect(db)
    con.execute("DROP TABLE photos_frames")
    con.commit()
    con.close()
    info = json.loads(run(clipdb_bin, env, "--db", db, "info", "--json").stdout)
    assert (info["photos"], info["videos"], info["frames"]) == (len(PHOTOS), 0, 0)
    assert search(clipdb_bin, env, db, "a red star").count("\n") == len(PHOTOS)
    out = index(clipdb_bin, env, db, folder)
    assert out["added"] == 2 and out["frames"] == 7
