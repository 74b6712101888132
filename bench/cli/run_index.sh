#!/bin/sh
# run_index.sh: times `clipdb index --json` end to end on folders of images, each on a fresh
# library, under /usr/bin/time (CPU %) and schedstat.py (the CPU share the process got, the
# share it wanted: its threads runnable, and the other processes' load), optionally pinned with
# taskset; prints images/s, CPU % and the per-stage times of the summary. First, the first text
# query of fresh processes (bench-first-query and `clipdb embed --text`, medians of 9). When
# the ONNX Runtime anchor of bench/embed/run.sh is ready (bench/out/anchors:
# node_modules/onnxruntime-node and vision.onnx), its batch-32 image rate is measured right
# before each index run (2 threads, unpinned; on a shared machine the rate moves between
# minutes) and the ratio printed.
#
# usage: bench/cli/run_index.sh [--build DIR] [--model DIR] [--cpus LIST]... DIR...
#   defaults: build, bench/data/clip-vit-b-32-random, no pinning; each --cpus adds a run
#   pinned with `taskset -c LIST` (e.g. --cpus 0 --cpus 0,1)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$ROOT/build
MODEL=$ROOT/bench/data/clip-vit-b-32-random
CPUS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$(realpath "$2"); shift 2 ;;
    --model) MODEL=$(realpath "$2"); shift 2 ;;
    --cpus) CPUS="$CPUS $2"; shift 2 ;;
    --) shift; break ;;
    -*) echo "usage: $0 [--build DIR] [--model DIR] [--cpus LIST]... DIR..." >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--build DIR] [--model DIR] [--cpus LIST]... DIR..." >&2; exit 2; }
CLIPDB=$BUILD/cli/clipdb
[ -x "$CLIPDB" ] || { echo "build first: ninja -C $BUILD cli/clipdb" >&2; exit 1; }
[ -f "$MODEL/model.safetensors" ] || { echo "no model: /usr/bin/python3 bench/embed/make_checkpoint.py" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $MODEL; CLIPDB_RESIZE=${CLIPDB_RESIZE:-fast (default)}"

ANCHORS=$ROOT/bench/out/anchors
HAVE_ORT=0
if command -v node >/dev/null && [ -d "$ANCHORS/node_modules/onnxruntime-node" ] &&
   [ -f "$ANCHORS/vision.onnx" ]; then
  HAVE_ORT=1
  echo "ONNX Runtime fp32 image batch 32 (2 threads, unpinned) is measured right before each run"
else
  echo "ONNX Runtime anchor not ready (see bench/embed/run.sh): ours only"
fi
ort_rate() { # the anchor's batch-32 image rate now, or nothing
  [ $HAVE_ORT = 1 ] || return 0
  (cd "$ROOT" && node bench/embed/anchor_ort.mjs --dir "$ANCHORS" --reps 2 | tail -1 |
   /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["image_b32"])') || true
}

run_one() { # $1 folder, $2 cpu list or "" (no pinning)
  rm -rf "$WORK/data"
  ort=$(ort_rate)
  pin=""
  [ -n "$2" ] && pin="taskset -c $2"
  XDG_DATA_HOME=$WORK/data CLIPDB_MODEL=$MODEL /usr/bin/python3 "$ROOT/bench/cli/schedstat.py" \
    "$WORK/sched.json" /usr/bin/time -v -o "$WORK/time" \
    $pin "$CLIPDB" index --json --quiet "$1" > "$WORK/out.json"
  /usr/bin/python3 - "$1" "${2:-all}" "$WORK/out.json" "$WORK/time" "$ort" "$WORK/sched.json" <<'PY'
import json, re, sys
folder, cpus, out, tim, ort, sched = sys.argv[1:7]
sc = json.load(open(sched))
s = json.load(open(out))
t = open(tim).read()
cpu = re.search(r"Percent of CPU this job got: (\d+)%", t).group(1)
cpu_s = sum(float(re.search(p + r" \(seconds\): ([\d.]+)", t).group(1)) for p in ("User time", "System time"))
wall = s["seconds"]
rate = s["embedded"] / wall if wall else 0.0
st = s["stages"]
ratio = f", {rate / float(ort):.2f}x ONNX Runtime ({float(ort):.1f} img/s just before)" if ort else ""
print(f"{folder} cpus={cpus}: {s['embedded']} images in {wall:.2f} s = {rate:.1f} images/s"
      f"{ratio}, CPU {cpu}% ({cpu_s:.1f} CPU s); stages: decode (thread s) {st['decode_thread_seconds']:.2f}, "
      f"wait {st['wait_for_decode_seconds']:.2f}, encode {st['encode_seconds']:.2f}, "
      f"sqlite {st['sqlite_seconds']:.2f}")
w = sc["wall"]
print(f"  schedstat: on CPU {100 * sc['on_cpu'] / w:.0f}%, runnable {100 * (sc['on_cpu'] + sc['runqueue_wait']) / w:.0f}% "
      f"(waited {sc['runqueue_wait']:.2f} s for a core); other processes kept {100 * sc['machine_busy_other'] / w:.0f}% busy")
PY
}

first_query() {
  fq=$BUILD/bench/embed/bench-first-query
  if [ -x "$fq" ]; then (cd "$ROOT" && "$fq" --model "$MODEL" --runs 9 | tail -1)
  else echo "first text query: build $fq (ninja -C $BUILD bench/embed/bench-first-query)"; fi
  /usr/bin/python3 - "$CLIPDB" "$MODEL" <<'PY'
import statistics, subprocess, sys, time
ms = []
for _ in range(9):
    t = time.monotonic()
    subprocess.run([sys.argv[1], "embed", "--model", sys.argv[2], "--text", "a photo of a dog"],
                   check=True, capture_output=True)
    ms.append((time.monotonic() - t) * 1e3)
print(f"clipdb embed --text, process start to exit: median {statistics.median(ms):.1f} ms, "
      f"min {min(ms):.1f}, max {max(ms):.1f} over 9 processes")
PY
}

first_query
for dir in "$@"; do
  dir=$(realpath "$dir")
  if [ -z "$CPUS" ]; then run_one "$dir" ""; fi
  for c in $CPUS; do run_one "$dir" "$c"; done
done
