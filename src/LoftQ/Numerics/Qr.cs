using System.Buffers;
using System.Numerics.Tensors;

namespace LoftQNet.Numerics;

/// <summary>Orthonormalisation (thin QR) on flat row-major buffers.</summary>
internal static class Qr
{
    /// <summary>Row blocks at or below this size are orthonormalised row by row; larger ones are split in two.</summary>
    internal const int BaseBlock = 16;

    /// <summary>
    /// A pass whose result keeps less than this fraction of a row's norm lost so much to cancellation that the
    /// row is projected again (the Daniel–Gragg–Kaufman–Stewart "twice is enough" criterion, 1/√2).
    /// </summary>
    private const double ReorthogonalizeBelow = 0.7071;

    private const int MaxPasses = 4;

    /// <summary>2⁻²⁴, the unit roundoff of <see cref="float"/>.</summary>
    private const double UnitRoundoff = 5.9604644775390625e-8;

    /// <summary>
    /// Replaces the <paramref name="rows"/> rows (each of length <paramref name="cols"/>, rows ≤ cols) of
    /// <paramref name="a"/> by an orthonormal basis of their span, in order (the Q factor of the QR of aᵀ, with a
    /// positive diagonal of R). A row that is numerically dependent on the previous ones (what remains of it is at
    /// the level of rounding noise) is replaced by a deterministic unit vector orthogonal to them.
    /// </summary>
    /// <remarks>
    /// Recursive block classical Gram–Schmidt: the first half of the rows is orthonormalised, the second half is
    /// projected against it with two GEMMs (repeated while a row loses more than 1 − 1/√2 of its norm, so
    /// ill-conditioned input stays orthogonal to working precision), then the second half is orthonormalised.
    /// Blocks of at most <see cref="BaseBlock"/> rows use modified Gram–Schmidt with the same re-orthogonalisation
    /// rule. The result does not depend on the thread count.
    /// </remarks>
    /// <exception cref="ArgumentException">rows &gt; cols, the span is too short, or a row is not finite.</exception>
    public static void OrthonormalizeRows(Span<float> a, int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        if (rows > cols)
        {
            throw new ArgumentException($"Cannot orthonormalise {rows} rows of length {cols}: at most {cols} are independent.");
        }

        if (a.Length < (long)rows * cols)
        {
            throw new ArgumentException($"The buffer holds {a.Length} values, {rows} rows of {cols} need {(long)rows * cols}.", nameof(a));
        }

        if (rows == 0)
        {
            return;
        }

        double[] original = ArrayPool<double>.Shared.Rent(rows);
        double[] norms = ArrayPool<double>.Shared.Rent(rows);
        try
        {
            for (int i = 0; i < rows; i++)
            {
                double norm = MatrixKernels.FrobeniusNorm(a.Slice(i * cols, cols));
                if (!double.IsFinite(norm))
                {
                    throw new ArgumentException($"Row {i} of the matrix to orthonormalise contains NaN or infinity.", nameof(a));
                }

                original[i] = norm;
                norms[i] = norm;
            }

            // Below this fraction of its original norm a row is rounding noise: float dot products over `cols`
            // terms carry errors of a few ε·√cols.
            double tolerance = Math.Max(1e-6, 4 * UnitRoundoff * Math.Sqrt(cols));
            Orthonormalize(a, 0, rows, cols, original, norms, tolerance);
        }
        finally
        {
            ArrayPool<double>.Shared.Return(original);
            ArrayPool<double>.Shared.Return(norms);
        }
    }

    /// <summary>Orthonormalises rows [lo, hi), which are already orthogonal to rows [0, lo).</summary>
    private static void Orthonormalize(Span<float> a, int lo, int hi, int cols, double[] original, double[] norms, double tolerance)
    {
        if (hi - lo <= BaseBlock)
        {
            GramSchmidtBase(a, lo, hi, cols, original, norms, tolerance);
            return;
        }

        int mid = lo + ((hi - lo) / 2);
        Orthonormalize(a, lo, mid, cols, original, norms, tolerance);
        ProjectOut(a, mid, hi, lo, mid, cols, original, norms, tolerance);
        Orthonormalize(a, mid, hi, cols, original, norms, tolerance);
    }

    /// <summary>
    /// Removes from rows [t0, t1) their components along the orthonormal rows [q0, q1). A row that loses most of its
    /// norm is projected again, then against the whole prefix [0, q1): the cancellation also magnified what earlier
    /// stages left of it along rows [0, q0).
    /// </summary>
    private static void ProjectOut(Span<float> a, int t0, int t1, int q0, int q1, int cols, double[] original, double[] norms, double tolerance)
    {
        int nt = t1 - t0;
        float[] coefficients = ArrayPool<float>.Shared.Rent(nt * q1);
        try
        {
            Span<float> target = a.Slice(t0 * cols, nt * cols);
            for (int pass = 0; pass < MaxPasses; pass++)
            {
                int first = pass == 0 ? q0 : 0, nq = q1 - first;
                Span<float> coef = coefficients.AsSpan(0, nt * nq);
                ReadOnlySpan<float> basis = a.Slice(first * cols, nq * cols);
                Gemm.Multiply(Transpose.No, Transpose.Yes, nt, nq, cols, 1f, target, cols, basis, cols, 0f, coef, nq);
                Gemm.Multiply(Transpose.No, Transpose.No, nt, cols, nq, -1f, coef, nq, basis, cols, 1f, target, cols);
                bool again = false;
                for (int i = t0; i < t1; i++)
                {
                    double before = norms[i];
                    double after = MatrixKernels.FrobeniusNorm(a.Slice(i * cols, cols));
                    norms[i] = after;
                    again |= after < ReorthogonalizeBelow * before && after > tolerance * original[i];
                }

                if (!again)
                {
                    break;
                }
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(coefficients);
        }
    }

    /// <summary>
    /// Modified Gram–Schmidt on rows [lo, hi) (already orthogonal to [0, lo)); a row that loses most of its norm is
    /// projected again against every row before it.
    /// </summary>
    private static void GramSchmidtBase(Span<float> a, int lo, int hi, int cols, double[] original, double[] norms, double tolerance)
    {
        float[] coefficients = ArrayPool<float>.Shared.Rent(Math.Max(1, hi));
        try
        {
            for (int i = lo; i < hi; i++)
            {
                Span<float> row = a.Slice(i * cols, cols);
                double norm = norms[i];
                for (int pass = 0; pass < MaxPasses && i > 0; pass++)
                {
                    if (pass == 0)
                    {
                        for (int j = lo; j < i; j++)
                        {
                            ReadOnlySpan<float> q = a.Slice(j * cols, cols);
                            TensorPrimitives.FusedMultiplyAdd(q, -TensorPrimitives.Dot(q, row), row, row);
                        }
                    }
                    else
                    {
                        // Classical Gram–Schmidt against the whole prefix: two matrix-vector products.
                        Span<float> coef = coefficients.AsSpan(0, i);
                        ReadOnlySpan<float> basis = a[..(i * cols)];
                        Gemm.Multiply(Transpose.No, Transpose.Yes, 1, i, cols, 1f, row, cols, basis, cols, 0f, coef, i);
                        Gemm.Multiply(Transpose.No, Transpose.No, 1, cols, i, -1f, coef, i, basis, cols, 1f, row, cols);
                    }

                    double after = MatrixKernels.FrobeniusNorm(row);
                    bool again = after < ReorthogonalizeBelow * norm && after > tolerance * original[i];
                    norm = after;
                    if (!again)
                    {
                        break;
                    }
                }

                if (!(norm > tolerance * original[i]))
                {
                    ReplaceWithUnitVector(a, i, cols);
                }
                else
                {
                    TensorPrimitives.Multiply(row, (float)(1.0 / norm), row);
                }

                norms[i] = 1;
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(coefficients);
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
                    TensorPrimitives.FusedMultiplyAdd(q, -TensorPrimitives.Dot(q, row), row, row);
                }
            }

            double norm = MatrixKernels.FrobeniusNorm(row);
            if (norm > 1e-3 * Math.Sqrt(cols))
            {
                TensorPrimitives.Multiply(row, (float)(1.0 / norm), row);
                return;
            }
        }
    }
}
