#!/usr/bin/python3
"""anchors.py: the PyTorch anchor for the encoder benchmark (issue #3) and the reference check of
our encoder at the real ViT-B/32 shapes.

It rebuilds CLIP in PyTorch from a Hugging Face checkpoint directory (config.json +
model.safetensors, parsed with numpy: torch 1.13 has no safetensors support), then:

  torch   times image batch 1 / 32 from pixels, text batch 1 / 32 with 77 tokens and a 7-token
          query at batch 1, on 2 threads; prints one JSON object (rates per second).
  check   embeds 2 pixel inputs and 2 token sequences with PyTorch and with our CLI
          (`clipdb embed --pixels` / `--text`, default half-float text weights and
          CLIPDB_WEIGHTS=f32) and prints the max abs differences of the normalised vectors.
  export  writes the two towers as ONNX (vision.onnx: pixels -> image_embeds, text.onnx:
          input_ids -> text_embeds, dynamic batch and sequence axes) plus check inputs and the
          PyTorch outputs for them (check.json), for anchor_ort.mjs.
  table   prints the comparison table from the outputs of bench-embed, `torch` and
          anchor_ort.mjs (used by run.sh).

usage: /usr/bin/python3 bench/embed/anchors.py torch|check|export [--model DIR] [--out DIR]
                                               [--clipdb BIN] [--reps N]
       /usr/bin/python3 bench/embed/anchors.py table --ours [LABEL=]FILE... [--torch FILE]
           [--ort FILE]
Needs Debian's python3-torch for everything but `table`.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time


def set_torch_env():
    """Runtime settings for the PyTorch anchor. OpenBLAS and libgomp read them when they load, and
    numpy already loads Debian's OpenBLAS, so this runs before `import numpy`; the environment
    wins.
    - Debian's OpenBLAS does not recognise this CPU and falls back to its SSE3 (Prescott) kernels:
      name an AVX-512 core when the CPU has AVX-512 (1600x3072x768: 20 -> 110 GFLOP/s, 2 threads).
    - libgomp's threads spin while OpenBLAS's own threads run the GEMMs: on 2 shared cores that
      made a batch-1 image ~10x slower (0.5 vs 7 img/s at load 4.5); passive waiting avoids it."""
    with open("/proc/cpuinfo") as f:
        avx512 = " avx512f" in f.read()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if avx512:
        os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")


set_torch_env()
import numpy as np  # noqa: E402 (after set_torch_env)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(ROOT, "bench", "data", "clip-vit-b-32-random")
DEFAULT_OUT = os.path.join(ROOT, "bench", "out", "anchors")
THREADS = 2
SHORT_TOKENS = 7  # "a photo of a dog": SOT, 5 words, EOT
SHORT_TEXT = "a photo of a dog"
LONG_TEXT = "red " * 100  # truncated to the 77-token context

# ---- checkpoint ----

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """{name: numpy array} from a safetensors file: u64 LE header size, JSON header, raw data."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in ST_DTYPES:
            sys.exit(f"anchors: {path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=ST_DTYPES[info["dtype"]])
        tensors[name] = arr.reshape(info["shape"])
    return tensors


# ---- model (imports torch lazily so `table` works without it) ----

def build_model(model_dir):
    import torch
    from torch import nn

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    tc, vc = cfg["text_config"], cfg["vision_config"]

    class Attention(nn.Module):
        def __init__(self, width, heads):
            super().__init__()
            self.heads = heads
            self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
            self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)

        def forward(self, x, mask):
            b, t, d = x.shape
            hd = d // self.heads

            def split(y):
                return y.reshape(b, t, self.heads, hd).transpose(1, 2)

            q, k, v = split(self.q_proj(x) * hd ** -0.5), split(self.k_proj(x)), split(self.v_proj(x))
            scores = q @ k.transpose(-1, -2)
            if mask is not None:
                scores = scores + mask
            out = torch.softmax(scores, dim=-1) @ v
            return self.out_proj(out.transpose(1, 2).reshape(b, t, d))

    class Mlp(nn.Module):
        def __init__(self, width, inner):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(width, inner), nn.Linear(inner, width)

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu

    class Layer(nn.Module):
        def __init__(self, c):
            super().__init__()
            w = c["hidden_size"]
            self.layer_norm1 = nn.LayerNorm(w, eps=c["layer_norm_eps"])
            self.self_attn = Attention(w, c["num_attention_heads"])
            self.layer_norm2 = nn.LayerNorm(w, eps=c["layer_norm_eps"])
            self.mlp = Mlp(w, c["intermediate_size"])

        def forward(self, x, mask):
            x = x + self.self_attn(self.layer_norm1(x), mask)
            return x + self.mlp(self.layer_norm2(x))

    class Encoder(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))

        def forward(self, x, mask=None):
            for layer in self.layers:
                x = layer(x, mask)
            return x

    class VisionEmbeddings(nn.Module):
        def __init__(self, c):
            super().__init__()
            w, p = c["hidden_size"], c["patch_size"]
            self.class_embedding = nn.Parameter(torch.zeros(w))
            self.patch_embedding = nn.Conv2d(c["num_channels"], w, p, stride=p, bias=False)
            self.position_embedding = nn.Embedding((c["image_size"] // p) ** 2 + 1, w)

        def forward(self, pixels):
            patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
            cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
            return torch.cat([cls, patches], dim=1) + self.position_embedding.weight

    class VisionModel(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.embeddings = VisionEmbeddings(c)
            self.pre_layrnorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
            self.encoder = Encoder(c)
            self.post_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

        def forward(self, pixels):
            x = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
            return self.post_layernorm(x[:, 0])

    class TextEmbeddings(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.token_embedding = nn.Embedding(c["vocab_size"], c["hidden_size"])
            self.position_embedding = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])

        def forward(self, ids):
            return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]

    class TextModel(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.embeddings = TextEmbeddings(c)
            self.encoder = Encoder(c)
            self.final_layer_norm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

        def forward(self, ids):
            t = ids.shape[1]
            causal = torch.full((t, t), float("-inf")).triu(1)
            x = self.final_layer_norm(self.encoder(self.embeddings(ids), causal))
            # Pooled at the EOT token: with CLIP's vocabulary it has the highest id (the
            # reference's argmax; config eos_token_id 2 is the legacy marker for this).
            return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]

    class Clip(nn.Module):
        def __init__(self):
            super().__init__()
            proj = cfg["projection_dim"]
            self.vision_model, self.text_model = VisionModel(vc), TextModel(tc)
            self.visual_projection = nn.Linear(vc["hidden_size"], proj, bias=False)
            self.text_projection = nn.Linear(tc["hidden_size"], proj, bias=False)
            self.logit_scale = nn.Parameter(torch.zeros(()))

        def image_embeds(self, pixels):
            e = self.visual_projection(self.vision_model(pixels))
            return e / e.norm(dim=-1, keepdim=True)

        def text_embeds(self, ids):
            e = self.text_projection(self.text_model(ids))
            return e / e.norm(dim=-1, keepdim=True)

    model = Clip().eval()
    tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    # position_ids are an index buffer in the reference, not weights.
    weights = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        sys.exit(f"anchors: checkpoint names differ from the model: missing {missing[:5]}, "
                 f"unexpected {extra[:5]}")
    state = {}
    for name, arr in weights.items():
        if tuple(arr.shape) != tuple(expected[name].shape):
            sys.exit(f"anchors: {name}: shape {list(arr.shape)}, expected "
                     f"{list(expected[name].shape)}")
        state[name] = torch.from_numpy(np.array(arr, dtype=np.float32))
    model.load_state_dict(state, strict=True)
    return model, cfg


# ---- timing ----

def median_seconds(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def text_ids(n, length, vocab):
    """n rows of `length` ids: SOT, random word ids, EOT last (pooled position = length - 1)."""
    rng = np.random.default_rng(1)
    ids = rng.integers(1, vocab - 2, size=(n, length), dtype=np.int64)
    ids[:, 0], ids[:, -1] = vocab - 2, vocab - 1
    return ids


def cmd_torch(args):
    import torch
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    model, cfg = build_model(args.model)
    load_s = time.perf_counter() - t0
    side, ctx = cfg["vision_config"]["image_size"], cfg["text_config"]["max_position_embeddings"]
    vocab = cfg["text_config"]["vocab_size"]
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.standard_normal((32, 3, side, side), dtype=np.float32))
    long_ids = torch.from_numpy(text_ids(32, ctx, vocab))
    short_ids = torch.from_numpy(text_ids(1, SHORT_TOKENS, vocab))
    r = args.reps
    with torch.inference_mode():
        img1 = median_seconds(lambda: model.image_embeds(pixels[:1]), 2 * r)
        img32 = median_seconds(lambda: model.image_embeds(pixels), max(2, r // 2))
        txt1 = median_seconds(lambda: model.text_embeds(long_ids[:1]), 2 * r)
        txt32 = median_seconds(lambda: model.text_embeds(long_ids), max(2, r // 2))
        short = median_seconds(lambda: model.text_embeds(short_ids), 5 * r, warmup=3)
    result = {
        "anchor": f"PyTorch {torch.__version__}", "threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_WAIT_POLICY")},
        "load_s": load_s,
        "image_b1": 1 / img1, "image_b32": 32 / img32,
        "text77_b1": 1 / txt1, "text77_b32": 32 / txt32, "text7_b1": 1 / short,
    }
    print(json.dumps(result))


# ---- cross-check against our CLI ----

def run_cli(args, extra, env_weights=None):
    env = dict(os.environ)
    if env_weights:
        env["CLIPDB_WEIGHTS"] = env_weights
    else:
        env.pop("CLIPDB_WEIGHTS", None)
    out = subprocess.run([args.clipdb] + extra, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"anchors: {' '.join(extra[:2])} failed: {out.stderr.strip()}")
    return np.array(json.loads(out.stdout), dtype=np.float64)


def check_inputs(cfg, out_dir):
    """Two pixel files (raw LE float32, 3 x side x side) and the two check texts."""
    side = cfg["vision_config"]["image_size"]
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(2):
        # Roughly the range of normalised pixels: uniform [0, 1] minus mean over std.
        px = ((rng.random((3, side, side)) - 0.45) / 0.27).astype("<f4")
        path = os.path.join(out_dir, f"check-pixels-{i}.f32")
        px.tofile(path)
        paths.append(path)
    return paths, [SHORT_TEXT, LONG_TEXT]


def cmd_check(args):
    import torch
    torch.set_num_threads(THREADS)
    model, cfg = build_model(args.model)
    pixel_paths, texts = check_inputs(cfg, args.out)
    side = cfg["vision_config"]["image_size"]
    with torch.inference_mode():
        pix = np.stack([np.fromfile(p, dtype="<f4").reshape(3, side, side) for p in pixel_paths])
        ref_img = model.image_embeds(torch.from_numpy(pix)).double().numpy()
        ids = [json.loads(subprocess.run([args.clipdb, "tokenize", "--model", args.model, t],
                                         capture_output=True, text=True, check=True).stdout)
               for t in texts]
        ref_txt = np.stack([model.text_embeds(torch.tensor([row])).double().numpy()[0]
                            for row in ids])
    ours_img = np.stack([run_cli(args, ["embed", "--model", args.model, "--pixels", p])
                         for p in pixel_paths])
    report = {"image_max_abs_diff": float(np.abs(ours_img - ref_img).max())}
    for label, weights in (("text_max_abs_diff_f16_weights", None),
                           ("text_max_abs_diff_f32_weights", "f32")):
        ours_txt = np.stack([run_cli(args, ["embed", "--model", args.model, "--text", t], weights)
                             for t in texts])
        report[label] = float(np.abs(ours_txt - ref_txt).max())
    report["tokens"] = [int(np.argmax(row)) + 1 for row in ids]
    print(json.dumps(report))


# ---- ONNX export ----

def cmd_export(args):
    import torch
    model, cfg = build_model(args.model)
    os.makedirs(args.out, exist_ok=True)
    side, ctx = cfg["vision_config"]["image_size"], cfg["text_config"]["max_position_embeddings"]
    vocab = cfg["text_config"]["vocab_size"]

    class Tower(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.model, self.fn = model, fn

        def forward(self, x):
            return self.fn(x)

    towers = [("vision.onnx", Tower(model.image_embeds), torch.zeros(2, 3, side, side),
               "pixels", "image_embeds", {0: "batch"}),
              ("text.onnx", Tower(model.text_embeds), torch.from_numpy(text_ids(2, ctx, vocab)),
               "input_ids", "text_embeds", {0: "batch", 1: "sequence"})]
    for name, tower, example, inp, outp, axes in towers:
        path = os.path.join(args.out, name)
        torch.onnx.export(tower, (example,), path, input_names=[inp], output_names=[outp],
                          dynamic_axes={inp: axes, outp: {0: "batch"}}, opset_version=17,
                          do_constant_folding=True)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.0f} MB)")
    # Check inputs and PyTorch's outputs for them, for anchor_ort.mjs.
    pixel_paths, _ = check_inputs(cfg, args.out)
    pix = np.stack([np.fromfile(p, dtype="<f4").reshape(3, side, side) for p in pixel_paths])
    long_ids, short_ids = text_ids(2, ctx, vocab), text_ids(1, SHORT_TOKENS, vocab)
    with torch.inference_mode():
        check = {
            "side": side, "pixels": pixel_paths,
            "image_embeds": model.image_embeds(torch.from_numpy(pix)).tolist(),
            "long_ids": long_ids.tolist(),
            "long_embeds": model.text_embeds(torch.from_numpy(long_ids)).tolist(),
            "short_ids": short_ids.tolist(),
            "short_embeds": model.text_embeds(torch.from_numpy(short_ids)).tolist(),
            "model": os.path.realpath(args.model),
        }
    with open(os.path.join(args.out, "check.json"), "w") as f:
        json.dump(check, f)
    print(f"wrote {os.path.join(args.out, 'check.json')}")


# ---- comparison table ----

def parse_ours(text):
    """Rates per second from bench-embed's output (lines it prints today)."""
    ours = {}
    m = re.search(r"images from pixels: batch 1 ([\d.]+) img/s, batch 32 ([\d.]+) img/s", text)
    if m:
        ours["image_b1"], ours["image_b32"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"^text: (\d+) tokens ([\d.]+) ms, (\d+) tokens ([\d.]+) ms", text, re.M)
    if m:
        ours["text7_b1"], ours["text77_b1"] = 1e3 / float(m.group(2)), 1e3 / float(m.group(4))
    m = re.search(r"text batch 32.*?([\d.]+) texts/s", text)
    if m:
        ours["text77_b32"] = float(m.group(1))
    return ours


CASES = [("image_b1", "images/s, batch 1 (pixels)"), ("image_b32", "images/s, batch 32 (pixels)"),
         ("text7_b1", "texts/s, 7 tokens, batch 1"), ("text77_b1", "texts/s, 77 tokens, batch 1"),
         ("text77_b32", "texts/s, 77 tokens, batch 32")]


def load_anchor(path, how):
    if not path or not os.path.exists(path):
        return None, f"not installed ({how})"
    with open(path) as f:
        text = f.read().strip()
    try:
        return json.loads(text.splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"failed: {text[-200:]}"


def fmt(rate):
    return "-" if rate is None else (f"{rate:.1f}" if rate < 100 else f"{rate:.0f}")


def cmd_table(args):
    runs = []  # (label, parsed bench-embed output): --ours FILE or --ours LABEL=FILE, repeatable
    for spec in args.ours:
        label, _, path = spec.rpartition("=")
        with open(path) as f:
            runs.append((f"ours {label}" if label else "ours", parse_ours(f.read())))
    anchors = [("PyTorch", *load_anchor(args.torch, "apt-get install -y python3-torch")),
               ("ONNX Runtime", *load_anchor(
                   args.ort, "mkdir -p bench/out/anchors && cd bench/out/anchors && npm install "
                   "onnxruntime-node@1.30 --ignore-scripts; the export needs python3-torch"))]
    names = [(r or {}).get("anchor", n) for n, r, _ in anchors]
    head = ["case"] + [o for o, _ in runs] + names
    head += [f"{o}/{n.split()[0]}" for o, _ in runs for n in names]
    rows = []
    for key, label in CASES:
        row = [label] + [fmt(ours.get(key)) for _, ours in runs]
        row += [fmt(r.get(key)) if r else "-" for _, r, _ in anchors]
        for _, ours in runs:
            for _, r, _ in anchors:
                a, o = (r or {}).get(key), ours.get(key)
                row.append(f"{o / a:.2f}" if a and o else "-")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in [head, ["-" * w for w in widths]] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    for name, _, note in anchors:
        if note:
            print(f"{name}: {note}")
    if any("text77_b32" not in ours for _, ours in runs):
        print("ours, 77 tokens batch 32: bench-embed has no text batch case (prints '-')")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["torch", "check", "export", "table"])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--clipdb", default=os.path.join(ROOT, "build-main", "cli", "clipdb"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ours", action="append", default=[],
                   help="bench-embed output, FILE or LABEL=FILE; repeat for several runs")
    p.add_argument("--torch")
    p.add_argument("--ort")
    args = p.parse_args()
    {"torch": cmd_torch, "check": cmd_check, "export": cmd_export, "table": cmd_table}[
        args.command](args)


if __name__ == "__main__":
    main()
