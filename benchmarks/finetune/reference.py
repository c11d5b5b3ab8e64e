#!/usr/bin/env python3
"""PyTorch reference for the fine-tuning speed comparison (benchmarks/finetune/run.sh).

A LLaMA forward written from the architecture (RMSNorm, rotary attention, SwiGLU), LoRA on the seven projections over
a dense float32 base (B = 0, A ~ U(-1/sqrt(in), 1/sqrt(in))), and the protocol's training step: AdamW (lr 5e-4,
betas 0.9/0.999, eps 1e-8, no weight decay) over the LoRA factors only, batch 8 x 128 bytes, step s on windows
8s..8s+7 of the training text. Prints one JSON object: median seconds per step and peak RSS.

    /usr/bin/python3 benchmarks/finetune/reference.py MODEL_DIR TRAIN_TXT STEPS THREADS [VAL_TXT]

With VAL_TXT it also scores bits per byte on its 64 windows of 256 bytes before and after training (an independent
check of the .NET trainer's numbers).
"""
import json
import math
import resource
import statistics
import struct
import sys
import time

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_model(directory):
    index = json.load(open(f"{directory}/model.safetensors.index.json"))["weight_map"]
    out = {}
    for path in sorted(set(index.values())):
        with open(f"{directory}/{path}", "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            data = f.read()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            out[name] = torch.frombuffer(bytearray(data[b:e]), dtype=DTYPES[info["dtype"]]).reshape(info["shape"]).to(torch.float32)
    return out


class LoraLinear(torch.nn.Module):
    def __init__(self, weight, rank, alpha, generator):
        super().__init__()
        out_f, in_f = weight.shape
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        bound = 1 / math.sqrt(in_f)
        self.lora_A = torch.nn.Parameter(torch.empty(rank, in_f).uniform_(-bound, bound, generator=generator))
        self.lora_B = torch.nn.Parameter(torch.zeros(out_f, rank))
        self.scaling = alpha / rank

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling


class Llama(torch.nn.Module):
    def __init__(self, config, w, rank, alpha):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c = config
        self.embed = torch.nn.Parameter(w["model.embed_tokens.weight"], requires_grad=False)
        self.head = torch.nn.Parameter(w["lm_head.weight"], requires_grad=False)
        self.norm = torch.nn.Parameter(w["model.norm.weight"], requires_grad=False)
        self.layers = torch.nn.ModuleList()
        for i in range(config["num_hidden_layers"]):
            p = f"model.layers.{i}."
            layer = torch.nn.Module()
            for name in TARGETS:
                kind = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                setattr(layer, name, LoraLinear(w[f"{p}{kind}.{name}.weight"], rank, alpha, g))
            layer.ln1 = torch.nn.Parameter(w[p + "input_layernorm.weight"], requires_grad=False)
            layer.ln2 = torch.nn.Parameter(w[p + "post_attention_layernorm.weight"], requires_grad=False)
            self.layers.append(layer)
        rope = config.get("rope_parameters", {}).get("rope_theta", config.get("rope_theta", 10000.0))
        hd = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
        inv = 1.0 / (rope ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        t = torch.arange(config["max_position_embeddings"], dtype=torch.float32)
        freqs = torch.outer(t, inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self.hd = hd
        n = config["max_position_embeddings"]
        self.mask = torch.full((n, n), float("-inf")).triu(1)

    def rms(self, x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c["rms_norm_eps"]) * weight

    def rotate(self, x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def forward(self, ids):
        b, t = ids.shape
        h = self.embed[ids]
        nh, nkv = self.c["num_attention_heads"], self.c["num_key_value_heads"]
        cos, sin = self.cos[:t], self.sin[:t]
        for layer in self.layers:
            x = self.rms(h, layer.ln1)
            q = layer.q_proj(x).view(b, t, nh, self.hd).transpose(1, 2)
            k = layer.k_proj(x).view(b, t, nkv, self.hd).transpose(1, 2)
            v = layer.v_proj(x).view(b, t, nkv, self.hd).transpose(1, 2)
            q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
            if nkv != nh:
                k = k.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
            # PyTorch 1.13 has no scaled_dot_product_attention: the same computation, written out.
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + self.mask[:t, :t]
            a = torch.softmax(scores, dim=-1) @ v
            h = h + layer.o_proj(a.transpose(1, 2).reshape(b, t, -1))
            x = self.rms(h, layer.ln2)
            h = h + layer.down_proj(torch.nn.functional.silu(layer.gate_proj(x)) * layer.up_proj(x))
        return self.rms(h, self.norm) @ self.head.T


@torch.no_grad()
def bits_per_byte(model, text, windows=64, length=256):
    nats = 0.0
    for first in range(0, windows, 8):
        ids = torch.tensor([list(text[length * i:length * i + length + 1]) for i in range(first, min(windows, first + 8))], dtype=torch.long)
        logits = model(ids[:, :-1])
        nats += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
    return nats / (windows * length) / math.log(2)


def main():
    model_dir, train_path, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    val = open(sys.argv[5], "rb").read() if len(sys.argv) > 5 else None
    torch.set_num_threads(threads)
    config = json.load(open(f"{model_dir}/config.json"))
    model = Llama(config, read_model(model_dir), rank=16, alpha=16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    text = open(train_path, "rb").read()
    before = bits_per_byte(model, val) if val else None
    times, losses = [], []
    for s in range(steps):
        ids = torch.tensor([list(text[128 * k:128 * k + 129]) for k in range(8 * s, 8 * s + 8)], dtype=torch.long)
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    warm = times[2:] if len(times) > 4 else times
    step_s = statistics.median(warm)
    extra = {"val_bpb_before": before, "val_bpb_after": bits_per_byte(model, val)} if val else {}
    print(json.dumps({**extra, 
        "impl": "pytorch-" + torch.__version__ + " dense LoRA",
        "steps": steps,
        "median_step_s": step_s,
        "tokens_per_s": 8 * 128 / step_s,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }), flush=True)


if __name__ == "__main__":
    main()
