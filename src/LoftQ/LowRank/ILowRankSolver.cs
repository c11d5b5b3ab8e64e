using LoftQNet.Numerics;

namespace LoftQNet.LowRank;

/// <summary>Computes a rank-r approximation of a matrix as <see cref="LowRankFactors"/>.</summary>
public interface ILowRankSolver
{
    /// <summary>A short name for reports, e.g. <c>exact</c> or <c>randomized</c>.</summary>
    string Name { get; }

    /// <summary>Returns B (out×r) and A (r×in) with B·A the best rank-r approximation of <paramref name="residual"/> the solver can find.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="rank"/> is below 1 or above min(out, in).</exception>
    LowRankFactors Decompose(Matrix residual, int rank);
}
