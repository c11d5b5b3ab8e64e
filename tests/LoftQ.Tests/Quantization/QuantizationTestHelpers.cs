using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Quantization;

internal static class QuantizationTestHelpers
{
    /// <summary>‖w − deq‖ / ‖w‖ in double precision.</summary>
    public static double RelativeError(ReadOnlySpan<float> w, ReadOnlySpan<float> deq)
    {
        double num = 0, den = 0;
        for (int i = 0; i < w.Length; i++)
        {
            double d = (double)w[i] - deq[i];
            num += d * d;
            den += (double)w[i] * w[i];
        }

        return Math.Sqrt(num / den);
    }

    /// <summary>Asserts two quantized tensors are identical bit for bit (codes, scales, offsets, code book, metadata).</summary>
    public static void AssertIdentical(QuantizedTensor expected, QuantizedTensor actual)
    {
        Assert.Equal(expected.Shape, actual.Shape);
        Assert.Equal(expected.Bits, actual.Bits);
        Assert.Equal(expected.BlockSize, actual.BlockSize);
        Assert.Equal(expected.QuantizerName, actual.QuantizerName);
        Assert.Equal(expected.HasOffsets, actual.HasOffsets);
        AssertBytesEqual(expected.PackedCodes, actual.PackedCodes, "packed codes");
        AssertBitsEqual(expected.Scales, actual.Scales, "scales");
        AssertBitsEqual(expected.Offsets, actual.Offsets, "offsets");
        AssertBitsEqual(expected.CodeBook, actual.CodeBook, "code book");
    }

    public static void AssertBytesEqual(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        int i = expected.SequenceEqual(actual) ? -1 : FirstDifference(expected, actual);
        Assert.True(i < 0, $"{what} differ first at {i}: expected {(i >= 0 ? expected[i] : 0)}, got {(i >= 0 ? actual[i] : 0)}");
    }

    public static void AssertBitsEqual(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
            {
                Assert.Fail($"{what} differ first at {i}: expected {expected[i]:R}, got {actual[i]:R}");
            }
        }
    }

    private static int FirstDifference(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        for (int i = 0; i < a.Length; i++)
        {
            if (a[i] != b[i])
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>Gaussian values with a sprinkling of exact zeros, tiny values and repeated extremes.</summary>
    public static float[] AwkwardValues(int n, int seed)
    {
        using Matrix m = Matrix.RandomNormal(1, n, seed);
        float[] v = m.Span.ToArray();
        var rng = new Random(seed);
        for (int i = 0; i < n; i += 1 + rng.Next(40))
        {
            v[i] = rng.Next(4) switch
            {
                0 => 0f,
                1 => -0f,
                2 => v[i] * 1e-30f,
                _ => 3.5f,
            };
        }

        return v;
    }

    public static IEnumerable<IQuantizer> AllBuiltIn(int blockSize = 64)
    {
        foreach (int b in new[] { 2, 3, 4, 8 })
        {
            yield return new NormalFloatQuantizer(b, blockSize);
        }

        for (int b = 2; b <= 8; b++)
        {
            yield return new UniformQuantizer(b, blockSize);
            yield return new UniformQuantizer(b, blockSize, asymmetric: true);
        }
    }

    internal static BlockwiseCodec CodecOf(IQuantizer q) => q switch
    {
        NormalFloatQuantizer nf => nf.Codec,
        UniformQuantizer u => u.Codec,
        _ => throw new ArgumentException("not a built-in quantizer", nameof(q)),
    };
}
