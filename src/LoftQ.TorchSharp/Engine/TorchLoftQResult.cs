using LoftQNet.Numerics;
using LoftQNet.Quantization;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Engine;

/// <summary>
/// The outcome of <see cref="TorchLoftQ.Run"/>, on the weight's device: the best pass's quantized backbone (packed
/// codes, scales, offsets), its factors B (out×r) and A (r×in), and the relative error after every pass, with the
/// same meaning as the core's <c>LoftQResult</c>. The result owns its tensors: dispose it (or the dispose scope that
/// was active around <see cref="TorchLoftQ.Run"/>, which they are attached to).
/// </summary>
public sealed class TorchLoftQResult : IDisposable
{
    internal TorchLoftQResult(
        TorchBlockwiseQuantizer quantizer, TensorShape shape, Tensor packedCodes, Tensor scales, Tensor? offsets, Tensor a, Tensor b,
        IReadOnlyList<double> errorTrace, int bestPass, double relativeError, double qloraError, TimeSpan elapsed)
    {
        Quantizer = quantizer;
        Shape = shape;
        PackedCodes = packedCodes;
        Scales = scales;
        Offsets = offsets;
        A = a;
        B = b;
        ErrorTrace = errorTrace;
        BestPass = bestPass;
        RelativeError = relativeError;
        QLoRAError = qloraError;
        Elapsed = elapsed;
    }

    /// <summary>The quantizer that produced the backbone.</summary>
    public TorchBlockwiseQuantizer Quantizer { get; }

    /// <summary>The weight's shape (out, in).</summary>
    public TensorShape Shape { get; }

    /// <summary>The packed codes of the best pass (uint8, ⌈out·in·bits/8⌉ bytes, the core's bit order).</summary>
    public Tensor PackedCodes { get; }

    /// <summary>One fp32 scale per block.</summary>
    public Tensor Scales { get; }

    /// <summary>One fp32 offset per block for an asymmetric quantizer; otherwise null.</summary>
    public Tensor? Offsets { get; }

    /// <summary>The r×in factor (LoRA's lora_A), fp32.</summary>
    public Tensor A { get; }

    /// <summary>The out×r factor (LoRA's lora_B), fp32.</summary>
    public Tensor B { get; }

    /// <summary>‖W − Q_t − B_t·A_t‖_F / ‖W‖_F after every pass t (one entry, the QLoRA error, for zero iterations).</summary>
    public IReadOnlyList<double> ErrorTrace { get; }

    /// <summary>The 1-based pass whose result is returned (the lowest error; the earliest on ties); 0 for the QLoRA baseline.</summary>
    public int BestPass { get; }

    /// <summary>The relative error of the returned pass.</summary>
    public double RelativeError { get; }

    /// <summary>‖W − deq(q(W))‖_F / ‖W‖_F: the error of plain quantization.</summary>
    public double QLoRAError { get; }

    /// <summary>Wall-clock time of the run (the device synchronised at the end).</summary>
    public TimeSpan Elapsed { get; }

    /// <summary>Dequantizes the backbone on the device (fp32, out×in).</summary>
    public Tensor Dequantize()
    {
        using var scope = NewDisposeScope();
        Tensor codes = TorchBlockwiseQuantizer.Unpack(PackedCodes, Quantizer.Bits, Shape.ElementCount);
        Tensor result = Quantizer.Dequantize(codes, Scales, Offsets).reshape(Shape.Rows, Shape.Columns);
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>Copies the backbone to a CPU <see cref="QuantizedTensor"/> (the core's type, for its writers).</summary>
    public QuantizedTensor ToQuantizedTensor() => Quantizer.ToQuantizedTensorFromPacked(PackedCodes, Shape, Scales, Offsets);

    /// <summary>Disposes the result's tensors.</summary>
    public void Dispose()
    {
        PackedCodes.Dispose();
        Scales.Dispose();
        Offsets?.Dispose();
        A.Dispose();
        B.Dispose();
    }
}
