"""Videos: clip_video_frames samples a video's frames so that plain SQL fills a clip table.

The videos are made here with Debian's ffmpeg from the shapes fixtures (examples/shapes), which
the tiny model recognises: a 12 s clip shows a red star from 3 s to 5 s and a blue square from
7 s to 9 s between plain backgrounds that change. Each frame's row is checked against what an
independent decoder (the ffmpeg CLI) gives for the same moment."""
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from video_helpers import audio_only, ffmpeg, needs_ffmpeg, shapes_video, static_video

pytestmark = needs_ffmpeg


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {"shapes": shapes_video(d / "shapes.mp4"),
            "shapes_long_gop": shapes_video(d / "shapes_g100.mp4", gop=100),
            "static": static_video(d / "static.mp4"), "audio": audio_only(d / "audio.m4a"),
            "dir": d}


def fill(conn, path, *args):
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS clips USING clip(video TEXT, t REAL)")
    qs = ", ".join("?" for _ in args)
    conn.execute(f"INSERT INTO clips(image, video, t) SELECT frame, path, t "
                 f"FROM clip_video_frames(?{', ' if args else ''}{qs})", (path, *args))
    conn.commit()


def best(conn, text):
    return conn.execute("SELECT video, t FROM clips WHERE clips MATCH ? AND k = 1",
                        (text,)).fetchone()


@pytest.mark.parametrize("which", ["shapes", "shapes_long_gop"])
def test_search_finds_the_moment(conn, videos, which):
    fill(conn, videos[which])
    times = [t for (t,) in conn.execute("SELECT t FROM clips ORDER BY t")]
    assert times == pytest.approx([0, 2, 4, 6, 8, 10], abs=0.15)
    video, t = best(conn, "a red star")
    assert video == videos[which] and 3 <= t <= 5
    video, t = best(conn, "a blue square")
    assert video == videos[which] and 7 <= t <= 9


def test_frame_embeds_like_the_same_pixels_decoded_elsewhere(conn, videos, tmp_path):
    """The frame at 4 s against the ffmpeg CLI's decode of that moment at the same size."""
    frame, t = conn.execute("SELECT frame, t FROM clip_video_frames(?, 2.0) "
                            "WHERE t > 3.9 AND t < 4.1",
                            (videos["shapes"],)).fetchone()
    png = tmp_path / "at4.png"
    # 320x240 -> short side 224: 298x224 (int(224 * 320 / 240)), as images are resized.
    ffmpeg("-ss", "4", "-i", videos["shapes"], "-frames:v", "1", "-vf",
           "scale=298:224:flags=bicubic",
           str(png))
    def embed(image):
        return np.frombuffer(conn.execute("SELECT clip_embed_image(?)", (image,)).fetchone()[0],
                             "<f4")

    ours, theirs = embed(frame), embed(png.read_bytes())
    assert float(ours @ theirs) > 0.99


def test_static_clip_stores_few_rows_with_the_scene_filter(conn, videos):
    every = conn.execute("SELECT count(*) FROM clip_video_frames(?)",
                         (videos["static"],)).fetchone()[0]
    assert every == 30
    fill(conn, videos["static"], 2.0, None, 0.95)
    assert conn.execute("SELECT count(*) FROM clips").fetchone()[0] <= 2


def test_scene_filter_keeps_the_shapes(conn, videos):
    fill(conn, videos["shapes"], 2.0, None, 0.95)
    assert 3 <= best(conn, "a red star")[1] <= 5
    assert 7 <= best(conn, "a blue square")[1] <= 9


def bad_message(conn, path, monkeypatch=None, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(sqlite3.OperationalError) as e:
        conn.execute("SELECT count(*) FROM clip_video_frames(?)", (str(path),)).fetchone()
    return str(e.value)


def test_bad_inputs_give_their_message(conn, videos, monkeypatch):
    d = videos["dir"]
    (d / "empty.mp4").write_bytes(b"")
    (d / "garbage.mp4").write_bytes(bytes(range(256)) * 64)
    data = Path(videos["shapes"]).read_bytes()
    (d / "truncated.mp4").write_bytes(data[:2000])
    empty = bad_message(conn, d / "empty.mp4")
    assert "empty.mp4" in empty and ("cannot" in empty or "not a video" in empty)
    assert "not a video in a container clipdb reads" in bad_message(conn, d / "garbage.mp4")
    msg = bad_message(conn, d / "truncated.mp4")
    assert "truncated.mp4" in msg
    assert "no video stream (audio only?)" in bad_message(conn, videos["audio"])
    assert "No such file" in bad_message(conn, d / "missing.mp4")
    assert "more than the 1000 allowed" in bad_message(conn, videos["shapes"], monkeypatch,
                                                       CLIPDB_MAX_IMAGE_PIXELS="1000")


def test_frame_budget_stops_a_stream_that_goes_on(conn, videos, monkeypatch):
    assert "over the budget per file" in bad_message(conn, videos["shapes_long_gop"], monkeypatch,
                                                     CLIPDB_VIDEO_MAX_FRAMES="20")


def test_bad_arguments(conn, videos):
    for args in [(videos["shapes"], 0), (videos["shapes"], "x"), (videos["shapes"], 2, None, 2)]:
        with pytest.raises(sqlite3.OperationalError, match="interval|scene"):
            marks = ", ".join("?" for _ in args)
            conn.execute(f"SELECT * FROM clip_video_frames({marks})", args).fetchall()
    with pytest.raises(sqlite3.OperationalError, match="usage"):
        conn.execute("SELECT * FROM clip_video_frames(1)").fetchall()


def test_direct_only_refused_from_a_stored_view(conn, videos):
    conn.execute("CREATE VIEW v AS SELECT t FROM clip_video_frames(%s)"
                 % ("'" + videos["shapes"].replace("'", "''") + "'"))
    with pytest.raises(sqlite3.OperationalError, match="unsafe use"):
        conn.execute("SELECT * FROM v").fetchall()


def test_only_local_files_in_self_contained_containers(conn, videos, tmp_path):
    """A playlist naming another file (hls), or a URL, is not followed."""
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12,\n{videos['shapes']}\n"
                        "#EXT-X-ENDLIST\n")
    assert "not a video in a container clipdb reads" in bad_message(conn, playlist)
    assert "No such file" in bad_message(conn, "http://127.0.0.1:9/x.mp4")
