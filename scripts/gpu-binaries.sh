#!/usr/bin/env bash
# Builds what a GPU campaign carries to the GPU machine (which has no Rust),
# here, from the repository root:
#
#   scripts/gpu-binaries.sh        # then run with carry: [".gpu"]
#
# → .gpu/servetwin (the CLI with the `cuda` feature) and .gpu/cuda-*,
#   .gpu/gpu-* (the GPU test executables of engine/tests/cuda.rs and
#   kernels/tests/gpu.rs), stripped; .gpu/COMMIT names the commit they
#   were built from (the GPU machine's copy of the tree has no .git).
#
# The CLI is built last: `cargo test` of the root crate rebuilds
# target/release/servetwin without `cuda`, and a binary without it says
# "no CUDA driver found" on the GPU machine too.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "error: jq is needed to list the test executables" >&2; exit 2; }

rm -rf .gpu && mkdir -p .gpu
cargo test --release --workspace --all-features --no-run --message-format=json \
    | jq -r 'select(.executable != null) | .executable' \
    | grep -E '/(cuda|gpu)-[0-9a-f]+$' \
    | while read -r exe; do cp "$exe" .gpu/; done
cargo build --release --features cuda
cp target/release/servetwin .gpu/
strip .gpu/* 2>/dev/null || true
echo "$(git rev-parse HEAD)$([ -n "$(git status --porcelain --untracked-files=no)" ] && echo -dirty || true)" > .gpu/COMMIT
ls -la .gpu
