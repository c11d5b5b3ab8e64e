using LoftQNet.Numerics;

namespace LoftQNet.Tests.Numerics;

public class QrTests
{
    [Theory]
    [InlineData(1, 5)]
    [InlineData(7, 7)]
    [InlineData(16, 40)]
    [InlineData(17, 33)]
    [InlineData(72, 1000)]
    [InlineData(100, 130)]
    public void RandomRowsBecomeOrthonormalAndKeepTheirSpan(int rows, int cols)
    {
        float[] original = GemmTests.Random(rows * cols, rows + cols);
        float[] q = (float[])original.Clone();
        Qr.OrthonormalizeRows(q, rows, cols);
        Assert.True(OrthonormalityError(q, rows, cols) < 1e-5, $"‖QQᵀ − I‖max = {OrthonormalityError(q, rows, cols)}");
        Assert.True(SpanResidual(original, q, rows, cols) < 1e-5, $"span residual {SpanResidual(original, q, rows, cols)}");
        AssertTriangular(original, q, rows, cols);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void IllConditionedPowerIteratedRowsStayOrthonormal()
    {
        // Rows of (G Gᵀ)² G Ω style: singular values spread over many orders of magnitude.
        const int n = 300, rows = 64, cols = 300;
        float[] g = GemmTests.Random(n * n, 1);
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++)
            {
                g[(i * n) + j] *= MathF.Pow(0.9f, j); // graded columns: strongly decaying spectrum
            }
        }

        float[] y = GemmTests.Random(rows * n, 2);
        float[] tmp = new float[rows * n];
        for (int power = 0; power < 3; power++)
        {
            Gemm.Multiply(Transpose.No, Transpose.No, rows, n, n, 1f, y, n, g, n, 0f, tmp, n);
            Gemm.Multiply(Transpose.No, Transpose.Yes, rows, n, n, 1f, tmp, n, g, n, 0f, y, n);
        }

        float[] original = (float[])y.Clone();
        Qr.OrthonormalizeRows(y, rows, cols);
        double error = OrthonormalityError(y, rows, cols);
        Assert.True(error < 1e-5, $"‖QQᵀ − I‖max = {error}");
        Assert.True(SpanResidual(original, y, rows, cols) < 1e-4);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void PowerIteratedSketchOfSolverSizeStaysOrthonormal()
    {
        // The randomized SVD's range finder: rows of Ωᵀ·Wᵀ·(W·Wᵀ)² for a W with a decaying spectrum, so the
        // singular values of the sketch span far more than 1/ε of float.
        const int outDim = 2048, inDim = 512, rows = 96;
        float[] w = GemmTests.Random(outDim * inDim, 31);
        for (int i = 0; i < outDim; i++)
        {
            for (int j = 0; j < inDim; j++)
            {
                w[(i * inDim) + j] *= MathF.Pow(0.95f, j);
            }
        }

        float[] omega = GemmTests.Random(inDim * rows, 32);
        float[] z = new float[rows * outDim], t = new float[rows * inDim];
        Gemm.Multiply(Transpose.Yes, Transpose.Yes, rows, outDim, inDim, 1f, omega, rows, w, inDim, 0f, z, outDim);
        for (int power = 0; power < 2; power++)
        {
            Gemm.Multiply(Transpose.No, Transpose.No, rows, inDim, outDim, 1f, z, outDim, w, inDim, 0f, t, inDim);
            Gemm.Multiply(Transpose.No, Transpose.Yes, rows, outDim, inDim, 1f, t, inDim, w, inDim, 0f, z, outDim);
        }

        float[] original = (float[])z.Clone();
        Qr.OrthonormalizeRows(z, rows, outDim);
        double error = OrthonormalityError(z, rows, outDim);
        Assert.True(error < 2e-6, $"‖QQᵀ − I‖max = {error}");
        // Rows whose remainder is below the rounding-noise tolerance (4·2⁻²⁴·√cols ≈ 1.1e-5 of their norm here) are
        // replaced, so that much of a row may fall outside the span.
        double span = SpanResidual(original, z, rows, outDim);
        Assert.True(span < 3e-5, $"span residual {span}");
    }

    [Theory]
    [InlineData(96, 1024, 24)]
    [InlineData(40, 48, 30)]
    public void NumericallyRankDeficientRowsGiveAnOrthonormalBasisContainingThem(int rows, int cols, int rank)
    {
        // rows = C·B with rank-many graded directions (weights 0.8^j): most rows are dependent at float precision.
        float[] c = GemmTests.Random(rows * rank, 41), b = GemmTests.Random(rank * cols, 42);
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < rank; j++)
            {
                c[(i * rank) + j] *= MathF.Pow(0.8f, j);
            }
        }

        float[] a = new float[rows * cols];
        Gemm.Multiply(Transpose.No, Transpose.No, rows, cols, rank, 1f, c, rank, b, cols, 0f, a, cols);
        float[] original = (float[])a.Clone();
        Qr.OrthonormalizeRows(a, rows, cols);
        double error = OrthonormalityError(a, rows, cols);
        Assert.True(error < 2e-6, $"‖QQᵀ − I‖max = {error}");
        Assert.True(SpanResidual(original, a, rows, cols) < 3e-5);
    }

    [Fact]
    public void DependentAndZeroRowsAreReplacedByOrthogonalUnitVectors()
    {
        const int rows = 40, cols = 64;
        float[] a = GemmTests.Random(rows * cols, 3);
        // Row 5 = 2·row 1 − row 3; row 9 is zero; row 30 duplicates row 20.
        for (int j = 0; j < cols; j++)
        {
            a[(5 * cols) + j] = (2 * a[(1 * cols) + j]) - a[(3 * cols) + j];
            a[(9 * cols) + j] = 0f;
            a[(30 * cols) + j] = a[(20 * cols) + j];
        }

        float[] original = (float[])a.Clone();
        float[] again = (float[])a.Clone();
        Qr.OrthonormalizeRows(a, rows, cols);
        Qr.OrthonormalizeRows(again, rows, cols);
        Assert.Equal(a, again); // deterministic
        Assert.True(OrthonormalityError(a, rows, cols) < 1e-5);
        Assert.True(SpanResidual(original, a, rows, cols) < 1e-5);
        Assert.All(a, v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void AllZeroInputGivesAnOrthonormalSet()
    {
        float[] a = new float[5 * 9];
        Qr.OrthonormalizeRows(a, 5, 9);
        Assert.True(OrthonormalityError(a, 5, 9) < 1e-5);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void ResultIsBitIdenticalForAnyThreadCount()
    {
        const int rows = 96, cols = 3000;
        float[] a0 = GemmTests.Random(rows * cols, 4);
        // Per-call thread counts (ComputeSettings.UseThreads): the process-wide setting is never changed.
        ComputeSettings.ThreadScope threadScope = default;
        try
        {
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(1);
            float[] one = (float[])a0.Clone();
            Qr.OrthonormalizeRows(one, rows, cols);
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(3);
            float[] three = (float[])a0.Clone();
            Qr.OrthonormalizeRows(three, rows, cols);
            Assert.Equal(one, three);
        }
        finally
        {
            threadScope.Dispose();
        }
    }

    [Fact]
    public void InvalidArgumentsThrow()
    {
        Assert.Throws<ArgumentException>(() => Qr.OrthonormalizeRows(new float[12], 4, 3));
        Assert.Throws<ArgumentException>(() => Qr.OrthonormalizeRows(new float[5], 2, 3));
        float[] nan = GemmTests.Random(2 * 4, 5);
        nan[6] = float.NaN;
        var e = Assert.Throws<ArgumentException>(() => Qr.OrthonormalizeRows(nan, 2, 4));
        Assert.Contains("Row 1", e.Message);
    }

    private static double OrthonormalityError(float[] q, int rows, int cols)
    {
        double worst = 0;
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j <= i; j++)
            {
                double s = 0;
                for (int p = 0; p < cols; p++)
                {
                    s += (double)q[(i * cols) + p] * q[(j * cols) + p];
                }

                worst = Math.Max(worst, Math.Abs(s - (i == j ? 1 : 0)));
            }
        }

        return worst;
    }

    /// <summary>max_i ‖a_i − QᵀQ a_i‖ / ‖a_i‖ (double precision): the rows of a lie in the span of Q.</summary>
    private static double SpanResidual(float[] a, float[] q, int rows, int cols)
    {
        double worst = 0;
        var r = new double[cols];
        for (int i = 0; i < rows; i++)
        {
            double norm = 0;
            for (int p = 0; p < cols; p++)
            {
                r[p] = a[(i * cols) + p];
                norm += r[p] * r[p];
            }

            if (norm == 0)
            {
                continue;
            }

            for (int j = 0; j < rows; j++)
            {
                double d = 0;
                for (int p = 0; p < cols; p++)
                {
                    d += q[(j * cols) + p] * r[p];
                }

                for (int p = 0; p < cols; p++)
                {
                    r[p] -= d * q[(j * cols) + p];
                }
            }

            double res = 0;
            for (int p = 0; p < cols; p++)
            {
                res += r[p] * r[p];
            }

            worst = Math.Max(worst, Math.Sqrt(res / norm));
        }

        return worst;
    }

    /// <summary>Row i of a only uses q_0..q_i, with a positive coefficient on q_i (R is upper triangular with a positive diagonal).</summary>
    private static void AssertTriangular(float[] a, float[] q, int rows, int cols)
    {
        for (int i = 0; i < rows; i++)
        {
            double norm = 0;
            for (int p = 0; p < cols; p++)
            {
                norm += (double)a[(i * cols) + p] * a[(i * cols) + p];
            }

            for (int j = i; j < rows; j++)
            {
                double d = 0;
                for (int p = 0; p < cols; p++)
                {
                    d += (double)q[(j * cols) + p] * a[(i * cols) + p];
                }

                if (j == i)
                {
                    Assert.True(d > 0, $"R[{i},{i}] = {d}");
                }
                else
                {
                    Assert.True(Math.Abs(d) < 1e-4 * Math.Sqrt(norm), $"R[{j},{i}] = {d} should vanish");
                }
            }
        }
    }
}
