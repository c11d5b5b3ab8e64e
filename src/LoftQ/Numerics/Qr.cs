using System.Numerics.Tensors;

namespace LoftQNet.Numerics;

/// <summary>Orthonormalisation (thin QR) on flat row-major buffers.</summary>
internal static class Qr
{
    /// <summary>
    /// Replaces the <paramref name="rows"/> rows (each of length <paramref name="cols"/>, rows ≤ cols) of
    /// <paramref name="a"/> by an orthonormal basis of their span, in order (Gram–Schmidt with one
    /// re-orthogonalisation pass, i.e. the Q factor of the QR of aᵀ). A row that is numerically dependent
    /// on the previous ones is replaced by a deterministic unit vector orthogonal to them.
    /// </summary>
    public static void OrthonormalizeRows(Span<float> a, int rows, int cols)
    {
        if (rows > cols)
        {
            throw new ArgumentException($"Cannot orthonormalise {rows} rows of length {cols}: at most {cols} are independent.");
        }

        for (int i = 0; i < rows; i++)
        {
            Span<float> row = a.Slice(i * cols, cols);
            float before = TensorPrimitives.Norm<float>(row);
            for (int pass = 0; pass < 2; pass++)
            {
                for (int j = 0; j < i; j++)
                {
                    ReadOnlySpan<float> q = a.Slice(j * cols, cols);
                    float d = TensorPrimitives.Dot<float>(q, row);
                    TensorPrimitives.MultiplyAdd(q, -d, row, row);
                }
            }

            float norm = TensorPrimitives.Norm<float>(row);
            if (!(norm > 1e-6f * Math.Max(before, float.Epsilon)))
            {
                ReplaceWithUnitVector(a, i, cols);
                continue;
            }

            TensorPrimitives.Multiply(row, 1f / norm, row);
        }
    }

    private static void ReplaceWithUnitVector(Span<float> a, int i, int cols)
    {
        Span<float> row = a.Slice(i * cols, cols);
        for (int attempt = 0; ; attempt++)
        {
            Gaussian.Fill(row, seed: 0x51ED + attempt, offset: (long)i * cols);
            for (int pass = 0; pass < 2; pass++)
            {
                for (int j = 0; j < i; j++)
                {
                    ReadOnlySpan<float> q = a.Slice(j * cols, cols);
                    TensorPrimitives.MultiplyAdd(q, -TensorPrimitives.Dot<float>(q, row), row, row);
                }
            }

            float norm = TensorPrimitives.Norm<float>(row);
            if (norm > 1e-3f)
            {
                TensorPrimitives.Multiply(row, 1f / norm, row);
                return;
            }
        }
    }
}
