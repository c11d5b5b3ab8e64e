using LoftQNet.LowRank;
using LoftQNet.Numerics;

namespace LoftQNet.Tests.LowRank;

public class RandomizedSvdSolverTests
{
    [Fact]
    public void MatchesKnownSpectrumAndNearOptimalTail()
    {
        // Slowly decaying spectrum: the regime where oversampling and power iterations matter.
        double[] s = Enumerable.Range(0, 200).Select(i => 5.0 / Math.Sqrt(1 + i)).ToArray();
        using Matrix mat = SpectrumMatrices.WithSpectrum(300, 200, s, seed: 7);
        const int Rank = 16;
        using LowRankFactors f = new RandomizedSvdSolver(oversampling: 8, powerIterations: 3, seed: 1).Decompose(mat, Rank);

        for (int j = 0; j < Rank; j++)
        {
            Assert.Equal(s[j], f.SingularValues[j], s[j] * 0.02);
            Assert.True(f.SingularValues[j] <= s[j] * (1 + 1e-5), "a Rayleigh–Ritz value cannot exceed the true singular value");
        }

        double tail = SpectrumMatrices.Tail(s, Rank);
        double error = SpectrumMatrices.ReconstructionError(mat, f);
        Assert.InRange(error, tail * 0.9999, tail * 1.005);
    }

    [Fact]
    public void AgreesWithExactSolverOnGaussianMatrix()
    {
        using Matrix mat = Matrix.RandomNormal(256, 192, 5);
        using LowRankFactors exact = new ExactSvdSolver().Decompose(mat, 12);
        using LowRankFactors rand = new RandomizedSvdSolver().Decompose(mat, 12);
        double e = SpectrumMatrices.ReconstructionError(mat, exact);
        double r = SpectrumMatrices.ReconstructionError(mat, rand);
        Assert.InRange(r, e * 0.99999, e * 1.01);
        Assert.InRange(rand.SingularValues[0], exact.SingularValues[0] * 0.95, exact.SingularValues[0] * 1.00001);
    }

    [Fact]
    public void ReproducesRankRMatrixExactly()
    {
        using Matrix x = Matrix.RandomNormal(150, 7, 3);
        using Matrix y = Matrix.RandomNormal(7, 110, 4);
        using Matrix mat = Matrix.Multiply(x, y);
        using LowRankFactors f = new RandomizedSvdSolver(oversampling: 4, powerIterations: 0).Decompose(mat, 7);
        Assert.True(SpectrumMatrices.ReconstructionError(mat, f) / mat.FrobeniusNorm() < 2e-6);
    }

    [Fact]
    public void FactorsSplitSquareRootOfSingularValues()
    {
        double[] s = Enumerable.Range(0, 60).Select(i => 3.0 * Math.Pow(0.85, i)).ToArray();
        using Matrix mat = SpectrumMatrices.WithSpectrum(100, 60, s, seed: 9);
        using LowRankFactors f = new RandomizedSvdSolver().Decompose(mat, 6);
        Assert.Equal((6, 60), (f.A.Rows, f.A.Columns));
        Assert.Equal((100, 6), (f.B.Rows, f.B.Columns));
        for (int j = 0; j < 6; j++)
        {
            double root = Math.Sqrt(f.SingularValues[j]);
            Assert.Equal(root, SpectrumMatrices.ColumnNorm(f.B, j), root * 1e-4);
            Assert.Equal(root, SpectrumMatrices.RowNorm(f.A, j), root * 1e-4);
            Assert.Equal(s[j], f.SingularValues[j], s[j] * 1e-4);
        }
    }

    [Fact]
    public void WarmStartReachesColdAccuracyWithFewerPowerIterations()
    {
        // A flat-ish spectrum (as LoftQ's quantization residuals have) and a perturbed second matrix, as between passes.
        double[] s = Enumerable.Range(0, 160).Select(i => 4.0 / Math.Pow(1 + i, 0.3)).ToArray();
        using Matrix first = SpectrumMatrices.WithSpectrum(240, 160, s, seed: 31);
        using Matrix noise = Matrix.RandomNormal(240, 160, 77, scale: 0.02f);
        using Matrix second = first.Subtract(noise);
        const int Rank = 12;

        var cold2 = new RandomizedSvdSolver(oversampling: 8, powerIterations: 2, seed: 3);
        var cold1 = new RandomizedSvdSolver(oversampling: 8, powerIterations: 1, seed: 3);
        var warm1 = new RandomizedSvdSolver(oversampling: 8, powerIterations: 2, seed: 3) { WarmPowerIterations = 1 };

        using LowRankFactors previous = cold2.Decompose(first, Rank);
        using LowRankFactors coldTwo = cold2.Decompose(second, Rank);
        using LowRankFactors coldOne = cold1.Decompose(second, Rank);
        using LowRankFactors warmOne = warm1.Decompose(second, Rank, previous);
        using LowRankFactors exact = new ExactSvdSolver().Decompose(second, Rank);

        double eColdTwo = SpectrumMatrices.ReconstructionError(second, coldTwo);
        double eColdOne = SpectrumMatrices.ReconstructionError(second, coldOne);
        double eWarmOne = SpectrumMatrices.ReconstructionError(second, warmOne);
        double eExact = SpectrumMatrices.ReconstructionError(second, exact);

        // Excess over the optimum: warm with one iteration beats cold with one and matches cold with two.
        Assert.True(eWarmOne - eExact < eColdOne - eExact, $"warm(1) {eWarmOne} vs cold(1) {eColdOne} (exact {eExact})");
        Assert.True(eWarmOne - eExact <= (eColdTwo - eExact) * 1.05, $"warm(1) {eWarmOne} vs cold(2) {eColdTwo} (exact {eExact})");
    }

    [Fact]
    public void WarmStartIgnoresPreviousFactorsOfAnotherShape()
    {
        using Matrix small = Matrix.RandomNormal(30, 20, 1);
        using Matrix mat = Matrix.RandomNormal(50, 40, 2);
        var solver = new RandomizedSvdSolver(seed: 4);
        using LowRankFactors previous = solver.Decompose(small, 4);
        using LowRankFactors cold = solver.Decompose(mat, 4);
        using LowRankFactors warm = solver.Decompose(mat, 4, previous);
        Assert.Equal(cold.A.Span.ToArray(), warm.A.Span.ToArray());
        Assert.Equal(cold.B.Span.ToArray(), warm.B.Span.ToArray());
    }

    [Fact]
    public void DeterministicForSeedAndThreadCount()
    {
        using Matrix mat = Matrix.RandomNormal(200, 150, 8);
        // Per-call thread counts (ComputeSettings.UseThreads): the process-wide setting is never changed.
        ComputeSettings.ThreadScope threadScope = default;
        try
        {
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(1);
            using LowRankFactors one = new RandomizedSvdSolver(seed: 5).Decompose(mat, 10);
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(4);
            using LowRankFactors four = new RandomizedSvdSolver(seed: 5).Decompose(mat, 10);
            using LowRankFactors other = new RandomizedSvdSolver(seed: 6).Decompose(mat, 10);
            Assert.Equal(one.A.Span.ToArray(), four.A.Span.ToArray());
            Assert.Equal(one.B.Span.ToArray(), four.B.Span.ToArray());
            Assert.NotEqual(one.A.Span.ToArray(), other.A.Span.ToArray());
        }
        finally
        {
            threadScope.Dispose();
        }
    }

    [Fact]
    public void OversamplingIsCappedByTheShortSide()
    {
        double[] s = [5, 4, 3, 2, 1, 0.5];
        using Matrix mat = SpectrumMatrices.WithSpectrum(40, 6, s, seed: 2);
        using LowRankFactors f = new RandomizedSvdSolver(oversampling: 50).Decompose(mat, 6);
        Assert.True(SpectrumMatrices.ReconstructionError(mat, f) < 1e-5 * mat.FrobeniusNorm());
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(31)]
    public void RejectsRankOutsideRange(int rank)
    {
        using Matrix mat = Matrix.RandomNormal(40, 30, 1);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new RandomizedSvdSolver().Decompose(mat, rank));
        Assert.Equal("rank", e.ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => new RandomizedSvdSolver().Decompose(mat, rank, null));
    }

    [Fact]
    public void ValidatesConstructorArguments()
    {
        Assert.Equal("oversampling", Assert.Throws<ArgumentOutOfRangeException>(() => new RandomizedSvdSolver(oversampling: -1)).ParamName);
        Assert.Equal("powerIterations", Assert.Throws<ArgumentOutOfRangeException>(() => new RandomizedSvdSolver(powerIterations: -1)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => new RandomizedSvdSolver { WarmPowerIterations = -2 });
        Assert.Throws<ArgumentNullException>(() => new RandomizedSvdSolver().Decompose(null!, 1));
        var solver = new RandomizedSvdSolver(3, 4, 5);
        Assert.Equal((3, 4, 5, "randomized"), (solver.Oversampling, solver.PowerIterations, solver.Seed, solver.Name));
    }
}
