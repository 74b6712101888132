"""bf16 and int8 against float32 on the shapes demo (examples/shapes, tests/data/clip-tiny-shapes).

Each precision embeds every demo image and one caption per (colour, shape) pair in its own process
(CLIPDB_PRECISION is read when a process loads the model); the comparison is done here with numpy:
every image's cosine to its float32 embedding, zero-shot accuracy (the caption of the file name
ranks first), and text->image rankings (the top 5 images of every caption) must be unchanged."""
import json
import os
import re
import subprocess

import numpy as np
import pytest

from conftest import DEMO_DIR, MODEL_DIR

SCRIPT = r"""
import json, sqlite3, sys
db = sqlite3.connect(":memory:")
db.enable_load_extension(True)
db.load_extension(sys.argv[1])
spec = json.loads(sys.stdin.read())
def vec(sql, arg):
    return list(memoryview(db.execute(sql, (arg,)).fetchone()[0]).cast("f"))
out = {"precision": json.loads(db.execute("SELECT clip_model('p', ?)", (spec["model"],))
                               .fetchone()[0])["precision"],
       "images": [vec("SELECT clip_embed_image(?, 'p')", p) for p in spec["images"]],
       "texts": [vec("SELECT clip_embed_text(?, 'p')", t) for t in spec["texts"]]}
print(json.dumps(out))
"""

NAME = re.compile(r"^\d{3}-([a-z]+)-([a-z]+)-on-([a-z]+)(-copy)?\.(jpg|png)$")


def cpu_has_bf16():
    with open("/proc/cpuinfo") as f:
        return "avx512_bf16" in f.read().split()


def demo():
    images, labels = [], []
    for p in sorted(DEMO_DIR.iterdir()):
        m = NAME.match(p.name)
        if m:
            images.append(str(p))
            labels.append(f"a {m.group(1)} {m.group(2)}")
    return images, labels


def embed(ext_path, precision, images, texts):
    spec = json.dumps({"model": str(MODEL_DIR), "images": images, "texts": texts})
    r = subprocess.run(["/usr/bin/python3", "-c", SCRIPT, ext_path], input=spec,
                       env=dict(os.environ, CLIPDB_PRECISION=precision), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return out["precision"], np.array(out["images"]), np.array(out["texts"])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_keeps_fidelity_and_rankings_on_the_shapes_demo(ext_path, precision):
    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("no AVX512-BF16: bf16 runs float32")
    images, labels = demo()
    texts = sorted(set(labels))
    assert len(images) >= 50 and len(texts) >= 10
    p32, img32, txt32 = embed(ext_path, "f32", images, texts)
    plow, imglow, txtlow = embed(ext_path, precision, images, texts)
    assert (p32, plow) == ("f32", precision)
    assert not np.array_equal(img32, imglow), f"{precision} gave float32's vectors: it did not run"
    np.testing.assert_array_equal(txt32, txtlow)  # the text tower stays float32
    cos = np.sum(img32 * imglow, axis=1)  # both normalised
    assert cos.min() >= 0.995 and cos.mean() >= 0.999, (cos.min(), cos.mean())
    truth = np.array([texts.index(label) for label in labels])
    acc32 = np.mean(np.argmax(img32 @ txt32.T, axis=1) == truth)
    acclow = np.mean(np.argmax(imglow @ txtlow.T, axis=1) == truth)
    assert acclow == acc32, (acc32, acclow)
    assert acc32 > 0.5  # the fixture model does recognise the shapes
    top32 = np.argsort(-(txt32 @ img32.T), axis=1, kind="stable")[:, :5]
    toplow = np.argsort(-(txtlow @ imglow.T), axis=1, kind="stable")[:, :5]
    for t in range(len(texts)):
        assert set(top32[t]) == set(toplow[t]), (texts[t], top32[t], toplow[t])
    print(f"{precision} vs f32: image cosine min {cos.min():.7f} mean {cos.mean():.7f}, "
          f"zero-shot {acc32:.2f} -> {acclow:.2f}")
