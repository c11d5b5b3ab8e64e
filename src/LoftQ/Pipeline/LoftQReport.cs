using System.Text.Json;
using System.Text.Json.Serialization;
using LoftQNet.Quantization;

namespace LoftQNet.Pipeline;

/// <summary>What the optimizer did to one target matrix.</summary>
public sealed record LayerReport
{
    /// <summary>The weight tensor's name, e.g. <c>model.layers.0.self_attn.q_proj.weight</c>.</summary>
    public required string Name { get; init; }

    /// <summary>Shape as [out, in] (after undoing a fan-in-fan-out layout).</summary>
    public required int[] Shape { get; init; }

    /// <summary>The quantizer used, e.g. <c>nf2</c>.</summary>
    public required string Quantizer { get; init; }

    /// <summary>Bits per weight of the quantizer.</summary>
    public required int Bits { get; init; }

    /// <summary>‖W − q(W)‖/‖W‖: the QLoRA baseline.</summary>
    [JsonPropertyName("qlora_error")]
    public required double QLoRAError { get; init; }

    /// <summary>‖W − Q − B·A‖/‖W‖ after each pass.</summary>
    public required double[] ErrorTrace { get; init; }

    /// <summary>The pass whose Q, A, B were kept (1-based; 0 for the QLoRA baseline).</summary>
    public required int BestPass { get; init; }

    /// <summary>The kept pass's relative error.</summary>
    public required double RelativeError { get; init; }

    /// <summary>
    /// With an activation-aware objective: ‖(W − Q − B·A)·R‖/‖W·R‖ of the kept pass, the output error on the
    /// calibration inputs relative to the output (R·Rᵀ = the damped second moments); null otherwise.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? WeightedError { get; init; }

    /// <summary>With an activation-aware objective: the same for the QLoRA baseline q(W); null otherwise.</summary>
    [JsonPropertyName("qlora_weighted_error")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? QLoRAWeightedError { get; init; }

    /// <summary>Wall-clock seconds spent on this matrix.</summary>
    public required double Seconds { get; init; }
}

/// <summary>
/// The options of a run as <c>loftq_report.json</c> records them: numbers as JSON numbers, flags as booleans, choices
/// in the CLI's words (<c>nf</c>, <c>bnb-nf4</c>, <c>randomized</c>). Built by <see cref="LoftQPlan.DescribeSettings"/>.
/// </summary>
/// <remarks>
/// With a custom <see cref="LoftQOptions.Policy"/>, <see cref="Bits"/> and <see cref="Quantizer"/> are null (the policy
/// picks each target's quantizer; <see cref="LoftQOptions.Bits"/> and <see cref="LoftQOptions.Quantizer"/> are
/// ignored) and <see cref="Policy"/> alone says what was used. Every field is a scalar, so two settings compare equal
/// with <c>==</c>.
/// </remarks>
public sealed record LoftQSettings
{
    /// <summary><see cref="LoftQOptions.Bits"/> (fractional for LoftQ's mixed precision); null when a custom policy chose the quantizers.</summary>
    public double? Bits { get; init; }

    /// <summary><see cref="LoftQOptions.BitBudget"/>: the average-bits budget (the allocation is in <see cref="Policy"/> and each layer's bits); null without one.</summary>
    public double? BitBudget { get; init; }

    /// <summary>The quantizer family: <c>nf</c>, <c>uniform</c> or <c>uniform-asym</c>; null when a custom policy chose the quantizers.</summary>
    public string? Quantizer { get; init; }

    /// <summary>What each target got, from <see cref="IQuantizationPolicy.Describe"/>, e.g. <c>all tensors: nf4</c>.</summary>
    public required string Policy { get; init; }

    /// <summary><see cref="LoftQOptions.Rank"/>: LoRA rank r.</summary>
    public required int Rank { get; init; }

    /// <summary><see cref="LoftQOptions.Iterations"/>: alternating passes T.</summary>
    [JsonPropertyName("iters")]
    public required int Iterations { get; init; }

    /// <summary><see cref="LoftQOptions.BlockSize"/>: values per quantization block.</summary>
    public required int BlockSize { get; init; }

    /// <summary>The block-scale search (<see cref="LoftQOptions.ScaleSearch"/>) in words, e.g. <c>clip grid 1..0.5 in 20 steps</c>; null for absmax scales.</summary>
    public string? ScaleSearch { get; init; }

    /// <summary>The objective: <c>weight</c>, <c>activation</c> or <c>activation-diag</c>.</summary>
    public string Objective { get; init; } = "weight";

    /// <summary>With an activation-aware objective: the calibration (windows × bytes, the text's SHA-256) and the damping; null otherwise.</summary>
    public string? Calibration { get; init; }

    /// <summary>Whether the rank-r approximation of W came first (QPiSSA order, <see cref="LoftQOptions.LowRankFirst"/>).</summary>
    public bool LowRankFirst { get; init; }

    /// <summary>The low-rank solver: <c>randomized</c> or <c>exact</c>.</summary>
    public required string Solver { get; init; }

    /// <summary>LoRA alpha written to the adapter (<see cref="LoftQOptions.Alpha"/>, or r).</summary>
    public required int Alpha { get; init; }

    /// <summary><see cref="LoftQOptions.Seed"/>.</summary>
    public required int Seed { get; init; }

    /// <summary>The backbone layout: <c>peft</c> or <c>bnb-nf4</c>.</summary>
    public required string Format { get; init; }

    /// <summary><see cref="LoftQOptions.DoubleQuant"/>.</summary>
    public required bool DoubleQuant { get; init; }

    /// <summary>Threads used (<see cref="LoftQOptions.Threads"/>, or the default). Results do not depend on it.</summary>
    public required int Threads { get; init; }

    /// <summary>Where the targets' loops ran: <c>cpu</c>, or the GPU's name (<see cref="LoftQOptions.Device"/>).</summary>
    public string Device { get; init; } = "cpu";
}

/// <summary>The summary of a checkpoint run, also written to <c>loftq_report.json</c>.</summary>
public sealed record LoftQReport
{
    /// <summary>The model directory read.</summary>
    public required string Model { get; init; }

    /// <summary>The output directory written.</summary>
    public required string Output { get; init; }

    /// <summary>The options the run used (see <see cref="LoftQPlan.DescribeSettings"/>).</summary>
    public required LoftQSettings Settings { get; init; }

    /// <summary>One entry per target, in checkpoint order.</summary>
    public required IReadOnlyList<LayerReport> Layers { get; init; }

    /// <summary>Mean over targets of the QLoRA error.</summary>
    [JsonPropertyName("mean_qlora_error")]
    public double MeanQLoRAError => Layers.Count == 0 ? 0 : Layers.Average(l => l.QLoRAError);

    /// <summary>Mean over targets of the LoftQ error (kept pass).</summary>
    [JsonPropertyName("mean_loftq_error")]
    public double MeanLoftQError => Layers.Count == 0 ? 0 : Layers.Average(l => l.RelativeError);

    /// <summary>Average bits per target weight.</summary>
    public double AverageBits
    {
        get
        {
            double weights = Layers.Sum(l => (double)l.Shape[0] * l.Shape[1]);
            return weights == 0 ? 0 : Layers.Sum(l => (double)l.Shape[0] * l.Shape[1] * l.Bits) / weights;
        }
    }

    /// <summary>Wall-clock seconds for the whole run, writing included.</summary>
    public required double Seconds { get; init; }

    /// <summary>
    /// Things the run did not do that the user may expect, e.g. a tensor whose name matches the targets but that is
    /// not two-dimensional, so it was copied unchanged. Empty when there were none.
    /// </summary>
    public IReadOnlyList<string> Warnings { get; init; } = [];

    /// <summary>Serialises the report as indented JSON (snake_case keys).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, ReportJsonContext.Default.LoftQReport);

    /// <summary>Reads a report written by <see cref="ToJson"/>.</summary>
    /// <exception cref="JsonException">The text is not a report.</exception>
    public static LoftQReport FromJson(string json) =>
        JsonSerializer.Deserialize(json, ReportJsonContext.Default.LoftQReport)
        ?? throw new JsonException("The report JSON is null.");
}

[JsonSourceGenerationOptions(
    WriteIndented = true,
    PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals)]
[JsonSerializable(typeof(LoftQReport))]
internal sealed partial class ReportJsonContext : JsonSerializerContext
{
}
