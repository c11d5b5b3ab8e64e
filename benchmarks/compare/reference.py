#!/usr/bin/env python3
"""PyTorch reference for the side-by-side comparison (benchmarks/compare/run.sh).

Implements LoftQ as the paper describes it, the way the reference Python implementations run it: blockwise
NormalFloat quantization by nearest-level search over the code book, then a full torch.linalg.svd of the
residual (the "full" variant) or torch.svd_lowrank (the "lowrank" variant), T alternating passes.
Reads inputs from safetensors files, prints one JSON object per case on stdout.
"""
import json
import math
import resource
import struct
import sys
import time

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path, names=None):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or (names is not None and name not in names):
            continue
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = t.to(torch.float32)
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        raw = t.contiguous().to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def nf_code_book(bits):
    # LoftQ's asymmetric NormalFloat construction (DESIGN.md section 3).
    normal = torch.distributions.Normal(0.0, 1.0)
    offset = 0.9677083
    half = 2 ** (bits - 1)
    pos = normal.icdf(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (levels / levels.max()).to(torch.float32)


def quantize_dequantize(w, code_book, block=64):
    flat = w.reshape(-1, block)
    absmax = flat.abs().max(dim=1, keepdim=True).values.clamp_min(1e-38)
    idx = (flat.div(absmax).unsqueeze(-1) - code_book).abs().argmin(dim=-1)
    return (code_book[idx] * absmax).reshape(w.shape)


def loftq(w, bits, rank, iters, variant, oversampling=8, niter=2):
    code_book = nf_code_book(bits)
    residual = w
    q = l = r = None
    for _ in range(iters):
        q = quantize_dequantize(residual, code_book)
        if variant == "full":
            u, s, vh = torch.linalg.svd(w - q, full_matrices=False)
        else:
            u, s, v = torch.svd_lowrank(w - q, q=rank + oversampling, niter=niter)
            vh = v.T
        root = s[:rank].sqrt()
        l = u[:, :rank] * root
        r = root[:, None] * vh[:rank]
        residual = w - l @ r
    if iters == 0:
        q = quantize_dequantize(w, code_book)
        err = torch.linalg.norm(w - q) / torch.linalg.norm(w)
    else:
        err = torch.linalg.norm(w - q - l @ r) / torch.linalg.norm(w)
    return float(err)


def timed(fn, repeat=1):
    best, value = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
    return best, value


def main():
    plan = json.load(open(sys.argv[1]))
    torch.set_num_threads(plan["threads"])
    for case in plan["cases"]:
        kind = case["kind"]
        result = {"case": case["name"], "impl": "torch-" + case.get("variant", kind)}
        if kind == "layer":
            w = read_safetensors(case["file"])[case["tensor"]]
            secs, err = timed(lambda: loftq(w, case["bits"], case["rank"], case["iters"], case["variant"]))
            result.update(seconds=secs, error=err)
        elif kind == "model":
            tensors = read_safetensors_many(case["files"], case["tensors"])
            def run():
                return sum(loftq(w, case["bits"], case["rank"], case["iters"], case["variant"]) for w in tensors) / len(tensors)
            secs, err = timed(run)
            result.update(seconds=secs, error=err)
        elif kind == "gemm":
            m, n, k = case["m"], case["n"], case["k"]
            a, b = torch.randn(m, k), torch.randn(k, n)
            a @ b
            secs, _ = timed(lambda: a @ b, repeat=5)
            result.update(seconds=secs, gflops=2.0 * m * n * k / secs / 1e9)
        elif kind == "quantize":
            w = torch.randn(case["rows"], case["cols"])
            code_book = nf_code_book(case["bits"])
            secs, _ = timed(lambda: quantize_dequantize(w, code_book), repeat=3)
            result.update(seconds=secs, gbps=w.numel() * 4 / secs / 1e9)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result), flush=True)


def read_safetensors_many(files, names):
    out = []
    wanted = set(names)
    for path in files:
        tensors = read_safetensors(path, wanted)
        out.extend(tensors[n] for n in names if n in tensors)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--make-gaussian":
        rows, cols = (int(x) for x in sys.argv[2].split("x"))
        torch.manual_seed(0)
        write_safetensors(sys.argv[3], {"weight": torch.randn(rows, cols)})
    else:
        main()
