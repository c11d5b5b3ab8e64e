using LoftQNet.Numerics;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.LinearAlgebra.Double;
using Matrix = LoftQNet.Numerics.Matrix;

namespace LoftQNet.LowRank;

/// <summary>
/// Truncated SVD computed exactly (to floating-point accuracy) in double precision with Math.NET Numerics.
/// </summary>
/// <remarks>
/// Small matrices (the short side at most <see cref="FullSvdLimit"/>) go through Math.NET's full SVD. Larger ones
/// use the symmetric eigen-decomposition of the Gram matrix of the short side (MᵀM or MMᵀ, in double), which is
/// several times faster than a full SVD and, being computed in double, gives the leading singular triplets to well
/// beyond float accuracy; the other factor follows by one projection. Cost O(mn·min(m, n)) either way.
/// </remarks>
public sealed class ExactSvdSolver : ILowRankSolver
{
    /// <summary>The largest short side for which the full Math.NET SVD is used.</summary>
    internal const int FullSvdLimit = 256;

    /// <inheritdoc/>
    public string Name => "exact";

    /// <inheritdoc/>
    public LowRankFactors Decompose(Matrix residual, int rank)
    {
        LowRankValidation.Check(residual, rank);
        return Math.Min(residual.Rows, residual.Columns) <= FullSvdLimit
            ? DecomposeBySvd(residual, rank)
            : DecomposeByGram(residual, rank);
    }

    /// <summary>Full SVD path (exposed so tests can compare both paths on one matrix).</summary>
    internal static LowRankFactors DecomposeBySvd(Matrix residual, int rank)
    {
        LowRankValidation.Check(residual, rank);
        int m = residual.Rows, n = residual.Columns;

        // The row-major float buffer is, read column-major, the n×m transpose X = Mᵀ.
        DenseMatrix x = ToTransposedDouble(residual);
        var svd = x.Svd(computeVectors: true); // X = U' S V'ᵀ  ⇒  M = V' S U'ᵀ.
        Matrix<double> leftOfM = svd.VT; // rows of V'ᵀ are the left singular vectors of M (length m).
        Matrix<double> rightOfM = svd.U; // columns of U' are the right singular vectors of M (length n).

        // Math.NET returns the singular values in descending order; sort anyway so the contract holds regardless.
        int[] order = DescendingOrder(svd.S.ToArray());
        var a = Matrix.Uninitialized(rank, n);
        var b = Matrix.Uninitialized(m, rank);
        var s = new float[rank];
        for (int j = 0; j < rank; j++)
        {
            int k = order[j];
            double sigma = Math.Max(svd.S[k], 0.0);
            double root = Math.Sqrt(sigma);
            s[j] = (float)sigma;
            Span<float> aRow = a.Row(j);
            for (int c = 0; c < n; c++)
            {
                aRow[c] = (float)(root * rightOfM[c, k]);
            }

            for (int r = 0; r < m; r++)
            {
                b[r, j] = (float)(root * leftOfM[k, r]);
            }
        }

        return new LowRankFactors(a, b, s);
    }

    /// <summary>Gram eigen-decomposition path (exposed so tests can compare both paths on one matrix).</summary>
    internal static LowRankFactors DecomposeByGram(Matrix residual, int rank)
    {
        LowRankValidation.Check(residual, rank);
        int m = residual.Rows, n = residual.Columns;
        DenseMatrix x = ToTransposedDouble(residual); // n×m, X = Mᵀ.
        bool tall = m >= n;

        // Gram of the short side: tall ⇒ MᵀM = X·Xᵀ (n×n); wide ⇒ MMᵀ = Xᵀ·X (m×m).
        Matrix<double> gram = tall ? x.TransposeAndMultiply(x) : x.TransposeThisAndMultiply(x);
        var evd = gram.Evd(Symmetricity.Symmetric);
        int size = gram.RowCount;
        var lambda = new double[size];
        for (int i = 0; i < size; i++)
        {
            lambda[i] = evd.EigenValues[i].Real;
        }

        int[] order = DescendingOrder(lambda);
        double sigmaMax = Math.Sqrt(Math.Max(lambda[order[0]], 0.0));
        var basis = DenseMatrix.Create(size, rank, 0.0);
        var sigma = new double[rank];
        for (int j = 0; j < rank; j++)
        {
            sigma[j] = Math.Sqrt(Math.Max(lambda[order[j]], 0.0));
            basis.SetColumn(j, evd.EigenVectors.Column(order[j]));
        }

        // Projection onto the long side: tall ⇒ M·V = Xᵀ·V (m×r); wide ⇒ Mᵀ·U = X·U (n×r). Column j has norm σ_j.
        Matrix<double> projected = tall ? x.TransposeThisAndMultiply(basis) : x.Multiply(basis);

        var a = Matrix.Uninitialized(rank, n);
        var b = Matrix.Uninitialized(m, rank);
        var s = new float[rank];
        for (int j = 0; j < rank; j++)
        {
            s[j] = (float)sigma[j];
            double root = Math.Sqrt(sigma[j]);

            // A singular value at round-off level has no meaningful vector; its term contributes nothing.
            bool negligible = sigma[j] <= 1e-7 * sigmaMax || sigma[j] == 0.0;
            double inverseRoot = negligible ? 0.0 : 1.0 / root;
            if (tall)
            {
                Span<float> aRow = a.Row(j);
                for (int c = 0; c < n; c++)
                {
                    aRow[c] = negligible ? 0f : (float)(root * basis[c, j]);
                }

                for (int r = 0; r < m; r++)
                {
                    b[r, j] = (float)(projected[r, j] * inverseRoot);
                }
            }
            else
            {
                for (int r = 0; r < m; r++)
                {
                    b[r, j] = negligible ? 0f : (float)(root * basis[r, j]);
                }

                Span<float> aRow = a.Row(j);
                for (int c = 0; c < n; c++)
                {
                    aRow[c] = (float)(projected[c, j] * inverseRoot);
                }
            }
        }

        return new LowRankFactors(a, b, s);
    }

    private static DenseMatrix ToTransposedDouble(Matrix residual)
    {
        ReadOnlySpan<float> src = residual.Span;
        var data = new double[src.Length];
        for (int i = 0; i < src.Length; i++)
        {
            data[i] = src[i];
        }

        return new DenseMatrix(residual.Columns, residual.Rows, data);
    }

    internal static int[] DescendingOrder(double[] values)
    {
        int[] order = new int[values.Length];
        for (int i = 0; i < order.Length; i++)
        {
            order[i] = i;
        }

        // Stable: equal values keep their original order, so the result is deterministic.
        Array.Sort(order, (p, q) =>
        {
            int c = values[q].CompareTo(values[p]);
            return c != 0 ? c : p.CompareTo(q);
        });
        return order;
    }
}
