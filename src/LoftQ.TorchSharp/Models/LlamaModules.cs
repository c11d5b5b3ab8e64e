using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Models;

// Module and field names follow Hugging Face's modeling_llama.py exactly: RegisterComponents() registers each field
// under its own name, so named_modules() and state_dict() keys equal the checkpoint's tensor names.
#pragma warning disable IDE1006 // field names are the Hugging Face module names

/// <summary>Stateless kernels of the LLaMA forward pass (usable without the modules).</summary>
internal static class LlamaKernels
{
    /// <summary>
    /// RMSNorm as Hugging Face computes it: in float32, <c>x · rsqrt(mean(x²) + eps)</c>, cast back to the input dtype,
    /// then scaled by <paramref name="weight"/>.
    /// </summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, double eps)
    {
        using var scope = NewDisposeScope();
        ScalarType dtype = x.dtype;
        Tensor h = x.to(ScalarType.Float32);
        Tensor variance = h.pow(2).mean([-1L], keepdim: true);
        h = h * torch.rsqrt(variance + eps);
        return (weight * h.to(dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Rotary tables for positions 0..<paramref name="positions"/>−1: (cos, sin), each [positions, headDim] in
    /// <paramref name="dtype"/>. inv_freq = 1 / θ^(arange(0, d, 2)/d) and the angles are computed in float32, as in
    /// Hugging Face's default rotary embedding.
    /// </summary>
    public static (Tensor Cos, Tensor Sin) RotaryTables(long positions, int headDim, double theta, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        Tensor exponents = torch.arange(0, headDim, 2, dtype: ScalarType.Int64, device: device).to(ScalarType.Float32) / headDim;
        Tensor invFreq = torch.tensor((float)theta, ScalarType.Float32, device).pow(exponents).reciprocal();
        Tensor t = torch.arange(positions, dtype: ScalarType.Float32, device: device);
        Tensor freqs = t.unsqueeze(1) * invFreq.unsqueeze(0);
        Tensor emb = torch.cat([freqs, freqs], -1);
        Tensor cos = emb.cos().to(dtype);
        Tensor sin = emb.sin().to(dtype);
        return (cos.MoveToOuterDisposeScope(), sin.MoveToOuterDisposeScope());
    }

    /// <summary>Applies rotary embeddings to <paramref name="x"/> [.., T, d] (rotate-half convention): x·cos + rotate_half(x)·sin.</summary>
    public static Tensor ApplyRotary(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        Tensor x1 = x.narrow(-1, 0, half);
        Tensor x2 = x.narrow(-1, half, half);
        Tensor rotated = torch.cat([-x2, x1], -1);
        return (x * cos + rotated * sin).MoveToOuterDisposeScope();
    }
}

/// <summary>LLaMA's RMSNorm: a learned per-channel scale over a root-mean-square normalisation (Hugging Face <c>LlamaRMSNorm</c>).</summary>
public sealed class LlamaRmsNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly double _eps;

    internal LlamaRmsNorm(string name, long size, double eps, ScalarType dtype, Device? device)
        : base(name)
    {
        weight = new Parameter(torch.ones(size, dtype: dtype, device: device));
        _eps = eps;
        RegisterComponents();
    }

    /// <summary>The per-channel scale.</summary>
    public Parameter Weight => weight;

    /// <summary>The epsilon added to the mean square.</summary>
    public double Eps => _eps;

    /// <summary>Normalises the last dimension of <paramref name="input"/>.</summary>
    public override Tensor forward(Tensor input) => LlamaKernels.RmsNorm(input, weight, _eps);
}

/// <summary>
/// Rotary position embedding tables (Hugging Face <c>LlamaRotaryEmbedding</c>, default type). Holds no state:
/// the tables are computed per call in float32, so <c>.to(bfloat16)</c> never degrades them.
/// </summary>
public sealed class LlamaRotaryEmbedding : nn.Module<Tensor, (Tensor Cos, Tensor Sin)>
{
    private readonly int _headDim;
    private readonly double _theta;

    internal LlamaRotaryEmbedding(string name, int headDim, double theta)
        : base(name)
    {
        _headDim = headDim;
        _theta = theta;
    }

    /// <summary>The (cos, sin) tables [T, head_dim] for the positions 0..T−1 of <paramref name="input"/> [batch, T, hidden], in its dtype and on its device.</summary>
    public override (Tensor Cos, Tensor Sin) forward(Tensor input) =>
        LlamaKernels.RotaryTables(input.shape[1], _headDim, _theta, input.dtype, input.device);
}

/// <summary>
/// Causal multi-head attention with rotary embeddings and grouped key/value heads (Hugging Face <c>LlamaAttention</c>).
/// The four projections are held in fields typed <see cref="nn.Module{T, TResult}"/> so another module (a LoRA
/// layer) can be swapped in.
/// </summary>
public sealed class LlamaAttention : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> q_proj;
    private readonly nn.Module<Tensor, Tensor> k_proj;
    private readonly nn.Module<Tensor, Tensor> v_proj;
    private readonly nn.Module<Tensor, Tensor> o_proj;
    private readonly int _heads;
    private readonly int _kvHeads;
    private readonly int _headDim;
    private readonly int? _slidingWindow;

    internal LlamaAttention(string name, LlamaModelConfig c, ScalarType dtype, Device? device)
        : base(name)
    {
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _slidingWindow = c.SlidingWindow;
        q_proj = nn.Linear(c.HiddenSize, (long)c.NumAttentionHeads * c.HeadDim, hasBias: false, device: device, dtype: dtype);
        k_proj = nn.Linear(c.HiddenSize, (long)c.NumKeyValueHeads * c.HeadDim, hasBias: false, device: device, dtype: dtype);
        v_proj = nn.Linear(c.HiddenSize, (long)c.NumKeyValueHeads * c.HeadDim, hasBias: false, device: device, dtype: dtype);
        o_proj = nn.Linear((long)c.NumAttentionHeads * c.HeadDim, c.HiddenSize, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>Attends over <paramref name="hidden"/> [batch, T, hidden] causally, with the rotary tables of <see cref="LlamaRotaryEmbedding"/>.</summary>
    /// <exception cref="NotSupportedException">T exceeds the config's sliding window.</exception>
    public override Tensor forward(Tensor hidden, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long b = hidden.shape[0], t = hidden.shape[1];
        if (_slidingWindow is int window && t > window)
        {
            throw new NotSupportedException($"A sequence of {t} tokens exceeds the sliding window ({window}); sliding-window attention is not implemented.");
        }

        Tensor q = q_proj.forward(hidden).view(b, t, _heads, _headDim).transpose(1, 2);
        Tensor k = k_proj.forward(hidden).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        Tensor v = v_proj.forward(hidden).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = LlamaKernels.ApplyRotary(q, cos, sin);
        k = LlamaKernels.ApplyRotary(k, cos, sin);
        if (_kvHeads != _heads)
        {
            // Hugging Face's repeat_kv: each key/value head serves heads/kv_heads consecutive query heads.
            int repeats = _heads / _kvHeads;
            k = k.repeat_interleave(repeats, dim: 1);
            v = v.repeat_interleave(repeats, dim: 1);
        }

        Tensor attended = nn.functional.scaled_dot_product_attention(q, k, v, is_casual: t > 1);
        Tensor merged = attended.transpose(1, 2).reshape(b, t, (long)_heads * _headDim);
        return o_proj.forward(merged).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The SwiGLU feed-forward block: <c>down_proj(silu(gate_proj(x)) · up_proj(x))</c> (Hugging Face <c>LlamaMLP</c>).
/// The projections are held in fields typed <see cref="nn.Module{T, TResult}"/> so another module can be swapped in.
/// </summary>
public sealed class LlamaMlp : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> gate_proj;
    private readonly nn.Module<Tensor, Tensor> up_proj;
    private readonly nn.Module<Tensor, Tensor> down_proj;

    internal LlamaMlp(string name, LlamaModelConfig c, ScalarType dtype, Device? device)
        : base(name)
    {
        gate_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: false, device: device, dtype: dtype);
        up_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: false, device: device, dtype: dtype);
        down_proj = nn.Linear(c.IntermediateSize, c.HiddenSize, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>Applies the block to <paramref name="input"/> [.., hidden].</summary>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        Tensor gated = nn.functional.silu(gate_proj.forward(input)) * up_proj.forward(input);
        return down_proj.forward(gated).MoveToOuterDisposeScope();
    }
}

/// <summary>One pre-norm decoder layer: <c>h = x + attn(norm₁(x)); out = h + mlp(norm₂(h))</c> (Hugging Face <c>LlamaDecoderLayer</c>).</summary>
public sealed class LlamaDecoderLayer : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    private readonly LlamaAttention self_attn;
    private readonly LlamaMlp mlp;
    private readonly LlamaRmsNorm input_layernorm;
    private readonly LlamaRmsNorm post_attention_layernorm;

    internal LlamaDecoderLayer(string name, LlamaModelConfig c, ScalarType dtype, Device? device)
        : base(name)
    {
        self_attn = new LlamaAttention(nameof(self_attn), c, dtype, device);
        mlp = new LlamaMlp(nameof(mlp), c, dtype, device);
        input_layernorm = new LlamaRmsNorm(nameof(input_layernorm), c.HiddenSize, c.RmsNormEps, dtype, device);
        post_attention_layernorm = new LlamaRmsNorm(nameof(post_attention_layernorm), c.HiddenSize, c.RmsNormEps, dtype, device);
        RegisterComponents();
    }

    /// <summary>The attention block.</summary>
    public LlamaAttention SelfAttention => self_attn;

    /// <summary>The feed-forward block.</summary>
    public LlamaMlp Mlp => mlp;

    /// <summary>Runs the layer on <paramref name="hidden"/> [batch, T, hidden] with the rotary tables.</summary>
    public override Tensor forward(Tensor hidden, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        Tensor h = hidden + self_attn.forward(input_layernorm.forward(hidden), cos, sin);
        Tensor result = h + mlp.forward(post_attention_layernorm.forward(h));
        return result.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The decoder stack without the language-model head (Hugging Face <c>LlamaModel</c>): token embeddings, the
/// layers, the final RMSNorm. Maps token ids [batch, T] to hidden states [batch, T, hidden].
/// </summary>
public sealed class LlamaDecoder : nn.Module<Tensor, Tensor>
{
    private readonly Embedding embed_tokens;
    private readonly ModuleList<LlamaDecoderLayer> layers;
    private readonly LlamaRmsNorm norm;
    private readonly LlamaRotaryEmbedding rotary_emb;

    internal LlamaDecoder(string name, LlamaModelConfig c, ScalarType dtype, Device? device)
        : base(name)
    {
        embed_tokens = nn.Embedding(c.VocabSize, c.HiddenSize, device: device, dtype: dtype);
        var list = new LlamaDecoderLayer[c.NumHiddenLayers];
        for (int i = 0; i < list.Length; i++)
        {
            list[i] = new LlamaDecoderLayer(i.ToString(System.Globalization.CultureInfo.InvariantCulture), c, dtype, device);
        }

        layers = nn.ModuleList(list);
        norm = new LlamaRmsNorm(nameof(norm), c.HiddenSize, c.RmsNormEps, dtype, device);
        rotary_emb = new LlamaRotaryEmbedding(nameof(rotary_emb), c.HeadDim, c.RopeTheta);
        RegisterComponents();
    }

    /// <summary>The token embedding (<c>embed_tokens</c>).</summary>
    public Embedding EmbedTokens => embed_tokens;

    /// <summary>The decoder layers (<c>layers</c>).</summary>
    public ModuleList<LlamaDecoderLayer> Layers => layers;

    /// <summary>The final norm (<c>norm</c>).</summary>
    public LlamaRmsNorm Norm => norm;

    /// <summary>Hidden states [batch, T, hidden] for token ids <paramref name="input"/> [batch, T] (int64).</summary>
    /// <exception cref="ArgumentException">The ids are not an int64 [batch, T] tensor with T ≥ 1.</exception>
    public override Tensor forward(Tensor input)
    {
        if (input.dtype != ScalarType.Int64 || input.ndim != 2 || input.shape[1] < 1)
        {
            throw new ArgumentException($"Token ids must be an int64 tensor [batch, T] with T ≥ 1; got {input.dtype} [{string.Join(", ", input.shape)}].", nameof(input));
        }

        using var scope = NewDisposeScope();
        Tensor h = embed_tokens.forward(input);
        (Tensor cos, Tensor sin) = rotary_emb.forward(h);
        foreach (LlamaDecoderLayer layer in layers)
        {
            h = layer.forward(h, cos, sin);
        }

        return norm.forward(h).MoveToOuterDisposeScope();
    }
}
