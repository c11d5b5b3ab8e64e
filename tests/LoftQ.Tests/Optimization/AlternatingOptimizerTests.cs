using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Optimization;

public class AlternatingOptimizerTests
{
    /// <summary>‖W − deq(Q) − B·A‖_F / ‖W‖_F recomputed naively in double.</summary>
    internal static double IndependentError(Matrix w, LoftQResult result)
    {
        var deq = new float[w.Length];
        result.Quantized.Dequantize(deq);
        int r = result.A.Rows, n = w.Columns;
        double sum = 0, norm = 0;
        for (int i = 0; i < w.Rows; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double ba = 0;
                for (int k = 0; k < r; k++)
                {
                    ba += (double)result.B[i, k] * result.A[k, j];
                }

                double d = w[i, j] - deq[(i * n) + j] - ba;
                sum += d * d;
                norm += (double)w[i, j] * w[i, j];
            }
        }

        return Math.Sqrt(sum / norm);
    }

    internal static double PlainQuantizationError(IQuantizer quantizer, Matrix w)
    {
        QuantizedTensor q = quantizer.Quantize(w.Span, w.Shape);
        var deq = new float[w.Length];
        quantizer.Dequantize(q, deq);
        double sum = 0, norm = 0;
        for (int i = 0; i < deq.Length; i++)
        {
            double d = (double)w.Span[i] - deq[i];
            sum += d * d;
            norm += (double)w.Span[i] * w.Span[i];
        }

        return Math.Sqrt(sum / norm);
    }

    [Theory]
    [InlineData(4)]
    [InlineData(2)]
    public void PassesNeverWorseThanFirstAndBestIsReturned(int bits)
    {
        using Matrix w = Matrix.RandomNormal(192, 160, 1, 0.02f);
        var quantizer = new NormalFloatQuantizer(bits);
        var optimizer = new AlternatingOptimizer(quantizer, new ExactSvdSolver());
        using LoftQResult result = optimizer.Run(w, 16, 5);

        Assert.Equal(5, result.ErrorTrace.Count);
        Assert.All(result.ErrorTrace, e => Assert.True(e <= result.ErrorTrace[0] * (1 + 1e-9), $"pass error {e} above pass 1's {result.ErrorTrace[0]}"));
        Assert.Equal(result.ErrorTrace.Min(), result.RelativeError);
        Assert.Equal(result.ErrorTrace.ToList().IndexOf(result.RelativeError) + 1, result.BestPass);
        Assert.True(result.RelativeError < result.QLoRAError);
        Assert.Equal(PlainQuantizationError(quantizer, w), result.QLoRAError, 1e-6);
        Assert.Equal(result.RelativeError, IndependentError(w, result), 1e-5);
        Assert.Equal((16, 160), (result.A.Rows, result.A.Columns));
        Assert.Equal((192, 16), (result.B.Rows, result.B.Columns));
        Assert.Equal(w.Shape, result.Quantized.Shape);
        Assert.True(result.Elapsed > TimeSpan.Zero);
    }

    [Fact]
    public void SelectsBestPassAndKeepsItsFactors()
    {
        using Matrix w = Matrix.RandomNormal(96, 64, 2, 0.05f);
        var solver = new ScriptedSolver(goodPass: 2);
        var optimizer = new AlternatingOptimizer(new NormalFloatQuantizer(4), solver);
        using LoftQResult result = optimizer.Run(w, 4, 4);

        Assert.Equal(2, result.BestPass);
        Assert.Equal(result.ErrorTrace[1], result.RelativeError);
        Assert.True(result.ErrorTrace[0] > result.ErrorTrace[1] && result.ErrorTrace[2] > result.ErrorTrace[1]);
        Assert.Equal(result.RelativeError, IndependentError(w, result), 1e-5);
        Assert.Equal(solver.GoodA!, result.A.Span.ToArray());
    }

    [Fact]
    public void QLoRABaselineHasZeroBAndKaimingA()
    {
        using Matrix w = Matrix.RandomNormal(80, 256, 3, 0.02f);
        var quantizer = new NormalFloatQuantizer(4);
        var optimizer = new AlternatingOptimizer(quantizer, new ExactSvdSolver()) { Seed = 17 };
        using LoftQResult result = optimizer.Run(w, 8, 0);

        Assert.Equal(0, result.BestPass);
        Assert.All(result.B.Span.ToArray(), v => Assert.Equal(0f, v));
        double bound = 1.0 / Math.Sqrt(256);
        float[] a = result.A.Span.ToArray();
        Assert.All(a, v => Assert.InRange(v, -bound, bound));
        Assert.True(a.Max() > 0.95 * bound && a.Min() < -0.95 * bound, "A should fill the Kaiming interval");
        Assert.InRange(a.Average(), -0.05 * bound, 0.05 * bound);
        double plain = PlainQuantizationError(quantizer, w);
        Assert.Equal(plain, result.QLoRAError, 1e-6);
        Assert.Equal(plain, result.RelativeError, 1e-6);
        Assert.Equal([result.QLoRAError], result.ErrorTrace);

        using LoftQResult same = optimizer.Run(w, 8, 0);
        using LoftQResult other = new AlternatingOptimizer(quantizer, new ExactSvdSolver()) { Seed = 18 }.Run(w, 8, 0);
        Assert.Equal(a, same.A.Span.ToArray());
        Assert.NotEqual(a, other.A.Span.ToArray());
    }

    [Fact]
    public void BitIdenticalAcrossThreadCountsAndConcurrentRuns()
    {
        var optimizer = new AlternatingOptimizer(new NormalFloatQuantizer(2), new RandomizedSvdSolver(seed: 9)) { Seed = 4 };
        Matrix[] weights = Enumerable.Range(0, 4).Select(i => Matrix.RandomNormal(128, 96 + (16 * i), 40 + i)).ToArray();
        // Per-call thread counts (ComputeSettings.UseThreads): the process-wide setting is never changed.
        ComputeSettings.ThreadScope threadScope = default;
        try
        {
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(1);
            LoftQResult[] serial = weights.Select(w => optimizer.Run(w, 8, 3)).ToArray();
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(3);
            var parallel = new LoftQResult[weights.Length];
            Parallel.For(0, weights.Length, i =>
            {
                using ComputeSettings.SerialRegion region = ComputeSettings.EnterSerialRegion();
                parallel[i] = optimizer.Run(weights[i], 8, 3);
            });
            LoftQResult multi = optimizer.Run(weights[0], 8, 3);

            for (int i = 0; i < weights.Length; i++)
            {
                AssertSame(serial[i], parallel[i]);
            }

            AssertSame(serial[0], multi);
            foreach (LoftQResult r in serial.Concat(parallel).Append(multi))
            {
                r.Dispose();
            }
        }
        finally
        {
            threadScope.Dispose();
            foreach (Matrix w in weights)
            {
                w.Dispose();
            }
        }

        static void AssertSame(LoftQResult x, LoftQResult y)
        {
            Assert.Equal(x.ErrorTrace, y.ErrorTrace);
            Assert.Equal(x.A.Span.ToArray(), y.A.Span.ToArray());
            Assert.Equal(x.B.Span.ToArray(), y.B.Span.ToArray());
            Assert.Equal(x.Quantized.PackedCodes.ToArray(), y.Quantized.PackedCodes.ToArray());
            Assert.Equal(x.Quantized.Scales.ToArray(), y.Quantized.Scales.ToArray());
        }
    }

    [Fact]
    public void CustomQuantizerPlugsInThroughDefaultQuantizeDequantize()
    {
        using Matrix w = Matrix.RandomNormal(64, 128, 5, 0.1f);
        var quantizer = new RoundingQuantizer();
        var optimizer = new AlternatingOptimizer(quantizer, new ExactSvdSolver());
        using LoftQResult result = optimizer.Run(w, 8, 3);

        Assert.Equal("round3", result.Quantized.QuantizerName);
        Assert.True(quantizer.QuantizeCalls >= 3 && quantizer.DequantizeCalls >= 3, "the default QuantizeDequantize must call both members");
        Assert.Equal(PlainQuantizationError(quantizer, w), result.QLoRAError, 1e-6);
        Assert.True(result.RelativeError < result.QLoRAError);
        Assert.Equal(result.RelativeError, IndependentError(w, result), 1e-5);
    }

    [Fact]
    public void ValidatesArguments()
    {
        var optimizer = new AlternatingOptimizer(new NormalFloatQuantizer(4), new ExactSvdSolver());
        using Matrix w = Matrix.RandomNormal(20, 30, 1);
        Assert.Equal("rank", Assert.Throws<ArgumentOutOfRangeException>(() => optimizer.Run(w, 0, 1)).ParamName);
        Assert.Equal("rank", Assert.Throws<ArgumentOutOfRangeException>(() => optimizer.Run(w, 21, 1)).ParamName);
        Assert.Equal("iterations", Assert.Throws<ArgumentOutOfRangeException>(() => optimizer.Run(w, 4, -1)).ParamName);
        Assert.Throws<ArgumentNullException>(() => optimizer.Run(null!, 4, 1));
        Assert.Throws<ArgumentNullException>(() => new AlternatingOptimizer(null!, new ExactSvdSolver()));
        Assert.Throws<ArgumentNullException>(() => new AlternatingOptimizer(new NormalFloatQuantizer(4), null!));

        w[2, 5] = float.NaN;
        var e = Assert.Throws<ArgumentException>(() => optimizer.Run(w, 4, 1));
        Assert.Equal("weight", e.ParamName);
        Assert.Contains("flat index 65", e.Message);
        Assert.Contains("(2, 5)", e.Message);
    }

    [Fact]
    public void ZeroWeightGivesZeroError()
    {
        using Matrix w = Matrix.Zeros(16, 64);
        using LoftQResult result = new AlternatingOptimizer(new NormalFloatQuantizer(4), new RandomizedSvdSolver()).Run(w, 2, 2);
        Assert.All(result.ErrorTrace, e => Assert.Equal(0.0, e));
        Assert.All(result.B.Span.ToArray(), v => Assert.Equal(0f, v));
    }

    /// <summary>A user-defined 3-bit symmetric uniform quantizer that implements only Quantize and Dequantize.</summary>
    private sealed class RoundingQuantizer : IQuantizer
    {
        private static readonly float[] s_levels = [-1f, -5f / 7, -3f / 7, -1f / 7, 1f / 7, 3f / 7, 5f / 7, 1f];

        public int QuantizeCalls;
        public int DequantizeCalls;

        public string Name => "round3";

        public int Bits => 3;

        public int BlockSize => 32;

        public QuantizedTensor Quantize(ReadOnlySpan<float> values, TensorShape shape)
        {
            Interlocked.Increment(ref QuantizeCalls);
            int blocks = (values.Length + BlockSize - 1) / BlockSize;
            var scales = new float[blocks];
            var codes = new byte[values.Length];
            for (int blk = 0; blk < blocks; blk++)
            {
                int start = blk * BlockSize, end = Math.Min(values.Length, start + BlockSize);
                float max = 0;
                for (int i = start; i < end; i++)
                {
                    max = Math.Max(max, Math.Abs(values[i]));
                }

                scales[blk] = max;
                for (int i = start; i < end; i++)
                {
                    float x = max > 0 ? values[i] / max : 0;
                    codes[i] = (byte)Math.Clamp((int)MathF.Round(((x + 1f) * 3.5f) - 0.5f), 0, 7);
                }
            }

            var packed = new byte[BitPacking.PackedLength(codes.Length, Bits)];
            BitPacking.Pack(codes, Bits, packed);
            return new QuantizedTensor(shape, Bits, BlockSize, packed, scales, (float[])s_levels.Clone(), Name);
        }

        public void Dequantize(QuantizedTensor quantized, Span<float> destination)
        {
            Interlocked.Increment(ref DequantizeCalls);
            quantized.Dequantize(destination);
        }
    }

    /// <summary>Returns the exact factors on one pass and deliberately poor ones (scaled) on all others.</summary>
    private sealed class ScriptedSolver : ILowRankSolver
    {
        private readonly int _goodPass;
        private int _calls;

        public ScriptedSolver(int goodPass) => _goodPass = goodPass;

        public float[]? GoodA { get; private set; }

        public string Name => "scripted";

        public LowRankFactors Decompose(Matrix residual, int rank)
        {
            LowRankFactors f = new ExactSvdSolver().Decompose(residual, rank);
            if (++_calls == _goodPass)
            {
                GoodA = f.A.Span.ToArray();
                return f;
            }

            foreach (ref float v in f.B.Span)
            {
                v *= -1.5f;
            }

            return f;
        }
    }
}
