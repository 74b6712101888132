#!/usr/bin/env python3
"""make_seeds.py: (re)generates the fuzzers' seed corpora in tests/fuzz/corpus/<target>/.

Seeds are small inputs that reach deep into each parser: real headers and configs of the tiny
model, small images from the fixtures, SQL argument strings, vector blobs. Run from anywhere:
    /usr/bin/python3 tests/fuzz/make_seeds.py
It only writes under tests/fuzz/corpus/ and is deterministic (same files every run); files
named regress-* (inputs that once failed, kept as regression seeds) are left alone."""
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
MODEL = DATA / "clip-tiny-shapes"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
SPLIT = b"\n#SPLIT#\n"  # separates two files in one input (see fuzz_split in fuzz_common.h)


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None, extra=b""):
    """tensors: [(name, dtype, shape, raw bytes)] -> a .safetensors file."""
    header, blob = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blob + extra


def seeds_safetensors():
    model = (MODEL / "model.safetensors").read_bytes()
    hlen = struct.unpack("<Q", model[:8])[0]
    put("fuzz_safetensors", "tiny-header-truncated", model[:8 + hlen + 64])
    put("fuzz_safetensors", "small-valid", safetensors([
        ("a.weight", "F16", [2, 3], bytes(range(12))),
        ("b.bias", "F32", [3], struct.pack("<3f", 1, 2, 3)),
        ("c", "BF16", [1, 1, 2], b"\x80\x3f\x00\x40"),
        ("position_ids", "I64", [1, 2], struct.pack("<2q", 0, 1)),
    ], metadata={"format": "pt"}))
    put("fuzz_safetensors", "scalar-and-empty", safetensors([
        ("s", "F32", [], struct.pack("<f", 0.5)), ("e", "F16", [0, 4], b"")]))
    put("fuzz_safetensors", "overlap", b"P\x00\x00\x00\x00\x00\x00\x00" + json.dumps(
        {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
         "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}).encode()[:80] + bytes(8))
    put("fuzz_safetensors", "huge-header-length", struct.pack("<Q", 1 << 62) + b"{}")
    put("fuzz_safetensors", "empty-object", struct.pack("<Q", 2) + b"{}")


def seeds_config():
    cfg = (MODEL / "config.json").read_bytes()
    pre = (MODEL / "preprocessor_config.json").read_bytes()
    put("fuzz_config", "tiny-config", b"\x00\x3f" + cfg)
    put("fuzz_config", "tiny-preprocessor", b"\x01\x3f" + pre)
    vitb = {"projection_dim": 512,
            "text_config": {"hidden_size": 512, "intermediate_size": 2048,
                            "num_attention_heads": 8, "num_hidden_layers": 12,
                            "vocab_size": 49408, "max_position_embeddings": 77,
                            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
            "vision_config": {"hidden_size": 768, "intermediate_size": 3072,
                              "num_attention_heads": 12, "num_hidden_layers": 12,
                              "image_size": 224, "patch_size": 32, "num_channels": 3,
                              "hidden_act": "gelu"}}
    put("fuzz_config", "vit-b-32-config", b"\x00\xdf" + json.dumps(vitb).encode())
    put("fuzz_config", "new-style-preprocessor", b"\x01\xdf" + json.dumps({
        "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}).encode())
    put("fuzz_config", "absurd", b"\x00\x3f" + json.dumps({
        "projection_dim": 2**40, "text_config": {"hidden_size": -1},
        "vision_config": {"image_size": 1e308}}).encode())


def seeds_tokenizer_files():
    vocab = json.loads((MODEL / "vocab.json").read_text())
    merges = (MODEL / "merges.txt").read_text().split("\n")
    byid = sorted(vocab.items(), key=lambda kv: kv[1])
    small = dict(byid[:512])
    small.update({k: v for k, v in byid[-2:]})  # <|startoftext|>, <|endoftext|>
    # byte 0: the mode (see fuzz_tokenizer_files.c); 0: both files from the input
    put("fuzz_tokenizer_files", "small-vocab", b"\x00" + json.dumps(small).encode() + SPLIT +
        "\n".join(merges[:200]).encode())
    put("fuzz_tokenizer_files", "no-version-line", b"\x00" + json.dumps(dict(byid[:300])).encode()
        + SPLIT + "\n".join(merges[1:50]).encode())
    put("fuzz_tokenizer_files", "bad-merges", b"\x00" + b'{"a": 0, "b": 1, "ab": 2}' + SPLIT +
        b"#version: 0.2\na b\nab\nx y z\n\xff\xfe c\n")
    # 1: merges.txt with the real vocabulary, loading the first N merges (2 bytes)
    for n in (1, 100, 2000):
        put("fuzz_tokenizer_files", f"real-vocab-merges-{n}", b"\x01" + struct.pack(">H", n - 1) +
            "\n".join(merges[:n + 1]).encode())
    put("fuzz_tokenizer_files", "real-vocab-merges-no-version", b"\x01\x00\x31" +
        "\n".join(merges[1:60]).encode())
    # 2 and 3: bytes spliced into the real vocab.json / merges.txt (4-byte offset, 2-byte cut)
    vocab_raw = (MODEL / "vocab.json").read_bytes()
    merges_raw = (MODEL / "merges.txt").read_bytes()
    at = vocab_raw.index(b'"hello</w>"')
    put("fuzz_tokenizer_files", "splice-vocab-entry", b"\x02" + struct.pack(">IH", at, 0) +
        b'"clipdb</w>": 3, ')
    put("fuzz_tokenizer_files", "splice-vocab-escape", b"\x02" + struct.pack(">IH", at + 1, 5) +
        b"\\u0068\\u00e9")
    put("fuzz_tokenizer_files", "splice-vocab-end",
        b"\x02" + struct.pack(">IH", len(vocab_raw) - 2, 2) + b', "x": 1}')
    at = merges_raw.index(b"\nh e")
    put("fuzz_tokenizer_files", "splice-merges-line",
        b"\x03" + struct.pack(">IH", at + 1, 3) + b"e h")
    put("fuzz_tokenizer_files", "splice-merges-crlf", b"\x03" + struct.pack(">IH", 40, 0) + b"\r\n")
    put("fuzz_tokenizer_files", "splice-merges-cut", b"\x03" + struct.pack(">IH", 3000, 60000))


def seeds_tokenizer():
    goldens = json.loads((DATA / "goldens" / "goldens.json").read_text())
    for i, t in enumerate(goldens["texts"]):
        put("fuzz_tokenizer", f"golden-{i:02d}", t["text"].encode())
    put("fuzz_tokenizer", "invalid-utf8",
        b"caf\xc3 \xff\xfe overlong \xc0\xaf surrogate \xed\xa0\x80")
    put("fuzz_tokenizer", "nul-inside", b"before\x00after")
    put("fuzz_tokenizer", "entities", b"&amp;amp; &#x1F600; &#99999999; &notanentity; &#;")


def seeds_image():
    for p in sorted((DATA / "goldens" / "images").iterdir()):
        if p.stat().st_size <= 8192:
            put("fuzz_image", p.name, p.read_bytes())
    demo = ROOT / "examples" / "shapes"
    for p in sorted(demo.iterdir()):
        if p.suffix in (".webp", ".gif") and p.stat().st_size <= 4096:
            put("fuzz_image", p.name, p.read_bytes())
    for p in sorted((DATA / "bad").iterdir()):
        put("fuzz_image", "bad-" + p.name, p.read_bytes())


def seeds_sql():
    # fuzz_vtab_args: the text between the parentheses of CREATE VIRTUAL TABLE t USING clip(...)
    for i, a in enumerate(["", "model=default", "index=auto", "model=default, index=flat",
                           "index=auto, label TEXT, score REAL", "index='IVF4,Flat', nprobe=2",
                           "model='openai/clip-vit-base-patch32'", "label TEXT NOT NULL, x INT",
                           "index=IVF1024,PQ32", "model=default, model=default",
                           "image, text", "embedding BLOB", "distance", "k=3",
                           "index=\"Flat\", nlist=0, nprobe=-1", "x" * 300]):
        put("fuzz_vtab_args", f"args-{i:02d}", a.encode())
    # fuzz_vec_blobs: op byte, then length-prefixed blobs (see fuzz_vec_blobs.c)
    def blob(b):
        return bytes([len(b)]) + b if len(b) < 255 else b"\xff" + struct.pack(">I", len(b)) + b
    unit = struct.pack("<64f", *([0.125] * 64))
    other = struct.pack("<64f", *([0.125] * 32 + [-0.125] * 32))
    # byte 1: bits 0-2 the argument types (0: BLOBs), bits 4-7 pick k (index into ks[]:
    # 0 -> -1, 2 -> 1, 3 -> 3, 5 -> 1000); b's first 8 bytes are the scale factor
    scale = struct.pack("<d", 0.5) + other[8:]
    for op in range(14):
        for k_index in ((2, 3, 5) if op in (8, 9, 12) else (0,)):
            put("fuzz_vec_blobs", f"op{op:02d}-k{k_index}", bytes([op, k_index << 4]) + blob(unit)
                + blob(scale))
    put("fuzz_vec_blobs", "op05-json-edge-values", bytes([5, 0]) + blob(
        struct.pack("<6f", -0.0, 1e-45, 3.4028235e38, -1.1754944e-38, 0.1, 1 / 3)) + blob(b""))
    put("fuzz_vec_blobs", "nan", bytes([0, 5]) + blob(struct.pack("<4f", float("nan"), 1, 2, 3))
        + blob(struct.pack("<4f", float("inf"), 1, 2, 3)))
    put("fuzz_vec_blobs", "odd-length", bytes([1, 7]) + blob(b"\x00" * 7) + blob(b""))
    # fuzz_shadow: [edits before first use] then edits of (table, row, column, kind, blob)
    # (see apply_edit in fuzz_shadow.c: kinds 0 NULL, 1 int, 2 blob, 3 text, 4 truncate,
    # 5 splice, 6 delete row, 7 real, 8 duplicate row)
    def edit(table, row, col, kind, payload=b""):
        return bytes([table, row, col, kind]) + blob(payload)
    put("fuzz_shadow", "no-edits", b"\x08")
    for kind in range(9):
        for table in range(0, 10, 3):
            put("fuzz_shadow", f"kind{kind}-table{table}",
                bytes([1 | (8 if table % 2 else 0)]) +
                edit(table, 1, kind % 4, kind, struct.pack("<4f", 0.5, -0.5, 2, 1e30)))
    put("fuzz_shadow", "after-cache", bytes([8]) + edit(2, 0, 1, 4, b"\x03") + edit(5, 3, 1, 6))
    put("fuzz_shadow", "many", bytes([12]) + b"".join(edit(t, t * 3, t, t % 9, bytes(range(t)))
                                                  for t in range(12)))
    # cache-file mode (byte 0 bit 4): edits (4-byte offset, kind 0 overwrite / 1 truncate /
    # 2 insert, bytes) of the valid cold-start file of table v
    def cache_edit(offset, kind, payload=b""):
        return struct.pack(">IB", offset, kind) + blob(payload)
    put("fuzz_shadow", "cache-valid", bytes([16]))
    put("fuzz_shadow", "cache-valid-maintenance", bytes([16 | 8]))
    for off in (0, 8, 16, 24, 40, 64, 100, 200, 400, 1000, 3000):
        put("fuzz_shadow", f"cache-overwrite-{off}", bytes([16]) + cache_edit(off, 0, b"\xff" * 4))
        put("fuzz_shadow", f"cache-truncate-{off}", bytes([16]) + cache_edit(off, 1))
    put("fuzz_shadow", "cache-insert", bytes([16 | 8]) + cache_edit(48, 2, bytes(range(16))))

def seeds_cli_query():
    # byte 0: 0 the search query grammar, 1 a --before/--after DATE, 2 an EXIF date
    for i, q in enumerate(["a red star", "sunset + beach - people", "2:sunset 0.5:\"blue sky\"",
                           "- people", "\"t-shirt + shorts\" - winter", "photos/cat.jpg + hat",
                           "https://example.com/a.png - red", "0:x", "1e309:y", "+ + -", "\"open"]):
        put("fuzz_cli_query", f"query-{i:02d}", b"\x00" + q.encode())
    for i, d in enumerate(["2020", "2020-05", "2020-05-01", "2020-05-01 10:00",
                           "2020-05-01T10:00:59", "20-05-01", "2020/05/01"]):
        put("fuzz_cli_query", f"date-{i:02d}", b"\x01" + d.encode())
    for i, d in enumerate(["2020:05:01 10:00:59", "0000:00:00 00:00:00", "    :  :     :  :  ",
                           "2020:05:01"]):
        put("fuzz_cli_query", f"exif-{i:02d}", b"\x02" + d.encode())


def splice_offset(pos, length):
    """The 3 bytes fuzz_model_dir scales to an offset: the smallest that lands on pos."""
    x = ((pos << 24) + length - 1) // length
    return bytes([x >> 16 & 255, x >> 8 & 255, x & 255])


def seeds_model_dir():
    put("fuzz_model_dir", "config", b"\x00" + (MODEL / "config.json").read_bytes())
    preprocessor = (MODEL / "preprocessor_config.json").read_bytes()
    put("fuzz_model_dir", "preprocessor", b"\x01" + preprocessor)
    st = (MODEL / "model.safetensors").read_bytes()
    header = st[8:8 + struct.unpack("<Q", st[:8])[0]]
    i = header.index(b'"text_projection.weight"')
    j = header.index(b"}", i) + 1
    at = splice_offset(i, len(header))
    put("fuzz_model_dir", "safetensors-tensor", b"\x02" + at + header[i:j])
    start = splice_offset(0, len(header))
    put("fuzz_model_dir", "safetensors-start", b"\x02" + start + header[:60])
    for byte0, name, fname, at, n in [(3, "vocab-splice", "vocab.json", 2, 40),
                                      (4, "merges-splice", "merges.txt", 2, 40),
                                      (0x84, "merges-truncated", "merges.txt", 3, 20)]:
        text = (MODEL / fname).read_bytes()
        pos = len(text) // at
        at = splice_offset(pos, len(text))
        put("fuzz_model_dir", name, bytes([byte0]) + at + text[pos:pos + n])


def seeds_http():
    import hashlib
    nxt = b"\n#NEXT#\n"  # separates responses (fuzz_http.c)
    sha = hashlib.sha256(b"helloworld").hexdigest().encode()

    def ok(body, extra=b""):
        return b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body

    found = b"HTTP/1.1 302 Found\r\n"
    seeds = {
        "fetch-200": b"\x00" + ok(b"hello"),
        "fetch-redirect": b"\x00" + found + b"Location: http://127.0.0.1:@PORT@/x\r\n"
                          b"Content-Length: 0\r\n\r\n" + nxt + ok(b"ok"),
        "fetch-chunked": b"\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n0\r\n\r\n",
        "download-verified": b"\x01" + ok(b"helloworld", b'X-Linked-Etag: "' + sha + b'"\r\n'),
        "download-mismatch": b"\x01" + ok(b"hellowirld", b'X-Linked-Etag: "' + sha + b'"\r\n'),
        "download-etag-redirect": b"\x01" + found + b'ETag: "' + sha + b'"\r\n'
                                  b"Location: https://cdn.example/f\r\nContent-Length: 0\r\n\r\n"
                                  + nxt + ok(b"helloworld", b'ETag: "abc"\r\n'),
        "download-truncated-resume": b"\x01HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"
                                     + nxt + b"HTTP/1.1 206 Partial Content\r\n"
                                     b"Content-Range: bytes 5-9/10\r\n"
                                     b"Content-Length: 5\r\n\r\nworld",
        "download-503-retry": b"\x01HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n"
                              b"Content-Length: 0\r\n\r\n" + nxt + ok(b"hello"),
        "download-404": b"\x01HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
        "probe-linked-etag": b"\x02" + found + b'X-Linked-Etag: "' + sha + b'"\r\n'
                             b"Location: /x\r\nContent-Length: 0\r\n\r\n",
        "probe-404": b"\x02HTTP/1.1 404 Not Found\r\n\r\n",
    }
    for name, data in seeds.items():
        put("fuzz_http", name, data)


if __name__ == "__main__":
    for sub in ["fuzz_safetensors", "fuzz_config", "fuzz_tokenizer_files", "fuzz_tokenizer",
                "fuzz_image", "fuzz_vtab_args", "fuzz_vec_blobs", "fuzz_shadow", "fuzz_cli_query",
                "fuzz_model_dir", "fuzz_http"]:
        for old in (CORPUS / sub).glob("*"):  # regress-* are kept: found inputs
            if not old.name.startswith("regress-"):
                old.unlink()
    seeds_safetensors()
    seeds_config()
    seeds_tokenizer_files()
    seeds_tokenizer()
    seeds_image()
    seeds_sql()
    seeds_cli_query()
    seeds_model_dir()
    seeds_http()
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"seeds written under {CORPUS} ({total} bytes)")
