using LoftQNet.Numerics;

namespace LoftQNet.Modules;

/// <summary>A dense linear layer y = x·Wᵀ + b with W out×in (PyTorch's layout) and an optional bias.</summary>
public sealed class Linear : Module
{
    /// <summary>Wraps <paramref name="weight"/> (out×in) and an optional <paramref name="bias"/> (1×out); both are taken, not copied.</summary>
    /// <exception cref="ArgumentException">The bias shape does not match.</exception>
    public Linear(Matrix weight, Matrix? bias = null)
    {
        ArgumentNullException.ThrowIfNull(weight);
        Lora.CheckBias(bias, weight.Rows);
        Weight = weight;
        Bias = bias;
        RegisterParameter("weight", weight);
        if (bias is not null)
        {
            RegisterParameter("bias", bias);
        }
    }

    /// <summary>The out×in weight.</summary>
    public Matrix Weight { get; }

    /// <summary>The 1×out bias, or <see langword="null"/>.</summary>
    public Matrix? Bias { get; }

    /// <summary>Input features.</summary>
    public int InFeatures => Weight.Columns;

    /// <summary>Output features.</summary>
    public int OutFeatures => Weight.Rows;

    /// <summary>Computes x·Wᵀ + b for x of shape batch×in.</summary>
    /// <exception cref="ArgumentException">x does not have <see cref="InFeatures"/> columns.</exception>
    public Matrix Forward(Matrix x)
    {
        Lora.CheckInput(x, InFeatures, nameof(x));
        var y = Matrix.Uninitialized(x.Rows, OutFeatures);
        Gemm.Multiply(Transpose.No, Transpose.Yes, x.Rows, OutFeatures, InFeatures, 1f, x.Span, InFeatures, Weight.Span, InFeatures, 0f, y.Span, OutFeatures);
        Lora.AddBias(y, Bias);
        return y;
    }
}
