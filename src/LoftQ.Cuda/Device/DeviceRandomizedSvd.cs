using LoftQNet.LowRank;
using LoftQNet.Numerics;
using MathNet.Numerics.LinearAlgebra.Double;
using Matrix = LoftQNet.Numerics.Matrix;

namespace LoftQNet.Cuda.Device;

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

        // C = U·M (ℓ×n) in v; P = orth(C); L = C·Pᵀ (ℓ×ℓ) to the host.
        ops.Gemm(Transpose.No, Transpose.No, l, n, m, 1f, u.All, m, matrix, n, 0f, v.All, n);
        using DeviceBuffer<float> p = ops.Allocate<float>((long)l * n);
        ops.Copy(v.All, p.All);
        ops.OrthonormalizeRows(p.All, l, n);
        using DeviceBuffer<float> smallDevice = ops.Allocate<float>((long)l * l);
        ops.Gemm(Transpose.No, Transpose.Yes, l, l, n, 1f, v.All, n, p.All, n, 0f, smallDevice.All, l);
        var smallHost = new float[l * l];
        ops.Download(smallDevice.All, smallHost);
        var small = DenseMatrix.Create(l, l, (i, j) => smallHost[(i * l) + j]);

        (Matrix left, Matrix right, float[] s) = RandomizedSvdSolver.SplitSmall(small, rank);
        using (left)
        using (right)
        using (DeviceBuffer<float> leftDevice = ops.Allocate<float>((long)l * rank))
        using (DeviceBuffer<float> rightDevice = ops.Allocate<float>((long)rank * l))
        {
            ops.Upload<float>(left.Span, leftDevice.All);
            ops.Upload<float>(right.Span, rightDevice.All);
            DeviceBuffer<float> a = ops.Allocate<float>((long)rank * n);
            DeviceBuffer<float> b = ops.Allocate<float>((long)m * rank);
            // A = right·P (r×n); B = Uᵀ·left (m×r).
            ops.Gemm(Transpose.No, Transpose.No, rank, n, l, 1f, rightDevice.All, l, p.All, n, 0f, a.All, n);
            ops.Gemm(Transpose.Yes, Transpose.No, m, rank, l, 1f, u.All, m, leftDevice.All, rank, 0f, b.All, rank);
            return new DeviceFactors(a, b, s);
        }
    }
}
