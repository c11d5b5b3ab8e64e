using LoftQNet.Numerics;
using MathNet.Numerics.LinearAlgebra.Double;
using Matrix = LoftQNet.Numerics.Matrix;

namespace LoftQNet.LowRank;

/// <summary>
/// Randomized truncated SVD (Halko, Martinsson and Tropp 2011, algorithms 4.4 and 5.1) with subspace (power)
/// iterations, optionally warm-started from a previous decomposition.
/// </summary>
/// <remarks>
/// <para>
/// For an m×n matrix M and rank r it works with ℓ = min(r + oversampling, m, n) directions. Subspace bases are
/// stored as rows (so every row is contiguous): V (ℓ×n) spans a right subspace, U (ℓ×m) a left one. One pass is one
/// GEMM over the whole of M: U = orth(V·Mᵀ), then <see cref="PowerIterations"/> times V = orth(U·M), U = orth(V·Mᵀ),
/// and finally C = U·M (ℓ×n). A cold start uses 2 + 2·q passes. The small ℓ×n matrix C is split as C = L·P with P's
/// rows orthonormal and L = C·Pᵀ (ℓ×ℓ), L's SVD taken in double with Math.NET, giving
/// M ≈ (Uᵀ·Ũ)·Σ·(Ṽᵀ·P); B = Uᵀ·Ũ_r·√Σ_r and A = √Σ_r·Ṽ_rᵀ·P, no division by a singular value anywhere.
/// </para>
/// <para>
/// Warm start: the rows of the previous A (its right singular directions) plus fresh Gaussian directions seed V,
/// and <see cref="WarmPowerIterations"/> iterations follow. The Gaussian test matrix is counter-based, so results
/// depend only on the inputs and the seed (never on the thread count); the solver holds no mutable state and may
/// be used from several threads at once.
/// </para>
/// </remarks>
public sealed class RandomizedSvdSolver : IWarmStartLowRankSolver
{
    /// <summary>Creates a randomized solver.</summary>
    /// <param name="oversampling">Extra directions beyond the rank (0..1024).</param>
    /// <param name="powerIterations">Subspace iterations on a cold start (0..64); each costs two passes over the matrix.</param>
    /// <param name="seed">Seed of the Gaussian test matrix.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    public RandomizedSvdSolver(int oversampling = 8, int powerIterations = 2, int seed = 0)
    {
        if (oversampling is < 0 or > 1024)
        {
            throw new ArgumentOutOfRangeException(nameof(oversampling), oversampling, "Oversampling must be in 0..1024.");
        }

        if (powerIterations is < 0 or > 64)
        {
            throw new ArgumentOutOfRangeException(nameof(powerIterations), powerIterations, "Power iterations must be in 0..64.");
        }

        Oversampling = oversampling;
        PowerIterations = powerIterations;
        Seed = seed;
    }

    /// <inheritdoc/>
    public string Name => "randomized";

    /// <summary>Extra directions beyond the rank.</summary>
    public int Oversampling { get; }

    /// <summary>Subspace iterations on a cold start.</summary>
    public int PowerIterations { get; }

    /// <summary>Seed of the Gaussian test matrix.</summary>
    public int Seed { get; }

    /// <summary>Subspace iterations on a warm start (0..64; default 1).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is out of range.</exception>
    public int WarmPowerIterations
    {
        get;
        init
        {
            if (value is < 0 or > 64)
            {
                throw new ArgumentOutOfRangeException(nameof(WarmPowerIterations), value, "Warm power iterations must be in 0..64.");
            }

            field = value;
        }
    } = 1;

    /// <inheritdoc/>
    public LowRankFactors Decompose(Matrix residual, int rank) => Decompose(residual, rank, null);

    /// <inheritdoc/>
    public LowRankFactors Decompose(Matrix residual, int rank, LowRankFactors? previous)
    {
        LowRankValidation.Check(residual, rank);
        int m = residual.Rows, n = residual.Columns;
        int l = Math.Min(rank + Oversampling, Math.Min(m, n));
        bool warm = previous is not null && previous.A.Columns == n && previous.B.Rows == m;

        using var v = Matrix.Uninitialized(l, n);
        using var u = Matrix.Uninitialized(l, m);
        int iterations;
        if (warm)
        {
            int kept = Math.Min(previous!.Rank, l);
            previous.A.Span[..(kept * n)].CopyTo(v.Span);
            Gaussian.Fill(v.Span[(kept * n)..], Seed, 1f, FreshOffset(previous.SingularValues, n));
            Qr.OrthonormalizeRows(v.Span, l, n);
            iterations = WarmPowerIterations;
        }
        else
        {
            Gaussian.Fill(v.Span, Seed);
            iterations = PowerIterations;
        }

        ReadOnlySpan<float> mat = residual.Span;

        // U = orth(V·Mᵀ)
        Gemm.Multiply(Transpose.No, Transpose.Yes, l, m, n, 1f, v.Span, n, mat, n, 0f, u.Span, m);
        Qr.OrthonormalizeRows(u.Span, l, m);
        for (int it = 0; it < iterations; it++)
        {
            Gemm.Multiply(Transpose.No, Transpose.No, l, n, m, 1f, u.Span, m, mat, n, 0f, v.Span, n);
            Qr.OrthonormalizeRows(v.Span, l, n);
            Gemm.Multiply(Transpose.No, Transpose.Yes, l, m, n, 1f, v.Span, n, mat, n, 0f, u.Span, m);
            Qr.OrthonormalizeRows(u.Span, l, m);
        }

        // C = U·M (ℓ×n), kept in v; P = orth(C), L = C·Pᵀ.
        Gemm.Multiply(Transpose.No, Transpose.No, l, n, m, 1f, u.Span, m, mat, n, 0f, v.Span, n);
        using var p = v.Clone();
        Qr.OrthonormalizeRows(p.Span, l, n);
        // The small ℓ×ℓ projection C·Pᵀ in double: widen each row once, then ℓ² dot products.
        double[] cWide = Widen(v.Span), pWide = Widen(p.Span);
        var small = DenseMatrix.Create(l, l, 0.0);
        for (int i = 0; i < l; i++)
        {
            ReadOnlySpan<double> rowC = cWide.AsSpan(i * n, n);
            for (int j = 0; j < l; j++)
            {
                small[i, j] = System.Numerics.Tensors.TensorPrimitives.Dot<double>(rowC, pWide.AsSpan(j * n, n));
            }
        }

        (Matrix left, Matrix right, float[] s) = SplitSmall(small, rank);
        using (left)
        using (right)
        {
            var a = Matrix.Uninitialized(rank, n);
            var b = Matrix.Uninitialized(m, rank);
            Gemm.Multiply(Transpose.No, Transpose.No, rank, n, l, 1f, right.Span, l, p.Span, n, 0f, a.Span, n);
            Gemm.Multiply(Transpose.Yes, Transpose.No, m, rank, l, 1f, u.Span, m, left.Span, rank, 0f, b.Span, rank);
            return new LowRankFactors(a, b, s);
        }
    }

    /// <summary>
    /// The SVD of the small ℓ×ℓ projection L = C·Pᵀ (in double), split for the final products: returns
    /// <c>left</c> = Ũ_r·√Σ_r (ℓ×r), <c>right</c> = √Σ_r·Ṽ_rᵀ (r×ℓ) and the r largest singular values, so that
    /// A = right·P and B = Uᵀ·left. Shared with the GPU backend, which forms L on the device.
    /// </summary>
    internal static (Matrix Left, Matrix Right, float[] SingularValues) SplitSmall(DenseMatrix small, int rank)
    {
        int l = small.RowCount;
        var svd = small.Svd(computeVectors: true);
        int[] order = ExactSvdSolver.DescendingOrder(svd.S.ToArray());
        var s = new float[rank];
        var left = Matrix.Uninitialized(l, rank);
        var right = Matrix.Uninitialized(rank, l);
        for (int j = 0; j < rank; j++)
        {
            int k = order[j];
            double sigma = Math.Max(svd.S[k], 0.0);
            double root = Math.Sqrt(sigma);
            s[j] = (float)sigma;
            for (int i = 0; i < l; i++)
            {
                left[i, j] = (float)(root * svd.U[i, k]);
                right[j, i] = (float)(root * svd.VT[k, i]);
            }
        }

        return (left, right, s);
    }

    /// <summary>A stream offset for the fresh directions that differs between warm starts (derived from the previous spectrum).</summary>
    internal static long FreshOffset(IReadOnlyList<float> previousSingularValues, int n)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (float s in previousSingularValues)
        {
            h = (h ^ BitConverter.SingleToUInt32Bits(s)) * 0x100000001B3UL;
        }

        // Keep clear of the cold-start block [0, ℓ·n) and of overflow.
        return (long)(h >> 24) + ((long)n << 10);
    }

    private static double[] Widen(ReadOnlySpan<float> source)
    {
        var wide = new double[source.Length];
        System.Numerics.Tensors.TensorPrimitives.ConvertTruncating<float, double>(source, wide);
        return wide;
    }
}
