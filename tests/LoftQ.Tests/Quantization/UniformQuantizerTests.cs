using LoftQNet.Numerics;
using LoftQNet.Quantization;
using static LoftQNet.Tests.Quantization.QuantizationTestHelpers;

namespace LoftQNet.Tests.Quantization;

public class UniformQuantizerTests
{
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(8)]
    public void SymmetricLevelsAreLinspaceMinusOneToOne(int bits)
    {
        var q = new UniformQuantizer(bits);
        Assert.Equal($"uniform{bits}", q.Name);
        int n = 1 << bits;
        for (int i = 0; i < n; i++)
        {
            Assert.Equal((float)(-1.0 + (2.0 * i / (n - 1))), q.CodeBook[i]);
        }
    }

    [Fact]
    public void AsymmetricLevelsAreLinspaceZeroToOne()
    {
        var q = new UniformQuantizer(3, asymmetric: true);
        Assert.Equal("uniform3-asym", q.Name);
        Assert.True(q.IsAsymmetric);
        Assert.Equal(new[] { 0f, 1f / 7, 2f / 7, 3f / 7, 4f / 7, 5f / 7, 6f / 7, 1f }, q.CodeBook.ToArray());
    }

    [Theory]
    [InlineData(2, false)]
    [InlineData(3, false)]
    [InlineData(4, false)]
    [InlineData(5, false)]
    [InlineData(8, false)]
    [InlineData(2, true)]
    [InlineData(3, true)]
    [InlineData(4, true)]
    [InlineData(6, true)]
    [InlineData(8, true)]
    public void ReconstructionErrorIsAtMostHalfAStepPerBlock(int bits, bool asymmetric)
    {
        const int BlockSize = 64;
        var q = new UniformQuantizer(bits, BlockSize, asymmetric);
        using Matrix w = Matrix.RandomNormal(128, 256, seed: bits, scale: 3f);
        var deq = new float[w.Length];
        QuantizedTensor t = q.QuantizeDequantize(w.Span, w.Shape, deq);
        Assert.Equal(asymmetric, t.HasOffsets);
        double step = (asymmetric ? 1.0 : 2.0) / ((1 << bits) - 1);
        ReadOnlySpan<float> x = w.Span;
        for (int blk = 0; blk < t.BlockCount; blk++)
        {
            float min = float.MaxValue, max = float.MinValue, absmax = 0f;
            for (int i = blk * BlockSize; i < (blk + 1) * BlockSize; i++)
            {
                min = Math.Min(min, x[i]);
                max = Math.Max(max, x[i]);
                absmax = Math.Max(absmax, Math.Abs(x[i]));
            }

            Assert.Equal(asymmetric ? max - min : absmax, t.Scales[blk]);
            if (asymmetric)
            {
                Assert.Equal(min, t.Offsets[blk]);
            }

            double bound = (t.Scales[blk] * step / 2) + (4e-7 * (Math.Abs(min) + Math.Abs(max)));
            for (int i = blk * BlockSize; i < (blk + 1) * BlockSize; i++)
            {
                Assert.True(Math.Abs(x[i] - deq[i]) <= bound, $"block {blk} element {i}: |{x[i]} - {deq[i]}| > {bound}");
            }
        }

        // The block extremes are levels, so they come back exactly (symmetric: ±absmax; asymmetric: min).
        int k = asymmetric ? ArgMin(x[..BlockSize]) : ArgAbsMax(x[..BlockSize]);
        Assert.Equal(x[k], deq[k]);
    }

    [Fact]
    public void ConstantBlockReproducesExactlyWhenAsymmetric()
    {
        var q = new UniformQuantizer(2, 16, asymmetric: true);
        float[] x = new float[40];
        Array.Fill(x, 0.7f, 0, 16);
        Array.Fill(x, -123.25f, 16, 16);
        Array.Fill(x, 5e-20f, 32, 8);
        var deq = new float[40];
        QuantizedTensor t = q.QuantizeDequantize(x, new TensorShape(40), deq);
        AssertBitsEqual(x, deq, "dequantized");
        Assert.Equal(new[] { 0f, 0f, 0f }, t.Scales.ToArray());
        Assert.Equal(new[] { 0.7f, -123.25f, 5e-20f }, t.Offsets.ToArray());
    }

    [Fact]
    public void AsymmetricRangeOverflowIsAClearError()
    {
        var q = new UniformQuantizer(4, 4, asymmetric: true);
        float[] x = [1f, 2f, 3f, 4f, float.MaxValue, -float.MaxValue, 0f, 0f];
        var e = Assert.Throws<ArgumentException>(() => q.Quantize(x, new TensorShape(8)));
        Assert.Contains("Block 1", e.Message);
        Assert.Contains("overflows", e.Message);
    }

    [Fact]
    public void InvalidArgumentsAreRejected()
    {
        Assert.Equal("bits", Assert.Throws<ArgumentOutOfRangeException>(() => new UniformQuantizer(1)).ParamName);
        Assert.Equal("bits", Assert.Throws<ArgumentOutOfRangeException>(() => new UniformQuantizer(9)).ParamName);
        Assert.Equal("blockSize", Assert.Throws<ArgumentOutOfRangeException>(() => new UniformQuantizer(4, 0)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => UniformQuantizer.CreateLevels(0, false));
    }

    [Fact]
    public void RelativeErrorImprovesWithBitsAndIsNearTheUniformNoiseModel()
    {
        // For levels spaced Δ = 2·absmax/(2^b − 1), the rounding noise has variance ≈ Δ²/12 per element.
        using Matrix w = Matrix.RandomNormal(256, 1024, seed: 11);
        double previous = double.MaxValue;
        for (int bits = 2; bits <= 8; bits++)
        {
            var q = new UniformQuantizer(bits);
            var deq = new float[w.Length];
            QuantizedTensor t = q.QuantizeDequantize(w.Span, w.Shape, deq);
            double err = RelativeError(w.Span, deq);
            Assert.True(err < previous, $"{bits} bits: {err} not below {previous}");
            previous = err;
            if (bits >= 5)
            {
                double meanSquareScale = 0;
                foreach (float s in t.Scales)
                {
                    meanSquareScale += (double)s * s;
                }

                meanSquareScale /= t.BlockCount;
                double delta2 = 4 * meanSquareScale / Math.Pow((1 << bits) - 1, 2);
                double model = Math.Sqrt(delta2 / 12); // ‖W‖²/n ≈ 1 for N(0, 1)
                Assert.InRange(err, model * 0.9, model * 1.1);
            }
        }
    }

    private static int ArgAbsMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++)
        {
            if (Math.Abs(v[i]) > Math.Abs(v[best]))
            {
                best = i;
            }
        }

        return best;
    }

    private static int ArgMin(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++)
        {
            if (v[i] < v[best])
            {
                best = i;
            }
        }

        return best;
    }
}
