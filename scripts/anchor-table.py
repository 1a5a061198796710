#!/usr/bin/env python3
"""The engine against the PyTorch anchor, per shape, from two files of one GPU run:

    scripts/anchor-table.py ENGINE_BENCH.json TORCH_RESULTS.json > table.md

ENGINE_BENCH.json is `servetwin engine bench --out`; TORCH_RESULTS.json is what
../shared/anchors/torch_engine_bench.py wrote ($OUT/results.json: parts `floors`,
`min`, `whole`). The PyTorch figure of a shape is the faster of `min` (per-layer
torch.compile, one CUDA graph, best SDPA backend) and `whole` (the model compiled
whole, reduce-overhead) where both timed it. Targets are issue 23's. Nothing here
is typed in by hand but the targets: every time comes from the two files.
"""
import json
import sys

# (kind, batch, tokens or context) -> target ms (issue 23; Llama-3-8B bf16, dummy weights)
TARGETS = {
    ("decode", 1, 1024): 5.8, ("decode", 8, 1024): 6.2, ("decode", 32, 1024): 7.0, ("decode", 128, 1024): 11.0,
    ("prefill", 1, 2048): 44.0, ("prefill", 1, 8192): 190.0,
}
SHAPES = [("decode", 1, 1024), ("decode", 8, 1024), ("decode", 32, 1024), ("decode", 128, 1024),
          ("decode", 1, 4096), ("decode", 32, 8192), ("prefill", 1, 2048), ("prefill", 1, 8192), ("prefill", 4, 2048)]


def main():
    eng = json.load(open(sys.argv[1]))
    tor = json.load(open(sys.argv[2]))
    cases = {}
    for c in eng["cases"]:
        key = (c["kind"], c["batch"], c["context"] if c["kind"] == "decode" else c["new_tokens"])
        cases[key] = c

    def torch_ms(kind, b, n):
        got = []
        if kind == "decode":
            for part in ("min_decode", "whole_decode"):
                v = tor.get(part, {}).get(f"B{b}_ctx{n}")
                if v and "ms" in v:
                    got.append((v["ms"], part.split("_")[0] + (f" ({v['backend']})" if "backend" in v else "")))
        else:
            v = tor.get("min_prefill", {}).get(f"B{b}_T{n}")
            if v and "ms" in v:
                got.append((v["ms"], f"min ({v.get('backend', '?')})"))
        return min(got) if got else None

    fl = tor.get("floors", {})
    env = fl.get("env", {})
    ce = eng.get("ceilings") or {}
    print(f"Engine: commit {eng.get('commit')}, {eng.get('device')}, CUDA graphs {eng.get('cuda_graphs')}, "
          f"{eng.get('date')}; ceilings copy {ce.get('copy_bytes_per_s', 0) / 1e9:.0f} GB/s, "
          f"GEMM {ce.get('gemm_flops_per_s', 0) / 1e12:.0f} TFLOP/s.")
    if fl:
        print(f"PyTorch {env.get('torch')} on {env.get('device')}: copy {fl['d2d_copy']['GBps']:.0f} GB/s, "
              f"GEMM 8192³ {fl['gemm_8192']['TFLOPs']:.0f} TFLOP/s.")
    print()
    print("| shape | servetwin ms | floor ms | servetwin / floor | PyTorch ms | PyTorch variant | servetwin / PyTorch | target ms | target |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---|")
    for kind, b, n in SHAPES:
        c = cases.get((kind, b, n))
        t = torch_ms(kind, b, n)
        name = f"decode B{b} ctx {n}" if kind == "decode" else f"prefill {b}×{n}"
        ms = f"{c['median_ms']:.2f}" if c else "—"
        floor = f"{c['floor_ms']:.2f}" if c and c.get("floor_ms") else "—"
        rf = f"{c['ratio']:.2f}" if c and c.get("ratio") else "—"
        tm, tv = (f"{t[0]:.2f}", t[1]) if t else ("—", "not timed")
        ratio = f"{c['median_ms'] / t[0]:.3f}" if c and t else "—"
        tg = TARGETS.get((kind, b, n))
        verdicts = []
        if tg is not None and c:
            verdicts.append("met" if c["median_ms"] <= tg else "missed")
        if c and t:
            verdicts.append("≤ PyTorch" if c["median_ms"] <= t[0] else "> PyTorch")
        print(f"| {name} | {ms} | {floor} | {rf} | {tm} | {tv} | {ratio} | {tg if tg is not None else '—'} | {', '.join(verdicts) or '—'} |")


if __name__ == "__main__":
    main()
