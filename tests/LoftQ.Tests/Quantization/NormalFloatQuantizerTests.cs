using LoftQNet.Numerics;
using LoftQNet.Quantization;
using static LoftQNet.Tests.Quantization.QuantizationTestHelpers;

namespace LoftQNet.Tests.Quantization;

public class NormalFloatQuantizerTests
{
    private static readonly float[] BitsandbytesNf4 =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
        0.7229568362236023f, 1.0f,
    ];

    [Fact]
    public void Nf4CodeBookIsTheBitsandbytesTableExactly()
    {
        Assert.Equal(BitsandbytesNf4, NormalFloatQuantizer.CreateCodeBook(4));
        Assert.Equal(BitsandbytesNf4, new NormalFloatQuantizer(4).CodeBook.ToArray());
    }

    [Fact]
    public void Nf4FormulaMatchesTheTableWithin1e6()
    {
        float[] formula = NormalFloatQuantizer.ComputeCodeBook(4);
        Assert.Equal(16, formula.Length);
        for (int i = 0; i < 16; i++)
        {
            Assert.True(Math.Abs(formula[i] - BitsandbytesNf4[i]) <= 1e-6, $"level {i}: {formula[i]} vs {BitsandbytesNf4[i]}");
        }
    }

    [Fact]
    public void Nf2CodeBookHasLoftQsValues()
    {
        float[] nf2 = NormalFloatQuantizer.CreateCodeBook(2);
        Assert.Equal(4, nf2.Length);
        Assert.Equal(-1f, nf2[0]);
        Assert.Equal(0f, nf2[1]);
        Assert.Equal(0.33791524f, nf2[2], 7);
        Assert.Equal(1f, nf2[3]);
    }

    [Theory]
    [InlineData(3)]
    [InlineData(8)]
    public void OtherCodeBooksAreSortedDistinctAndSpanMinusOneToOne(int bits)
    {
        float[] cb = NormalFloatQuantizer.CreateCodeBook(bits);
        Assert.Equal(1 << bits, cb.Length);
        Assert.Equal(cb.Length, cb.Distinct().Count());
        for (int i = 1; i < cb.Length; i++)
        {
            Assert.True(cb[i - 1] < cb[i], $"not ascending at {i}");
        }

        Assert.Equal(-1f, cb[0]);
        Assert.Equal(1f, cb[^1]);
        Assert.Contains(0f, cb);
    }

    [Theory]
    [Trait("Category", "Slow")]
    [InlineData(4, 0.0920)]
    [InlineData(2, 0.5623)]
    public void RelativeErrorOnGaussianWeightsMatchesTheReference(int bits, double expected)
    {
        // DESIGN §4: i.i.d. Gaussian, block 64, ‖W − deq(q(W))‖/‖W‖.
        using Matrix w = Matrix.RandomNormal(1024, 1024, seed: 7);
        var q = new NormalFloatQuantizer(bits);
        var deq = new float[w.Length];
        q.Dequantize(q.Quantize(w.Span, w.Shape), deq);
        double err = RelativeError(w.Span, deq);
        Assert.InRange(err, expected * 0.995, expected * 1.005);
    }

    [Fact]
    public void NearestLevelTiesGoToTheLowerIndex()
    {
        // NF2 levels [-1, 0, 0.3379, 1]; -0.5 is exactly between -1 and 0: scale 2 → x = -1 → ratio -0.5.
        var q = new NormalFloatQuantizer(2, blockSize: 2);
        QuantizedTensor t = q.Quantize([2f, -1f], new TensorShape(2));
        Assert.Equal(3, t.GetCode(0));
        Assert.Equal(0, t.GetCode(1));

        // Uniform 2-bit levels [-1, -1/3, 1/3, 1]: 0 is equidistant from -1/3 and 1/3.
        var u = new UniformQuantizer(2, blockSize: 2);
        QuantizedTensor ut = u.Quantize([1f, 0f], new TensorShape(2));
        Assert.Equal(1, ut.GetCode(1));
    }

    [Fact]
    public void HandMadeNf4ExampleDequantizesToScaledLevels()
    {
        var q = new NormalFloatQuantizer(4, blockSize: 4);
        float[] x = [2f, -2f, 0.16f, 0.5f, 0f, 0f, 0f, 0f, -3f];
        QuantizedTensor t = q.Quantize(x, new TensorShape(9));
        Assert.Equal(new[] { 2f, 0f, 3f }, t.Scales.ToArray());
        Assert.Equal(15, t.GetCode(0));
        Assert.Equal(0, t.GetCode(1));
        Assert.Equal(8, t.GetCode(2)); // 0.08 is nearest 0.0796
        Assert.Equal(10, t.GetCode(3)); // 0.25 is nearest 0.2461
        Assert.Equal(0, t.GetCode(8));
        Assert.Equal(5, t.PackedCodes.Length);
        Assert.Equal(0xF0, t.PackedCodes[0]);
        var deq = new float[9];
        q.Dequantize(t, deq);
        Assert.Equal(new[] { 2f, -2f, BitsandbytesNf4[8] * 2f, BitsandbytesNf4[10] * 2f, 0f, 0f, 0f, 0f, -3f }, deq);
    }

    [Fact]
    public void AllZeroBlockHasScaleZeroAndDequantizesToExactZeros()
    {
        foreach (IQuantizer q in AllBuiltIn())
        {
            var x = new float[200];
            x[150] = 1.5f; // only the third block (128..191) is non-zero
            var deq = new float[200];
            QuantizedTensor t = q.QuantizeDequantize(x, new TensorShape(200), deq);
            Assert.Equal(0f, t.Scales[0]);
            Assert.Equal(0f, t.Scales[1]);
            for (int i = 0; i < 200; i++)
            {
                if (i is < 128 or >= 192) // the third block holds 1.5, and symmetric uniform grids have no zero level
                {
                    Assert.True(deq[i] == 0f, $"{q.Name}: element {i} = {deq[i]}");
                }
            }

            Assert.DoesNotContain(deq, float.IsNaN);
            var again = new float[200];
            q.Dequantize(t, again);
            AssertBitsEqual(deq, again, q.Name);
        }
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void NonFiniteValueIsRejectedNamingItsFlatIndex(float bad)
    {
        using Matrix w = Matrix.RandomNormal(256, 512, seed: 3);
        w.Span[70_001] = bad;
        w.Span[100_000] = bad; // a later one must not be the one reported
        foreach (IQuantizer q in AllBuiltIn())
        {
            var e = Assert.Throws<ArgumentException>(() => q.Quantize(w.Span, w.Shape));
            Assert.Contains("70001", e.Message);
            Assert.Equal("values", e.ParamName);
            var deq = new float[w.Length];
            e = Assert.Throws<ArgumentException>(() => q.QuantizeDequantize(w.Span, w.Shape, deq));
            Assert.Contains("70001", e.Message);
        }
    }

    [Fact]
    public void NonFiniteValueIsReportedAtTheLowestIndexWhateverTheThreadCount()
    {
        using Matrix w = Matrix.RandomNormal(512, 512, seed: 4);
        w.Span[200_000] = float.NaN;
        w.Span[3] = float.PositiveInfinity;
        // Per-call thread counts (ComputeSettings.UseThreads): the process-wide setting is never changed.
        ComputeSettings.ThreadScope threadScope = default;
        try
        {
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(4);
            var e = Assert.Throws<ArgumentException>(() => new NormalFloatQuantizer(4).Quantize(w.Span, w.Shape));
            Assert.Contains("index 3 ", e.Message);
        }
        finally
        {
            threadScope.Dispose();
        }
    }

    [Theory]
    [InlineData(4, 64, 1000)]
    [InlineData(2, 64, 130)]
    [InlineData(3, 64, 77)]
    [InlineData(8, 64, 65)]
    [InlineData(4, 48, 101)]
    [InlineData(3, 5, 23)]
    [InlineData(4, 64, 7)]
    public void PartialLastBlockWorks(int bits, int blockSize, int n)
    {
        var q = new NormalFloatQuantizer(bits, blockSize);
        float[] x = AwkwardValues(n, seed: n);
        QuantizedTensor t = q.Quantize(x, new TensorShape(n));
        Assert.Equal((n + blockSize - 1) / blockSize, t.BlockCount);
        Assert.Equal((n * bits + 7) / 8, t.PackedCodes.Length);
        AssertIdentical(q.Codec.QuantizeReference(x, new TensorShape(n)), t);
        int last = (n - 1) / blockSize * blockSize;
        float absmax = 0f;
        for (int i = last; i < n; i++)
        {
            absmax = Math.Max(absmax, Math.Abs(x[i]));
        }

        Assert.Equal(absmax, t.Scales[^1]);
    }

    [Fact]
    public void InvalidArgumentsAreRejected()
    {
        Assert.Equal("bits", Assert.Throws<ArgumentOutOfRangeException>(() => new NormalFloatQuantizer(5)).ParamName);
        Assert.Equal("bits", Assert.Throws<ArgumentOutOfRangeException>(() => new NormalFloatQuantizer(1)).ParamName);
        Assert.Equal("blockSize", Assert.Throws<ArgumentOutOfRangeException>(() => new NormalFloatQuantizer(4, 1)).ParamName);
        Assert.Equal("blockSize", Assert.Throws<ArgumentOutOfRangeException>(() => new NormalFloatQuantizer(4, (1 << 20) + 1)).ParamName);
        var q = new NormalFloatQuantizer(4);
        Assert.Equal("values", Assert.Throws<ArgumentException>(() => q.Quantize(new float[10], new TensorShape(3, 4))).ParamName);
        Assert.Equal("dequantized", Assert.Throws<ArgumentException>(() => q.QuantizeDequantize(new float[12], new TensorShape(3, 4), new float[11])).ParamName);
        QuantizedTensor t = q.Quantize(new float[12], new TensorShape(3, 4));
        Assert.Equal("destination", Assert.Throws<ArgumentException>(() => q.Dequantize(t, new float[13])).ParamName);
        Assert.Throws<ArgumentNullException>(() => q.Dequantize(null!, new float[12]));
    }

    [Fact]
    public void NamesAndProperties()
    {
        var q = new NormalFloatQuantizer(2, 128);
        Assert.Equal("nf2", q.Name);
        Assert.Equal(2, q.Bits);
        Assert.Equal(128, q.BlockSize);
        Assert.Equal("nf8", new NormalFloatQuantizer(8).Name);
        QuantizedTensor t = q.Quantize(new float[256], new TensorShape(16, 16));
        Assert.Equal("nf2", t.QuantizerName);
        Assert.False(t.HasOffsets);
        Assert.True(t.Offsets.IsEmpty);
    }

    [Fact]
    public void EmptyTensorQuantizesToNothing()
    {
        var q = new NormalFloatQuantizer(4);
        QuantizedTensor t = q.QuantizeDequantize([], new TensorShape(0, 8), []);
        Assert.Equal(0, t.BlockCount);
        Assert.Equal(0, t.PackedCodes.Length);
    }

    [Fact]
    public void SubnormalAbsmaxBlockStillQuantizesSensibly()
    {
        // 1/absmax overflows for absmax below ~2.9e-39: the codec divides instead of multiplying by infinity.
        float tiny = 1e-40f;
        float[] x = [tiny, -tiny, tiny / 2, 0f];
        foreach (IQuantizer q in AllBuiltIn(blockSize: 4))
        {
            var deq = new float[4];
            QuantizedTensor t = q.QuantizeDequantize(x, new TensorShape(4), deq);
            AssertIdentical(CodecOf(q).QuantizeReference(x, new TensorShape(4)), t);
            Assert.DoesNotContain(deq, v => !float.IsFinite(v));
            Assert.Equal(tiny, deq[0]);
        }
    }
}
