#!/usr/bin/env bash
# Regenerates the committed calibration data on the GPU machine (issue 10),
# in one command from the repository root of a clean checkout:
#
#   cargo build --release --features cuda && scripts/validate-gpu.sh
#
# 1. `engine profile` of Llama-3.1-8B (dummy weights) on the CUDA backend,
#    default grid → sim/profiles/<hw>/<model>-bf16.csv (a few minutes);
# 2. `calibrate` → sim/profiles/<hw>/<model>-bf16.calib.toml (the roofline's
#    fitted efficiencies, for GPUs never measured);
# 3. every scenarios/validation/*.toml on the engine in realtime mode →
#    reports/validation/<gpu>/<scenario>/ (summary.json, requests.csv,
#    steps.csv, scenario.resolved.toml, gpu.txt; tokens.jsonl dropped to keep
#    the runs small) — ~1 min each;
# 4. `validate` → reports/validation/<gpu>/validation.txt and .json, the
#    table the README shows.
#
# The runs are measurements of this checkout's engine: the script refuses a
# dirty tree (ALLOW_DIRTY=1 overrides, and the commit is then marked -dirty).
# Never edit the outputs by hand; rerun the script.
#
# PHASES (default "profile runs validate") picks steps 1-2, 3 and 4, so a
# campaign can be split across calls (the runs never read the profile).
#
# Environment: BIN (default target/release/servetwin), BACKEND (cuda),
# GPU (h100: the reports/validation/ folder), HW (h100-sxm: the catalog GPU),
# MODEL (llama-3.1-8b), GRID (default), RUN_SET (one --set for every
# validation run, e.g. 'hardware.gpu="h200"' on an H200); for a dry run of
# the flow on a CPU:
# PROFILE_SCENARIO (profile this scenario instead of --model), PROFILE_SET
# (one --set for it), SCENARIOS (the runs' scenario files), e.g.
#   BACKEND=cpu GPU=cpu-dry HW=cpu GRID=small ALLOW_DIRTY=1 \
#   PROFILE_SCENARIO=scenarios/engine/tiny-cpu.toml \
#   PROFILE_SET=scheduler.num_gpu_blocks_override=512 \
#   SCENARIOS=scenarios/engine/tiny-cpu.toml scripts/validate-gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/servetwin}
BACKEND=${BACKEND:-cuda}
GPU=${GPU:-h100}
HW=${HW:-h100-sxm}
MODEL=${MODEL:-llama-3.1-8b}
GRID=${GRID:-default}
SCENARIOS=${SCENARIOS:-scenarios/validation/*.toml}

[ -x "$BIN" ] || { echo "error: $BIN not built (cargo build --release --features cuda)" >&2; exit 2; }
# A copy of the tree without .git (the GPU machine's) names its commit in
# SERVETWIN_COMMIT or .gpu/COMMIT (scripts/gpu-binaries.sh); a checkout is
# asked.
if [ -z "${SERVETWIN_COMMIT:-}" ] && ! git rev-parse --git-dir >/dev/null 2>&1 && [ -f .gpu/COMMIT ]; then
    export SERVETWIN_COMMIT=$(cat .gpu/COMMIT)
fi
if [ -z "${SERVETWIN_COMMIT:-}" ]; then
    if [ -n "$(git status --porcelain --untracked-files=no)" ] && [ "${ALLOW_DIRTY:-0}" != 1 ]; then
        echo "error: uncommitted changes; the runs must come from a stated commit (ALLOW_DIRTY=1 to override)" >&2
        exit 2
    fi
    commit=$(git rev-parse HEAD)
    export SERVETWIN_COMMIT=$commit$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo -dirty || true)
fi

gpu_meta() {
    echo "commit: $SERVETWIN_COMMIT"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "backend: $BACKEND"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,clocks.sm,clocks.mem,power.limit,temperature.gpu --format=csv -i 0
    fi
}

if [ -n "${PROFILE_SCENARIO:-}" ]; then
    what=("$PROFILE_SCENARIO" --set "${PROFILE_SET:-seed=0}")
    dtype=$([ "$BACKEND" = cpu ] && echo fp32 || echo bf16)
    profile=sim/profiles/$HW/$(basename "$PROFILE_SCENARIO" .toml)-$dtype.csv
    calib=(--scenario "$PROFILE_SCENARIO")
else
    what=(--model "$MODEL" --set "hardware.gpu=\"$HW\"")
    profile=sim/profiles/$HW/$MODEL-bf16.csv
    calib=()
fi
PHASES=${PHASES:-profile runs validate}
has() { [[ " $PHASES " == *" $1 "* ]]; }
if has profile; then
    echo "== profile → $profile"
    "$BIN" engine profile "${what[@]}" --backend "$BACKEND" --grid "$GRID" --out "$profile"
    "$BIN" calibrate "$profile" "${calib[@]}" --out "${profile%.csv}.calib.toml"
fi

out=reports/validation/$GPU
if has runs; then
rm -rf "$out"
mkdir -p "$out"
for s in $SCENARIOS; do
    name=$(basename "$s" .toml)
    echo "== $name"
    "$BIN" engine run "$s" --backend "$BACKEND" --mode realtime -q ${RUN_SET:+--set "$RUN_SET"} --out "$out/$name"
    rm -f "$out/$name/tokens.jsonl"
    gpu_meta > "$out/$name/gpu.txt"
done
fi
has validate || exit 0

"$BIN" validate "$out" --profile "$profile" --json "$out/validation.json" | tee "$out/validation.txt"
du -sh "$out"
echo "commit: git add $profile ${profile%.csv}.calib.toml $out && update the README table from $out/validation.txt"
