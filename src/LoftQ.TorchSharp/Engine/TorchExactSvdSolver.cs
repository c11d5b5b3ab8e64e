using LoftQNet.LowRank;
using LoftQNet.Numerics;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Engine;

/// <summary>
/// The exact reference: a full thin SVD (<c>linalg.svd</c>, fullMatrices false, fp32) of the residual on its
/// device, truncated to rank r with the √S split. Slow for large matrices (minutes for 4096² on a 2-core CPU);
/// use <see cref="TorchRandomizedSvdSolver"/> for work. Also implements the core's <see cref="ILowRankSolver"/>.
/// </summary>
public sealed class TorchExactSvdSolver : ITorchLowRankSolver, ILowRankSolver
{
    /// <inheritdoc cref="ITorchLowRankSolver.Name"/>
    public string Name => "torch-exact";

    /// <inheritdoc/>
    public TorchLowRankFactors Decompose(Tensor residual, int rank, TorchLowRankFactors? previous = null)
    {
        TorchEngine.CheckMatrixAndRank(residual, rank, nameof(residual));
        using var scope = NewDisposeScope();
        (Tensor u, Tensor s, Tensor vh) = linalg.svd(residual.to(ScalarType.Float32), fullMatrices: false);
        Tensor sr = s.narrow(0, 0, rank).clamp_min(0);
        Tensor root = sr.sqrt();
        Tensor b = u.narrow(1, 0, rank).mul(root.unsqueeze(0)).contiguous();
        Tensor a = vh.narrow(0, 0, rank).mul(root.unsqueeze(1)).contiguous();
        return new TorchLowRankFactors(a.MoveToOuterDisposeScope(), b.MoveToOuterDisposeScope(), sr.contiguous().MoveToOuterDisposeScope());
    }

    /// <inheritdoc/>
    public LowRankFactors Decompose(Matrix residual, int rank)
    {
        ArgumentNullException.ThrowIfNull(residual);
        using var scope = NewDisposeScope();
        using TorchLowRankFactors f = Decompose(TorchEngine.ToTensor(residual), rank);
        return TorchEngine.ToCore(f);
    }
}
