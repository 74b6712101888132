#!/usr/bin/env bash
# run.sh: the `clipdb` CLI benchmarks (numbers go to bench/README.md, ## cli).
#   bench/cli/run.sh [BUILD_DIR=build] [N_PHOTOS=48] [N_ROWS=100000]
# 1. indexing throughput on N synthetic 1-12 MP JPEGs, with the time per stage;
# 2. text search from process start to printed results on an N_ROWS library.
# Model: bench/data/clip-vit-b-32-random (ViT-B/32 shapes, random weights;
# bench/embed/make_checkpoint.py makes it), else the tiny test model.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
N_PHOTOS=${2:-48}
N_ROWS=${3:-100000}
CLIPDB=$BUILD/cli/clipdb
MODEL=bench/data/clip-vit-b-32-random
[ -f "$MODEL/model.safetensors" ] || MODEL=tests/data/clip-tiny-shapes
OUT=bench/out/cli
mkdir -p "$OUT"
echo "model: $MODEL; cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

PHOTOS=$OUT/photos-$N_PHOTOS
if [ ! -d "$PHOTOS" ]; then
  mkdir -p "$PHOTOS.tmp"
  "$BUILD/bench/cli/bench-cli-make-photos" "$PHOTOS.tmp" "$N_PHOTOS"
  mv "$PHOTOS.tmp" "$PHOTOS"
fi
echo "== index: $N_PHOTOS JPEGs, $(du -sh "$PHOTOS" | cut -f1)"
rm -f "$OUT/index.db"*
"$CLIPDB" --db "$OUT/index.db" --model "$MODEL" index --json --quiet "$PHOTOS" > "$OUT/index.json"
/usr/bin/python3 - "$OUT/index.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
st = s["stages"]
main = st["wait_for_decode_seconds"] + st["encode_seconds"] + st["sqlite_seconds"]
print(f"{s['embedded']} images in {s['seconds']:.2f} s = {s['embedded'] / s['seconds']:.2f} images/s")
print(f"main thread: encode {st['encode_seconds']:.2f} s ({100 * st['encode_seconds'] / main:.0f}%), "
      f"sqlite {st['sqlite_seconds']:.2f} s ({100 * st['sqlite_seconds'] / main:.0f}%), "
      f"waiting for decoders {st['wait_for_decode_seconds']:.2f} s "
      f"({100 * st['wait_for_decode_seconds'] / main:.0f}%)")
print(f"decoder threads: {st['decode_thread_seconds']:.2f} thread-seconds "
      f"({st['decode_thread_seconds'] / s['embedded'] * 1000:.0f} ms per image: read+hash+decode+resize)")
PY
echo "== re-index (nothing changed)"
/usr/bin/time -f "%e s wall" "$CLIPDB" --db "$OUT/index.db" index --quiet "$PHOTOS"

BIG=$OUT/big-$N_ROWS.db
[ -f "$BIG" ] || /usr/bin/python3 bench/cli/make_big_db.py "$BUILD" "$BIG" "$MODEL" "$N_ROWS"
echo "== search on $N_ROWS rows ($(du -sh "$BIG" | cut -f1)), process start to printed results"
"$CLIPDB" --db "$BIG" search -n 10 "a red star" > /dev/null  # warm the page cache
for q in "a red star" "2:sunset - people" ; do
  for i in 1 2 3 4 5; do
    /usr/bin/time -f "%e" "$CLIPDB" --db "$BIG" search -n 10 "$q" 2>&1 >/dev/null
  done | sort -n | awk -v q="$q" '{a[NR]=$1} END {print "\"" q "\": median " a[int((NR+1)/2)] " s (min " a[1] ", max " a[NR] ")"}'
done
"$CLIPDB" --db "$BIG" info
