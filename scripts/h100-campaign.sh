#!/usr/bin/env bash
# Issue 23's H100 campaign on the GPU machine, one phase per device call,
# from the root of a copy of the tree that holds .gpu/ (scripts/gpu-binaries.sh)
# and the PyTorch anchor at anchors/torch_engine_bench.py:
#
#   scripts/h100-campaign.sh bench     # engine bench of the issue's shapes, then the
#                                      # anchor's `floors min` and `whole`, same GPU run
#   scripts/h100-campaign.sh profile   # engine profile (then `calibrate` here, on the CPU)
#   scripts/h100-campaign.sh runs A B  # validation runs of scenarios/validation/{A,B}.toml
#   scripts/h100-campaign.sh ncu-prefill T / ncu-decode B C   # per-kernel times (ncu)
#
# Every phase writes under $OUT (the device tool's return folder): bench →
# $OUT/eb/ (engine JSON + text, nvidia-smi) and $OUT/torch/ (results.json,
# logs); profile → $OUT/profile.tar; runs → $OUT/runs-<first>.tar;
# ncu → $OUT/ncu-*.txt. The engine's commit is .gpu/COMMIT.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT}"
BIN=${BIN:-.gpu/servetwin}
export SERVETWIN_COMMIT=${SERVETWIN_COMMIT:-$(cat .gpu/COMMIT)}
export BIN
smi() { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,clocks.mem,power.limit,temperature.gpu --format=csv -i 0; }
phase=${1:?phase}; shift
case $phase in
bench)
    mkdir -p "$OUT/eb" "$OUT/torch"
    { echo "commit: $SERVETWIN_COMMIT"; date -u +%Y-%m-%dT%H:%M:%SZ; smi; } > "$OUT/eb/gpu.txt"
    "$BIN" engine bench --model llama-3.1-8b --backend cuda --prefill 2048,8192,4x2048 \
        --batch 1,8,32,128 --context 1024,4096,8192 --out "$OUT/eb/h100-llama-3.1-8b.json" 2>&1 | tee "$OUT/eb/h100-llama-3.1-8b.txt"
    # The anchor: ${MIN_S:-360} s for floors + min, the rest of ${TOTAL_S:-560} for whole.
    export PYTHONUNBUFFERED=1
    ( cd anchors && OUT=$OUT/torch timeout "${MIN_S:-360}" python3 torch_engine_bench.py floors min ) 2>&1 | tee "$OUT/torch/floors-min.log" | grep -E "floors:|min (decode|prefill)|ERR|FAILED"
    left=$(( ${TOTAL_S:-560} - SECONDS ))
    [ $left -gt 30 ] && ( cd anchors && OUT=$OUT/torch timeout $left python3 torch_engine_bench.py whole ) 2>&1 | tee "$OUT/torch/whole.log" | grep -E "whole decode|ERR|FAILED"
    ( cd anchors && OUT=$OUT/torch python3 torch_engine_bench.py summary ) > "$OUT/torch/summary.txt" 2>&1
    cat "$OUT/torch/summary.txt"
    ;;
profile)
    # The default grid (to 16k chunks and 512 decodes); should it fail, the
    # same grid within the earlier limits (8448 tokens, 256 sequences: the
    # wider shapes are skipped). `calibrate` runs on the CPU, from the CSV.
    csv=sim/profiles/h100-sxm/llama-3.1-8b-bf16.csv
    prof() { "$BIN" engine profile --model llama-3.1-8b --set 'hardware.gpu="h100-sxm"' --backend cuda --grid default "$@" --out $csv; }
    prof > profile.log 2>&1 || { echo "wide profile failed: $(tail -2 profile.log)"; mv profile.log profile-wide-failed.log;
        prof --set scheduler.max_num_batched_tokens=8448 --set scheduler.max_num_seqs=256 > profile.log 2>&1; }
    echo "profile exit $?, $SECONDS s"; grep -c "^skipped" profile.log; grep -v "^decode\|^prefill\|^mixed\|^skipped" profile.log | tail -5
    tar cf "$OUT/profile.tar" sim/profiles/h100-sxm profile*.log
    ;;
runs)
    list=""; for s in "$@"; do list+=" scenarios/validation/$s.toml"; done
    PHASES=runs SCENARIOS="$list" scripts/validate-gpu.sh
    tar cf "$OUT/runs-$1.tar" reports/validation/h100
    ;;
ncu-prefill|ncu-decode)
    # Per-kernel GPU time of the last step (from the last embedding launch
    # on; every launch is profiled, SKIP/COUNT narrow that), summed by
    # kernel name (clocks not locked). A skip past the end left no rows.
    if [ $phase = ncu-prefill ]; then args=(--prefill "$1"); else args=(--batch "$1" --context "$2"); fi
    ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
        --launch-skip "${SKIP:-0}" --launch-count "${COUNT:-100000}" \
        "$BIN" engine bench --model llama-3.1-8b --backend cuda "${args[@]}" --out /tmp/ncu-bench.json ${NCU_SET:-} > /tmp/ncu.csv 2>/tmp/ncu.err
    python3 - /tmp/ncu.csv "$phase ${*}" > "$OUT/$phase-$1.txt" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"')) ]
h = rows[0]; ki = h.index("Kernel Name"); vi = h.index("Metric Value")
emb = [i for i, r in enumerate(rows) if i > 0 and r[ki].startswith("embedding")]
if emb: rows = [h] + rows[emb[-1]:]  # the last step
tot = collections.defaultdict(float); n = collections.Counter()
for r in rows[1:]:
    try: v = float(r[vi])
    except ValueError: continue
    tot[r[ki][:90]] += v; n[r[ki][:90]] += 1
s = sum(tot.values())
print(f"{sys.argv[2]}: {sum(n.values())} kernels profiled, {s/1e6:.3f} ms of GPU time")
print(f"{'kernel':90s} {'launches':>8s} {'total ms':>10s} {'mean us':>9s} {'share':>6s}")
for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{k:90s} {n[k]:8d} {v/1e6:10.3f} {v/n[k]/1e3:9.2f} {100*v/s:5.1f}%")
PY
    tail -3 /tmp/ncu.err; cat "$OUT/$phase-$1.txt" | head -30
    ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
