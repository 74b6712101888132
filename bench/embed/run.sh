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
rm -f "$OUT"/ours*.txt "$OUT"/torch.json "$OUT"/ort.json
[ -f "$MODEL/model.safetensors" ] || { echo "no checkpoint: run $PY bench/embed/make_checkpoint.py" >&2; exit 1; }
[ -x "$BUILD/bench/embed/bench-embed" ] || { echo "build first: ninja -C $BUILD bench/embed/bench-embed cli/clipdb" >&2; exit 1; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average $(load)"

# Ours at each vision precision: the default (what clip_model_precision() reports with
# CLIPDB_PRECISION unset), then the others: f32, bf16 (where the CPU has AVX512-BF16), int8.
BENCH="$BUILD/bench/embed/bench-embed --model $MODEL --reps $REPS"
echo "== ours (the default precision): $BENCH"
# shellcheck disable=SC2086 # BENCH is the command and its options
env -u CLIPDB_PRECISION $BENCH | tee "$OUT/ours.txt"
DEFAULT_PRECISION=$(sed -n 's/.*vision precision \([a-z0-9]*\).*/\1/p' "$OUT/ours.txt")
OURS="--ours $DEFAULT_PRECISION=$OUT/ours.txt"
OTHERS="f32 int8"
if grep -qw avx512_bf16 /proc/cpuinfo; then OTHERS="f32 bf16 int8"; fi
for P in $OTHERS; do
  [ "$P" = "$DEFAULT_PRECISION" ] && continue
  echo "== ours ($P; load $(load)): CLIPDB_PRECISION=$P $BENCH"
  # shellcheck disable=SC2086
  CLIPDB_PRECISION=$P $BENCH | tee "$OUT/ours-$P.txt"
  OURS="$OURS --ours $P=$OUT/ours-$P.txt"
done

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
# shellcheck disable=SC2086 # OURS holds one --ours option per precision
$PY bench/embed/anchors.py table $OURS --torch "$OUT/torch.json" --ort "$OUT/ort.json"
