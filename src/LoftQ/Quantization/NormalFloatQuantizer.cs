using LoftQNet.Numerics;
using MathNet.Numerics.Distributions;

namespace LoftQNet.Quantization;

/// <summary>
/// Blockwise NormalFloat quantizer (NF2, NF3, NF4, NF8): per-block absmax scaling onto a code book of normal
/// quantiles. NF4's code book is bitsandbytes' table exactly.
/// </summary>
/// <remarks>
/// Each block of <see cref="BlockSize"/> row-major values is scaled by its absmax (fp32); each value gets the code
/// of the level nearest to <c>x · (1 / absmax)</c> (ties to the lower index), which is how bitsandbytes'
/// kernel computes it. An all-zero block has scale 0 and dequantizes to exact zeros. Codes are packed as a
/// big-endian bit stream (bitsandbytes' nibble order for 4 bits). Quantization is a fused, SIMD, multi-threaded
/// single pass; instances are immutable and safe to use from several threads at once.
/// </remarks>
public sealed class NormalFloatQuantizer : IQuantizer
{
    private static readonly float[] s_nf4 =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
        0.7229568362236023f, 1.0f,
    ];

    private readonly float[] _codeBook;
    private readonly BlockwiseCodec _codec;

    /// <summary>Creates an NF quantizer.</summary>
    /// <param name="bits">2, 3, 4 or 8.</param>
    /// <param name="blockSize">Values per absmax block (2..1,048,576; 64 is LoftQ's and bitsandbytes' default).</param>
    /// <exception cref="ArgumentOutOfRangeException">Unsupported bits or block size.</exception>
    public NormalFloatQuantizer(int bits, int blockSize = 64)
    {
        if (bits is not (2 or 3 or 4 or 8))
        {
            throw new ArgumentOutOfRangeException(nameof(bits), $"NormalFloat supports 2, 3, 4 or 8 bits, got {bits}.");
        }

        if (blockSize is < 2 or > 1 << 20)
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), $"Block size must be in 2..1048576, got {blockSize}.");
        }

        Bits = bits;
        BlockSize = blockSize;
        _codeBook = CreateCodeBook(bits);
        _codec = new BlockwiseCodec($"nf{bits}", bits, blockSize, _codeBook, asymmetric: false);
    }

    /// <inheritdoc/>
    public string Name => $"nf{Bits}";

    /// <inheritdoc/>
    public int Bits { get; }

    /// <inheritdoc/>
    public int BlockSize { get; }

    /// <summary>The 2^bits ascending levels in [-1, 1].</summary>
    public ReadOnlySpan<float> CodeBook => _codeBook;

    /// <summary>
    /// The NormalFloat code book for <paramref name="bits"/>: bitsandbytes' table for 4 bits, otherwise LoftQ's
    /// asymmetric construction (offset 0.9677083; positives Φ⁻¹(linspace(offset, 0.5, 2^(b−1)+1)[:-1]), negatives
    /// −Φ⁻¹(linspace(offset, 0.5, 2^(b−1))[:-1]), plus 0, sorted, divided by the max).
    /// </summary>
    public static float[] CreateCodeBook(int bits)
    {
        if (bits == 4)
        {
            return (float[])s_nf4.Clone();
        }

        if (bits is < 2 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), $"NormalFloat code books exist for 2..8 bits, got {bits}.");
        }

        return ComputeCodeBook(bits);
    }

    /// <summary>The formula's code book (no table), exposed so tests can compare it with bitsandbytes' NF4 table.</summary>
    internal static float[] ComputeCodeBook(int bits)
    {
        const double Offset = 0.9677083;
        int half = 1 << (bits - 1);
        var levels = new List<double>(1 << bits) { 0.0 };
        double[] pos = Linspace(Offset, 0.5, half + 1);
        for (int i = 0; i < half; i++)
        {
            levels.Add(Normal.InvCDF(0, 1, pos[i]));
        }

        double[] neg = Linspace(Offset, 0.5, half);
        for (int i = 0; i < half - 1; i++)
        {
            levels.Add(-Normal.InvCDF(0, 1, neg[i]));
        }

        levels.Sort();
        double max = levels[^1];
        return levels.Select(v => (float)(v / max)).ToArray();
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

    /// <summary>Index of the level nearest to <paramref name="x"/>; ties go to the lower index.</summary>
    internal static int Nearest(ReadOnlySpan<float> levels, float x) => QuantizationKernels.NearestScalar(levels, x);

    private static double[] Linspace(double start, double stop, int count)
    {
        var r = new double[count];
        for (int i = 0; i < count; i++)
        {
            r[i] = count == 1 ? start : start + ((stop - start) * i / (count - 1));
        }

        return r;
    }
}
