using LoftQNet.Numerics;

namespace LoftQNet.LowRank;

/// <summary>
/// A low-rank solver that can reuse the subspace of a previous decomposition of a similar matrix (LoftQ's later
/// passes decompose residuals that change little from pass to pass) and so needs less work for the same accuracy.
/// </summary>
public interface IWarmStartLowRankSolver : ILowRankSolver
{
    /// <summary>
    /// Returns B (out×r) and A (r×in) as <see cref="ILowRankSolver.Decompose(Matrix, int)"/> does, starting from the
    /// right singular subspace of <paramref name="previous"/> when it is given and its shapes fit.
    /// </summary>
    /// <param name="residual">The out×in matrix to approximate.</param>
    /// <param name="rank">The rank r, in [1, min(out, in)].</param>
    /// <param name="previous">Factors of a similar matrix (not modified, not disposed), or <see langword="null"/> for a cold start.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="rank"/> is below 1 or above min(out, in).</exception>
    LowRankFactors Decompose(Matrix residual, int rank, LowRankFactors? previous);
}
