using System.Globalization;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Pipeline;

/// <summary>Checks of <see cref="LoftQOptions"/> against each other and the model, before anything is read or written.</summary>
internal static class OptionChecks
{
    internal static void Validate(LoftQOptions o)
    {
        o.ScaleSearch?.Validate();
        if (o.Rank < 1)
        {
            throw new ArgumentException($"LoftQOptions.Rank must be at least 1, got {o.Rank}.");
        }

        if (o.Iterations < 0)
        {
            throw new ArgumentException($"LoftQOptions.Iterations must be 0 (QLoRA) or more, got {o.Iterations}.");
        }

        if (o.BlockSize is < 2 or > 1 << 20)
        {
            throw new ArgumentException($"LoftQOptions.BlockSize must be in 2..1048576, got {o.BlockSize}.");
        }

        if (o.Alpha is int alpha && alpha < 1)
        {
            throw new ArgumentException($"LoftQOptions.Alpha must be a positive integer, got {alpha}.");
        }

        if (o.Threads is int t && t < 1)
        {
            throw new ArgumentException($"LoftQOptions.Threads must be at least 1, got {t}.");
        }

        if (o.Policy is null)
        {
            bool whole = o.Bits == Math.Floor(o.Bits);
            if (whole && !IsSupportedBits(o.Quantizer, (int)o.Bits))
            {
                throw new ArgumentException($"LoftQOptions.Bits = {o.Bits} is not supported by the {QuantizerFlag(o.Quantizer)} quantizer ({SupportedBitsText(o.Quantizer)}).");
            }

            if (!whole && !(o.Bits > 2 && o.Bits < 4))
            {
                throw new ArgumentException($"LoftQOptions.Bits = {o.Bits}: a fractional value selects LoftQ's mixed precision and must lie between 2 and 4.");
            }

            foreach ((string pattern, int bits) in o.BitsPatterns ?? [])
            {
                if (!IsSupportedBits(o.Quantizer, bits))
                {
                    throw new ArgumentException($"LoftQOptions.BitsPatterns entry ('{pattern}', {bits}): {bits} bits is not supported by the {QuantizerFlag(o.Quantizer)} quantizer ({SupportedBitsText(o.Quantizer)}).");
                }
            }
        }

        if (o.BitBudget is double budget)
        {
            if (o.Policy is not null || o.BitsPatterns is { Count: > 0 })
            {
                throw new ArgumentException("LoftQOptions.BitBudget chooses every target's bits; it cannot be combined with LoftQOptions.Policy or LoftQOptions.BitsPatterns.");
            }

            if (o.BudgetBits is not { Count: > 0 } candidates || candidates.Distinct().Count() != candidates.Count)
            {
                throw new ArgumentException("LoftQOptions.BudgetBits must list at least one bit width, each once.");
            }

            foreach (int b in candidates)
            {
                if (!IsSupportedBits(o.Quantizer, b))
                {
                    throw new ArgumentException($"LoftQOptions.BudgetBits entry {b} is not supported by the {QuantizerFlag(o.Quantizer)} quantizer ({SupportedBitsText(o.Quantizer)}).");
                }
            }

            if (!double.IsFinite(budget) || budget < candidates.Min() || budget > candidates.Max())
            {
                throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                    $"LoftQOptions.BitBudget = {budget} must lie between the smallest and the largest of LoftQOptions.BudgetBits ({candidates.Min()}..{candidates.Max()})."));
            }
        }

        if (o.BitBudget is not null && o.Objective != LoftQObjective.Weight && o.Calibration is { HasSensitivities: false })
        {
            throw new ArgumentException("LoftQOptions.BitBudget with an activation objective weighs each target by its measured sensitivity; collect LoftQOptions.Calibration with sensitivityWindows > 0.");
        }

        if (!(o.Damping >= 0) || !double.IsFinite(o.Damping))
        {
            throw new ArgumentException($"LoftQOptions.Damping must be finite and at least 0, got {o.Damping}.");
        }

        if (o.Objective != LoftQObjective.Weight && o.Calibration is null)
        {
            throw new ArgumentException($"LoftQOptions.Objective = {o.Objective} needs LoftQOptions.Calibration (statistics from CalibrationStatistics.Collect).");
        }

        if (o.Objective == LoftQObjective.Activation && o.Calibration is { IsDiagonal: true })
        {
            throw new ArgumentException("LoftQOptions.Objective = Activation needs full second-moment matrices, but LoftQOptions.Calibration holds only their diagonals; collect without diagonalOnly or use ActivationDiagonal.");
        }

        if (o.DoubleQuant && o.Format != OutputFormat.BitsAndBytesNf4)
        {
            throw new ArgumentException("LoftQOptions.DoubleQuant applies only to LoftQOptions.Format = OutputFormat.BitsAndBytesNf4.");
        }
    }

    internal static void CheckLayerCountForMixedPrecision(LoftQOptions o, ModelConfig config)
    {
        if (o.Policy is null && o.Bits != Math.Floor(o.Bits) && config.NumHiddenLayers < 1)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"LoftQOptions.Bits = {o.Bits} (mixed precision) gives the first decoder layers 4 bits and the rest 2, but {config.Source} says num_hidden_layers is {config.NumHiddenLayers}; fix the config or use a whole LoftQOptions.Bits."));
        }
    }

    internal static bool IsSupportedBits(QuantizerKind kind, int bits) =>
        kind == QuantizerKind.NormalFloat ? bits is 2 or 3 or 4 or 8 : bits is >= 2 and <= 8;

    internal static string SupportedBitsText(QuantizerKind kind) =>
        kind == QuantizerKind.NormalFloat ? "2, 3, 4 or 8" : "2 to 8";

    internal static string QuantizerFlag(QuantizerKind kind) => kind switch
    {
        QuantizerKind.NormalFloat => "nf",
        QuantizerKind.Uniform => "uniform",
        _ => "uniform-asym",
    };
}
