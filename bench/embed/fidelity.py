#!/usr/bin/python3
"""fidelity.py: per-file embedding cosine between the default (fast) image preprocessing and the
exact mode (CLIPDB_RESIZE=exact: full decode + Pillow's bicubic resize + centre crop, the
reference pixels), both through `clipdb embed --image` with the same model. Prints one line per
file, then min and mean; exits 1 when a file is below --min (0.995) or the mean below --mean
(0.999).
With --reference, the comparison is instead with the reference pipeline: Pillow's whole decode
(EXIF orientation applied, as clipdb does), convert("RGB"), bicubic resize of the short side,
centre crop, normalisation, and the PyTorch fp32 model rebuilt from the checkpoint
(anchors.py's build_model; needs Debian's python3-torch).

usage: /usr/bin/python3 bench/embed/fidelity.py --model DIR [--clipdb build/cli/clipdb]
       [--reference] FILE...
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np


def embed(clipdb, model, path, mode):
    env = dict(os.environ, CLIPDB_RESIZE=mode)
    out = subprocess.run([clipdb, "embed", "--model", model, "--image", path], env=env,
                         check=True, capture_output=True, text=True).stdout
    return np.array(json.loads(out), dtype=np.float64)


def reference_embedder(model_dir):
    """PyTorch fp32 embedding of a file through the reference preprocessing."""
    import torch
    from PIL import Image, ImageOps

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import anchors
    model, cfg = anchors.build_model(model_dir)
    with open(os.path.join(model_dir, "preprocessor_config.json")) as f:
        pre = json.load(f)
    side = cfg["vision_config"]["image_size"]
    mean, std = np.array(pre["image_mean"]), np.array(pre["image_std"])

    def embed_file(path):
        img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        w, h = img.size
        short, long_ = (w, h) if w <= h else (h, w)
        size = (side, side * long_ // short) if w <= h else (side * long_ // short, side)
        img = img.resize(size, Image.BICUBIC)
        left, top = round((size[0] - side) / 2), round((size[1] - side) / 2)
        img = img.crop((left, top, left + side, top + side))
        px = ((np.asarray(img, dtype=np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)
        with torch.inference_mode():
            out = model.image_embeds(torch.from_numpy(px[None].astype(np.float32)))
        return out.double().numpy()[0]
    return embed_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--clipdb", default="build/cli/clipdb")
    ap.add_argument("--min", type=float, default=0.995)
    ap.add_argument("--mean", type=float, default=0.999)
    ap.add_argument("--reference", action="store_true",
                    help="compare with Pillow + PyTorch fp32 instead of CLIPDB_RESIZE=exact")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    reference = reference_embedder(a.model) if a.reference else None
    cosines = []
    for f in a.files:
        fast = embed(a.clipdb, a.model, f, "fast")
        exact = reference(f) if reference else embed(a.clipdb, a.model, f, "exact")
        c = float(fast @ exact / np.linalg.norm(fast) / np.linalg.norm(exact))
        cosines.append(c)
        print(f"{c:.6f}  {f}", flush=True)
    lo, mean = min(cosines), sum(cosines) / len(cosines)
    ok = lo >= a.min and mean >= a.mean
    print(f"{len(cosines)} files: min {lo:.6f}, mean {mean:.6f} "
          f"({'ok' if ok else 'FAILS'}: wanted min >= {a.min}, mean >= {a.mean})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
