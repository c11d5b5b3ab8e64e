using LoftQNet.Numerics;

namespace LoftQNet.Quantization;

/// <summary>
/// A blockwise quantizer: maps float values to packed integer codes plus per-block scales, and back.
/// Implement it to plug a custom quantizer into <c>LoftQNet.Optimization.AlternatingOptimizer</c>.
/// </summary>
public interface IQuantizer
{
    /// <summary>A short name used in reports and file metadata, e.g. <c>nf4</c> or <c>uniform2-asym</c>.</summary>
    string Name { get; }

    /// <summary>Bits per code (1..8).</summary>
    int Bits { get; }

    /// <summary>Number of consecutive row-major values sharing one scale.</summary>
    int BlockSize { get; }

    /// <summary>Quantizes <paramref name="values"/> (row-major, <paramref name="shape"/>.ElementCount long).</summary>
    /// <exception cref="ArgumentException">A value is NaN or infinite (the message names its flat index), or the length does not match the shape.</exception>
    QuantizedTensor Quantize(ReadOnlySpan<float> values, TensorShape shape);

    /// <summary>Writes the dequantized values of <paramref name="quantized"/> into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentException">The destination length differs from the tensor's element count.</exception>
    void Dequantize(QuantizedTensor quantized, Span<float> destination);

    /// <summary>
    /// Quantizes <paramref name="values"/> and writes the dequantized result into <paramref name="dequantized"/>
    /// in one call. The default runs <see cref="Quantize"/> then <see cref="Dequantize"/>; built-in quantizers
    /// fuse both into a single pass over the data.
    /// </summary>
    /// <exception cref="ArgumentException">As for <see cref="Quantize"/>, or the destination length differs from the element count.</exception>
    QuantizedTensor QuantizeDequantize(ReadOnlySpan<float> values, TensorShape shape, Span<float> dequantized)
    {
        QuantizedTensor q = Quantize(values, shape);
        Dequantize(q, dequantized);
        return q;
    }
}
