using System.Numerics.Tensors;

namespace LoftQNet.Numerics;

/// <summary>
/// Single-precision general matrix multiply on row-major flat buffers:
/// <c>C[m×n] = alpha · op(A)[m×k] · op(B)[k×n] + beta · C</c>.
/// </summary>
/// <remarks>
/// Leading dimensions are row strides: op(A) = A is m×k with stride <c>lda ≥ k</c>; op(A) = Aᵀ means A is
/// stored k×m with stride <c>lda ≥ m</c>; likewise for B. When <c>beta == 0</c>, C is overwritten (NaNs in C
/// do not propagate), as in BLAS.
/// </remarks>
internal static class Gemm
{
    public static void Multiply(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb,
        float beta, Span<float> c, int ldc)
    {
        Validate(transA, transB, m, n, k, a.Length, lda, b.Length, ldb, c.Length, ldc);
        if (m == 0 || n == 0)
        {
            return;
        }

        // Reference implementation: correct for every case; the performance work replaces the inside.
        float[] bt = new float[(long)n * k];
        for (int p = 0; p < k; p++)
        {
            for (int j = 0; j < n; j++)
            {
                bt[(j * k) + p] = transB == Transpose.No ? b[(p * ldb) + j] : b[(j * ldb) + p];
            }
        }

        float[] arow = new float[k];
        for (int i = 0; i < m; i++)
        {
            for (int p = 0; p < k; p++)
            {
                arow[p] = transA == Transpose.No ? a[(i * lda) + p] : a[(p * lda) + i];
            }

            Span<float> crow = c.Slice(i * ldc, n);
            for (int j = 0; j < n; j++)
            {
                float dot = TensorPrimitives.Dot<float>(arow, bt.AsSpan(j * k, k));
                crow[j] = beta == 0f ? alpha * dot : (alpha * dot) + (beta * crow[j]);
            }
        }
    }

    internal static void Validate(
        Transpose transA, Transpose transB, int m, int n, int k,
        int aLength, int lda, int bLength, int ldb, int cLength, int ldc)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        int aRows = transA == Transpose.No ? m : k, aCols = transA == Transpose.No ? k : m;
        int bRows = transB == Transpose.No ? k : n, bCols = transB == Transpose.No ? n : k;
        CheckOperand("A", aRows, aCols, aLength, lda);
        CheckOperand("B", bRows, bCols, bLength, ldb);
        CheckOperand("C", m, n, cLength, ldc);
    }

    private static void CheckOperand(string name, int rows, int cols, int length, int ld)
    {
        if (ld < Math.Max(1, cols))
        {
            throw new ArgumentException($"GEMM operand {name}: leading dimension {ld} is smaller than its {cols} columns.");
        }

        if (rows > 0 && cols > 0 && ((long)(rows - 1) * ld) + cols > length)
        {
            throw new ArgumentException($"GEMM operand {name}: a {rows}x{cols} matrix with stride {ld} needs {((long)(rows - 1) * ld) + cols} elements, the buffer has {length}.");
        }
    }
}
