#!/usr/bin/env bash
# Side-by-side comparison: the PyTorch reference LoftQ (full SVD, and torch.svd_lowrank) against LoftQ.NET,
# on the same inputs, the same machine and the same thread count, in one go. Prints a Markdown table.
# The LoftQ.NET process also runs the TorchSharp anchor (LoftQ.TorchSharp's torch engine: threshold quantizer +
# qr-based randomized SVD, median of 3; the full-SVD variant once, where the plan has the "full" variant).
#
#   benchmarks/compare/run.sh            # everything (the full-SVD 11008x4096 case takes minutes)
#   QUICK=1 benchmarks/compare/run.sh    # skip the slowest torch case
#   THREADS=1 benchmarks/compare/run.sh  # another thread count (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
threads=${THREADS:-$(nproc)}
work=${WORK:-$(mktemp -d /tmp/loftq-compare.XXXXXX)}
py=/usr/bin/python3

# Debian's PyTorch + OpenBLAS (without OpenBLAS torch runs ~15x slower on this CPU).
need=()
$py -c "import torch" 2>/dev/null || need+=(python3-torch)
$py -c "import scipy" 2>/dev/null || need+=(python3-scipy)
ls /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas*.so* >/dev/null 2>&1 || need+=(libopenblas0-pthread)
if ((${#need[@]})); then
  echo "installing ${need[*]} ..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

echo "building ..." >&2
dotnet build -c Release -v q --nologo benchmarks/LoftQ.Benchmarks >&2
case "$(uname -m)" in aarch64) rid=linux-arm64 ;; *) rid=linux-x64 ;; esac
dotnet publish -c Release -v q --nologo -r "$rid" --self-contained false src/LoftQ.Cli -o "$work/loftq" >&2   # ReadyToRun
bench="dotnet $root/benchmarks/LoftQ.Benchmarks/bin/Release/net10.0/LoftQ.Benchmarks.dll"

echo "making inputs in $work ..." >&2
$py benchmarks/compare/reference.py --make-gaussian 4096x4096 "$work/g4096.safetensors"
$py benchmarks/compare/reference.py --make-gaussian 11008x4096 "$work/g11008.safetensors"

model=tests/data/byte-llama-14m
$py - "$work" "$threads" "$model" "${QUICK:-}" > "$work/plan.json" <<'PY'
import json, sys
work, threads, model, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
index = json.load(open(f"{model}/model.safetensors.index.json"))["weight_map"]
targets = [n for n in index if n.endswith("_proj.weight")]
files = sorted({f"{model}/{index[n]}" for n in targets})
cases = []
for variant in ["full", "lowrank"]:
    cases.append(dict(kind="layer", name="4096x4096 nf4 r64 T5", file=f"{work}/g4096.safetensors", tensor="weight", bits=4, rank=64, iters=5, variant=variant))
    if not (quick and variant == "full"):
        cases.append(dict(kind="layer", name="11008x4096 nf4 r64 T5", file=f"{work}/g11008.safetensors", tensor="weight", bits=4, rank=64, iters=5, variant=variant))
    cases.append(dict(kind="model", name="byte-llama-14m 56 targets nf2 r16 T5", files=files, tensors=targets, bits=2, rank=16, iters=5, variant=variant))
cases.append(dict(kind="gemm", name="sgemm 4096x72 <- 4096x4096 * 4096x72", m=4096, n=72, k=4096))
cases.append(dict(kind="gemm", name="sgemm 1024^3", m=1024, n=1024, k=1024))
for bits in (4, 2):
    cases.append(dict(kind="quantize", name=f"nf{bits} quantize+dequantize 4096x4096", rows=4096, cols=4096, bits=bits))
json.dump(dict(threads=threads, cases=cases), sys.stdout, indent=1)
PY

echo "running PyTorch reference (threads=$threads) ..." >&2
$py benchmarks/compare/reference.py "$work/plan.json" | tee "$work/torch.jsonl" >&2
echo "running LoftQ.NET (threads=$threads) ..." >&2
LOFTQ_NUM_THREADS=$threads $bench compare "$work/plan.json" | tee "$work/ours.jsonl" >&2

# End to end: the whole bundled model through the CLI, process start and output writing included.
rm -rf "$work/e2e-out"
/usr/bin/time -f '%e %M' -o "$work/e2e.time" env LOFTQ_NUM_THREADS=$threads "$work/loftq/LoftQ.Cli" quantize "$model" --out "$work/e2e-out" --bits 2 --rank 16 --iters 5 --scale-search false --json > "$work/e2e.json"
$py - "$work" >> "$work/ours.jsonl" <<'PY'
import json, sys
work = sys.argv[1]
secs, kb = open(f"{work}/e2e.time").read().split()
report = json.load(open(f"{work}/e2e.json"))
print(json.dumps({"case": "byte-llama-14m end to end (loftq quantize, process start + writing)", "impl": "loftq.net-cli",
                  "seconds": float(secs), "error": report["mean_loftq_error"], "peak_rss_mb": int(kb) / 1024}))
PY

echo
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; threads=$threads; date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "torch: $($py -c 'import torch; print(torch.__version__)'); dotnet: $(dotnet --version)"
$py benchmarks/compare/table.py "$work/torch.jsonl" "$work/ours.jsonl"
