using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;
using MathNet.Numerics.LinearAlgebra;

namespace LoftQNet.Tests.Optimization;

/// <summary>The activation-aware objective (InputWeighting): closed form against independent references, reductions, bad input.</summary>
public sealed class ActivationAwareTests
{
    /// <summary>H = XᵀX / tokens for a random X whose columns have very different scales (so H is far from I).</summary>
    private static float[] SecondMoments(int tokens, int features, int seed, out Matrix<double> h)
    {
        using Matrix x = Matrix.RandomNormal(tokens, features, seed);
        var xs = Matrix<double>.Build.Dense(tokens, features, (i, j) => x[i, j] * (1 + (3.0 * j / features)) + (j > 0 ? 0.5 * x[i, j - 1] : 0));
        h = xs.TransposeThisAndMultiply(xs) / tokens;
        var flat = new float[features * features];
        for (int i = 0; i < features; i++)
        {
            for (int j = 0; j < features; j++)
            {
                flat[(i * features) + j] = (float)h[i, j];
            }
        }

        // The float copy is what the library sees: use it for the reference too.
        h = Matrix<double>.Build.Dense(features, features, (i, j) => flat[(i * features) + j]);
        return flat;
    }

    private static Matrix<double> ToDouble(Matrix m) => Matrix<double>.Build.Dense(m.Rows, m.Columns, (i, j) => m[i, j]);

    /// <summary>‖(M − B·A)·S‖_F with S = H^½ from an eigen decomposition (independent of the library's Cholesky).</summary>
    private static double WeightedResidual(Matrix<double> m, Matrix<double> ba, Matrix<double> hDamped)
    {
        Matrix<double> e = m - ba;
        return Math.Sqrt((e * hDamped * e.Transpose()).Trace());
    }

    private static Matrix<double> Damped(Matrix<double> h, double lambda)
    {
        double mean = h.Diagonal().Average();
        return h + (Matrix<double>.Build.DenseIdentity(h.RowCount) * (lambda * mean));
    }

    [Fact]
    public void TheLowRankStepIsTheExactWeightedMinimiser()
    {
        // A quantizer that returns 0 makes every pass's low-rank step the weighted rank-r approximation of W itself.
        const int m = 12, n = 10, r = 3;
        float[] flat = SecondMoments(40, n, seed: 5, out Matrix<double> h);
        InputWeighting weighting = InputWeighting.FromSecondMoments(flat, n, damping: 0.01);
        Assert.False(weighting.IsDiagonal);
        Assert.False(weighting.IsIsotropic);
        using Matrix w = Matrix.RandomNormal(m, n, seed: 9);
        var optimizer = new AlternatingOptimizer(new ZeroQuantizer(), new ExactSvdSolver()) { Weighting = weighting };
        using LoftQResult result = optimizer.Run(w, r, 2);

        // Reference: S = (H + λ·mean·I)^½ by eigen decomposition; B·A = SVD_r(W·S)·S⁻¹.
        Matrix<double> hd = Damped(h, 0.01);
        var evd = hd.Evd(MathNet.Numerics.LinearAlgebra.Symmetricity.Symmetric);
        Matrix<double> v = evd.EigenVectors;
        Vector<double> lambdas = evd.EigenValues.Map(c => c.Real);
        Matrix<double> sqrt = v * Matrix<double>.Build.DenseOfDiagonalVector(lambdas.Map(Math.Sqrt)) * v.Transpose();
        Matrix<double> inverseSqrt = v * Matrix<double>.Build.DenseOfDiagonalVector(lambdas.Map(x => 1 / Math.Sqrt(x))) * v.Transpose();
        Matrix<double> wd = ToDouble(w);
        var svd = (wd * sqrt).Svd();
        Matrix<double> truncated = svd.U.SubMatrix(0, m, 0, r) * Matrix<double>.Build.DenseOfDiagonalArray(svd.S.SubVector(0, r).ToArray()) * svd.VT.SubMatrix(0, r, 0, n);
        Matrix<double> expected = truncated * inverseSqrt;
        Matrix<double> got = ToDouble(result.B) * ToDouble(result.A);
        Assert.True((got - expected).FrobeniusNorm() <= 1e-4 * expected.FrobeniusNorm(), $"B·A differs from the reference by {(got - expected).FrobeniusNorm()}");

        // The weighted error the optimizer reports is the reference's: √(Σ_{i>r} σ_i²) / ‖W·S‖.
        double tail = Math.Sqrt(svd.S.SubVector(r, Math.Min(m, n) - r).Sum(s => s * s));
        Assert.Equal(tail / (wd * sqrt).FrobeniusNorm(), result.WeightedError, 1e-5);

        // Brute force: alternating least squares on the same objective from a random start reaches no lower value.
        double als = AlternatingLeastSquares(wd, hd, r, seed: 1);
        double ours = WeightedResidual(wd, got, hd);
        Assert.True(ours <= als * (1 + 1e-5), $"closed form {ours} > least squares {als}");
        Assert.Equal(als, ours, als * 1e-3);

        // And the unweighted rank-r approximation is worse under this objective.
        using LoftQResult plain = new AlternatingOptimizer(new ZeroQuantizer(), new ExactSvdSolver()).Run(w, r, 1);
        double plainWeighted = WeightedResidual(wd, ToDouble(plain.B) * ToDouble(plain.A), hd);
        Assert.True(ours < plainWeighted * 0.99, $"{ours} vs plain SVD's {plainWeighted}");
    }

    [Fact]
    public void TheDiagonalVariantIsTheExactMinimiserOfItsObjective()
    {
        const int m = 9, n = 14, r = 2;
        var moments = new float[n];
        for (int j = 0; j < n; j++)
        {
            moments[j] = 0.1f + (j * j * 0.3f);
        }

        InputWeighting weighting = InputWeighting.Diagonal(moments, damping: 0.05);
        Assert.True(weighting.IsDiagonal);
        using Matrix w = Matrix.RandomNormal(m, n, seed: 4);
        using LoftQResult result = new AlternatingOptimizer(new ZeroQuantizer(), new ExactSvdSolver()) { Weighting = weighting }.Run(w, r, 1);
        Matrix<double> hd = Damped(Matrix<double>.Build.DenseOfDiagonalArray(moments.Select(x => (double)x).ToArray()), 0.05);
        Matrix<double> wd = ToDouble(w);
        double ours = WeightedResidual(wd, ToDouble(result.B) * ToDouble(result.A), hd);
        double als = AlternatingLeastSquares(wd, hd, r, seed: 2);
        Assert.True(ours <= als * (1 + 1e-5), $"closed form {ours} > least squares {als}");
        Assert.Equal(als, ours, als * 1e-3);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void IdentityInputsReduceToPlainLoftQBitForBit(bool searchScales)
    {
        const int n = 128;
        var identity = new float[n * n];
        for (int i = 0; i < n; i++)
        {
            identity[(i * n) + i] = 1f;
        }

        using Matrix w = Matrix.RandomNormal(96, n, seed: 3, scale: 0.02f);
        var quantizer = new NormalFloatQuantizer(2, 64, searchScales ? BlockScaleSearch.Default : null);
        LoftQResult Run(InputWeighting? weighting) =>
            new AlternatingOptimizer(quantizer, new RandomizedSvdSolver(seed: 7)) { Weighting = weighting, Seed = 7 }.Run(w, 8, 4);

        using LoftQResult plain = Run(null);
        foreach (InputWeighting weighting in new[]
        {
            InputWeighting.FromSecondMoments(identity, n), // X = I
            InputWeighting.FromSecondMoments(identity.Select(v => v * 2.5f).ToArray(), n), // X = c·I
            InputWeighting.Identity(n),
        })
        {
            Assert.True(weighting.IsIsotropic);
            using LoftQResult weighted = Run(weighting);
            Assert.Equal(plain.Quantized.PackedCodes.ToArray(), weighted.Quantized.PackedCodes.ToArray());
            Assert.Equal(plain.Quantized.Scales.ToArray(), weighted.Quantized.Scales.ToArray());
            Assert.Equal(plain.A.Span.ToArray(), weighted.A.Span.ToArray());
            Assert.Equal(plain.B.Span.ToArray(), weighted.B.Span.ToArray());
            Assert.Equal(plain.ErrorTrace, weighted.ErrorTrace);
            Assert.Equal(plain.RelativeError, weighted.WeightedError);
        }
    }

    [Fact]
    public void AnAlmostIsotropicFullWeightingAgreesWithPlainLoftQ()
    {
        // Not isotropic (tiny off-diagonal terms), so the transformed path runs; its B·A must agree with plain LoftQ's.
        const int n = 64;
        var h = new float[n * n];
        for (int i = 0; i < n; i++)
        {
            h[(i * n) + i] = 1f;
        }

        h[1] = h[n] = 1e-7f;
        InputWeighting weighting = InputWeighting.FromSecondMoments(h, n, damping: 0);
        Assert.False(weighting.IsIsotropic);
        using Matrix w = Matrix.RandomNormal(48, n, seed: 12);
        var quantizer = new NormalFloatQuantizer(4);
        using LoftQResult plain = new AlternatingOptimizer(quantizer, new ExactSvdSolver()).Run(w, 4, 1);
        using LoftQResult weighted = new AlternatingOptimizer(quantizer, new ExactSvdSolver()) { Weighting = weighting }.Run(w, 4, 1);
        using Matrix p = Matrix.Multiply(plain.B, plain.A), q = Matrix.Multiply(weighted.B, weighted.A);
        using Matrix d = p.Subtract(q);
        Assert.True(d.FrobeniusNorm() < 1e-4 * p.FrobeniusNorm(), $"{d.FrobeniusNorm()}");
        Assert.Equal(plain.RelativeError, weighted.RelativeError, 1e-5);
    }

    [Fact]
    public void RankDeficientStatisticsAreDampedIntoAnInvertibleFactor()
    {
        // 3 tokens, 16 features: H has rank 3.
        const int n = 16;
        float[] h = SecondMoments(3, n, seed: 2, out _);
        InputWeighting damped = InputWeighting.FromSecondMoments(h, n, damping: 0.01);
        Assert.Equal(0.01, damped.EffectiveDamping);
        InputWeighting undamped = InputWeighting.FromSecondMoments(h, n, damping: 0);
        Assert.True(undamped.EffectiveDamping > 0, "a singular H with no damping must be damped until it factors");
        using Matrix w = Matrix.RandomNormal(20, n, seed: 6);
        foreach (InputWeighting weighting in new[] { damped, undamped })
        {
            using LoftQResult result = new AlternatingOptimizer(new NormalFloatQuantizer(2, 16), new ExactSvdSolver()) { Weighting = weighting }.Run(w, 2, 3);
            Assert.All(result.A.Span.ToArray(), v => Assert.True(float.IsFinite(v)));
            Assert.All(result.B.Span.ToArray(), v => Assert.True(float.IsFinite(v)));
            Assert.True(result.WeightedError < result.QLoRAWeightedError);
        }

        // All-zero inputs carry no information: the weighting is isotropic (plain LoftQ).
        Assert.True(InputWeighting.FromSecondMoments(new float[n * n], n).IsIsotropic);
        Assert.True(InputWeighting.Diagonal(new float[n]).IsIsotropic);
    }

    [Fact]
    public void TheWeightedScaleSearchPicksTheGridRatioWithTheLeastWeightedError()
    {
        var search = new BlockScaleSearch(Steps: 10, MinRatio: 0.5f);
        var quantizer = new NormalFloatQuantizer(2, 32, search);
        using Matrix w = Matrix.RandomNormal(6, 96, seed: 8);
        w.Span[7] = 6f;
        var weights = new float[96];
        for (int j = 0; j < 96; j++)
        {
            weights[j] = j % 5 == 0 ? 20f : 0.2f;
        }

        var y = new float[w.Span.Length];
        QuantizedTensor q = quantizer.QuantizeDequantize(w.Span, w.Shape, y, weights);
        QuantizedTensor unweighted = quantizer.Quantize(w.Span, w.Shape);
        var plain = new NormalFloatQuantizer(2, 32);
        QuantizedTensor absmax = plain.Quantize(w.Span, w.Shape);
        int differ = 0;
        for (int blk = 0; blk < q.BlockCount; blk++)
        {
            ReadOnlySpan<float> x = w.Span.Slice(blk * 32, 32);
            ReadOnlySpan<float> wt = weights.AsSpan((blk * 32) % 96, 32);
            double best = double.PositiveInfinity;
            float bestScale = float.NaN;
            for (int k = 0; k <= search.Steps; k++)
            {
                float s = absmax.Scales[blk] * search.Ratio(k);
                double e = 0;
                for (int i = 0; i < 32; i++)
                {
                    double nearest = double.PositiveInfinity;
                    foreach (float level in quantizer.CodeBook)
                    {
                        double d = x[i] - ((double)level * s);
                        nearest = Math.Min(nearest, d * d);
                    }

                    e += wt[i] * nearest;
                }

                if (e < best * (1 - 1e-9))
                {
                    best = e;
                    bestScale = s;
                }
            }

            Assert.Equal(bestScale, q.Scales[blk]);
            differ += q.Scales[blk] != unweighted.Scales[blk] ? 1 : 0;
        }

        Assert.True(differ > 0, "the weights changed no block's scale");
        ArgumentException e2 = Assert.Throws<ArgumentException>(() => quantizer.QuantizeDequantize(w.Span, w.Shape, y, new float[95]));
        Assert.Contains("96", e2.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void LowRankFirstStartsFromTheTruncatedSvdOfW()
    {
        using Matrix w = Matrix.RandomNormal(32, 64, seed: 21);
        var quantizer = new NormalFloatQuantizer(2);
        using LoftQResult result = new AlternatingOptimizer(quantizer, new ExactSvdSolver()) { LowRankFirst = true }.Run(w, 4, 1);
        using LowRankFactors f0 = new ExactSvdSolver().Decompose(w, 4);
        using Matrix residual = w.Subtract(Matrix.Multiply(f0.B, f0.A));
        QuantizedTensor expected = quantizer.Quantize(residual.Span, residual.Shape);
        Assert.Equal(expected.PackedCodes.ToArray(), result.Quantized.PackedCodes.ToArray());
        Assert.Equal(expected.Scales.ToArray(), result.Quantized.Scales.ToArray());

        // The QLoRA error stays that of q(W).
        var deq = new float[w.Span.Length];
        quantizer.QuantizeDequantize(w.Span, w.Shape, deq);
        double qlora = Math.Sqrt(w.Span.ToArray().Zip(deq, (a, b) => (double)(a - b) * (a - b)).Sum()) / w.FrobeniusNorm();
        Assert.Equal(qlora, result.QLoRAError, 1e-6);
    }

    [Fact]
    public void BadStatisticsAreRefusedWithClearMessages()
    {
        const int n = 4;
        var h = new float[n * n];
        for (int i = 0; i < n; i++)
        {
            h[(i * n) + i] = 1f;
        }

        h[5] = float.NaN;
        ArgumentException nan = Assert.Throws<ArgumentException>(() => InputWeighting.FromSecondMoments(h, n));
        Assert.Contains("(1, 1)", nan.Message, StringComparison.Ordinal);
        h[5] = -1f;
        Assert.Contains("negative", Assert.Throws<ArgumentException>(() => InputWeighting.FromSecondMoments(h, n)).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => InputWeighting.FromSecondMoments(new float[15], n));
        Assert.Throws<ArgumentOutOfRangeException>(() => InputWeighting.FromSecondMoments(new float[16], n, damping: -1));
        Assert.Throws<ArgumentException>(() => InputWeighting.Diagonal([1f, float.PositiveInfinity]));
        Assert.Throws<ArgumentException>(() => InputWeighting.Diagonal([]));

        using Matrix w = Matrix.RandomNormal(8, 6, seed: 1);
        var optimizer = new AlternatingOptimizer(new NormalFloatQuantizer(4), new ExactSvdSolver()) { Weighting = InputWeighting.Diagonal([1f, 2f, 3f]) };
        ArgumentException shape = Assert.Throws<ArgumentException>(() => optimizer.Run(w, 2, 1));
        Assert.Contains("3 features but the weight has 6 columns", shape.Message, StringComparison.Ordinal);
    }

    /// <summary>min ‖(M − B·A)·S‖ over rank-r B·A by alternating least squares (weighted by H = S·Sᵀ), from a random start.</summary>
    private static double AlternatingLeastSquares(Matrix<double> m, Matrix<double> h, int r, int seed)
    {
        var random = new Random(seed);
        Matrix<double> a = Matrix<double>.Build.Dense(r, m.ColumnCount, (_, _) => random.NextDouble() - 0.5);
        Matrix<double> b = Matrix<double>.Build.Dense(m.RowCount, r);
        for (int it = 0; it < 2000; it++)
        {
            // B = M·H·Aᵀ·(A·H·Aᵀ)⁻¹, then A = (BᵀB)⁻¹·Bᵀ·M (H drops out of the A step: it is invertible).
            b = m * h * a.Transpose() * (a * h * a.Transpose()).Inverse();
            a = (b.TransposeThisAndMultiply(b)).Inverse() * b.Transpose() * m;
        }

        return WeightedResidual(m, b * a, h);
    }

    /// <summary>Quantizes everything to zero, so the optimizer's result is the low-rank step alone.</summary>
    private sealed class ZeroQuantizer : IQuantizer
    {
        public string Name => "zero";

        public int Bits => 2;

        public int BlockSize => 64;

        public QuantizedTensor Quantize(ReadOnlySpan<float> values, TensorShape shape)
        {
            int blocks = (values.Length + BlockSize - 1) / BlockSize;
            return new QuantizedTensor(shape, Bits, BlockSize, new byte[BitPacking.PackedLength(values.Length, Bits)], new float[blocks], [-1f, -0.5f, 0.5f, 1f], Name);
        }

        public void Dequantize(QuantizedTensor quantized, Span<float> destination) => quantized.Dequantize(destination);
    }
}
