using LoftQNet.LowRank;
using LoftQNet.Numerics;

namespace LoftQNet.Tests.LowRank;

public class ExactSvdSolverTests
{
    private static double[] Decaying(int k, double rate) => Enumerable.Range(0, k).Select(i => 10.0 * Math.Pow(rate, i)).ToArray();

    [Theory]
    [InlineData(120, 80, false)]  // full SVD path, tall
    [InlineData(80, 120, false)]  // full SVD path, wide
    [InlineData(120, 80, true)]   // Gram path, tall
    [InlineData(80, 120, true)]   // Gram path, wide
    [InlineData(300, 280, true)]  // Gram path chosen by Decompose (short side > 256)
    public void RecoversKnownSpectrumAndOptimalTail(int m, int n, bool gram)
    {
        double[] s = Decaying(Math.Min(m, n), 0.93);
        using Matrix mat = SpectrumMatrices.WithSpectrum(m, n, s, seed: 11);
        const int Rank = 10;
        using LowRankFactors f = gram ? ExactSvdSolver.DecomposeByGram(mat, Rank) : ExactSvdSolver.DecomposeBySvd(mat, Rank);
        using LowRankFactors viaPublic = new ExactSvdSolver().Decompose(mat, Rank);

        for (int j = 0; j < Rank; j++)
        {
            Assert.Equal(s[j], f.SingularValues[j], s[j] * 1e-4);
            Assert.Equal(s[j], viaPublic.SingularValues[j], s[j] * 1e-4);
        }

        double tail = SpectrumMatrices.Tail(s, Rank);
        double error = SpectrumMatrices.ReconstructionError(mat, f);
        Assert.InRange(error, tail * 0.999, tail * 1.001);
    }

    [Theory]
    [InlineData(64, 48, 6, false)]
    [InlineData(48, 64, 6, true)]
    [InlineData(300, 270, 5, false)]
    public void ReproducesRankRMatrixExactly(int m, int n, int rank, bool forceGram)
    {
        using Matrix x = Matrix.RandomNormal(m, rank, 3);
        using Matrix y = Matrix.RandomNormal(rank, n, 4);
        using Matrix mat = Matrix.Multiply(x, y);
        using LowRankFactors f = forceGram ? ExactSvdSolver.DecomposeByGram(mat, rank) : new ExactSvdSolver().Decompose(mat, rank);
        double relative = SpectrumMatrices.ReconstructionError(mat, f) / mat.FrobeniusNorm();
        Assert.True(relative < 2e-6, $"relative reconstruction error {relative}");
    }

    [Fact]
    public void RankAboveTrueRankGivesZeroTrailingValuesAndStillExact()
    {
        using Matrix x = Matrix.RandomNormal(40, 3, 5);
        using Matrix y = Matrix.RandomNormal(3, 30, 6);
        using Matrix mat = Matrix.Multiply(x, y);
        foreach (bool gram in new[] { false, true })
        {
            using LowRankFactors f = gram ? ExactSvdSolver.DecomposeByGram(mat, 6) : ExactSvdSolver.DecomposeBySvd(mat, 6);
            Assert.True(f.SingularValues[3] < 1e-4 * f.SingularValues[0]);
            Assert.True(SpectrumMatrices.ReconstructionError(mat, f) / mat.FrobeniusNorm() < 2e-6);
            Assert.All(f.A.Span.ToArray(), v => Assert.True(float.IsFinite(v)));
            Assert.All(f.B.Span.ToArray(), v => Assert.True(float.IsFinite(v)));
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void FactorsSplitSquareRootOfSingularValues(bool gram)
    {
        double[] s = Decaying(50, 0.9);
        using Matrix mat = SpectrumMatrices.WithSpectrum(90, 50, s, seed: 21);
        using LowRankFactors f = gram ? ExactSvdSolver.DecomposeByGram(mat, 8) : ExactSvdSolver.DecomposeBySvd(mat, 8);
        Assert.Equal(8, f.Rank);
        Assert.Equal((8, 50), (f.A.Rows, f.A.Columns));
        Assert.Equal((90, 8), (f.B.Rows, f.B.Columns));
        for (int j = 0; j < 8; j++)
        {
            double root = Math.Sqrt(s[j]);
            Assert.Equal(root, SpectrumMatrices.ColumnNorm(f.B, j), root * 1e-4);
            Assert.Equal(root, SpectrumMatrices.RowNorm(f.A, j), root * 1e-4);
            if (j > 0)
            {
                Assert.True(f.SingularValues[j] <= f.SingularValues[j - 1]);
            }
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-3)]
    [InlineData(21)]
    public void RejectsRankOutsideRange(int rank)
    {
        using Matrix mat = Matrix.RandomNormal(20, 30, 1);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new ExactSvdSolver().Decompose(mat, rank));
        Assert.Equal("rank", e.ParamName);
        Assert.Contains("min(rows, columns) = 20", e.Message);
    }

    [Fact]
    public void NameIsExact() => Assert.Equal("exact", new ExactSvdSolver().Name);
}
