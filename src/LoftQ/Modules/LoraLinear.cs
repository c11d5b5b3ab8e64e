using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Modules;

/// <summary>
/// A LoRA linear layer on a frozen quantized base: y = x·deq(Q)ᵀ + (alpha/r)·(x·Aᵀ)·Bᵀ + bias, with trainable
/// A (r×in, registered as <c>lora_A</c>) and B (out×r, <c>lora_B</c>). The stateless work is done by <see cref="Lora"/>.
/// </summary>
public sealed class LoraLinear : Module
{
    /// <summary>Creates the layer; <paramref name="a"/>, <paramref name="b"/> and <paramref name="bias"/> are taken, not copied.</summary>
    /// <param name="baseWeight">The frozen quantized weight of shape [out, in].</param>
    /// <param name="a">LoRA A, r×in.</param>
    /// <param name="b">LoRA B, out×r.</param>
    /// <param name="alpha">LoRA alpha (positive, finite); the scaling is alpha / r.</param>
    /// <param name="bias">Optional frozen bias, 1×out.</param>
    /// <exception cref="ArgumentException">The shapes do not agree.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="alpha"/> is not positive and finite.</exception>
    public LoraLinear(QuantizedTensor baseWeight, Matrix a, Matrix b, float alpha, Matrix? bias = null)
    {
        (int outF, _, int r) = Lora.CheckShapes(baseWeight, a, b);
        if (!(alpha > 0f) || !float.IsFinite(alpha))
        {
            throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "LoRA alpha must be positive and finite.");
        }

        Lora.CheckBias(bias, outF);
        Base = baseWeight;
        A = a;
        B = b;
        Alpha = alpha;
        Bias = bias;
        Rank = r;
        RegisterParameter("lora_A", a);
        RegisterParameter("lora_B", b);
        if (bias is not null)
        {
            RegisterParameter("bias", bias);
        }
    }

    /// <summary>The frozen quantized base weight [out, in].</summary>
    public QuantizedTensor Base { get; }

    /// <summary>LoRA A (r×in).</summary>
    public Matrix A { get; }

    /// <summary>LoRA B (out×r).</summary>
    public Matrix B { get; }

    /// <summary>LoRA alpha.</summary>
    public float Alpha { get; }

    /// <summary>The frozen 1×out bias, or <see langword="null"/>.</summary>
    public Matrix? Bias { get; }

    /// <summary>The rank r.</summary>
    public int Rank { get; }

    /// <summary>alpha / r, PEFT's LoRA scaling.</summary>
    public float Scaling => Alpha / Rank;

    /// <summary>Input features.</summary>
    public int InFeatures => Base.Shape.Columns;

    /// <summary>Output features.</summary>
    public int OutFeatures => Base.Shape.Rows;

    /// <summary>Computes the layer's output for x of shape batch×in.</summary>
    /// <exception cref="ArgumentException">x does not have <see cref="InFeatures"/> columns.</exception>
    public Matrix Forward(Matrix x)
    {
        Matrix y = Lora.Forward(x, Base, A, B, Scaling);
        Lora.AddBias(y, Bias);
        return y;
    }

    /// <summary>Gradients of the loss with respect to A, B and x, given ∂L/∂y (batch×out).</summary>
    /// <exception cref="ArgumentException">The shapes do not agree.</exception>
    public LoraGradients Backward(Matrix x, Matrix gradOutput) => Lora.Backward(x, gradOutput, Base, A, B, Scaling);

    /// <summary>The dense weight deq(Q) + (alpha/r)·B·A (out×in), e.g. to export a merged model.</summary>
    public Matrix Merge() => Lora.Merge(Base, A, B, Scaling);
}
