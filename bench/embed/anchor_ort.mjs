// anchor_ort.mjs: the ONNX Runtime anchor for the encoder benchmark (issue #3). Runs the two CLIP
// towers that `anchors.py export` wrote (vision.onnx, text.onnx) with onnxruntime-node on 2
// intra-op threads (passive waiting unless ORT_SPIN=1), first checks them against PyTorch's
// outputs (check.json), then times image batch 1 / 32 from pixels, text batch 1 / 32 with 77
// tokens and a 7-token query; prints one JSON object (rates per second) as its last line.
//
// usage: node bench/embed/anchor_ort.mjs [--dir bench/out/anchors] [--reps N]
// onnxruntime-node is resolved from DIR/node_modules (see bench/README.md, "Anchors").
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const THREADS = 2;

function parseArgs(argv) {
  const args = { dir: 'bench/out/anchors', reps: 3 };
  for (let i = 2; i + 1 < argv.length; i += 2) {
    if (argv[i] === '--dir') args.dir = argv[i + 1];
    else if (argv[i] === '--reps') args.reps = Number(argv[i + 1]);
    else throw new Error(`unknown option ${argv[i]}`);
  }
  return args;
}

const median = (v) => {
  const s = [...v].sort((a, b) => a - b), n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};

async function medianSeconds(fn, reps, warmup = 1) {
  for (let i = 0; i < warmup; i++) await fn();
  const t = [];
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) * 1e-9);
  }
  return median(t);
}

// Same inputs as anchors.py's text_ids: SOT, word ids, EOT last (only the length matters here).
function textIds(ort, n, length, vocab = 49408) {
  const ids = new BigInt64Array(n * length);
  let seed = 1;
  for (let i = 0; i < ids.length; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    ids[i] = BigInt(1 + (seed % (vocab - 3)));
  }
  for (let r = 0; r < n; r++) {
    ids[r * length] = BigInt(vocab - 2);
    ids[r * length + length - 1] = BigInt(vocab - 1);
  }
  return new ort.Tensor('int64', ids, [n, length]);
}

const maxAbsDiff = (data, ref) => Math.max(...ref.flat().map((x, i) => Math.abs(x - data[i])));

async function checkAgainstTorch(ort, vision, text, dir) {
  const check = JSON.parse(readFileSync(path.join(dir, 'check.json'), 'utf8'));
  const side = check.side, n = check.pixels.length;
  const pix = new Float32Array(n * 3 * side * side);
  check.pixels.forEach((p, i) => {
    const buf = readFileSync(p);
    pix.set(new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4), i * 3 * side * side);
  });
  const img = await vision.run({ pixels: new ort.Tensor('float32', pix, [n, 3, side, side]) });
  const idsTensor = (rows) =>
    new ort.Tensor('int64', BigInt64Array.from(rows.flat(), BigInt), [rows.length, rows[0].length]);
  const long = await text.run({ input_ids: idsTensor(check.long_ids) });
  const short = await text.run({ input_ids: idsTensor(check.short_ids) });
  return {
    image_max_abs_diff_vs_torch: maxAbsDiff(img.image_embeds.data, check.image_embeds),
    text_max_abs_diff_vs_torch: Math.max(maxAbsDiff(long.text_embeds.data, check.long_embeds),
                                         maxAbsDiff(short.text_embeds.data, check.short_embeds)),
  };
}

async function main() {
  const args = parseArgs(process.argv);
  const require = createRequire(path.resolve(args.dir, 'package.json'));
  const ort = require('onnxruntime-node');
  // Idle intra-op threads wait passively, like our pool (condition variables) and the PyTorch
  // anchor (OMP_WAIT_POLICY=PASSIVE): on 2 shared cores spinning threads take turns away from
  // the working ones. ORT_SPIN=1 restores ONNX Runtime's default (spinning).
  const spin = process.env.ORT_SPIN ?? '0';
  const opts = {
    intraOpNumThreads: THREADS, interOpNumThreads: 1, executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    extra: { session: { intra_op: { allow_spinning: spin } } },
  };
  const t0 = process.hrtime.bigint();
  const vision = await ort.InferenceSession.create(path.join(args.dir, 'vision.onnx'), opts);
  const text = await ort.InferenceSession.create(path.join(args.dir, 'text.onnx'), opts);
  const loadS = Number(process.hrtime.bigint() - t0) * 1e-9;
  const check = await checkAgainstTorch(ort, vision, text, args.dir);

  const side = 224, r = args.reps;
  const pix = new Float32Array(32 * 3 * side * side);
  for (let i = 0; i < pix.length; i++) pix[i] = ((i * 2654435761) % 1000) / 500 - 1;
  const px1 = new ort.Tensor('float32', pix.subarray(0, 3 * side * side), [1, 3, side, side]);
  const px32 = new ort.Tensor('float32', pix, [32, 3, side, side]);
  const long1 = textIds(ort, 1, 77), long32 = textIds(ort, 32, 77), short1 = textIds(ort, 1, 7);
  const img1 = await medianSeconds(() => vision.run({ pixels: px1 }), 2 * r);
  const img32 = await medianSeconds(() => vision.run({ pixels: px32 }), Math.max(2, r >> 1));
  const txt1 = await medianSeconds(() => text.run({ input_ids: long1 }), 2 * r);
  const txt32 = await medianSeconds(() => text.run({ input_ids: long32 }), Math.max(2, r >> 1));
  const txt7 = await medianSeconds(() => text.run({ input_ids: short1 }), 5 * r, 3);
  console.log(JSON.stringify({
    anchor: `ONNX Runtime ${ort.env.versions.common}`, threads: THREADS, spinning: spin, load_s: loadS, ...check,
    image_b1: 1 / img1, image_b32: 32 / img32, text77_b1: 1 / txt1, text77_b32: 32 / txt32,
    text7_b1: 1 / txt7,
  }));
}

main().catch((e) => {
  console.error(`anchor_ort: ${e.message}`);
  process.exit(1);
});
