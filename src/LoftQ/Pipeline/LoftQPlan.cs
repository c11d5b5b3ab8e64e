using System.Diagnostics;
using LoftQNet.IO;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.Pipeline;

/// <summary>
/// The per-target work of a LoftQ run, shared by every front end: the checkpoint pipeline
/// (<see cref="LoftQ.Initialize(string, string, LoftQOptions?, IProgress{LoftQProgress}?, CancellationToken)"/>) and
/// model-level integrations such as LoftQ.TorchSharp. Given the same options, layer count, tensor name and weight,
/// every front end gets the same Q, A and B bit for bit.
/// </summary>
/// <remarks>
/// It validates the options, builds the quantization policy (mixed precision included), selects targets, derives
/// each target's seed from the run's seed and the tensor name (so results do not depend on scheduling), runs the
/// <see cref="AlternatingOptimizer"/> and writes the <see cref="LayerReport"/>. Instances are immutable and
/// <see cref="InitializeLayer"/> may be called from several threads at once.
/// </remarks>
public sealed class LoftQPlan
{
    /// <summary>Validates <paramref name="options"/> and builds the policy for a model of <paramref name="layerCount"/> decoder layers.</summary>
    /// <param name="options">The run's options.</param>
    /// <param name="layerCount">Decoder layers (used by LoftQ's mixed precision, <see cref="LoftQOptions.Bits"/> fractional).</param>
    /// <exception cref="ArgumentException">An option is invalid (the message names it).</exception>
    /// <exception cref="NotSupportedException">
    /// <see cref="LoftQOptions.BitBudget"/> is set: the budget is allocated over a whole checkpoint by
    /// <see cref="LoftQ.Initialize(string, string, LoftQOptions?, IProgress{LoftQProgress}?, CancellationToken)"/>.
    /// </exception>
    public LoftQPlan(LoftQOptions options, int layerCount)
        : this(options, layerCount, null)
    {
    }

    /// <summary>A plan whose targets get <paramref name="allocated"/>'s quantizers (a <see cref="LoftQOptions.BitBudget"/> allocation).</summary>
    internal LoftQPlan(LoftQOptions options, int layerCount, IQuantizationPolicy? allocated)
    {
        ArgumentNullException.ThrowIfNull(options);
        OptionChecks.Validate(options);
        if (options.BitBudget is not null && allocated is null)
        {
            throw new NotSupportedException(
                "LoftQOptions.BitBudget is allocated over a whole checkpoint by LoftQ.Initialize(modelDirectory, outputDirectory, ...); a model-level run cannot use it. Choose bits per target with LoftQOptions.BitsPatterns instead.");
        }

        Options = options;
        LayerCount = layerCount;
        Policy = allocated ?? QuantizerFactory.BuildPolicy(options, layerCount);
    }

    /// <summary>The options.</summary>
    public LoftQOptions Options { get; }

    /// <summary>
    /// The device that runs each target's loop when it can (<see cref="Accelerators.Select"/>); null for the CPU. The
    /// plan does not own it.
    /// </summary>
    internal ILoftQAccelerator? Accelerator { get; init; }

    /// <summary>This plan with <paramref name="accelerator"/> running each target's loop where it can (same policy and options).</summary>
    internal LoftQPlan WithAccelerator(ILoftQAccelerator accelerator) => new(Options, LayerCount, Policy) { Accelerator = accelerator };

    /// <summary>Decoder layers the policy was built for.</summary>
    public int LayerCount { get; }

    /// <summary>The quantizer of each target (from <see cref="LoftQOptions.Policy"/>, or built from the bits options).</summary>
    public IQuantizationPolicy Policy { get; }

    /// <summary>LoRA alpha of the adapters: <see cref="LoftQOptions.Alpha"/>, or r.</summary>
    public int Alpha => Options.Alpha ?? Options.Rank;

    /// <summary>
    /// The module paths among <paramref name="modulePaths"/> that <see cref="LoftQOptions.Targets"/> selects
    /// (<paramref name="defaultTargets"/> when it is null or empty), with the rules of <see cref="TargetSelector"/>.
    /// </summary>
    /// <exception cref="ArgumentException">A target entry is empty or an invalid regular expression.</exception>
    public IReadOnlyList<string> SelectTargets(IEnumerable<string> modulePaths, IReadOnlyList<string> defaultTargets)
    {
        ArgumentNullException.ThrowIfNull(modulePaths);
        ArgumentNullException.ThrowIfNull(defaultTargets);
        return TargetSelector.Select(modulePaths, Options.Targets is { Count: > 0 } t ? t : defaultTargets);
    }

    /// <summary>The seed of the target whose weight tensor is <paramref name="tensorName"/>: depends only on the run's seed and the name.</summary>
    public int LayerSeed(string tensorName)
    {
        ArgumentNullException.ThrowIfNull(tensorName);
        uint h = 2166136261;
        foreach (char c in tensorName)
        {
            h = (h ^ c) * 16777619;
        }

        return (int)(h ^ (uint)Options.Seed);
    }

    /// <summary>
    /// LoftQ-initialises one target: <paramref name="weight"/> is its out×in weight, <paramref name="tensorName"/>
    /// its weight tensor's name (e.g. <c>model.layers.0.self_attn.q_proj.weight</c>), which picks the quantizer and
    /// the seed.
    /// </summary>
    /// <exception cref="ArgumentException">The rank exceeds min(out, in), or the weight holds NaN or infinity (the message names the element).</exception>
    public LoftQLayerResult InitializeLayer(string tensorName, Matrix weight)
    {
        ArgumentNullException.ThrowIfNull(tensorName);
        ArgumentNullException.ThrowIfNull(weight);
        var clock = Stopwatch.StartNew();
        if (Options.Rank > Math.Min(weight.Rows, weight.Columns))
        {
            throw new ArgumentException($"LoftQOptions.Rank = {Options.Rank} is larger than min(out, in) = {Math.Min(weight.Rows, weight.Columns)} of '{tensorName}' [{weight.Rows}, {weight.Columns}].");
        }

        IQuantizer quantizer = Policy.Select(tensorName);
        LoftQResult result = Optimize(tensorName, weight, quantizer, Options.Iterations, out InputWeighting? weighting);
        try
        {
            // PEFT adds (alpha / r)·B·A: keep B·r/alpha so the sum reproduces the optimizer's Q + B·A.
            Matrix b = result.B.Clone();
            float compensation = (float)Options.Rank / Alpha;
            if (compensation != 1f)
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(b.Span, compensation, b.Span);
            }

            var report = new LayerReport
            {
                Name = tensorName,
                Shape = [weight.Rows, weight.Columns],
                Quantizer = quantizer.Name,
                Bits = quantizer.Bits,
                QLoRAError = result.QLoRAError,
                ErrorTrace = result.ErrorTrace.ToArray(),
                BestPass = result.BestPass,
                RelativeError = result.RelativeError,
                WeightedError = weighting is null ? null : result.WeightedError,
                QLoRAWeightedError = weighting is null ? null : result.QLoRAWeightedError,
                Seconds = clock.Elapsed.TotalSeconds,
            };
            return new LoftQLayerResult(quantizer, result, b, report);
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }

    /// <summary>The CLI's word for <paramref name="objective"/>: <c>weight</c>, <c>activation</c> or <c>activation-diag</c>.</summary>
    internal static string ObjectiveFlag(LoftQObjective objective) => objective switch
    {
        LoftQObjective.Activation => "activation",
        LoftQObjective.ActivationDiagonal => "activation-diag",
        _ => "weight",
    };

    /// <summary>
    /// Runs the optimizer on one target with <paramref name="quantizer"/> and <paramref name="iterations"/> passes, with
    /// the run's solver, seed, objective (<paramref name="weighting"/>, null for the weight objective) and order.
    /// </summary>
    internal LoftQResult Optimize(string tensorName, Matrix weight, IQuantizer quantizer, int iterations, out InputWeighting? weighting)
    {
        int seed = LayerSeed(tensorName);
        if (Accelerator is { } device && Accelerators.UnsupportedOptions(Options) is null)
        {
            weighting = null;
            string? unsupported = device.Unsupported(quantizer);
            if (unsupported is null)
            {
                return device.Run(weight, quantizer, Options.Rank, iterations, seed, Options.LowRankFirst);
            }

            if (Options.Device == ComputeDevice.Cuda)
            {
                throw new ArgumentException($"Device cuda (--device cuda, LoftQOptions.Device = Cuda) cannot run target '{tensorName}': {unsupported}");
            }
        }

        ILowRankSolver solver = Options.Solver == SolverKind.Exact ? new ExactSvdSolver() : new RandomizedSvdSolver(seed: seed);
        weighting = WeightingOf(tensorName, weight);
        var optimizer = new AlternatingOptimizer(quantizer, solver)
        {
            Seed = seed,
            Weighting = weighting,
            WeightedScaleSearch = Options.ActivationWeightedScales,
            LowRankFirst = Options.LowRankFirst,
        };
        return optimizer.Run(weight, Options.Rank, iterations);
    }

    /// <summary>The target's input weighting under an activation-aware objective; null for the weight objective.</summary>
    internal InputWeighting? WeightingOf(string tensorName, Matrix weight)
    {
        if (Options.Objective == LoftQObjective.Weight)
        {
            return null;
        }

        string module = TargetSelector.ModulePathOf(tensorName);
        CalibrationStatistics calibration = Options.Calibration!;
        if (!calibration.Contains(module))
        {
            throw new ArgumentException($"LoftQOptions.Calibration has no input statistics for '{module}'; the activation-aware objectives need them for every target.");
        }

        if (calibration.FeaturesOf(module) != weight.Columns)
        {
            throw new ArgumentException($"LoftQOptions.Calibration has {calibration.FeaturesOf(module)} input features for '{module}' but its weight is [{weight.Rows}, {weight.Columns}]; were the statistics collected from another model?");
        }

        return calibration.Weighting(module, Options.Objective, Options.Damping);
    }

    /// <summary>The options as a report records them in <see cref="LoftQReport.Settings"/>.</summary>
    /// <remarks>With a custom <see cref="LoftQOptions.Policy"/>, <see cref="LoftQSettings.Bits"/> and <see cref="LoftQSettings.Quantizer"/> are null: the policy, not those options, chose the quantizers.</remarks>
    public LoftQSettings DescribeSettings()
    {
        LoftQOptions o = Options;
        bool custom = o.Policy is not null;
        return new LoftQSettings
        {
            Bits = custom || o.BitBudget is not null ? null : o.Bits,
            BitBudget = o.BitBudget,
            Quantizer = custom ? null : OptionChecks.QuantizerFlag(o.Quantizer),
            Policy = Policy.Describe(),
            Rank = o.Rank,
            Iterations = o.Iterations,
            BlockSize = o.BlockSize,
            ScaleSearch = custom ? null : o.ScaleSearch?.ToString(),
            Objective = ObjectiveFlag(o.Objective),
            Calibration = o.Objective == LoftQObjective.Weight || o.Calibration is not { } c
                ? null
                : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{c.Windows} windows x {c.WindowLength} bytes, text sha256 {c.TextFingerprint}, damping {o.Damping}{(o.ScaleSearch is not null && o.ActivationWeightedScales ? ", activation-weighted scale search" : "")}"),
            LowRankFirst = o.LowRankFirst,
            Solver = o.Solver == SolverKind.Exact ? "exact" : "randomized",
            Alpha = Alpha,
            Seed = o.Seed,
            Format = o.Format == OutputFormat.BitsAndBytesNf4 ? "bnb-nf4" : "peft",
            DoubleQuant = o.DoubleQuant,
            Threads = o.Threads ?? ComputeSettings.EffectiveMaxThreads,
            Device = Accelerator?.Name ?? "cpu",
        };
    }
}

/// <summary>The outcome of <see cref="LoftQPlan.InitializeLayer"/> for one target.</summary>
public sealed class LoftQLayerResult : IDisposable
{
    internal LoftQLayerResult(IQuantizer quantizer, LoftQResult result, Matrix adapterB, LayerReport report)
    {
        Quantizer = quantizer;
        Result = result;
        AdapterB = adapterB;
        Report = report;
    }

    /// <summary>The quantizer that produced <see cref="LoftQResult.Quantized"/>.</summary>
    public IQuantizer Quantizer { get; }

    /// <summary>The optimizer's result: Q, A, B (W ≈ deq(Q) + B·A) and the error trace.</summary>
    public LoftQResult Result { get; }

    /// <summary>LoRA B as an adapter stores it: <see cref="LoftQResult.B"/>·r/alpha, so that deq(Q) + (alpha/r)·B·A reproduces the optimizer's result.</summary>
    public Matrix AdapterB { get; }

    /// <summary>The per-layer report.</summary>
    public LayerReport Report { get; }

    /// <summary>Returns A, B and <see cref="AdapterB"/> to the pool.</summary>
    public void Dispose()
    {
        Result.Dispose();
        AdapterB.Dispose();
    }
}
