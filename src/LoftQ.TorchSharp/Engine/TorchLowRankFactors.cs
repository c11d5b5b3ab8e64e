using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Engine;

/// <summary>
/// A rank-r factorisation <c>B · A</c> as tensors on the residual's device: <see cref="B"/> = U_r·diag(√S_r)
/// (out×r), <see cref="A"/> = diag(√S_r)·V_rᵀ (r×in), fp32, and the r singular values (descending).
/// </summary>
public sealed class TorchLowRankFactors : IDisposable
{
    /// <summary>Wraps the factors (taken, not copied).</summary>
    /// <exception cref="ArgumentException">The shapes do not agree.</exception>
    public TorchLowRankFactors(Tensor a, Tensor b, Tensor singularValues)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        ArgumentNullException.ThrowIfNull(singularValues);
        if (a.dim() != 2 || b.dim() != 2 || b.shape[1] != a.shape[0] || singularValues.numel() != a.shape[0])
        {
            throw new ArgumentException(
                $"B [{string.Join(", ", b.shape)}], A [{string.Join(", ", a.shape)}] and {singularValues.numel()} singular values do not form a rank-r factorisation.");
        }

        A = a;
        B = b;
        SingularValues = singularValues;
    }

    /// <summary>The r×in factor (LoRA's lora_A).</summary>
    public Tensor A { get; }

    /// <summary>The out×r factor (LoRA's lora_B).</summary>
    public Tensor B { get; }

    /// <summary>The r leading singular values, descending (one-dimensional).</summary>
    public Tensor SingularValues { get; }

    /// <summary>The rank r.</summary>
    public int Rank => (int)A.shape[0];

    /// <summary>Disposes the three tensors.</summary>
    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
        SingularValues.Dispose();
    }
}
