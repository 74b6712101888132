"""Test videos made with Debian's ffmpeg CLI from the shapes fixtures (examples/shapes), which
the tiny model recognises. Shared by test_video.py, test_video_cli.py and the gallery tests."""
import shutil
import subprocess
from pathlib import Path

import pytest

SHAPES = Path(__file__).resolve().parents[2] / "examples" / "shapes"
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def shapes_folder(folder, n):
    """folder (created) holding the first n demo shape images. -> folder"""
    folder.mkdir()
    for p in sorted(SHAPES.iterdir())[:n]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def shapes_video(path, gop=10, codec=("-c:v", "libx264")):
    """12 s at 10 fps: backgrounds 0-3 s, red star 3-5 s, backgrounds 5-7 s, blue square 7-9 s,
    backgrounds 9-12 s. gop: frames between keyframes (10: keyframe-only decoding applies).
    codec: the encoder arguments (H.264 by default; e.g. ("-c:v", "libvpx-vp9") for WebM)."""
    def colour(name, seconds):
        return ["-f", "lavfi", "-t", str(seconds), "-i", f"color={name}:s=320x240:r=10"]

    def still(name, seconds):
        return ["-loop", "1", "-framerate", "10", "-t", str(seconds), "-i", str(SHAPES / name)]

    inputs = (colour("green", 1.5) + colour("yellow", 1.5) + still("055-red-star-on-blue.png", 2)
              + colour("orange", 1) + colour("white", 1) + still("040-blue-square-on-white.png", 2)
              + colour("purple", 1.5) + colour("black", 1.5))
    graph = ("[2]scale=320:240,setsar=1[a];[5]scale=320:240,setsar=1[b];"
             "[0][1][a][3][4][b][6][7]concat=n=8:v=1:a=0,format=yuv420p")
    ffmpeg(*inputs, "-filter_complex", graph, *codec, "-g", str(gop), "-sc_threshold", "0",
           str(path))
    return str(path)


def static_video(path, seconds=60):
    """One still (a blue star on orange) for `seconds` at 5 fps."""
    ffmpeg("-loop", "1", "-framerate", "5", "-t", str(seconds), "-i",
           str(SHAPES / "010-blue-star-on-orange.png"),
           "-vf", "scale=320:240,format=yuv420p", "-c:v", "libx264", "-g", "250", str(path))
    return str(path)


def audio_only(path):
    """Two seconds of a sine tone, AAC in an MP4 container: no video stream."""
    ffmpeg("-f", "lavfi", "-t", "2", "-i", "sine=frequency=440", "-c:a", "aac", str(path))
    return str(path)
