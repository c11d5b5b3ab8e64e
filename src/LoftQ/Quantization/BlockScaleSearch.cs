using System.Globalization;

namespace LoftQNet.Quantization;

/// <summary>
/// Error-minimising block scales: instead of the block's absmax (or min/max range), each block's scale is the
/// absmax times the clip ratio c from <c>1, 1 − δ, 1 − 2δ, …, MinRatio</c> (δ = (1 − MinRatio) / Steps) whose
/// quantization has the least squared error on that block; values beyond the clipped range take the extreme codes.
/// Ties keep the larger ratio, so a block whose absmax is already best is quantized exactly as without the search.
/// Asymmetric quantizers shrink the block's range about its centre by c. The result is an ordinary
/// <see cref="QuantizedTensor"/> (the stored scale is simply the chosen one), so every output format is unchanged.
/// </summary>
/// <param name="Steps">Ratios tried after 1 (the search costs about <c>Steps + 1</c> code searches per block).</param>
/// <param name="MinRatio">The smallest clip ratio tried, in (0, 1).</param>
public sealed record BlockScaleSearch(int Steps = 20, float MinRatio = 0.5f)
{
    /// <summary>The default grid: 21 ratios from 1 down to 0.5 in steps of 0.025.</summary>
    public static BlockScaleSearch Default { get; } = new();

    /// <summary>Ratio k of the grid (k = 0 is 1).</summary>
    public float Ratio(int k) => 1f - (k * (1f - MinRatio) / Steps);

    /// <summary>Checks the grid.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Steps is not in 1..1000 or MinRatio is not in (0, 1).</exception>
    public void Validate()
    {
        if (Steps is < 1 or > 1000)
        {
            throw new ArgumentOutOfRangeException(nameof(Steps), Steps, "BlockScaleSearch.Steps must be in 1..1000.");
        }

        if (!(MinRatio > 0f && MinRatio < 1f))
        {
            throw new ArgumentOutOfRangeException(nameof(MinRatio), MinRatio, "BlockScaleSearch.MinRatio must be in (0, 1).");
        }
    }

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"clip grid 1..{MinRatio} in {Steps} steps");
}
