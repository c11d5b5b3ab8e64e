using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Engine;

/// <summary>A rank-r approximation of a matrix held in a tensor, computed on the tensor's device.</summary>
public interface ITorchLowRankSolver
{
    /// <summary>A short name for reports, e.g. <c>torch-randomized</c> or <c>torch-exact</c>.</summary>
    string Name { get; }

    /// <summary>
    /// Returns B (out×r) and A (r×in), fp32 on the residual's device, with B·A the best rank-r approximation of
    /// <paramref name="residual"/> the solver can find; a solver may start from <paramref name="previous"/> (factors
    /// of a similar matrix, not modified, not disposed) and ignore it when its shapes do not fit.
    /// </summary>
    /// <exception cref="ArgumentException">The residual is not a two-dimensional floating-point tensor.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="rank"/> is below 1 or above min(out, in).</exception>
    TorchLowRankFactors Decompose(Tensor residual, int rank, TorchLowRankFactors? previous = null);
}
