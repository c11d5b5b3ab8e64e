using LoftQNet.Numerics;

namespace LoftQNet.Quantization;

/// <summary>
/// Blockwise uniform (integer-grid) quantizer with 2..8 bits, symmetric or asymmetric.
/// </summary>
/// <remarks>
/// <para>Symmetric (<c>uniform{b}</c>): levels <c>linspace(−1, 1, 2^b)</c> times the block absmax, as in LoftQ's
/// blockwise absmax variant. Asymmetric (<c>uniform{b}-asym</c>): levels <c>linspace(0, 1, 2^b)</c>, scale
/// <c>max − min</c> and offset <c>min</c> per block (stored in <see cref="QuantizedTensor.Offsets"/>), so a
/// constant block reproduces exactly.</para>
/// <para>Codes are the nearest level of <c>(x − offset) · (1 / scale)</c>, ties to the lower index; a zero
/// scale maps the whole block to code of the level nearest 0. Same fused, SIMD, multi-threaded engine as
/// <see cref="NormalFloatQuantizer"/>; instances are immutable and thread-safe.</para>
/// </remarks>
public sealed class UniformQuantizer : IQuantizer
{
    private readonly float[] _levels;
    private readonly BlockwiseCodec _codec;

    /// <summary>Creates a uniform quantizer.</summary>
    /// <param name="bits">2..8.</param>
    /// <param name="blockSize">Values per block (2..1,048,576).</param>
    /// <param name="asymmetric">Use per-block min/max (scale and offset) instead of the symmetric absmax.</param>
    /// <exception cref="ArgumentOutOfRangeException">Unsupported bits or block size.</exception>
    public UniformQuantizer(int bits, int blockSize = 64, bool asymmetric = false)
    {
        if (bits is < 2 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), $"Uniform quantization supports 2..8 bits, got {bits}.");
        }

        if (blockSize is < 2 or > 1 << 20)
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), $"Block size must be in 2..1048576, got {blockSize}.");
        }

        Bits = bits;
        BlockSize = blockSize;
        IsAsymmetric = asymmetric;
        _levels = CreateLevels(bits, asymmetric);
        Name = asymmetric ? $"uniform{bits}-asym" : $"uniform{bits}";
        _codec = new BlockwiseCodec(Name, bits, blockSize, _levels, asymmetric);
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public int Bits { get; }

    /// <inheritdoc/>
    public int BlockSize { get; }

    /// <summary>Whether blocks use min/max (scale and offset) rather than the symmetric absmax.</summary>
    public bool IsAsymmetric { get; }

    /// <summary>The 2^bits ascending levels: linspace(−1, 1) when symmetric, linspace(0, 1) when asymmetric.</summary>
    public ReadOnlySpan<float> CodeBook => _levels;

    /// <summary>The normalized levels for <paramref name="bits"/>: <c>linspace(−1, 1, 2^b)</c> or <c>linspace(0, 1, 2^b)</c>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="bits"/> is outside 1..8.</exception>
    public static float[] CreateLevels(int bits, bool asymmetric)
    {
        if (bits is < 1 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), $"Uniform levels exist for 1..8 bits, got {bits}.");
        }

        int count = 1 << bits;
        var levels = new float[count];
        double start = asymmetric ? 0.0 : -1.0;
        double span = asymmetric ? 1.0 : 2.0;
        for (int i = 0; i < count; i++)
        {
            levels[i] = (float)(start + (span * i / (count - 1)));
        }

        return levels;
    }

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

    /// <inheritdoc/>
    public override string ToString() => $"{Name} (block {BlockSize})";

    /// <summary>The shared engine (tests reach its scalar reference through it).</summary>
    internal BlockwiseCodec Codec => _codec;
}
