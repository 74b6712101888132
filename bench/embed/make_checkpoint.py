#!/usr/bin/python3
"""make_checkpoint.py: writes a random-weight CLIP checkpoint with the real ViT-B/32 shapes in the
Hugging Face layout (config.json, model.safetensors, tokenizer and preprocessor files) for the
encoder benchmark. Shapes come from bench/vit-b-32-tensors.txt; weights are N(0, 0.02) like the
reference initialisation, layer norms 1/0, so activations stay in a realistic range.

usage: /usr/bin/python3 bench/embed/make_checkpoint.py [OUT_DIR] [--dtype F32|F16]
(default OUT_DIR bench/data/clip-vit-b-32-random, dtype F32 like the released export)
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "data", "clip-tiny-shapes")
LAYERS = 12

CONFIG = {
    "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 512,
    "logit_scale_init_value": 2.6592,
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                    "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512,
                    "eos_token_id": 2},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                      "num_hidden_layers": 12, "image_size": 224, "patch_size": 32,
                      "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                      "projection_dim": 512},
}


def tensor_list():
    """(name, dtype, shape) for every tensor, with layers.N expanded."""
    out = []
    with open(os.path.join(ROOT, "bench", "vit-b-32-tensors.txt")) as f:
        for line in f:
            parts = line.split(None, 2)
            if len(parts) != 3 or not parts[2].startswith("["):
                continue
            name, dtype, shape = parts[0], parts[1], json.loads(parts[2])
            names = [name.replace("layers.N", "layers.%d" % i) for i in range(LAYERS)] \
                if "layers.N" in name else [name]
            out += [(n, dtype, shape) for n in names]
    return out


def values(name, shape, rng):
    if name.endswith("position_ids"):
        return np.arange(shape[-1], dtype=np.int64).reshape(shape)
    if name == "logit_scale":
        return np.array(np.log(100.0), dtype=np.float32)
    if "norm" in name or "layrnorm" in name:
        fill = 1.0 if name.endswith("weight") else 0.0
        return np.full(shape, fill, dtype=np.float32)
    if name.endswith("bias"):
        return np.zeros(shape, dtype=np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", nargs="?",
                    default=os.path.join(ROOT, "bench", "data", "clip-vit-b-32-random"))
    ap.add_argument("--dtype", choices=["F32", "F16"], default="F32")
    opts = ap.parse_args()
    out_dir, dtype = opts.out_dir, opts.dtype
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(1234)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, file_dtype, shape in tensor_list():
        v = values(name, shape, rng)
        if v.dtype == np.float32 and dtype == "F16":
            v, file_dtype = v.astype(np.float16), "F16"
        raw = v.tobytes()
        header[name] = {"dtype": file_dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    js = json.dumps(header, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        for b in blobs:
            f.write(b)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(TINY, name), os.path.join(out_dir, name))
    with open(os.path.join(TINY, "preprocessor_config.json")) as f:
        pre = json.load(f)
    pre["size"], pre["crop_size"] = 224, 224
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)
    print("wrote %s (%s, %.0f MB)" % (out_dir, dtype, offset / 1e6))


if __name__ == "__main__":
    main()
