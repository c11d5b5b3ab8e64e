#!/usr/bin/env bash
# Initialisation quality on the bundled model: each configuration is quantized with `loftq quantize` for several
# seeds, then scored with `loftq eval` (bits per byte, adapter merged) on fortunes-val, on a held-out tail of
# fortunes-train (never used for calibration, which reads the first windows of fortunes-train) and, where the
# machine has it, on text of another kind (/usr/share/common-licenses/GPL-3). Prints one row per configuration with
# the medians, and the time of each calibration. Run it on an otherwise idle machine: the seconds are measured too.
#
#   benchmarks/quality/run.sh [SEEDS...]        (default seeds: 0 1 2)
#
# Needs the .NET SDK and python3 (for the JSON and the medians). Takes about 15 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
seeds=("${@:-0 1 2}"); seeds=(${seeds[*]})
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
dotnet build -c Release "$root/src/LoftQ.Cli" -v q -nologo >/dev/null
loftq=(dotnet "$root/src/LoftQ.Cli/bin/Release/net10.0/LoftQ.Cli.dll")
model="$root/tests/data/byte-llama-14m"
train="$root/tests/data/fortunes-train.txt"
val="$root/tests/data/fortunes-val.txt"
heldout="$work/heldout.txt"
tail -c 16641 "$train" > "$heldout"   # the last 65 windows of 256 bytes: far from the calibration windows
other=/usr/share/common-licenses/GPL-3
cal=(--calibration "$train" --calibration-windows 32)

run() { # NAME ARGS...
  local name=$1; shift
  for seed in "${seeds[@]}"; do
    local out="$work/out"
    "${loftq[@]}" quantize "$model" --out "$out" --rank 16 --iters 5 --seed "$seed" --overwrite --json "$@" \
      > "$work/report.json" 2> "$work/stderr.txt" || { cat "$work/stderr.txt" >&2; exit 1; }
    grep -o 'calibration: [0-9]* windows.* in [0-9.]* s' "$work/stderr.txt" | sed "s|^|$name: |" >> "$work/calibration.txt" || true
    local v h o='{"bits_per_byte": NaN}'
    v=$("${loftq[@]}" eval "$out" --text "$val" --json)
    h=$("${loftq[@]}" eval "$out" --text "$heldout" --json)
    if [ -f "$other" ]; then o=$("${loftq[@]}" eval "$out" --text "$other" --json); fi
    python3 - "$name" "$seed" "$work/report.json" "$v" "$h" "$o" >> "$work/rows.tsv" <<'PY'
import json, sys
name, seed, report = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
v, h, o = (json.loads(a) for a in sys.argv[4:7])
print("\t".join([name, seed, "%.4f" % report["mean_loftq_error"], "%.2f" % report["seconds"], "%.4f" % report["average_bits"],
                 "%.4f" % v["bits_per_byte"], "%.4f" % h["bits_per_byte"], "%.4f" % o["bits_per_byte"]]))
PY
  done
}

# The first run with a bit budget and the diagonal objective collects (and caches) statistics with sensitivities.
run "2.5 bits, budget, activation-diag, searched scales" --bit-budget 2.5 --scale-search --objective activation-diag "${cal[@]}" --calibration-cache "$work/diag.safetensors"
run "2.5 bits, budget, weight objective, searched scales" --bit-budget 2.5 --scale-search
run "2.5 bits, first-k rule, searched scales" --bits 2.5 --scale-search
run "2.5 bits, first-k rule" --bits 2.5 --scale-search false
run "NF2, LoftQ" --bits 2 --scale-search false
run "NF2, searched scales" --bits 2 --scale-search
run "NF2, searched scales, activation-diag" --bits 2 --scale-search --objective activation-diag "${cal[@]}" --calibration-cache "$work/diag.safetensors"
run "NF2, searched scales, activation (full)" --bits 2 --scale-search --objective activation "${cal[@]}" --calibration-cache "$work/full.safetensors"
run "NF2, searched scales (unweighted), activation-diag" --bits 2 --scale-search --plain-scale-search --objective activation-diag "${cal[@]}" --calibration-cache "$work/diag.safetensors"
run "NF2, activation-diag (absmax scales)" --bits 2 --scale-search false --objective activation-diag "${cal[@]}" --calibration-cache "$work/diag.safetensors"
run "NF2, searched scales, activation-diag, QPiSSA order" --bits 2 --scale-search --objective activation-diag --low-rank-first "${cal[@]}" --calibration-cache "$work/diag.safetensors"
run "NF3, searched scales" --bits 3 --scale-search
run "NF3, searched scales, activation-diag" --bits 3 --scale-search --objective activation-diag "${cal[@]}" --calibration-cache "$work/diag.safetensors"
run "NF4, LoftQ" --bits 4 --scale-search false
run "NF4, searched scales" --bits 4 --scale-search
run "NF4, searched scales, activation-diag" --bits 4 --scale-search --objective activation-diag "${cal[@]}" --calibration-cache "$work/diag.safetensors"

python3 - "$work/rows.tsv" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, seed, *values = line.rstrip("\n").split("\t")
    rows.setdefault(name, []).append([float(v) for v in values])
print("| configuration | avg bits | mean rel. error | seconds | fortunes-val bpb, median [min, max] | held-out fortunes | GPL-3 text |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, r in rows.items():
    med = lambda i: statistics.median(x[i] for x in r)
    vals = [x[3] for x in r]
    print(f"| {name} | {med(2):.3f} | {med(0):.4f} | {med(1):.1f} | {med(3):.4f} [{min(vals):.4f}, {max(vals):.4f}] | {med(4):.4f} | {med(5):.4f} |")
print(f"\nseeds: {len(next(iter(rows.values())))} per row; seconds = the run's report (LoftQ and writing, calibration not included)")
PY
echo; cat "$work/calibration.txt"
