"""PyTorch reference on the same GPU, for the ratios in docs/benchmarks.md (issue 10).

Measures, with CUDA events / synchronised wall clock:
  * blockwise NF4 quantize+dequantize of a 4096x11008 fp32 matrix (absmax per block of 64, nearest level by argmin,
    as the reference LoftQ implementation quantizes), reported as fp32 input bytes / time;
  * the LoftQ loop (NF4, r=64, T=5) with torch.svd_lowrank (q = r + 8, niter = 2) over a Llama-7B-shaped model
    (32 blocks of q, k, v, o 4096x4096, gate, up 11008x4096, down 4096x11008; Gaussian x 0.02), and the relative
    error of one 4096x4096 matrix;
  * optionally (--full-svd) the same loop with a full SVD on one 4096x4096 matrix.
Written for this project from the method's description; prints one JSON object.
"""
import argparse
import json
import time

import torch

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def quantize_dequantize(x, levels, block=64):
    blocks = x.reshape(-1, block)
    scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-38)
    codes = (blocks / scale).unsqueeze(-1).sub(levels).abs().argmin(dim=-1)
    return (levels[codes] * scale).reshape(x.shape)


def loftq(w, levels, rank, iterations, full_svd=False):
    residual = w.clone()
    a = b = None
    best = float("inf")
    norm = w.norm()
    for _ in range(iterations):
        q = quantize_dequantize(residual, levels)
        target = w - q
        if full_svd:
            u, s, vh = torch.linalg.svd(target, full_matrices=False)
            u, s, v = u[:, :rank], s[:rank], vh[:rank].T
        else:
            u, s, v = torch.svd_lowrank(target, q=rank + 8, niter=2)
            u, s, v = u[:, :rank], s[:rank], v[:, :rank]
        root = s.sqrt()
        b = u * root
        a = (v * root).T
        product = b @ a
        residual = w - product
        best = min(best, ((target - product).norm() / norm).item())
    return best


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    synchronize()
    start = time.perf_counter()
    value = fn()
    synchronize()
    return value, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--full-svd", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of this script")
    args = parser.parse_args()
    device = torch.device(args.device)
    levels = torch.tensor(NF4, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    out = {"torch": torch.__version__, "device": name}

    x = torch.randn(4096, 11008, device=device, generator=gen) * 0.02
    for _ in range(3):
        quantize_dequantize(x, levels)
    _, seconds = timed(lambda: [quantize_dequantize(x, levels) for _ in range(10)])
    ms = seconds * 1e3 / 10
    out["nf4_quantize_dequantize_ms"] = ms
    out["nf4_quantize_dequantize_gb_s"] = x.numel() * 4 / (ms / 1e3) / 1e9
    del x

    shapes = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
    weights = {s: torch.randn(*s, device=device, generator=gen) * 0.02 for s in set(shapes)}
    loftq(weights[(4096, 4096)], levels, 64, 5)  # warm-up (cuSOLVER/cuBLAS handles, kernels)
    error, seconds = timed(lambda: loftq(weights[(4096, 4096)], levels, 64, 5))
    out["svd_lowrank_4096_error"] = error
    out["svd_lowrank_4096_s"] = seconds
    _, seconds = timed(lambda: [loftq(weights[s], levels, 64, 5) for _ in range(args.blocks) for s in shapes])
    out["svd_lowrank_model_s"] = seconds
    out["model_matrices"] = args.blocks * len(shapes)
    if args.full_svd:
        error, seconds = timed(lambda: loftq(weights[(4096, 4096)], levels, 64, 5, full_svd=True))
        out["full_svd_4096_error"] = error
        out["full_svd_4096_s"] = seconds
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
