#!/bin/sh
# run.sh: the encoder benchmark with its anchors (issue #3), back to back in one run: our
# bench-embed, the PyTorch anchor (anchors.py, Debian's python3-torch) and the ONNX Runtime anchor
# (anchor_ort.mjs, onnxruntime-node under bench/out/anchors), then one table with the ratios
# ours/anchor. Anchors that are not installed are reported with how to install them. Before
# timing, the PyTorch model is checked against our CLI and the ONNX towers against PyTorch.
#
# usage: bench/embed/run.sh [--model DIR] [--build DIR] [--reps N]   (from anywhere)
#   defaults: bench/data/clip-vit-b-32-random, build-main (else build), 5 (bench-embed) / 3
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
MODEL=bench/data/clip-vit-b-32-random
BUILD=build-main
[ -d "$BUILD" ] || BUILD=build
REPS=5
while [ $# -gt 1 ]; do
  case "$1" in
    --model) MODEL=$2 ;;
    --build) BUILD=$2 ;;
    --reps) REPS=$2 ;;
    *) echo "usage: $0 [--model DIR] [--build DIR] [--reps N]" >&2; exit 2 ;;
  esac
  shift 2
done
PY=/usr/bin/python3
ANCHORS=bench/out/anchors
OUT=$ANCHORS/last-run
ANCHOR_REPS=$(( REPS > 3 ? 3 : REPS ))
mkdir -p "$OUT"
rm -f "$OUT"/ours.txt "$OUT"/ours-f32.txt "$OUT"/torch.json "$OUT"/ort.json
[ -f "$MODEL/model.safetensors" ] || { echo "no checkpoint: run $PY bench/embed/make_checkpoint.py" >&2; exit 1; }
[ -x "$BUILD/bench/embed/bench-embed" ] || { echo "build first: ninja -C $BUILD bench/embed/bench-embed cli/clipdb" >&2; exit 1; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average $(load)"

# Ours at each vision precision: the default (bf16 where the CPU has AVX512-BF16) and f32.
DEFAULT_PRECISION=f32
if grep -qw avx512_bf16 /proc/cpuinfo; then DEFAULT_PRECISION=bf16; fi
BENCH="$BUILD/bench/embed/bench-embed --model $MODEL --reps $REPS"
echo "== ours ($DEFAULT_PRECISION, the default): $BENCH"
# shellcheck disable=SC2086 # BENCH is the command and its options
env -u CLIPDB_PRECISION $BENCH | tee "$OUT/ours.txt"
OURS="--ours $DEFAULT_PRECISION=$OUT/ours.txt"
if [ $DEFAULT_PRECISION != f32 ]; then
  echo "== ours (f32): CLIPDB_PRECISION=f32 $BENCH"
  # shellcheck disable=SC2086
  CLIPDB_PRECISION=f32 $BENCH | tee "$OUT/ours-f32.txt"
  OURS="$OURS --ours f32=$OUT/ours-f32.txt"
fi

HAVE_TORCH=0
if $PY -c 'import torch' 2>/dev/null; then HAVE_TORCH=1; fi
if [ $HAVE_TORCH = 1 ]; then
  echo "== check: PyTorch vs our CLI (max abs difference of normalised embeddings; load $(load))"
  $PY bench/embed/anchors.py check --model "$MODEL" --clipdb "$BUILD/cli/clipdb" --out "$ANCHORS" \
    || echo "check failed (the timings below still run)"
  # anchors.py sets OPENBLAS_CORETYPE and OMP_WAIT_POLICY unless given (see set_torch_env there).
  echo "== PyTorch anchor (load $(load))"
  $PY bench/embed/anchors.py torch --model "$MODEL" --reps "$ANCHOR_REPS" | tee "$OUT/torch.json"
fi

if command -v node >/dev/null && [ -d "$ANCHORS/node_modules/onnxruntime-node" ]; then
  # (Re)export the towers when missing, older than the checkpoint or from another checkpoint.
  if [ -f "$ANCHORS/check.json" ] && [ "$ANCHORS/vision.onnx" -nt "$MODEL/model.safetensors" ] \
     && grep -qF "\"model\": \"$(realpath "$MODEL")\"" "$ANCHORS/check.json"; then
    EXPORTED=1
  elif [ $HAVE_TORCH = 1 ]; then
    echo "== exporting the PyTorch towers to ONNX"
    $PY -W ignore bench/embed/anchors.py export --model "$MODEL" --out "$ANCHORS" && EXPORTED=1
  else
    EXPORTED=0
    echo "not exported (the ONNX export needs python3-torch)" > "$OUT/ort.json"
  fi
  if [ "${EXPORTED:-0}" = 1 ]; then
    echo "== ONNX Runtime anchor (load $(load))"
    node bench/embed/anchor_ort.mjs --dir "$ANCHORS" --reps "$ANCHOR_REPS" | tee "$OUT/ort.json"
  fi
fi

echo "== table (load average at the end $(load); rates per second, higher is faster)"
# shellcheck disable=SC2086 # OURS holds one or two --ours options
$PY bench/embed/anchors.py table $OURS --torch "$OUT/torch.json" --ort "$OUT/ort.json"
