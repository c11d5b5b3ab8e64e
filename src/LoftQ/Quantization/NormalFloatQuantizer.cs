using LoftQNet.Numerics;
using MathNet.Numerics.Distributions;

namespace LoftQNet.Quantization;

/// <summary>
/// Blockwise NormalFloat quantizer (NF2, NF3, NF4, NF8): per-block absmax scaling onto a code book of normal
/// quantiles. NF4's code book is bitsandbytes' table exactly.
/// </summary>
/// <remarks>
/// Each block of <see cref="BlockwiseQuantizer.BlockSize"/> row-major values is scaled by its absmax (fp32); each value gets the code
/// of the level nearest to <c>x · (1 / absmax)</c> (ties to the lower index), which is how bitsandbytes'
/// kernel computes it. An all-zero block has scale 0 and dequantizes to exact zeros. Codes are packed as a
/// big-endian bit stream (bitsandbytes' nibble order for 4 bits). Quantization is a fused, SIMD, multi-threaded
/// single pass; instances are immutable and safe to use from several threads at once.
/// </remarks>
public sealed class NormalFloatQuantizer : BlockwiseQuantizer
{
    private static readonly float[] s_nf4 =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
        0.7229568362236023f, 1.0f,
    ];

    /// <summary>Creates an NF quantizer.</summary>
    /// <param name="bits">2, 3, 4 or 8.</param>
    /// <param name="blockSize">Values per absmax block (2..1,048,576; 64 is LoftQ's and bitsandbytes' default).</param>
    /// <param name="scaleSearch">Search each block's scale for the least squared error (<see cref="BlockScaleSearch"/>); null keeps the absmax.</param>
    /// <exception cref="ArgumentOutOfRangeException">Unsupported bits or block size, or an invalid search grid.</exception>
    public NormalFloatQuantizer(int bits, int blockSize = 64, BlockScaleSearch? scaleSearch = null)
        : base($"nf{bits}", ValidBits(bits), blockSize, CreateCodeBook(ValidBits(bits)), asymmetric: false, scaleSearch)
    {
    }

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

    /// <summary>Index of the level nearest to <paramref name="x"/>; ties go to the lower index.</summary>
    internal static int Nearest(ReadOnlySpan<float> levels, float x) => QuantizationKernels.NearestScalar(levels, x);

    private static int ValidBits(int bits) => bits is 2 or 3 or 4 or 8
        ? bits
        : throw new ArgumentOutOfRangeException(nameof(bits), $"NormalFloat supports 2, 3, 4 or 8 bits, got {bits}.");

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
