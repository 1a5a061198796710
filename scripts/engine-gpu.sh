#!/usr/bin/env bash
# The CUDA backend's GPU tests and benchmark (issue 9) on the GPU machine, in
# one command from the repository root:
#
#   scripts/gpu-binaries.sh            # here: .gpu/ (CLI + GPU tests)
#   scripts/engine-gpu.sh              # there, with .gpu/ carried
#
# 1. every GPU test executable in TESTS (default .gpu: the cuda-* and gpu-*
#    test binaries), one at a time → $OUT/tests/<binary>.txt, and a summary
#    line per binary;
# 2. `engine bench` of MODEL with CUDA graphs (the default) →
#    $OUT/<gpu>-<model>.{json,txt}, then with `engine.cuda_graphs = false`
#    → $OUT/<gpu>-<model>-eager.{json,txt}: the same grid both ways, so the
#    graphs' gain is measured in one session on one device.
#
# PHASES (default "tests bench eager") picks the steps. OUT defaults to
# reports/engine-bench; GPU (h100) names the files; BIN as validate-gpu.sh.
set -uo pipefail
cd "$(dirname "$0")/.."

# In a checkout, its own build; on the GPU machine (a copy of the tree
# without .git), what scripts/gpu-binaries.sh put in .gpu/.
if git rev-parse --git-dir >/dev/null 2>&1; then in_git=1; else in_git=0; fi
BIN=${BIN:-$([ $in_git = 0 ] && [ -x .gpu/servetwin ] && echo .gpu/servetwin || echo target/release/servetwin)}
TESTS=${TESTS:-.gpu}
OUT=${OUT:-reports/engine-bench}
GPU=${GPU:-h100}
MODEL=${MODEL:-llama-3.1-8b}
PHASES=${PHASES:-tests bench eager}
has() { [[ " $PHASES " == *" $1 "* ]]; }
[ -x "$BIN" ] || { echo "error: $BIN not built (cargo build --release --features cuda)" >&2; exit 2; }
export SERVETWIN_COMMIT=${SERVETWIN_COMMIT:-$( ([ $in_git = 1 ] && git rev-parse HEAD) || cat .gpu/COMMIT 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
failed=0

if has tests; then
    mkdir -p "$OUT/tests"
    for t in "$TESTS"/cuda-* "$TESTS"/gpu-*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        "$t" --test-threads=1 --nocapture > "$OUT/tests/$name.txt" 2>&1
        rc=$?
        [ $rc = 0 ] || failed=1
        echo "$name: exit $rc, $(grep -E '^test result' "$OUT/tests/$name.txt" | tail -1)"
    done
fi
bench() {
    local file=$1; shift
    echo "== engine bench $* → $file.json"
    "$BIN" engine bench --model "$MODEL" --backend cuda --out "$file.json" "$@" > "$file.txt" 2>&1 || failed=1
    cat "$file.txt"
}
has bench && bench "$OUT/$GPU-$MODEL"
has eager && bench "$OUT/$GPU-$MODEL-eager" --set engine.cuda_graphs=false
exit $failed
