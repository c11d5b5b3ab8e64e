using LoftQNet.Numerics;

namespace LoftQNet.LowRank;

/// <summary>Argument checks shared by the solvers.</summary>
internal static class LowRankValidation
{
    public static void Check(Matrix residual, int rank)
    {
        ArgumentNullException.ThrowIfNull(residual);
        int max = Math.Min(residual.Rows, residual.Columns);
        if (rank < 1 || rank > max)
        {
            throw new ArgumentOutOfRangeException(
                nameof(rank),
                rank,
                $"Rank must be between 1 and min(rows, columns) = {max} for a {residual.Rows}x{residual.Columns} matrix, got {rank}.");
        }
    }
}
