using LoftQNet.Numerics;

namespace LoftQNet.Tests.Numerics;

public class MatrixKernelsTests
{
    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 5)]
    [InlineData(8, 8)]
    [InlineData(17, 33)]
    [InlineData(64, 40)]
    [InlineData(100, 257)]
    public void TransposeMatchesNaive(int rows, int cols)
    {
        float[] src = GemmTests.Random(rows * cols, rows * cols);
        float[] dst = new float[rows * cols];
        MatrixKernels.Transpose(src, rows, cols, dst);
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < cols; j++)
            {
                Assert.Equal(src[(i * cols) + j], dst[(j * rows) + i]);
            }
        }
    }

    [Fact]
    public unsafe void ScalarAndSimdTransposeAgree()
    {
        const int rows = 45, cols = 70;
        float[] src = GemmTests.Random(rows * cols, 9);
        float[] simd = new float[rows * cols], scalar = new float[rows * cols];
        fixed (float* s = src)
        fixed (float* d1 = simd)
        fixed (float* d2 = scalar)
        {
            MatrixKernels.TransposeCore(s, rows, cols, d1, simd: true);
            MatrixKernels.TransposeCore(s, rows, cols, d2, simd: false);
        }

        Assert.Equal(scalar, simd);
        Assert.Equal(src[(3 * cols) + 44], scalar[(44 * rows) + 3]);
    }

    [Fact]
    public void TransposeRejectsShortAndOverlappingBuffers()
    {
        Assert.Throws<ArgumentException>(() => MatrixKernels.Transpose(new float[5], 2, 3, new float[6]));
        Assert.Throws<ArgumentException>(() => MatrixKernels.Transpose(new float[6], 2, 3, new float[5]));
        float[] same = new float[6];
        Assert.Throws<ArgumentException>(() => MatrixKernels.Transpose(same, 2, 3, same));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(15)]
    [InlineData(33)]
    [InlineData(1000)]
    [InlineData(100_003)]
    public void FrobeniusNormMatchesDoubleSum(int length)
    {
        float[] x = GemmTests.Random(length, length + 1);
        double expected = 0;
        foreach (float v in x)
        {
            expected += (double)v * v;
        }

        Assert.Equal(Math.Sqrt(expected), MatrixKernels.FrobeniusNorm(x), 1e-12 * Math.Max(1, Math.Sqrt(expected)));
        foreach (int width in new[] { 0, 256, 512 })
        {
            Assert.Equal(expected, MatrixKernels.SumOfSquares(x, width), 1e-12 * Math.Max(1, expected));
        }
    }

    [Fact]
    public void FrobeniusNormDoesNotOverflowInFloat()
    {
        float[] x = Enumerable.Repeat(1e30f, 64).ToArray();
        double expected = 8 * (double)1e30f;
        Assert.Equal(expected, MatrixKernels.FrobeniusNorm(x), expected * 1e-14);
    }

    [Fact]
    public void ElementwiseHelpersMatchScalarLoops()
    {
        float[] a = GemmTests.Random(37, 1), b = GemmTests.Random(37, 2);
        float[] d = (float[])a.Clone();
        MatrixKernels.SubtractInPlace(d, b);
        float[] e = (float[])a.Clone();
        MatrixKernels.AddScaled(e, -0.5f, b);
        float[] f = new float[37];
        MatrixKernels.Subtract(a, b, f);
        double sq = 0;
        for (int i = 0; i < 37; i++)
        {
            Assert.Equal(a[i] - b[i], d[i]);
            Assert.Equal(MathF.FusedMultiplyAdd(-0.5f, b[i], a[i]), e[i], 6);
            Assert.Equal(a[i] - b[i], f[i]);
            sq += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        }

        Assert.Equal(sq, MatrixKernels.SquaredDistance(a, b), 1e-9);
        Assert.Throws<ArgumentException>(() => MatrixKernels.SubtractInPlace(new float[3], new float[4]));
        Assert.Throws<ArgumentException>(() => MatrixKernels.AddScaled(new float[3], 1f, new float[2]));
        Assert.Throws<ArgumentException>(() => MatrixKernels.SquaredDistance(new float[3], new float[2]));
    }

    [Fact]
    public void SimdInfoNamesTheWidthsKernelAndThreads()
    {
        string text = SimdInfo.Describe();
        Assert.Contains("Vector512=", text);
        Assert.Contains("Vector256=", text);
        Assert.Contains($"Vector<float>.Count={System.Numerics.Vector<float>.Count}", text);
        Assert.Contains(Gemm.ActiveKernel, text);
        Assert.Contains($"of {Environment.ProcessorCount} processors", text);
    }
}
