using LoftQNet.LowRank;
using LoftQNet.Numerics;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Engine;

/// <summary>
/// Randomized truncated SVD in torch operations on the residual's device (Halko, Martinsson and Tropp 2011,
/// algorithms 4.4 and 5.1): a Gaussian test matrix from a seeded <see cref="Generator"/> on the device, ℓ = r +
/// oversampling directions, power iterations with QR re-orthonormalisation (<c>linalg.qr</c>), then the SVD of the
/// small ℓ×in projection (<c>linalg.svd</c>, thin).
/// </summary>
/// <remarks>
/// With Y = M·Ω and Q = qr(Y), each power iteration is Z = qr(Mᵀ·Q), Q = qr(M·Z); then C = Qᵀ·M = Ũ·Σ·Vᵀ and
/// B = Q·Ũ_r·√Σ_r, A = √Σ_r·V_rᵀ. A warm start (given the previous pass's factors) seeds Ω with the previous A's rows
/// (its right singular directions) plus fresh Gaussian columns and runs <see cref="WarmPowerIterations"/>
/// iterations, as the core's <see cref="RandomizedSvdSolver"/> does. Results depend only on the inputs, the seed and
/// the device's arithmetic. The solver holds no mutable state. It also implements the core's
/// <see cref="IWarmStartLowRankSolver"/> through CPU tensors.
/// </remarks>
public sealed class TorchRandomizedSvdSolver : ITorchLowRankSolver, IWarmStartLowRankSolver
{
    /// <summary>Creates a randomized solver.</summary>
    /// <param name="oversampling">Extra directions beyond the rank (0..1024).</param>
    /// <param name="powerIterations">Power iterations on a cold start (0..64).</param>
    /// <param name="seed">Seed of the Gaussian test matrix.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    public TorchRandomizedSvdSolver(int oversampling = 8, int powerIterations = 2, long seed = 0)
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

    /// <inheritdoc cref="ITorchLowRankSolver.Name"/>
    public string Name => "torch-randomized";

    /// <summary>Extra directions beyond the rank.</summary>
    public int Oversampling { get; }

    /// <summary>Power iterations on a cold start.</summary>
    public int PowerIterations { get; }

    /// <summary>Seed of the Gaussian test matrix.</summary>
    public long Seed { get; }

    /// <summary>Power iterations on a warm start (0..64; default 1).</summary>
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
    public TorchLowRankFactors Decompose(Tensor residual, int rank, TorchLowRankFactors? previous = null)
    {
        TorchEngine.CheckMatrixAndRank(residual, rank, nameof(residual));
        long m = residual.shape[0], n = residual.shape[1];
        int l = (int)Math.Min(rank + Oversampling, Math.Min(m, n));
        Device device = residual.device;
        bool warm = previous is not null && previous.A.dim() == 2 && previous.A.shape[1] == n && previous.B.shape[0] == m;

        using var scope = NewDisposeScope();
        Tensor mat = residual.to(ScalarType.Float32);
        Tensor omega;
        int iterations;
        if (warm)
        {
            int kept = Math.Min(previous!.Rank, l);
            float[] spectrum = previous.SingularValues.to(ScalarType.Float32).cpu().data<float>().ToArray();
            using var generator = new Generator(TorchEngine.Mix(Seed, spectrum), device);
            Tensor seeded = previous.A.narrow(0, 0, kept).to(ScalarType.Float32).t();
            omega = kept == l ? seeded : cat([seeded, randn([n, l - kept], ScalarType.Float32, device, generator: generator)], 1);
            iterations = WarmPowerIterations;
        }
        else
        {
            using var generator = new Generator(TorchEngine.Mix(Seed, []), device);
            omega = randn([n, l], ScalarType.Float32, device, generator: generator);
            iterations = PowerIterations;
        }

        Tensor q = linalg.qr(mat.mm(omega)).Q;
        Tensor mt = mat.t();
        for (int it = 0; it < iterations; it++)
        {
            Tensor z = linalg.qr(mt.mm(q)).Q;
            q = linalg.qr(mat.mm(z)).Q;
        }

        Tensor c = q.t().mm(mat);
        (Tensor u, Tensor s, Tensor vh) = linalg.svd(c, fullMatrices: false);
        Tensor sr = s.narrow(0, 0, rank).clamp_min(0);
        Tensor root = sr.sqrt();
        Tensor b = q.mm(u.narrow(1, 0, rank)).mul_(root.unsqueeze(0)).contiguous();
        Tensor a = vh.narrow(0, 0, rank).mul(root.unsqueeze(1)).contiguous();
        return new TorchLowRankFactors(a.MoveToOuterDisposeScope(), b.MoveToOuterDisposeScope(), sr.contiguous().MoveToOuterDisposeScope());
    }

    /// <inheritdoc/>
    public LowRankFactors Decompose(Matrix residual, int rank) => Decompose(residual, rank, null);

    /// <inheritdoc/>
    public LowRankFactors Decompose(Matrix residual, int rank, LowRankFactors? previous)
    {
        ArgumentNullException.ThrowIfNull(residual);
        using var scope = NewDisposeScope();
        using TorchLowRankFactors? prev = previous is null ? null : TorchEngine.FromCore(previous);
        using TorchLowRankFactors f = Decompose(TorchEngine.ToTensor(residual), rank, prev);
        return TorchEngine.ToCore(f);
    }
}
