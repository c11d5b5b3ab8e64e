#!/usr/bin/env bash
# The GPU checks and benchmarks of issue 10, in two halves:
#   benchmarks/gpu/run.sh publish   here (needs the .NET SDK): a trimmed self-contained publish to benchmarks/gpu/out
#                                   (~26 MB; the GPU machine has no .NET SDK).
#   benchmarks/gpu/run.sh device    on the GPU machine (the device tool, carrying benchmarks/gpu/out): the agreement
#                                   checks, the LoftQ.NET measurements, then the PyTorch reference on the same GPU.
# Results go to $OUT (or benchmarks/gpu/results): gpu.txt / gpu.json (LoftQ.NET), torch.json (PyTorch).
# Environment: BLOCKS (default 32: the Llama-7B-shaped model's decoder blocks), FULL_SVD=1 adds torch's full-SVD loop.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=benchmarks/gpu
case "${1:-}" in
  publish)
    dotnet publish $here/LoftQ.GpuCheck -c Release -r linux-x64 --self-contained \
      -p:PublishTrimmed=true -p:InvariantGlobalization=true -o $here/out
    du -sh $here/out
    ;;
  device)
    out="${OUT:-$here/results}"
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    status=0
    $here/out/LoftQ.GpuCheck all --model tests/data/byte-llama-14m --blocks "${BLOCKS:-32}" --json "$out/gpu.json" \
      2>&1 | tee "$out/gpu.txt" || status=$?
    extra=()
    if [ "${FULL_SVD:-0}" = 1 ]; then extra+=(--full-svd); fi
    PYTHONUNBUFFERED=1 python3 $here/reference.py --blocks "${BLOCKS:-32}" "${extra[@]}" | tee "$out/torch.json" || status=$?
    python3 - "$out/gpu.json" "$out/torch.json" <<'PY'
import json, sys
gpu = json.load(open(sys.argv[1])); ref = json.load(open(sys.argv[2]))
m = {x["name"]: x["value"] for x in gpu["measurements"]}
def find(prefix):
    return next((v for k, v in m.items() if k.startswith(prefix)), None)
rows = []
for variant in ("absmax, Q out", "absmax, W-Q out", "absmax, codes only"):
    bw = find(f"  effective bandwidth ({variant})")
    if bw: rows.append((f"NF4 quantize 4096x11008 ({variant}), fp32 GB/s in (higher is better)", bw, ref["nf4_quantize_dequantize_gb_s"], bw / ref["nf4_quantize_dequantize_gb_s"]))
for k, v in m.items():
    if k.startswith("Llama-7B-shaped") and "(absmax)" in k and (k.endswith("compute") or k.endswith("wall")):
        rows.append((f"{k} vs torch svd_lowrank, {ref['model_matrices']} matrices, s", v, ref["svd_lowrank_model_s"], ref["svd_lowrank_model_s"] / v))
print("| measure | LoftQ.NET | torch | LoftQ.NET advantage |\n|---|---|---|---|")
for name, ours, theirs, ratio in rows:
    print(f"| {name} | {ours:.4g} | {theirs:.4g} | {ratio:.2f}x |")
print(f"torch 4096² svd_lowrank error {ref['svd_lowrank_4096_error']:.4f}")
PY
    exit $status
    ;;
  *)
    echo "usage: $0 publish|device" >&2
    exit 2
    ;;
esac
