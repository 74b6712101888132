#!/usr/bin/python3
"""make_mix.py DIR [N640=96]: the folders of the `clipdb index` benchmark (bench/README.md, cli):
DIR/jpeg640: N640 JPEGs 640x480 (colour fields, discs, sensor-like noise, Q90);
DIR/mix: the photo-like mix: the 24 camera-like JPEGs of 1-12 MP that bench-cli-make-photos
writes (run it first: bench-cli-make-photos DIR/mix 24 1), plus 4 PNG screenshots (1920x1080,
flat UI blocks and text-like stripes), 4 EXIF-rotated JPEGs (orientation 6 and 8, 2592x1944)
and 4 WebPs (Q80, 2048x1536), made here with Pillow."""
import os
import sys

import numpy as np
from PIL import Image, ImageDraw


def photo(rng, w, h, i):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 0.2 + 40 + 37 * i % 120, y * 0.3 + 60 + 53 * i % 120,
                     x * 0.1 + y * 0.1 + 50], -1) * (640 / w)
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(w // 30, w // 5)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


def screenshot(rng, w, h):
    img = Image.new("RGB", (w, h), (246, 246, 246))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, w, 48], fill=(40, 44, 52))
    for y in range(80, h - 20, 22):
        x0 = int(rng.integers(20, 200))
        d.rectangle([x0, y, x0 + int(rng.integers(200, w - 400)), y + 10], fill=(60, 60, 60))
    return img


def main():
    out = sys.argv[1]
    n640 = int(sys.argv[2]) if len(sys.argv) > 2 else 96
    rng = np.random.default_rng(1)
    os.makedirs(f"{out}/jpeg640", exist_ok=True)
    os.makedirs(f"{out}/mix", exist_ok=True)
    for i in range(n640):
        photo(rng, 640, 480, i).save(f"{out}/jpeg640/p{i:03d}.jpg", quality=90)
    for i in range(4):
        screenshot(rng, 1920, 1080).save(f"{out}/mix/screen-{i}.png")
        exif = Image.Exif()
        exif[0x0112] = 6 if i % 2 == 0 else 8
        photo(rng, 2592, 1944, i).save(f"{out}/mix/rotated-{i}.jpg", quality=90, exif=exif)
        photo(rng, 2048, 1536, i + 4).save(f"{out}/mix/photo-{i}.webp", quality=80)


if __name__ == "__main__":
    main()
