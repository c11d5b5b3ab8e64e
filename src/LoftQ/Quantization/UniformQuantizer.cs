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
public sealed class UniformQuantizer : BlockwiseQuantizer
{
    /// <summary>Creates a uniform quantizer.</summary>
    /// <param name="bits">2..8.</param>
    /// <param name="blockSize">Values per block (2..1,048,576).</param>
    /// <param name="asymmetric">Use per-block min/max (scale and offset) instead of the symmetric absmax.</param>
    /// <param name="scaleSearch">Search each block's scale for the least squared error (<see cref="BlockScaleSearch"/>); null keeps the absmax.</param>
    /// <exception cref="ArgumentOutOfRangeException">Unsupported bits or block size, or an invalid search grid.</exception>
    public UniformQuantizer(int bits, int blockSize = 64, bool asymmetric = false, BlockScaleSearch? scaleSearch = null)
        : base(asymmetric ? $"uniform{bits}-asym" : $"uniform{bits}", ValidBits(bits), blockSize, CreateLevels(ValidBits(bits), asymmetric), asymmetric, scaleSearch)
    {
        IsAsymmetric = asymmetric;
    }

    /// <summary>Whether blocks use min/max (scale and offset) rather than the symmetric absmax.</summary>
    public bool IsAsymmetric { get; }

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

    private static int ValidBits(int bits) => bits is >= 2 and <= 8
        ? bits
        : throw new ArgumentOutOfRangeException(nameof(bits), $"Uniform quantization supports 2..8 bits, got {bits}.");
}
