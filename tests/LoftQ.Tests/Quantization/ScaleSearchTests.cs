using LoftQNet.Numerics;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Quantization;

/// <summary>Error-minimising block scales (BlockScaleSearch) against an independent brute force.</summary>
public sealed class ScaleSearchTests
{
    public static TheoryData<string, int> Quantizers => new()
    {
        { "nf", 2 }, { "nf", 3 }, { "nf", 4 }, { "uniform", 3 }, { "uniform-asym", 2 }, { "uniform-asym", 4 },
    };

    private static BlockwiseQuantizer Make(string kind, int bits, BlockScaleSearch? search) => kind switch
    {
        "nf" => new NormalFloatQuantizer(bits, 64, search),
        "uniform" => new UniformQuantizer(bits, 64, scaleSearch: search),
        _ => new UniformQuantizer(bits, 64, asymmetric: true, search),
    };

    /// <summary>Nearest level by distance (ties to the lower index), in double: independent of the kernels' thresholds.</summary>
    private static double BruteError(ReadOnlySpan<float> x, ReadOnlySpan<float> levels, float scale, float offset)
    {
        double error = 0;
        foreach (float v in x)
        {
            double best = double.PositiveInfinity;
            foreach (float level in levels)
            {
                double d = v - (((double)level * scale) + offset);
                best = Math.Min(best, d * d);
            }

            error += best;
        }

        return error;
    }

    [Theory]
    [MemberData(nameof(Quantizers))]
    public void EachBlockGetsTheGridRatioWithTheLeastError(string kind, int bits)
    {
        var search = new BlockScaleSearch(Steps: 12, MinRatio: 0.4f);
        using Matrix w = Matrix.RandomNormal(24, 128, seed: bits * 7 + kind.Length);
        w.Span[5] = 9f; // an outlier: absmax is a poor scale for its block
        BlockwiseQuantizer plain = Make(kind, bits, null), searched = Make(kind, bits, search);
        QuantizedTensor q0 = plain.Quantize(w.Span, w.Shape), q = searched.Quantize(w.Span, w.Shape);
        bool asymmetric = kind == "uniform-asym";
        var y = new float[w.Span.Length];
        q.Dequantize(y);
        int improved = 0;
        for (int blk = 0; blk < q.BlockCount; blk++)
        {
            ReadOnlySpan<float> x = w.Span.Slice(blk * 64, 64);
            float full = q0.Scales[blk], low = asymmetric ? q0.Offsets[blk] : 0f;
            double bestError = double.PositiveInfinity;
            float bestScale = float.NaN;
            for (int k = 0; k <= search.Steps; k++)
            {
                float s = full * search.Ratio(k);
                float o = asymmetric ? low + (0.5f * (full - s)) : 0f;
                double e = BruteError(x, searched.CodeBook, s, o);
                if (e < bestError * (1 - 1e-9))
                {
                    bestError = e;
                    bestScale = s;
                }
            }

            Assert.Equal(bestScale, q.Scales[blk]);
            double got = 0;
            for (int i = 0; i < 64; i++)
            {
                double d = x[i] - y[(blk * 64) + i];
                got += d * d;
            }

            Assert.Equal(bestError, got, bestError * 1e-5);
            double absmaxError = BruteError(x, plain.CodeBook, full, low);
            Assert.True(got <= absmaxError * (1 + 1e-6), $"block {blk}: {got} > absmax's {absmaxError}");
            improved += got < absmaxError * 0.999 ? 1 : 0;
        }

        Assert.True(improved >= q.BlockCount / 4, $"only {improved} of {q.BlockCount} blocks improved");
    }

    [Fact]
    public void TheFormatIsUnchangedAndFusedDequantizationAgrees()
    {
        using Matrix w = Matrix.RandomNormal(16, 192, seed: 3);
        var searched = new NormalFloatQuantizer(2, 64, BlockScaleSearch.Default);
        var fused = new float[w.Span.Length];
        QuantizedTensor q = searched.QuantizeDequantize(w.Span, w.Shape, fused);
        var generic = new float[w.Span.Length];
        q.Dequantize(generic);
        Assert.Equal(generic, fused);
        Assert.Equal("nf2", q.QuantizerName);
        Assert.Equal(new NormalFloatQuantizer(2).CodeBook.ToArray(), q.CodeBook.ToArray());
        Assert.Equal(BitPacking.PackedLength(w.Span.Length, 2), q.PackedCodes.Length);
    }

    [Fact]
    public void ZeroBlocksAndNonFiniteValuesBehaveAsWithoutTheSearch()
    {
        var values = new float[256];
        for (int i = 64; i < 256; i++)
        {
            values[i] = MathF.Sin(i);
        }

        var searched = new NormalFloatQuantizer(2, 64, BlockScaleSearch.Default);
        QuantizedTensor q = searched.Quantize(values, new TensorShape(4, 64));
        Assert.Equal(0f, q.Scales[0]); // an all-zero block keeps scale 0
        var y = new float[256];
        q.Dequantize(y);
        Assert.All(y[..64], v => Assert.Equal(0f, v));

        values[130] = float.NaN;
        ArgumentException e = Assert.ThrowsAny<ArgumentException>(() => searched.Quantize(values, new TensorShape(4, 64)));
        Assert.Contains("130", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0, 0.5f)]
    [InlineData(1001, 0.5f)]
    [InlineData(10, 1f)]
    [InlineData(10, 0f)]
    [InlineData(10, float.NaN)]
    public void AnInvalidGridIsRefused(int steps, float minRatio)
    {
        var grid = new BlockScaleSearch(steps, minRatio);
        Assert.Throws<ArgumentOutOfRangeException>(() => new NormalFloatQuantizer(2, 64, grid));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LoftQPlan(new LoftQOptions { ScaleSearch = grid }, 1));
    }

    [Fact]
    public void LoftQWithSearchedScalesHasALowerErrorAndTheReportSaysSo()
    {
        using Matrix w = Matrix.RandomNormal(96, 128, seed: 11);
        var plain = new LoftQPlan(new LoftQOptions { Bits = 2, Rank = 4, Iterations = 2, ScaleSearch = null }, 1);
        var searched = new LoftQPlan(new LoftQOptions { Bits = 2, Rank = 4, Iterations = 2, ScaleSearch = BlockScaleSearch.Default }, 1);
        using LoftQLayerResult r0 = plain.InitializeLayer("model.layers.0.mlp.up_proj.weight", w);
        double e0 = r0.Report.RelativeError;
        using LoftQLayerResult r1 = searched.InitializeLayer("model.layers.0.mlp.up_proj.weight", w);
        double e1 = r1.Report.RelativeError;
        Assert.True(e1 < e0 * 0.9, $"searched {e1} vs absmax {e0}");
        Assert.Null(plain.DescribeSettings().ScaleSearch);
        Assert.Equal("clip grid 1..0.5 in 20 steps", searched.DescribeSettings().ScaleSearch);
    }
}
