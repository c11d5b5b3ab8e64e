using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Modules;

/// <summary>
/// Stateless LoRA kernels on a frozen quantized base weight Q [out, in] and trainable factors A (r×in), B (out×r):
/// y = x·deq(Q)ᵀ + scale·(x·Aᵀ)·Bᵀ. The base weight is dequantized a block of rows at a time into a pooled
/// buffer and never materialised whole (except by <see cref="Merge"/>, whose result is the dense weight).
/// </summary>
public static class Lora
{
    /// <summary>Computes x·deq(q)ᵀ + scale·(x·aᵀ)·bᵀ for x of shape batch×in.</summary>
    /// <exception cref="ArgumentException">The shapes do not agree.</exception>
    public static Matrix Forward(Matrix x, QuantizedTensor q, Matrix a, Matrix b, float scale)
    {
        (int outF, int inF, int r) = CheckShapes(q, a, b);
        CheckInput(x, inF, nameof(x));
        int batch = x.Rows;
        var y = Matrix.Uninitialized(batch, outF);
        Span<float> ySpan = y.Span;
        float[] yBuffer = y.Buffer;
        float[] xBuffer = x.Buffer;
        QuantizedRows.ForEachRowBlock(q, (r0, count, block) =>
            Gemm.Multiply(Transpose.No, Transpose.Yes, batch, count, inF, 1f, xBuffer.AsSpan(0, batch * inF), inF, block, inF, 0f, yBuffer.AsSpan(r0, (batch * outF) - r0), outF));

        using var h = Matrix.Uninitialized(batch, r);
        Gemm.Multiply(Transpose.No, Transpose.Yes, batch, r, inF, 1f, x.Span, inF, a.Span, inF, 0f, h.Span, r);
        Gemm.Multiply(Transpose.No, Transpose.Yes, batch, outF, r, scale, h.Span, r, b.Span, r, 1f, ySpan, outF);
        return y;
    }

    /// <summary>
    /// Back-propagates <paramref name="gradOutput"/> (∂L/∂y, batch×out) through <see cref="Forward"/>:
    /// ∂L/∂A = scale·(G·B)ᵀ·x, ∂L/∂B = scale·Gᵀ·(x·Aᵀ), ∂L/∂x = G·deq(Q) + scale·(G·B)·A.
    /// </summary>
    /// <exception cref="ArgumentException">The shapes do not agree.</exception>
    public static LoraGradients Backward(Matrix x, Matrix gradOutput, QuantizedTensor q, Matrix a, Matrix b, float scale)
    {
        (int outF, int inF, int r) = CheckShapes(q, a, b);
        CheckInput(x, inF, nameof(x));
        ArgumentNullException.ThrowIfNull(gradOutput);
        int batch = x.Rows;
        if (gradOutput.Rows != batch || gradOutput.Columns != outF)
        {
            throw new ArgumentException($"gradOutput must be {batch}x{outF} (batch x out), got {gradOutput.Rows}x{gradOutput.Columns}.", nameof(gradOutput));
        }

        using var gb = Matrix.Uninitialized(batch, r); // G·B
        using var h = Matrix.Uninitialized(batch, r);  // x·Aᵀ
        Gemm.Multiply(Transpose.No, Transpose.No, batch, r, outF, 1f, gradOutput.Span, outF, b.Span, r, 0f, gb.Span, r);
        Gemm.Multiply(Transpose.No, Transpose.Yes, batch, r, inF, 1f, x.Span, inF, a.Span, inF, 0f, h.Span, r);

        var da = Matrix.Uninitialized(r, inF);
        var db = Matrix.Uninitialized(outF, r);
        var dx = Matrix.Uninitialized(batch, inF);
        Gemm.Multiply(Transpose.Yes, Transpose.No, r, inF, batch, scale, gb.Span, r, x.Span, inF, 0f, da.Span, inF);
        Gemm.Multiply(Transpose.Yes, Transpose.No, outF, r, batch, scale, gradOutput.Span, outF, h.Span, r, 0f, db.Span, r);
        Gemm.Multiply(Transpose.No, Transpose.No, batch, inF, r, scale, gb.Span, r, a.Span, inF, 0f, dx.Span, inF);

        float[] gBuffer = gradOutput.Buffer;
        float[] dxBuffer = dx.Buffer;
        QuantizedRows.ForEachRowBlock(q, (r0, count, block) =>
            Gemm.Multiply(Transpose.No, Transpose.No, batch, inF, count, 1f, gBuffer.AsSpan(r0, (batch * outF) - r0), outF, block, inF, 1f, dxBuffer.AsSpan(0, batch * inF), inF));
        return new LoraGradients(da, db, dx);
    }

    /// <summary>The dense merged weight deq(q) + scale·b·a (out×in).</summary>
    /// <exception cref="ArgumentException">The shapes do not agree.</exception>
    public static Matrix Merge(QuantizedTensor q, Matrix a, Matrix b, float scale)
    {
        (int outF, int inF, int r) = CheckShapes(q, a, b);
        var merged = Matrix.Uninitialized(outF, inF);
        QuantizedRows.Dequantize(q, 0, merged.Span);
        Gemm.Multiply(Transpose.No, Transpose.No, outF, inF, r, scale, b.Span, r, a.Span, inF, 1f, merged.Span, inF);
        return merged;
    }

    internal static (int Out, int In, int Rank) CheckShapes(QuantizedTensor q, Matrix a, Matrix b)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (q.Shape.Rank != 2)
        {
            throw new ArgumentException($"The quantized base weight must be two-dimensional [out, in], got {q.Shape}.", nameof(q));
        }

        int outF = q.Shape.Rows, inF = q.Shape.Columns;
        if (a.Columns != inF || a.Rows < 1)
        {
            throw new ArgumentException($"A must be r x {inF} (r ≥ 1) for a base weight {q.Shape}, got {a.Rows}x{a.Columns}.", nameof(a));
        }

        if (b.Rows != outF || b.Columns != a.Rows)
        {
            throw new ArgumentException($"B must be {outF}x{a.Rows} (out x r) for a base weight {q.Shape} and A {a.Rows}x{a.Columns}, got {b.Rows}x{b.Columns}.", nameof(b));
        }

        return (outF, inF, a.Rows);
    }

    internal static void CheckInput(Matrix x, int inFeatures, string name)
    {
        ArgumentNullException.ThrowIfNull(x, name);
        if (x.Columns != inFeatures)
        {
            throw new ArgumentException($"Input must have {inFeatures} columns (batch x in), got {x.Rows}x{x.Columns}.", name);
        }
    }

    internal static void CheckBias(Matrix? bias, int outFeatures)
    {
        if (bias is not null && (bias.Rows != 1 || bias.Columns != outFeatures))
        {
            throw new ArgumentException($"Bias must be 1x{outFeatures}, got {bias.Rows}x{bias.Columns}.", nameof(bias));
        }
    }

    internal static void AddBias(Matrix y, Matrix? bias)
    {
        if (bias is null)
        {
            return;
        }

        ReadOnlySpan<float> b = bias.Span;
        for (int i = 0; i < y.Rows; i++)
        {
            System.Numerics.Tensors.TensorPrimitives.Add(y.Row(i), b, y.Row(i));
        }
    }
}
