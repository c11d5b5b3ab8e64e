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
    /// rule; when a row of such a block cancels heavily or is replaced, the whole block is projected against all
    /// earlier rows again and re-orthonormalised (block CGS2), which keeps ‖QQᵀ − I‖ near float rounding even for
    /// power-iterated sketches whose condition number is far beyond 1/ε. Replacement vectors are hashed from the
    /// row index, so the result is deterministic and does not depend on the thread count.
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
        float[] coefficients = BufferPool.Floats.Rent(nt * q1);
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
            BufferPool.Floats.Return(coefficients);
        }
    }

    /// <summary>
    /// Orthonormalises rows [lo, hi) (already orthogonal to [0, lo)) by modified Gram–Schmidt. When a row loses
    /// most of its norm, or is replaced, what it kept along rows [0, lo) is no longer negligible relative to it:
    /// the block is then projected against the prefix with GEMMs and orthonormalised again (block CGS2).
    /// </summary>
    private static void GramSchmidtBase(Span<float> a, int lo, int hi, int cols, double[] original, double[] norms, double tolerance)
    {
        for (int round = 0; round <= MaxPasses; round++)
        {
            bool needPrefix = GramSchmidtWithinBlock(a, lo, hi, cols, original, norms, tolerance, round);
            if (!needPrefix || lo == 0)
            {
                return;
            }

            for (int i = lo; i < hi; i++)
            {
                norms[i] = 1;
            }

            ProjectOut(a, lo, hi, 0, lo, cols, original, norms, tolerance);
        }

        // Pathological input (e.g. nearly square with replacements falling into the prefix): row by row against everything before.
        for (int i = lo; i < hi; i++)
        {
            Span<float> row = a.Slice(i * cols, cols);
            double before = MatrixKernels.FrobeniusNorm(row);
            for (int pass = 0; pass < 2; pass++)
            {
                for (int j = 0; j < i; j++)
                {
                    ReadOnlySpan<float> q = a.Slice(j * cols, cols);
                    TensorPrimitives.FusedMultiplyAdd(q, -TensorPrimitives.Dot(q, row), row, row);
                }
            }

            double norm = MatrixKernels.FrobeniusNorm(row);
            if (!(norm > 0.5 * before))
            {
                ReplaceWithUnitVector(a, i, cols);
            }
            else
            {
                TensorPrimitives.Multiply(row, (float)(1.0 / norm), row);
            }
        }
    }

    /// <summary>
    /// One modified Gram–Schmidt sweep over rows [lo, hi) against each other only. Rows at the noise level are
    /// replaced by pseudo-random vectors (seeded by row and <paramref name="round"/>). Returns whether a row was replaced
    /// or lost more than 1 − 1/√2 of its norm, i.e. whether the block needs another projection against [0, lo).
    /// </summary>
    private static bool GramSchmidtWithinBlock(Span<float> a, int lo, int hi, int cols, double[] original, double[] norms, double tolerance, int round)
    {
        bool needPrefix = false;
        for (int i = lo; i < hi; i++)
        {
            Span<float> row = a.Slice(i * cols, cols);
            double entering = norms[i];
            double norm = ProjectWithinBlock(a, row, lo, i, cols, entering, tolerance * original[i]);
            if (!(norm > tolerance * original[i]))
            {
                FillGeneric(row, seed: 0x51ED + round, offset: (long)i * cols);
                double fresh = MatrixKernels.FrobeniusNorm(row);
                norm = ProjectWithinBlock(a, row, lo, i, cols, fresh, tolerance * fresh);
                needPrefix = true;
                entering = fresh;
            }

            needPrefix |= norm < ReorthogonalizeBelow * entering;
            TensorPrimitives.Multiply(row, (float)(1.0 / norm), row);
            original[i] = 1;
            norms[i] = 1;
        }

        return needPrefix;
    }

    /// <summary>Projects <paramref name="row"/> against rows [lo, i) (modified Gram–Schmidt, repeated while it loses much); returns its norm.</summary>
    private static double ProjectWithinBlock(Span<float> a, Span<float> row, int lo, int i, int cols, double norm, double floor)
    {
        for (int pass = 0; pass < MaxPasses && i > lo; pass++)
        {
            for (int j = lo; j < i; j++)
            {
                ReadOnlySpan<float> q = a.Slice(j * cols, cols);
                TensorPrimitives.FusedMultiplyAdd(q, -TensorPrimitives.Dot(q, row), row, row);
            }

            double after = MatrixKernels.FrobeniusNorm(row);
            bool again = after < ReorthogonalizeBelow * norm && after > floor;
            norm = after;
            if (!again)
            {
                break;
            }
        }

        return norm;
    }

    /// <summary>
    /// Fills <paramref name="row"/> with deterministic pseudo-random values uniform in [−1, 1) (a hash of seed and
    /// index; any generic direction will do, and this is much cheaper than Gaussian samples).
    /// </summary>
    internal static void FillGeneric(Span<float> row, long seed, long offset)
    {
        ulong key = (ulong)seed * 0x9E3779B97F4A7C15UL;
        for (int j = 0; j < row.Length; j++)
        {
            ulong z = key + ((ulong)(offset + j) * 0xD1B54A32D192ED03UL);
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            z ^= z >> 31;
            row[j] = ((z >> 40) * (2f / (1 << 24))) - 1f;
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
