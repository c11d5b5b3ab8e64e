#!/usr/bin/env python3
"""Prints the comparison as a Markdown table: per case, each implementation's time, speed-up of LoftQ.NET over it, error."""
import json
import sys

rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip().startswith("{")]
by_case = {}
for r in rows:
    by_case.setdefault(r["case"], []).append(r)

print("| case | implementation | time (s) | LoftQ.NET speed-up | rel. error | throughput | peak RSS (MB) |")
print("|---|---|---:|---:|---:|---:|---:|")
for case, results in by_case.items():
    ours = next((r for r in results if r["impl"] == "loftq.net"), None) or next((r for r in results if r["impl"].startswith("loftq.net")), None)
    for r in results:
        ratio = ""
        if ours is not None and r is not ours and not r["impl"].startswith("loftq.net") and ours.get("seconds"):
            ratio = f"{r['seconds'] / ours['seconds']:.1f}x"
        err = f"{r['error']:.4f}" if "error" in r else ""
        thr = f"{r['gflops']:.1f} GFLOP/s" if "gflops" in r else (f"{r['gbps']:.2f} GB/s" if "gbps" in r else "")
        secs = f"{r['seconds']:.3f}"
        if "min" in r and "max" in r:
            secs += f" ({r['min']:.3f}–{r['max']:.3f}, median of {r.get('repeats', 3)})"
        print(f"| {case} | {r['impl']} | {secs} | {ratio} | {err} | {thr} | {r.get('peak_rss_mb', 0):.0f} |")
