#!/usr/bin/env bash
# Tensor-parallel measurements on a 2-GPU machine (issue 11), in one
# command from the repository root, after `cargo build --release --features
# cuda` (here or on a machine with Rust):
#
#   scripts/tp-gpu.sh
#
# PHASES (default "allreduce bench profile runs validate"):
#   allreduce  `engine allreduce --tp 2` → $OUT_DIR/allreduce.json/.txt (the
#              simulator's all-reduce model checked and fitted);
#   bench      `engine bench` of Llama-3.1-8B at tp 1 and tp 2, and of
#              Llama-3.1-70B at tp 2 → $OUT_DIR/bench-*.json/.txt;
#   profile    `engine profile` of Llama-3.1-8B at tp 2, default grid →
#              sim/profiles/$HW/llama-3.1-8b-bf16-tp2.csv, then `calibrate`
#              with the all-reduce fit → ….calib.toml;
#   runs       each of $SCENARIOS on the engine at tp 2, realtime →
#              reports/validation-tp/$GPU/<scenario>/;
#   validate   `validate` of those runs against the tp-2 profile →
#              reports/validation-tp/$GPU/validation.txt and .json.
#
# NCCL is loaded at run time: the script finds libnccl.so.2 (PyTorch's pip
# package, or anywhere under /usr) and puts a libnccl.so link to it on
# LD_LIBRARY_PATH. NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
# Environment: BIN, GPU (h200x2: the reports folder), HW (h200: the catalog
# GPU), OUT_DIR (reports/tp/$GPU), SCENARIOS, SERVETWIN_COMMIT.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/servetwin}
GPU=${GPU:-h200x2}
HW=${HW:-h200}
OUT_DIR=${OUT_DIR:-reports/tp/$GPU}
SCENARIOS=${SCENARIOS:-scenarios/validation/chat-moderate-vllm.toml scenarios/validation/rag-moderate-vllm.toml scenarios/validation/chat-saturated-vllm.toml}
PHASES=${PHASES:-allreduce bench profile runs validate}
has() { [[ " $PHASES " == *" $1 "* ]]; }
[ -x "$BIN" ] || { echo "error: $BIN not built (cargo build --release --features cuda)" >&2; exit 2; }
export SERVETWIN_COMMIT=${SERVETWIN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export NCCL_NVLS_ENABLE=0

nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)
if [ -z "$nccl" ] || [ ! -e "$nccl/libnccl.so.2" ]; then
    nccl=$(dirname "$(find / -name 'libnccl.so.2' -not -path '/proc/*' 2>/dev/null | head -1)")
fi
[ -e "$nccl/libnccl.so.2" ] || { echo "error: libnccl.so.2 not found" >&2; exit 2; }
links=$(mktemp -d)
ln -s "$nccl/libnccl.so.2" "$links/libnccl.so"
export LD_LIBRARY_PATH=$links:$nccl:${LD_LIBRARY_PATH:-}
echo "NCCL: $nccl"

mkdir -p "$OUT_DIR"
meta() {
    echo "commit: $SERVETWIN_COMMIT"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nccl: $(readlink -f "$nccl/libnccl.so.2")"
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null || true
    nvidia-smi topo -m 2>/dev/null || true
}
meta > "$OUT_DIR/gpu.txt"

if has allreduce; then
    echo "== all-reduce"
    "$BIN" engine allreduce --tp 2 --set "hardware.gpu=\"$HW\"" --out "$OUT_DIR/allreduce.json" | tee "$OUT_DIR/allreduce.txt"
fi
if has bench; then
    for run in "llama-3.1-8b 1" "llama-3.1-8b 2" "llama-3.1-70b 2"; do
        set -- $run
        echo "== bench $1 tp $2"
        "$BIN" engine bench --backend cuda --model "$1" --tp "$2" --set "hardware.gpu=\"$HW\"" \
            --out "$OUT_DIR/bench-$1-tp$2.json" | tee "$OUT_DIR/bench-$1-tp$2.txt"
    done
fi
profile=sim/profiles/$HW/llama-3.1-8b-bf16-tp2.csv
if has profile; then
    echo "== profile → $profile"
    "$BIN" engine profile --model llama-3.1-8b --set "hardware.gpu=\"$HW\"" --set hardware.count=2 \
        --set parallelism.tp=2 --backend cuda --out "$profile"
    ar=()
    [ -f "$OUT_DIR/allreduce.json" ] && ar=(--allreduce "$OUT_DIR/allreduce.json")
    "$BIN" calibrate "$profile" "${ar[@]}" --out "${profile%.csv}.calib.toml"
fi
runs=reports/validation-tp/$GPU
if has runs; then
    rm -rf "$runs"
    mkdir -p "$runs"
    for s in $SCENARIOS; do
        name=$(basename "$s" .toml)-tp2
        echo "== $name"
        "$BIN" engine run "$s" --backend cuda --mode realtime -q --out "$runs/$name" \
            --set "hardware.gpu=\"$HW\"" --set hardware.count=2 --set parallelism.tp=2
        rm -f "$runs/$name/tokens.jsonl"
        meta > "$runs/$name/gpu.txt"
    done
fi
if has validate; then
    "$BIN" validate "$runs" --profile "$profile" --json "$runs/validation.json" | tee "$runs/validation.txt"
fi
