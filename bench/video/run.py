#!/usr/bin/python3
"""run.py: video indexing speed. Generates clips locally with Debian's ffmpeg (a 1080p H.264 clip
and, when this libavcodec decodes HEVC, a 4K HEVC clip; moving test patterns, 30 fps, a keyframe
every 2 s like phone cameras; one 1080p clip with x264's default keyframe every 250 frames, where
frames between keyframes are decoded), then, through the SQLite extension:
  1. sampling alone: SELECT count(*) FROM clip_video_frames(clip) (demux, decode, scale, PNG);
  2. indexing: INSERT INTO clips(image, video, t)
     SELECT frame, path, t FROM clip_video_frames(clip), inside one transaction (sampling +
     batched embedding + storing);
  3. `clipdb index` of a folder holding the clip (a fresh library): frames decoded on a decoder
     thread while the main thread embeds them in batches of 16, the scene filter applied.
Prints samples/s and the real-time factor (video duration / wall time) for each.

usage: /usr/bin/python3 bench/video/run.py [--model DIR] [--build DIR] [--seconds N]
(defaults: bench/data/clip-vit-b-32-random, build, 60; clips cached under bench/out/video/)
"""
import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_clip(path, size, codec, seconds, gop):
    if path.exists():
        return True
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
            f"testsrc2=s={size}:r=30:d={seconds}", "-c:v", codec, "-g", str(gop), "-pix_fmt",
            "yuv420p", "-preset", "veryfast", "-x265-params", "log-level=error", str(path)]
    return subprocess.run(args).returncode == 0


def run(db, clip, seconds):
    t0 = time.perf_counter()
    n = db.execute("SELECT count(*) FROM clip_video_frames(?)", (str(clip),)).fetchone()[0]
    sample_s = time.perf_counter() - t0
    db.execute("DROP TABLE IF EXISTS clips")
    db.execute("CREATE VIRTUAL TABLE clips USING clip(video TEXT, t REAL)")
    t0 = time.perf_counter()
    with db:
        db.execute("INSERT INTO clips(image, video, t) SELECT frame, path, t "
                   "FROM clip_video_frames(?)", (str(clip),))
    index_s = time.perf_counter() - t0
    print(f"{clip.name}: {n} samples; sampling {n / sample_s:.1f} frames/s, "
          f"{seconds / sample_s:.1f}x real time; sampling + embedding {n / index_s:.1f} frames/s, "
          f"{seconds / index_s:.1f}x real time")


def run_cli(clipdb, model, clip, seconds):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        os.symlink(clip, folder / clip.name)
        t0 = time.perf_counter()
        out = subprocess.run([str(clipdb), "--db", str(Path(tmp) / "lib.db"), "--model", model,
                              "index", "--json", "--quiet", str(folder)],
                             check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - t0
    s = json.loads(out)
    print(f"{clip.name}: clipdb index: {s['embedded']} frames embedded, {s['frames']} kept, "
          f"{s['embedded'] / wall:.1f} frames/s, {seconds / wall:.1f}x real time "
          f"(encode {s['stages']['encode_seconds']:.2f} s, decoder thread "
          f"{s['stages']['decode_thread_seconds']:.2f} s, wall {wall:.2f} s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "bench/data/clip-vit-b-32-random"))
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--seconds", type=int, default=60)
    a = ap.parse_args()
    out = ROOT / "bench/out/video"
    out.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(out / "bench.db")
    db.enable_load_extension(True)
    db.load_extension(str(Path(a.build) / "sqlite-ext/clipdb"))
    db.execute("SELECT clip_model('default', ?)", (a.model,))
    print(f"model {a.model}")
    clips = [(f"h264-1080p-{a.seconds}s.mp4", "1920x1080", "libx264", 60),
             (f"h264-1080p-gop250-{a.seconds}s.mp4", "1920x1080", "libx264", 250),
             (f"hevc-2160p-{a.seconds}s.mp4", "3840x2160", "libx265", 60)]
    for name, size, codec, gop in clips:
        if make_clip(out / name, size, codec, a.seconds, gop):
            run(db, out / name, a.seconds)
            run_cli(Path(a.build) / "cli/clipdb", a.model, out / name, a.seconds)
        else:
            print(f"{name}: could not be generated ({codec})")


if __name__ == "__main__":
    main()
