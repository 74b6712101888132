#!/usr/bin/python3
"""fidelity.py: per-file embedding cosine between the default (fast) image preprocessing and the
exact mode (CLIPDB_RESIZE=exact: full decode + Pillow's bicubic resize + centre crop, the
reference pixels), both through `clipdb embed --image` with the same model. Prints one line per
file, then min and mean; exits 1 when a file is below --min (0.995) or the mean below --mean
(0.999).

usage: /usr/bin/python3 bench/embed/fidelity.py --model DIR [--clipdb build/cli/clipdb] FILE...
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--clipdb", default="build/cli/clipdb")
    ap.add_argument("--min", type=float, default=0.995)
    ap.add_argument("--mean", type=float, default=0.999)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    cosines = []
    for f in a.files:
        fast, exact = embed(a.clipdb, a.model, f, "fast"), embed(a.clipdb, a.model, f, "exact")
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
