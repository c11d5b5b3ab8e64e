#!/usr/bin/env bash
# Fine-tuning speed, side by side on this machine: the protocol's training step (batch 8 x 128 bytes, r = 16, AdamW
# over the LoRA factors) for LoftQ.NET's LoraTrainer over the dense float32 base, the packed NF4 base and the packed
# NF2 base, and for PyTorch (Debian's python3-torch) with LoRA over the dense base. Every configuration runs in its
# own process, REPEATS times, in rotation; prints every JSON line and a Markdown table of medians.
#
#   benchmarks/finetune/run.sh              # 20 steps, 3 repeats, all cores
#   STEPS=30 REPEATS=5 THREADS=1 benchmarks/finetune/run.sh
#   MEMORY_STEPS=0 LONG_STEPS=0 benchmarks/finetune/run.sh   # speed only: skip the memory and long passes
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${STEPS:-20}
repeats=${REPEATS:-3}
threads=${THREADS:-$(nproc)}
py=/usr/bin/python3
model=tests/data/byte-llama-14m
train=tests/data/fortunes-train.txt

need=()
$py -c "import torch" 2>/dev/null || need+=(python3-torch)
ls /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas*.so* >/dev/null 2>&1 || need+=(libopenblas0-pthread)
if ((${#need[@]})); then
  echo "installing ${need[*]} ..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

dotnet build -c Release -v q --nologo benchmarks/LoftQ.Benchmarks >&2
bench="dotnet benchmarks/LoftQ.Benchmarks/bin/Release/net10.0/LoftQ.Benchmarks.dll"
results=$(mktemp)
for ((r = 1; r <= repeats; r++)); do
  for config in lora nf4 nf2; do
    $bench finetune-speed "$config" "$steps" "$threads" "$model" "$train" | tail -1 | tee -a "$results"
  done
  $py benchmarks/finetune/reference.py "$model" "$train" "$steps" "$threads" | tee -a "$results"
done

# Memory pass: the same .NET configurations with glibc's mmap threshold pinned at its default (128 KiB), so every
# tensor of 128 KiB or more is its own mapping, returned when freed: the peak is then what the run allocates, not
# what the allocator kept from earlier steps (2x slower, so a short run). MEMORY_STEPS=0 skips it.
memory_steps=${MEMORY_STEPS:-8}
if ((memory_steps > 0)); then
  for ((r = 1; r <= repeats; r++)); do
    for config in lora nf4 nf2; do
      MALLOC_MMAP_THRESHOLD_=131072 $bench finetune-speed "$config" "$memory_steps" "$threads" "$model" "$train" | tail -1 \
        | sed 's/"impl":"LoftQ.NET /"impl":"exact-allocation LoftQ.NET /' | tee -a "$results"
    done
  done
fi

# Long pass: LONG_STEPS steps of each .NET configuration with the trainer's defaults and without its garbage
# collection between steps (no-collect), to show the resident set over a longer run. LONG_STEPS=0 skips it.
long_steps=${LONG_STEPS:-60}
long_repeats=${LONG_REPEATS:-2}
if ((long_steps > 0)); then
  for ((r = 1; r <= long_repeats; r++)); do
    for flag in "" no-collect; do
      for config in lora nf4 nf2; do
        $bench finetune-speed "$config" "$long_steps" "$threads" "$model" "$train" $flag | tail -1 \
          | sed "s/\"impl\":\"LoftQ.NET /\"impl\":\"long${flag:+ $flag} LoftQ.NET /" | tee -a "$results"
      done
    done
  done
fi

$py - "$results" "$threads" "$steps" "$long_steps" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["impl"], []).append(r)
dense = statistics.median(r["median_step_s"] for r in by["LoftQ.NET lora"])
torch_impl = next(k for k in by if k.startswith("pytorch"))
ref = statistics.median(r["median_step_s"] for r in by[torch_impl])
print(f"\n{sys.argv[3]} steps, {sys.argv[2]} threads, medians over {len(by[torch_impl])} runs (range in brackets)\n")
print("| run | s per step | tokens/s | vs .NET dense | vs PyTorch | peak RSS MB [range] |")
print("|---|---:|---:|---:|---:|---:|")
for impl, rs in by.items():
    if impl.startswith("exact-allocation") or impl.startswith("long"):
        continue
    s = [r["median_step_s"] for r in rs]
    m = statistics.median(s)
    rss = [r.get("peak_rss_training_mb", r.get("peak_rss_mb")) for r in rs]
    print(f"| {impl} | {m:.3f} [{min(s):.3f}-{max(s):.3f}] | {1024 / m:.0f} | {m / dense:.2f}x | {m / ref:.2f}x | {statistics.median(rss):.0f} [{min(rss):.0f}-{max(rss):.0f}] |")
exact = {k: v for k, v in by.items() if k.startswith("exact-allocation")}
if exact:
    print("\nPeak RSS with exact allocation (MALLOC_MMAP_THRESHOLD_=131072), range over runs:\n")
    print("| run | RSS before training MB | peak RSS MB |")
    print("|---|---:|---:|")
    for impl, rs in exact.items():
        before = [r["rss_before_training_mb"] for r in rs]
        peak = [r["peak_rss_training_mb"] for r in rs]
        print(f"| {impl[len('exact-allocation '):]} | {min(before):.0f}-{max(before):.0f} | {min(peak):.0f}-{max(peak):.0f} |")
longs = {k: v for k, v in by.items() if k.startswith("long")}
if longs:
    print(f"\nPeak RSS over {sys.argv[4]}-step runs (all runs listed), resident set after the last step:\n")
    print("| run | peak RSS MB | RSS after the last step MB | s per step |")
    print("|---|---:|---:|---:|")
    for impl, rs in longs.items():
        peaks = ", ".join(f"{r['peak_rss_training_mb']:.0f}" for r in rs)
        last = ", ".join(f"{r['rss_after_each_step_mb'][-1]:.0f}" for r in rs)
        times = ", ".join(f"{r['median_step_s']:.3f}" for r in rs)
        print(f"| {impl[len('long '):]} | {peaks} | {last} | {times} |")
PY
rm -f "$results"
