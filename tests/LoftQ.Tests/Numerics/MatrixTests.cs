using LoftQNet.Numerics;

namespace LoftQNet.Tests.Numerics;

public class MatrixTests
{
    [Fact]
    public void ZerosIsZeroFilledEvenOnReusedPoolMemory()
    {
        using (var dirty = Matrix.FromSpan(4, 4, Enumerable.Repeat(3f, 16).ToArray()))
        {
        }

        using var m = Matrix.Zeros(4, 4);
        Assert.Equal(4, m.Rows);
        Assert.Equal(4, m.Columns);
        Assert.All(m.Span.ToArray(), v => Assert.Equal(0f, v));
        Assert.Equal(new TensorShape(4, 4), m.Shape);
    }

    [Fact]
    public void FromSpanChecksLengthAndCopies()
    {
        var e = Assert.Throws<ArgumentException>(() => Matrix.FromSpan(2, 3, new float[5]));
        Assert.Equal("rowMajor", e.ParamName);
        float[] data = [1, 2, 3, 4, 5, 6];
        using var m = Matrix.FromSpan(2, 3, data);
        data[0] = 100;
        Assert.Equal(1f, m[0, 0]);
        Assert.Equal(6f, m[1, 2]);
        Assert.Equal(new float[] { 4, 5, 6 }, m.Row(1).ToArray());
    }

    [Fact]
    public void RowAndIndexerCheckBounds()
    {
        using var m = Matrix.Zeros(2, 3);
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Row(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Row(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => m[0, 3]);
        Assert.Throws<ArgumentOutOfRangeException>(() => m[2, 0]);
    }

    [Fact]
    public void DisposedMatrixThrowsOnAccess()
    {
        var m = Matrix.Zeros(2, 2);
        m.Dispose();
        m.Dispose(); // idempotent
        Assert.Throws<ObjectDisposedException>(() => m[0, 0]);
        Assert.Throws<ObjectDisposedException>(() => m.Row(0));
        Assert.Throws<ObjectDisposedException>(() => _ = m.Span.Length);
    }

    [Fact]
    public void MultiplyTransposeAndNormMatchNaive()
    {
        using var a = Matrix.FromSpan(2, 3, [1, 2, 3, 4, 5, 6]);
        using var b = Matrix.FromSpan(3, 2, [7, 8, 9, 10, 11, 12]);
        using var c = Matrix.Multiply(a, b);
        Assert.Equal(new float[] { 58, 64, 139, 154 }, c.Span.ToArray());
        using var ct = Matrix.Multiply(b, a, transposeA: true, transposeB: true);
        Assert.Equal(new float[] { 58, 139, 64, 154 }, ct.Span.ToArray());
        using var at = a.Transpose();
        Assert.Equal(new float[] { 1, 4, 2, 5, 3, 6 }, at.Span.ToArray());
        Assert.Equal(Math.Sqrt(91), a.FrobeniusNorm(), 1e-12);
        var e = Assert.Throws<ArgumentException>(() => Matrix.Multiply(a, a));
        Assert.Contains("Inner dimensions", e.Message);
    }

    [Fact]
    public void SubtractChecksShape()
    {
        using var a = Matrix.FromSpan(1, 2, [5, 7]);
        using var b = Matrix.FromSpan(1, 2, [1, 2]);
        using var d = a.Subtract(b);
        Assert.Equal(new float[] { 4, 5 }, d.Span.ToArray());
        using var wrong = Matrix.Zeros(2, 1);
        Assert.Throws<ArgumentException>(() => a.Subtract(wrong));
    }
}
