using LoftQNet.LowRank;
using LoftQNet.Numerics;
using MathNet.Numerics.LinearAlgebra.Double;
using Matrix = LoftQNet.Numerics.Matrix;

namespace LoftQNet.Cuda.Device;

/// <summary>How <see cref="DeviceRandomizedSvd"/> splits its small ℓ×ℓ problem on the host.</summary>
internal enum SmallStepKind
{
    /// <summary>The SVD of C·Pᵀ after a QR of C, as the CPU solver does (no division by a singular value).</summary>
    Svd,

    /// <summary>The symmetric eigendecomposition of C·Cᵀ: no QR of C and a faster host step; divides by √σ.</summary>
    Gram,
}

/// <summary>Low-rank factors on the device: A (r×in), B (out×r) and the singular values (on the host).</summary>
internal sealed class DeviceFactors(DeviceBuffer<float> a, DeviceBuffer<float> b, float[] singularValues) : IDisposable
{
    public DeviceBuffer<float> A { get; } = a;

    public DeviceBuffer<float> B { get; } = b;

    public float[] SingularValues { get; } = singularValues;

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}

/// <summary>
/// The randomized truncated SVD of <see cref="RandomizedSvdSolver"/> on the device: the same subspace passes
/// (U = orth(V·Mᵀ), V = orth(U·M), …, C = U·M), the same warm start (the previous A's rows plus fresh Gaussian
/// directions), and the same small ℓ×ℓ step (<see cref="RandomizedSvdSolver.SplitSmall"/>, in double on the host: ℓ²
/// floats each way). Bases are stored as rows, so QR orthonormalizes rows.
/// </summary>
internal sealed class DeviceRandomizedSvd(IDeviceOps ops, int oversampling = 8, int powerIterations = 2, int warmPowerIterations = 1, int seed = 0)
{
    public int Seed => seed;

    /// <summary>Rank-<paramref name="rank"/> factors of the m×n matrix <paramref name="matrix"/>, warm-started from <paramref name="previous"/> when given.</summary>
    public DeviceFactors Decompose(DeviceSpan<float> matrix, int m, int n, int rank, DeviceFactors? previous)
    {
        int l = Math.Min(rank + oversampling, Math.Min(m, n));
        using DeviceBuffer<float> v = ops.Allocate<float>((long)l * n);
        using DeviceBuffer<float> u = ops.Allocate<float>((long)l * m);
        int iterations;
        if (previous is not null)
        {
            int kept = Math.Min(previous.SingularValues.Length, l);
            ops.Copy(previous.A.Slice(0, (long)kept * n), v.Slice(0, (long)kept * n));
            if (kept < l)
            {
                ops.FillGaussian(v.Slice((long)kept * n, (long)(l - kept) * n), seed, RandomizedSvdSolver.FreshOffset(previous.SingularValues, n));
            }

            ops.OrthonormalizeRows(v.All, l, n);
            iterations = warmPowerIterations;
        }
        else
        {
            ops.FillGaussian(v.All, seed, 0);
            iterations = powerIterations;
        }

        // U = orth(V·Mᵀ), then q times V = orth(U·M), U = orth(V·Mᵀ).
        ops.Gemm(Transpose.No, Transpose.Yes, l, m, n, 1f, v.All, n, matrix, n, 0f, u.All, m);
        ops.OrthonormalizeRows(u.All, l, m);
        for (int it = 0; it < iterations; it++)
        {
            ops.Gemm(Transpose.No, Transpose.No, l, n, m, 1f, u.All, m, matrix, n, 0f, v.All, n);
            ops.OrthonormalizeRows(v.All, l, n);
            ops.Gemm(Transpose.No, Transpose.Yes, l, m, n, 1f, v.All, n, matrix, n, 0f, u.All, m);
            ops.OrthonormalizeRows(u.All, l, m);
        }

        // C = U·M (ℓ×n), kept in v.
        ops.Gemm(Transpose.No, Transpose.No, l, n, m, 1f, u.All, m, matrix, n, 0f, v.All, n);
        if (SmallStep == SmallStepKind.Gram && GramFactors(v, l, n, rank) is { } gram)
        {
            using (gram.Left)
            using (gram.Right)
            {
                // C = U_c·Σ·V_cᵀ: A = Σ_r^(-1/2)·U_c,rᵀ·C = Σ_r^(1/2)·V_c,rᵀ (r×n); B = Uᵀ·U_c,r·Σ_r^(1/2) (m×r).
                return Finish(ops, u, v, gram.Left, gram.Right, gram.SingularValues, l, m, n, rank);
            }
        }

        // P = orth(C); L = C·Pᵀ (ℓ×ℓ) to the host, whose SVD in double gives the split (the CPU solver's own step).
        using DeviceBuffer<float> p = ops.Allocate<float>((long)l * n);
        ops.Copy(v.All, p.All);
        ops.OrthonormalizeRows(p.All, l, n);
        float[] smallHost = DownloadSquare(ops, v, p, l, n);
        var small = DenseMatrix.Create(l, l, (i, j) => smallHost[(i * l) + j]);
        (Matrix left, Matrix right, float[] s) = RandomizedSvdSolver.SplitSmall(small, rank);
        using (left)
        using (right)
        {
            // A = right·P (r×n); B = Uᵀ·left (m×r).
            return Finish(ops, u, p, left, right, s, l, m, n, rank);
        }
    }

    /// <summary>Which host computation splits the small projection (the GPU path's choice; the CPU solver uses <see cref="SmallStepKind.Svd"/>).</summary>
    public SmallStepKind SmallStep { get; init; } = SmallStepKind.Svd;

    /// <summary>
    /// The smallest σ_r/σ_1 the Gram step accepts: it divides by √σ, so below this the step falls back to the SVD of
    /// C·Pᵀ (a rank-deficient residual, e.g. an all-zero layer).
    /// </summary>
    internal const double GramFloor = 1e-4;

    /// <summary>
    /// The split from C·Cᵀ (ℓ×ℓ, one GEMM on the device, its symmetric eigendecomposition in double on the host: about
    /// 4× faster than the ℓ×ℓ SVD, and no QR of C): left = U_c,r·Σ_r^(1/2) (ℓ×r), right = Σ_r^(-1/2)·U_c,rᵀ (r×ℓ), or
    /// null when σ_r/σ_1 is below <see cref="GramFloor"/>.
    /// </summary>
    private (Matrix Left, Matrix Right, float[] SingularValues)? GramFactors(DeviceBuffer<float> c, int l, int n, int rank)
    {
        float[] gramHost = DownloadSquare(ops, c, c, l, n);
        var gram = DenseMatrix.Create(l, l, (i, j) => 0.5 * ((double)gramHost[(i * l) + j] + gramHost[(j * l) + i]));
        var evd = gram.Evd(MathNet.Numerics.LinearAlgebra.Symmetricity.Symmetric);
        double[] eigenvalues = evd.EigenValues.Select(e => e.Real).ToArray();
        int[] order = ExactSvdSolver.DescendingOrder(eigenvalues);
        double top = Math.Sqrt(Math.Max(eigenvalues[order[0]], 0.0));
        double last = Math.Sqrt(Math.Max(eigenvalues[order[rank - 1]], 0.0));
        if (!(top > 0) || last < GramFloor * top)
        {
            return null;
        }

        var s = new float[rank];
        var left = Matrix.Uninitialized(l, rank);
        var right = Matrix.Uninitialized(rank, l);
        for (int j = 0; j < rank; j++)
        {
            int k = order[j];
            double sigma = Math.Sqrt(Math.Max(eigenvalues[k], 0.0));
            double root = Math.Sqrt(sigma);
            s[j] = (float)sigma;
            for (int i = 0; i < l; i++)
            {
                double vector = evd.EigenVectors[i, k];
                left[i, j] = (float)(vector * root);
                right[j, i] = (float)(vector / root);
            }
        }

        return (left, right, s);
    }

    /// <summary>X·Yᵀ of two ℓ×n row blocks on the device, as ℓ×ℓ floats on the host.</summary>
    private static float[] DownloadSquare(IDeviceOps ops, DeviceBuffer<float> x, DeviceBuffer<float> y, int l, int n)
    {
        using DeviceBuffer<float> square = ops.Allocate<float>((long)l * l);
        ops.Gemm(Transpose.No, Transpose.Yes, l, l, n, 1f, x.All, n, y.All, n, 0f, square.All, l);
        var host = new float[l * l];
        ops.Download(square.All, host);
        return host;
    }

    /// <summary>A = right·rows (r×n) and B = Uᵀ·left (m×r) on the device.</summary>
    private static DeviceFactors Finish(
        IDeviceOps ops, DeviceBuffer<float> u, DeviceBuffer<float> rows, Matrix left, Matrix right, float[] singularValues, int l, int m, int n, int rank)
    {
        using DeviceBuffer<float> leftDevice = ops.Allocate<float>((long)l * rank);
        using DeviceBuffer<float> rightDevice = ops.Allocate<float>((long)rank * l);
        ops.Upload<float>(left.Span, leftDevice.All);
        ops.Upload<float>(right.Span, rightDevice.All);
        DeviceBuffer<float> a = ops.Allocate<float>((long)rank * n);
        DeviceBuffer<float> b = ops.Allocate<float>((long)m * rank);
        ops.Gemm(Transpose.No, Transpose.No, rank, n, l, 1f, rightDevice.All, l, rows.All, n, 0f, a.All, n);
        ops.Gemm(Transpose.Yes, Transpose.No, m, rank, l, 1f, u.All, m, leftDevice.All, rank, 0f, b.All, rank);
        return new DeviceFactors(a, b, singularValues);
    }
}
