#!/usr/bin/env python3
"""Writes a synthetic Llama-7B-shaped checkpoint (Hugging Face layout, bf16 safetensors, sharded, with the index):
hidden 4096, intermediate 11008, 32 heads, vocab 32000, LAYERS decoder layers, Gaussian x 0.02 weights (seeded).

    /usr/bin/python3 benchmarks/memory/make_synthetic_llama.py OUT_DIR LAYERS [SHARD_GB]
"""
import json
import os
import struct
import sys

import torch

H, I, V, HEADS = 4096, 11008, 32000, 32


def tensors(layers):
    yield "model.embed_tokens.weight", (V, H)
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield p + f"self_attn.{n}.weight", (H, H)
        yield p + "mlp.gate_proj.weight", (I, H)
        yield p + "mlp.up_proj.weight", (I, H)
        yield p + "mlp.down_proj.weight", (H, I)
        yield p + "input_layernorm.weight", (H,)
        yield p + "post_attention_layernorm.weight", (H,)
    yield "model.norm.weight", (H,)
    yield "lm_head.weight", (V, H)


def write_shard(path, items):
    header, offset = {}, 0
    for name, t in items:
        n = t.numel() * 2
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, t in items:
            f.write(t.contiguous().view(torch.int16).numpy().tobytes())


def main():
    out, layers = sys.argv[1], int(sys.argv[2])
    shard_bytes = float(sys.argv[3] if len(sys.argv) > 3 else 2) * 2**30
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    groups, current, size = [], [], 0
    for name, shape in tensors(layers):
        n = 1
        for d in shape:
            n *= d
        if current and size + 2 * n > shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += 2 * n
    groups.append(current)
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        items = []
        for name, shape in group:
            t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
            items.append((name, t.to(torch.bfloat16)))
            weight_map[name] = fname
            total += t.numel() * 2
        write_shard(os.path.join(out, fname), items)
        del items
        print(f"wrote {fname}", file=sys.stderr)
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=2)
    json.dump({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
        "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "head_dim": H // HEADS,
        "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }, open(os.path.join(out, "config.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
