using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Optimization;

/// <summary>
/// The outcome of <see cref="AlternatingOptimizer.Run"/>: the quantized backbone Q and the low-rank factors B (out×r)
/// and A (r×in) of the best pass, with W ≈ deq(Q) + B·A, and the relative error after every pass.
/// </summary>
public sealed class LoftQResult : IDisposable
{
    internal LoftQResult(
        QuantizedTensor quantized, Matrix a, Matrix b, IReadOnlyList<double> errorTrace, int bestPass,
        double relativeError, double qloraError, TimeSpan elapsed)
    {
        Quantized = quantized;
        A = a;
        B = b;
        ErrorTrace = errorTrace;
        BestPass = bestPass;
        RelativeError = relativeError;
        QLoRAError = qloraError;
        Elapsed = elapsed;
    }

    /// <summary>The quantized backbone Q of the best pass.</summary>
    public QuantizedTensor Quantized { get; }

    /// <summary>The r×in factor (LoRA's lora_A) of the best pass.</summary>
    public Matrix A { get; }

    /// <summary>The out×r factor (LoRA's lora_B) of the best pass.</summary>
    public Matrix B { get; }

    /// <summary>‖W − Q_t − B_t·A_t‖_F / ‖W‖_F after every pass t (one entry, the QLoRA error, for zero iterations).</summary>
    public IReadOnlyList<double> ErrorTrace { get; }

    /// <summary>The 1-based pass whose result is returned (the lowest error; the earliest on ties); 0 for the QLoRA baseline.</summary>
    public int BestPass { get; }

    /// <summary>The relative error of the returned pass.</summary>
    public double RelativeError { get; }

    /// <summary>‖W − deq(q(W))‖_F / ‖W‖_F: the error of plain quantization (QLoRA with B = 0).</summary>
    public double QLoRAError { get; }

    /// <summary>Wall-clock time of the run.</summary>
    public TimeSpan Elapsed { get; }

    /// <summary>
    /// ‖(W − Q − B·A)·R‖_F / ‖W·R‖_F of the kept pass under <see cref="AlternatingOptimizer.Weighting"/> (the output error
    /// relative to the output); equal to <see cref="RelativeError"/> without a weighting or with an isotropic one.
    /// </summary>
    public double WeightedError { get; init; } = double.NaN;

    /// <summary><see cref="WeightedError"/> of the QLoRA baseline q(W) (B = 0).</summary>
    public double QLoRAWeightedError { get; init; } = double.NaN;

    /// <summary>Returns the memory of <see cref="A"/> and <see cref="B"/> to the pool.</summary>
    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}
