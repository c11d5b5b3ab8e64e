using LoftQNet.Numerics;

namespace LoftQNet.Quantization;

/// <summary>
/// The common base of the built-in quantizers: a fixed code book of 2^<see cref="Bits"/> levels, one fp32 scale
/// (and, when asymmetric, one offset) per block of <see cref="BlockSize"/> row-major values, and a fused, SIMD,
/// multi-threaded engine behind <see cref="Quantize"/>, <see cref="Dequantize"/> and <see cref="QuantizeDequantize(ReadOnlySpan{float}, TensorShape, Span{float})"/>.
/// Instances are immutable and safe to use from several threads at once.
/// </summary>
public abstract class BlockwiseQuantizer : IQuantizer
{
    private readonly float[] _codeBook;
    private readonly BlockwiseCodec _codec;

    private protected BlockwiseQuantizer(string name, int bits, int blockSize, float[] codeBook, bool asymmetric, BlockScaleSearch? scaleSearch)
    {
        if (blockSize is < 2 or > 1 << 20)
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), $"Block size must be in 2..1048576, got {blockSize}.");
        }

        Name = name;
        Bits = bits;
        BlockSize = blockSize;
        _codeBook = codeBook;
        _codec = new BlockwiseCodec(name, bits, blockSize, codeBook, asymmetric, scaleSearch);
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <summary>The per-block scale search (<see cref="BlockScaleSearch"/>), or null for absmax (min/max) scales.</summary>
    public BlockScaleSearch? ScaleSearch => _codec.Search;

    /// <inheritdoc/>
    public int Bits { get; }

    /// <inheritdoc/>
    public int BlockSize { get; }

    /// <summary>The 2^<see cref="Bits"/> ascending levels the codes index.</summary>
    public ReadOnlySpan<float> CodeBook => _codeBook;

    /// <summary>The shared engine (tests reach its scalar reference through it).</summary>
    internal BlockwiseCodec Codec => _codec;

    /// <inheritdoc/>
    public QuantizedTensor Quantize(ReadOnlySpan<float> values, TensorShape shape) => _codec.Run(values, shape, default, fused: false);

    /// <inheritdoc/>
    public void Dequantize(QuantizedTensor quantized, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(quantized);
        quantized.Dequantize(destination);
    }

    /// <inheritdoc/>
    public QuantizedTensor QuantizeDequantize(ReadOnlySpan<float> values, TensorShape shape, Span<float> dequantized) =>
        _codec.Run(values, shape, dequantized, fused: true);

    /// <summary>
    /// <see cref="QuantizeDequantize(ReadOnlySpan{float}, TensorShape, Span{float})"/> whose scale search (when <see cref="ScaleSearch"/> is set) minimises the
    /// squared error weighted per column by <paramref name="columnWeights"/> (one non-negative weight per entry of the
    /// last dimension, e.g. the second moments of a layer's inputs); without a search the weights change nothing.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="columnWeights"/> does not have one entry per column.</exception>
    public QuantizedTensor QuantizeDequantize(ReadOnlySpan<float> values, TensorShape shape, Span<float> dequantized, float[] columnWeights)
    {
        ArgumentNullException.ThrowIfNull(columnWeights);
        return _codec.Run(values, shape, dequantized, fused: true, columnWeights);
    }

    /// <inheritdoc/>
    public override string ToString() => ScaleSearch is null ? $"{Name} (block {BlockSize})" : $"{Name} (block {BlockSize}, scales searched: {ScaleSearch})";
}
