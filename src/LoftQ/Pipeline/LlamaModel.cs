using System.Numerics.Tensors;
using LoftQNet.Numerics;

namespace LoftQNet.Pipeline;

/// <summary>The shape of a LLaMA-family decoder (Hugging Face <c>LlamaForCausalLM</c> semantics).</summary>
/// <param name="HiddenSize">Model width.</param>
/// <param name="IntermediateSize">SwiGLU MLP width.</param>
/// <param name="LayerCount">Decoder layers.</param>
/// <param name="HeadCount">Attention heads.</param>
/// <param name="KeyValueHeadCount">Key/value heads (grouped-query attention when fewer than <paramref name="HeadCount"/>).</param>
/// <param name="HeadDim">Width of one head.</param>
/// <param name="VocabSize">Vocabulary size.</param>
/// <param name="RmsNormEps">RMSNorm epsilon.</param>
/// <param name="RopeTheta">Rotary embedding base.</param>
internal sealed record LlamaConfig(
    int HiddenSize, int IntermediateSize, int LayerCount, int HeadCount, int KeyValueHeadCount, int HeadDim,
    int VocabSize, double RmsNormEps, double RopeTheta);

/// <summary>The four distinct inputs of a LLaMA decoder layer's projections.</summary>
internal enum LlamaInput
{
    /// <summary>The input-normed hidden state: the input of q_proj, k_proj and v_proj.</summary>
    Attention,

    /// <summary>The attention heads' output: the input of o_proj.</summary>
    AttentionOutput,

    /// <summary>The post-attention-normed hidden state: the input of gate_proj and up_proj.</summary>
    Mlp,

    /// <summary>silu(gate) ⊙ up: the input of down_proj.</summary>
    MlpHidden,
}

/// <summary>
/// A float32 forward pass of a LLaMA-family causal language model (RMSNorm, rotary attention, SwiGLU MLP),
/// for evaluating quantized backbones and LoRA adapters; no KV cache, no training.
/// </summary>
internal sealed class LlamaModel
{
    private readonly LlamaConfig _c;
    private readonly float[] _embed;
    private readonly float[] _finalNorm;
    private readonly float[] _lmHead;
    private readonly Layer[] _layers;

    /// <summary>Builds the model, reading each weight by its Hugging Face name through <paramref name="weight"/>.</summary>
    /// <param name="config">The shape.</param>
    /// <param name="weight">Returns the row-major float32 values of a named tensor (e.g. <c>model.layers.0.self_attn.q_proj.weight</c>).</param>
    /// <exception cref="ArgumentException">A tensor has the wrong number of elements (the message names it).</exception>
    public LlamaModel(LlamaConfig config, Func<string, float[]> weight)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weight);
        _c = config;
        int h = config.HiddenSize, qd = config.HeadCount * config.HeadDim, kvd = config.KeyValueHeadCount * config.HeadDim;
        float[] Load(string name, long count)
        {
            float[] values = weight(name);
            if (values.LongLength != count)
            {
                throw new ArgumentException($"Tensor '{name}' has {values.LongLength} values; the config needs {count}.");
            }

            return values;
        }

        _embed = Load("model.embed_tokens.weight", (long)config.VocabSize * h);
        _finalNorm = Load("model.norm.weight", h);
        _lmHead = Load("lm_head.weight", (long)config.VocabSize * h);
        _layers = new Layer[config.LayerCount];
        for (int l = 0; l < config.LayerCount; l++)
        {
            string p = $"model.layers.{l}.";
            _layers[l] = new Layer(
                Load(p + "input_layernorm.weight", h),
                Load(p + "self_attn.q_proj.weight", (long)qd * h),
                Load(p + "self_attn.k_proj.weight", (long)kvd * h),
                Load(p + "self_attn.v_proj.weight", (long)kvd * h),
                Load(p + "self_attn.o_proj.weight", (long)h * qd),
                Load(p + "post_attention_layernorm.weight", h),
                Load(p + "mlp.gate_proj.weight", (long)config.IntermediateSize * h),
                Load(p + "mlp.up_proj.weight", (long)config.IntermediateSize * h),
                Load(p + "mlp.down_proj.weight", (long)h * config.IntermediateSize));
        }
    }

    /// <summary>The model's shape.</summary>
    public LlamaConfig Config => _c;

    /// <summary>Returns the logits [tokens.Length, VocabSize] for a causal pass over <paramref name="tokens"/>.</summary>
    /// <param name="tokens">Token ids.</param>
    /// <param name="observe">Called with (layer, which input, the input [tokens, features]) before each group of projections reads it.</param>
    /// <param name="perturb">
    /// Called with (layer, projection index in q, k, v, o, gate, up, down order, its output [tokens, out]) right after
    /// each projection, and may change the output (sensitivity probes).
    /// </param>
    /// <exception cref="ArgumentException">The sequence is empty or a token id is outside the vocabulary.</exception>
    public Matrix Forward(ReadOnlySpan<int> tokens, Action<int, LlamaInput, Matrix>? observe = null, Action<int, int, Matrix>? perturb = null)
    {
        int t = tokens.Length, h = _c.HiddenSize, d = _c.HeadDim;
        int qd = _c.HeadCount * d, kvd = _c.KeyValueHeadCount * d, ff = _c.IntermediateSize;
        if (t == 0)
        {
            throw new ArgumentException("The token sequence is empty.", nameof(tokens));
        }

        using Matrix x = Matrix.Uninitialized(t, h);
        for (int i = 0; i < t; i++)
        {
            if ((uint)tokens[i] >= (uint)_c.VocabSize)
            {
                throw new ArgumentException($"Token {tokens[i]} at position {i} is outside the vocabulary [0, {_c.VocabSize}).", nameof(tokens));
            }

            _embed.AsSpan(tokens[i] * h, h).CopyTo(x.Row(i));
        }

        (float[] cos, float[] sin) = RotaryTables(t, d, _c.RopeTheta);
        using Matrix normed = Matrix.Uninitialized(t, h);
        using Matrix q = Matrix.Uninitialized(t, qd);
        using Matrix k = Matrix.Uninitialized(t, kvd);
        using Matrix v = Matrix.Uninitialized(t, kvd);
        using Matrix attn = Matrix.Uninitialized(t, qd);
        using Matrix scores = Matrix.Uninitialized(t, t);
        using Matrix gate = Matrix.Uninitialized(t, ff);
        using Matrix up = Matrix.Uninitialized(t, ff);
        using Matrix sigmoid = Matrix.Uninitialized(t, ff);
        float scale = 1f / MathF.Sqrt(d);
        int group = _c.HeadCount / _c.KeyValueHeadCount;
        for (int l = 0; l < _layers.Length; l++)
        {
            Layer layer = _layers[l];
            RmsNorm(x, layer.InputNorm, normed);
            observe?.Invoke(l, LlamaInput.Attention, normed);
            Project(normed, layer.Q, q);
            Project(normed, layer.K, k);
            Project(normed, layer.V, v);
            perturb?.Invoke(l, 0, q);
            perturb?.Invoke(l, 1, k);
            perturb?.Invoke(l, 2, v);
            ApplyRotary(q, _c.HeadCount, d, cos, sin);
            ApplyRotary(k, _c.KeyValueHeadCount, d, cos, sin);
            for (int head = 0; head < _c.HeadCount; head++)
            {
                int kvHead = head / group;
                Gemm.Multiply(Transpose.No, Transpose.Yes, t, t, d, scale, q.Span[(head * d)..], qd, k.Span[(kvHead * d)..], kvd, 0f, scores.Span, t);
                CausalSoftmax(scores);
                Gemm.Multiply(Transpose.No, Transpose.No, t, d, t, 1f, scores.Span, t, v.Span[(kvHead * d)..], kvd, 0f, attn.Span[(head * d)..], qd);
            }

            // x += o_proj(attn)
            observe?.Invoke(l, LlamaInput.AttentionOutput, attn);
            AddBlock(x, attn, layer.O, l, perturb, 3);
            RmsNorm(x, layer.PostNorm, normed);
            observe?.Invoke(l, LlamaInput.Mlp, normed);
            Project(normed, layer.Gate, gate);
            Project(normed, layer.Up, up);
            perturb?.Invoke(l, 4, gate);
            perturb?.Invoke(l, 5, up);

            // SwiGLU: up ← silu(gate) ⊙ up, with silu(a) = a·sigmoid(a).
            TensorPrimitives.Sigmoid(gate.Span, sigmoid.Span);
            TensorPrimitives.Multiply(gate.Span, sigmoid.Span, gate.Span);
            TensorPrimitives.Multiply(gate.Span, up.Span, up.Span);
            observe?.Invoke(l, LlamaInput.MlpHidden, up);
            AddBlock(x, up, layer.Down, l, perturb, 6);
        }

        RmsNorm(x, _finalNorm, normed);
        var logits = Matrix.Uninitialized(t, _c.VocabSize);
        Project(normed, _lmHead, logits);
        return logits;
    }

    /// <summary>x += input·Wᵀ, through <paramref name="perturb"/> (as <paramref name="projection"/>) when given.</summary>
    private static void AddBlock(Matrix x, Matrix input, float[] w, int layer, Action<int, int, Matrix>? perturb, int projection)
    {
        int t = x.Rows, h = x.Columns, k = input.Columns;
        if (perturb is null)
        {
            Gemm.Multiply(Transpose.No, Transpose.Yes, t, h, k, 1f, input.Span, k, w, k, 1f, x.Span, h);
            return;
        }

        using Matrix output = Matrix.Uninitialized(t, h);
        Gemm.Multiply(Transpose.No, Transpose.Yes, t, h, k, 1f, input.Span, k, w, k, 0f, output.Span, h);
        perturb(layer, projection, output);
        TensorPrimitives.Add(x.Span, output.Span, x.Span);
    }

    /// <summary>y = x·Wᵀ for a row-major W [out, in].</summary>
    private static void Project(Matrix x, float[] w, Matrix y) =>
        Gemm.Multiply(Transpose.No, Transpose.Yes, x.Rows, y.Columns, x.Columns, 1f, x.Span, x.Columns, w, x.Columns, 0f, y.Span, y.Columns);

    private void RmsNorm(Matrix x, float[] weight, Matrix y)
    {
        for (int i = 0; i < x.Rows; i++)
        {
            ReadOnlySpan<float> row = x.Row(i);
            float inv = (float)(1.0 / Math.Sqrt((MatrixKernels.SumOfSquares(row) / row.Length) + _c.RmsNormEps));
            Span<float> outRow = y.Row(i);
            TensorPrimitives.Multiply(row, inv, outRow);
            TensorPrimitives.Multiply(outRow, weight, outRow);
        }
    }

    private static (float[] Cos, float[] Sin) RotaryTables(int positions, int headDim, double theta)
    {
        int half = headDim / 2;
        var cos = new float[positions * half];
        var sin = new float[positions * half];
        for (int i = 0; i < half; i++)
        {
            // Hugging Face computes inv_freq and the angles in float32; do the same so the tables match.
            float invFreq = (float)(1.0 / Math.Pow(theta, (2.0 * i) / headDim));
            for (int p = 0; p < positions; p++)
            {
                float angle = p * invFreq;
                cos[(p * half) + i] = MathF.Cos(angle);
                sin[(p * half) + i] = MathF.Sin(angle);
            }
        }

        return (cos, sin);
    }

    /// <summary>Rotates each head's pairs (j, j + d/2) by the position's angle (the rotate-half convention).</summary>
    private static void ApplyRotary(Matrix m, int heads, int d, float[] cos, float[] sin)
    {
        int half = d / 2;
        for (int p = 0; p < m.Rows; p++)
        {
            Span<float> row = m.Row(p);
            ReadOnlySpan<float> c = cos.AsSpan(p * half, half), s = sin.AsSpan(p * half, half);
            for (int head = 0; head < heads; head++)
            {
                Span<float> x = row.Slice(head * d, d);
                for (int j = 0; j < half; j++)
                {
                    float a = x[j], b = x[j + half];
                    x[j] = (a * c[j]) - (b * s[j]);
                    x[j + half] = (b * c[j]) + (a * s[j]);
                }
            }
        }
    }

    private static void CausalSoftmax(Matrix scores)
    {
        for (int i = 0; i < scores.Rows; i++)
        {
            Span<float> row = scores.Row(i);
            Span<float> visible = row[..(i + 1)];
            float max = TensorPrimitives.Max(visible);
            TensorPrimitives.Subtract(visible, max, visible);
            TensorPrimitives.Exp(visible, visible);
            float sum = TensorPrimitives.Sum(visible);
            TensorPrimitives.Multiply(visible, 1f / sum, visible);
            row[(i + 1)..].Clear();
        }
    }

    private sealed record Layer(
        float[] InputNorm, float[] Q, float[] K, float[] V, float[] O,
        float[] PostNorm, float[] Gate, float[] Up, float[] Down);
}
