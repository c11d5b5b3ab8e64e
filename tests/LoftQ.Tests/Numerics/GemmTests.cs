using LoftQNet.Numerics;

namespace LoftQNet.Tests.Numerics;

public class GemmTests
{
    private delegate void GemmCall(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc);

    public static TheoryData<int, int, int> OddShapes => new()
    {
        { 1, 1, 1 }, { 3, 17, 5 }, { 17, 3, 33 }, { 33, 65, 17 }, { 65, 33, 257 }, { 8, 32, 256 },
        { 9, 33, 300 }, { 257, 7, 65 }, { 5, 257, 3 }, { 200, 40, 520 }, { 1, 100, 70 }, { 70, 1, 33 },
    };

    public static TheoryData<string> Kernels => new() { "dispatch", "scalar", "v128", "v256", "v512" };

    [Theory]
    [MemberData(nameof(OddShapes))]
    public void AllTransposeCombinationsMatchDoubleReference(int m, int n, int k)
    {
        foreach (Transpose ta in new[] { Transpose.No, Transpose.Yes })
        {
            foreach (Transpose tb in new[] { Transpose.No, Transpose.Yes })
            {
                CheckAgainstReference(Gemm.Multiply, ta, tb, m, n, k, 1.5f, 0f, extraStride: 0, seed: m + (7 * n) + (13 * k));
                CheckAgainstReference(Gemm.Multiply, ta, tb, m, n, k, -1f, 1f, extraStride: 0, seed: m + n + k);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void EveryMicroKernelMatchesReferenceWithStridesAndBeta(string kernel)
    {
        GemmCall call = Resolve(kernel);
        // Small m / n read the operands in place, large ones (> Gemm.DirectThreshold) pack them.
        foreach ((int m, int n, int k) in new[] { (3, 5, 7), (33, 65, 17), (70, 90, 300), (13, 40, 600), (150, 140, 300) })
        {
            foreach (Transpose ta in new[] { Transpose.No, Transpose.Yes })
            {
                foreach (Transpose tb in new[] { Transpose.No, Transpose.Yes })
                {
                    CheckAgainstReference(call, ta, tb, m, n, k, 0.75f, -0.5f, extraStride: 3, seed: 11 * m);
                }
            }
        }
    }

    [Theory]
    [InlineData(75, 70, 530)]
    [InlineData(150, 140, 530)]
    public void AllMicroKernelsAreBitIdentical(int m, int n, int k)
    {
        float[] a = Random(m * k, 1), b = Random(k * n, 2), c0 = Random(m * n, 3);
        float[]? expected = null;
        foreach (string kernel in new[] { "scalar", "v128", "v256", "v512" })
        {
            float[] c = (float[])c0.Clone();
            Resolve(kernel)(Transpose.No, Transpose.Yes, m, n, k, 0.5f, a, k, b, k, 2f, c, n);
            if (expected is null)
            {
                expected = c;
            }
            else
            {
                Assert.Equal(expected, c);
            }
        }
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void ResultIsBitIdenticalForAnyThreadCount()
    {
        // Per-call thread counts (ComputeSettings.UseThreads): the process-wide setting is never changed.
        ComputeSettings.ThreadScope threadScope = default;
        try
        {
            foreach ((int m, int n, int k, Transpose ta) in new[] { (700, 333, 600, Transpose.No), (40, 2000, 900, Transpose.Yes), (1500, 72, 520, Transpose.No) })
            {
                int lda = ta == Transpose.No ? k : m;
                float[] a = Random(m * k, 5), b = Random(k * n, 6), c0 = Random(m * n, 7);
                float[]? expected = null;
                foreach (int threads in new[] { 1, 2, 3, 4 })
                {
                    threadScope.Dispose();
                    threadScope = ComputeSettings.UseThreads(threads);
                    float[] c = (float[])c0.Clone();
                    Gemm.Multiply(ta, Transpose.No, m, n, k, -1f, a, lda, b, n, 1f, c, n);
                    if (expected is null)
                    {
                        expected = c;
                    }
                    else
                    {
                        Assert.Equal(expected, c);
                    }
                }
            }
        }
        finally
        {
            threadScope.Dispose();
        }
    }

    [Fact]
    public void KBlockGroupingDoesNotChangeTheResult()
    {
        const int m = 150, n = 300, k = 1100;
        float[] a = Random(m * k, 12), b = Random(k * n, 13), c0 = Random(m * n, 14);
        float[] grouped = (float[])c0.Clone(), oneBlockPerGroup = (float[])c0.Clone();
        Gemm.Multiply(Transpose.No, Transpose.Yes, m, n, k, 1f, a, k, b, k, 1f, grouped, n);
        int saved = Gemm.MaxPackedB;
        try
        {
            Gemm.MaxPackedB = 1; // one k block per group: a barrier after every block
            Gemm.Multiply(Transpose.No, Transpose.Yes, m, n, k, 1f, a, k, b, k, 1f, oneBlockPerGroup, n);
        }
        finally
        {
            Gemm.MaxPackedB = saved;
        }

        Assert.Equal(grouped, oneBlockPerGroup);
        double[] expected = Reference(Transpose.No, Transpose.Yes, m, n, k, 1f, a, k, b, k);
        for (int i = 0; i < m * n; i++)
        {
            Assert.Equal(expected[i] + c0[i], grouped[i], 2e-3);
        }
    }

    [Fact]
    public void BetaZeroOverwritesNaNsInC()
    {
        const int m = 19, n = 37, k = 11;
        float[] a = Random(m * k, 8), b = Random(k * n, 9);
        float[] c = Enumerable.Repeat(float.NaN, m * n).ToArray();
        Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, a, k, b, n, 0f, c, n);
        double[] expected = Reference(Transpose.No, Transpose.No, m, n, k, 1f, a, k, b, n);
        for (int i = 0; i < m * n; i++)
        {
            Assert.False(float.IsNaN(c[i]));
            Assert.Equal(expected[i], c[i], 1e-4);
        }
    }

    [Fact]
    public void ZeroDepthScalesCByBeta()
    {
        float[] c = [1f, 2f, 3f, float.NaN];
        Gemm.Multiply(Transpose.No, Transpose.No, 2, 2, 0, 1f, [], 1, [], 2, 0.5f, c, 2);
        Assert.Equal(0.5f, c[0]);
        Assert.Equal(1.5f, c[2]);
        Assert.True(float.IsNaN(c[3]));

        float[] d = [float.NaN, 2f, 3f, 4f];
        Gemm.Multiply(Transpose.No, Transpose.No, 2, 2, 0, 1f, [], 1, [], 2, 0f, d, 2);
        Assert.Equal(new float[4], d);
    }

    [Fact]
    public void AlphaZeroDoesNotReadAOrB()
    {
        float[] a = [float.NaN, float.NaN], b = [float.NaN, float.NaN];
        float[] c = [4f, 8f, 12f, 16f];
        Gemm.Multiply(Transpose.No, Transpose.No, 2, 2, 1, 0f, a, 1, b, 2, 0.25f, c, 2);
        Assert.Equal(new[] { 1f, 2f, 3f, 4f }, c);
    }

    [Fact]
    public void StridedOutputLeavesPaddingUntouched()
    {
        const int m = 21, n = 35, k = 40, ldc = 41;
        float[] a = Random(m * k, 10), b = Random(k * n, 11);
        float[] c = Enumerable.Repeat(-7f, ((m - 1) * ldc) + n).ToArray();
        Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, a, k, b, n, 0f, c, ldc);
        for (int i = 0; i < m - 1; i++)
        {
            for (int j = n; j < ldc; j++)
            {
                Assert.Equal(-7f, c[(i * ldc) + j]);
            }
        }
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void SolverShapesMatchReference()
    {
        // W·Ω, Wᵀ·Y, Qᵀ·W and the residual W − B·A with a small inner dimension.
        CheckAgainstReference(Gemm.Multiply, Transpose.No, Transpose.No, 600, 72, 700, 1f, 0f, 0, 21);
        CheckAgainstReference(Gemm.Multiply, Transpose.Yes, Transpose.No, 700, 72, 600, 1f, 0f, 0, 22);
        CheckAgainstReference(Gemm.Multiply, Transpose.Yes, Transpose.No, 72, 700, 600, 1f, 0f, 0, 23);
        CheckAgainstReference(Gemm.Multiply, Transpose.No, Transpose.No, 600, 700, 16, -1f, 1f, 0, 24);
    }

    [Fact]
    public void InvalidArgumentsThrowNamingTheOperand()
    {
        float[] buf = new float[100];
        Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.Multiply(Transpose.No, Transpose.No, -1, 2, 2, 1f, buf, 2, buf, 2, 0f, buf, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.Multiply(Transpose.No, Transpose.No, 2, 2, -3, 1f, buf, 2, buf, 2, 0f, buf, 2));
        var lda = Assert.Throws<ArgumentException>(() => Gemm.Multiply(Transpose.No, Transpose.No, 4, 4, 5, 1f, buf, 4, buf, 4, 0f, buf, 4));
        Assert.Contains("operand A", lda.Message);
        var ldbT = Assert.Throws<ArgumentException>(() => Gemm.Multiply(Transpose.No, Transpose.Yes, 4, 6, 5, 1f, buf, 5, buf, 4, 0f, buf, 6));
        Assert.Contains("operand B", ldbT.Message);
        var shortC = Assert.Throws<ArgumentException>(() => Gemm.Multiply(Transpose.No, Transpose.No, 10, 10, 2, 1f, buf, 2, buf, 10, 0f, new float[99], 10));
        Assert.Contains("operand C", shortC.Message);
        Assert.Contains("99", shortC.Message);
    }

    internal static float[] Random(int length, int seed)
    {
        var m = new float[length];
        Gaussian.Fill(m, seed);
        return m;
    }

    internal static double[] Reference(Transpose ta, Transpose tb, int m, int n, int k, float alpha, float[] a, int lda, float[] b, int ldb)
    {
        var r = new double[m * n];
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++)
                {
                    double x = ta == Transpose.No ? a[(i * lda) + p] : a[(p * lda) + i];
                    double y = tb == Transpose.No ? b[(p * ldb) + j] : b[(j * ldb) + p];
                    s += x * y;
                }

                r[(i * n) + j] = alpha * s;
            }
        }

        return r;
    }

    private static GemmCall Resolve(string kernel) => kernel switch
    {
        "scalar" => Gemm.Multiply<KernelScalar>,
        "v128" => Gemm.Multiply<Kernel128>,
        "v256" => Gemm.Multiply<Kernel256>,
        "v512" => Gemm.Multiply<Kernel512>,
        _ => Gemm.Multiply,
    };

    private static void CheckAgainstReference(GemmCall call, Transpose ta, Transpose tb, int m, int n, int k, float alpha, float beta, int extraStride, int seed)
    {
        int aCols = ta == Transpose.No ? k : m, aRows = ta == Transpose.No ? m : k;
        int bCols = tb == Transpose.No ? n : k, bRows = tb == Transpose.No ? k : n;
        int lda = aCols + extraStride, ldb = bCols + extraStride, ldc = n + extraStride;
        float[] a = Random(Math.Max(1, ((aRows - 1) * lda) + aCols), seed);
        float[] b = Random(Math.Max(1, ((bRows - 1) * ldb) + bCols), seed + 1);
        float[] c = Random(((m - 1) * ldc) + n, seed + 2);
        float[] c0 = (float[])c.Clone();
        double[] ab = Reference(ta, tb, m, n, k, alpha, a, lda, b, ldb);
        call(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        double tolerance = 1e-5 * (Math.Sqrt(k) + 1) * 4;
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double expected = ab[(i * n) + j] + (beta * (double)c0[(i * ldc) + j]);
                float actual = c[(i * ldc) + j];
                if (Math.Abs(actual - expected) > tolerance * (1 + Math.Abs(expected)))
                {
                    Assert.Fail($"{ta}/{tb} {m}x{n}x{k} alpha={alpha} beta={beta}: C[{i},{j}] = {actual}, expected {expected}.");
                }
            }

            for (int j = n; j < ldc && i < m - 1; j++)
            {
                Assert.Equal(c0[(i * ldc) + j], c[(i * ldc) + j]);
            }
        }
    }
}
