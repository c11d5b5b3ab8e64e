using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.Pipeline;

/// <summary>Which quantizer family the pipeline builds for each target.</summary>
public enum QuantizerKind
{
    /// <summary>Blockwise NormalFloat (NF2/NF3/NF4/NF8).</summary>
    NormalFloat,

    /// <summary>Blockwise uniform, symmetric absmax.</summary>
    Uniform,

    /// <summary>Blockwise uniform, asymmetric min/max with a per-block offset.</summary>
    UniformAsymmetric,
}

/// <summary>Which low-rank solver the pipeline uses.</summary>
public enum SolverKind
{
    /// <summary>Randomized SVD (Halko–Martinsson–Tropp), warm-started across passes. Fast.</summary>
    Randomized,

    /// <summary>Full SVD (Math.NET). Exact, slow for large matrices.</summary>
    Exact,
}

/// <summary>The layout of the quantized backbone the pipeline writes.</summary>
public enum OutputFormat
{
    /// <summary>The backbone holds the dequantized Q in each target's original dtype (LoftQ's Hugging Face releases).</summary>
    Peft,

    /// <summary>The backbone holds pre-quantized bitsandbytes NF4 tensors that transformers loads without re-quantizing.</summary>
    BitsAndBytesNf4,
}

/// <summary>Where the LoftQ loop of each target runs.</summary>
public enum ComputeDevice
{
    /// <summary>The managed CPU path (SIMD GEMM, fused quantizers), available everywhere.</summary>
    Cpu,

    /// <summary>
    /// An NVIDIA GPU through the LoftQ.Cuda package (the CUDA libraries the machine has, no libtorch). It is an error
    /// when no usable GPU is found or the options need something the GPU path lacks (the message says which).
    /// </summary>
    Cuda,

    /// <summary>The GPU when <see cref="Cuda"/> would work, otherwise the CPU with a one-line notice saying why.</summary>
    Auto,
}

/// <summary>Options for <see cref="LoftQ.Initialize(string, string, LoftQOptions?, IProgress{LoftQProgress}?, CancellationToken)"/>.</summary>
public sealed record LoftQOptions
{
    /// <summary>
    /// Bits per weight: 2, 3, 4 or 8 for every target, or a fractional average in (2, 4) for LoftQ's mixed
    /// precision (the first decoder layers get 4 bits, the rest 2). Ignored when <see cref="Policy"/> is set.
    /// </summary>
    public double Bits { get; init; } = 4;

    /// <summary>
    /// Budgeted mixed precision: an average of bits per target weight (e.g. 2.5) that the checkpoint pipeline spends
    /// where it reduces the error most, choosing each target's bits from <see cref="BudgetBits"/> (an exact knapsack
    /// over probed errors; the report lists the allocation). Overrides <see cref="Bits"/>; not combinable with
    /// <see cref="BitsPatterns"/> or a custom <see cref="Policy"/>. Null (the default) = no budget.
    /// </summary>
    public double? BitBudget { get; init; }

    /// <summary>The bit widths a <see cref="BitBudget"/> chooses from (default 2, 3 and 4; add 8 if wanted).</summary>
    public IReadOnlyList<int> BudgetBits { get; init; } = [2, 3, 4];

    /// <summary>The quantizer family.</summary>
    public QuantizerKind Quantizer { get; init; } = QuantizerKind.NormalFloat;

    /// <summary>LoRA rank r.</summary>
    public int Rank { get; init; } = 16;

    /// <summary>Alternating passes T (0 = the QLoRA baseline: B = 0).</summary>
    public int Iterations { get; init; } = 5;

    /// <summary>Values per quantization block.</summary>
    public int BlockSize { get; init; } = 64;

    /// <summary>
    /// Each block's scale is searched for the least squared error (<see cref="BlockScaleSearch"/>; the default,
    /// <see cref="BlockScaleSearch.Default"/>, won at every bit width measured) instead of being its absmax. Set it to
    /// null for the reference LoftQ that PEFT computes and bitsandbytes' QLoRA (absmax scales). The output formats are
    /// the same either way. Ignored by a custom <see cref="Policy"/>, whose quantizers carry their own setting.
    /// </summary>
    public BlockScaleSearch? ScaleSearch { get; init; } = BlockScaleSearch.Default;

    /// <summary>
    /// What each target minimises: <see cref="LoftQObjective.Weight"/> (the paper's ‖W − Q − B·A‖, the default) or an
    /// activation-aware objective, which needs <see cref="Calibration"/>.
    /// </summary>
    public LoftQObjective Objective { get; init; } = LoftQObjective.Weight;

    /// <summary>
    /// The calibration inputs' second moments (<see cref="CalibrationStatistics.Collect"/>) for an activation-aware
    /// <see cref="Objective"/>; they must come from the same model (<see cref="CalibrationStatistics.ModelFingerprint"/>).
    /// </summary>
    public CalibrationStatistics? Calibration { get; init; }

    /// <summary>Damping λ of the activation-aware objectives (<see cref="InputWeighting"/>): H + λ·mean(diag H)·I.</summary>
    public double Damping { get; init; } = InputWeighting.DefaultDamping;

    /// <summary>
    /// With an activation-aware <see cref="Objective"/> and <see cref="ScaleSearch"/>: weigh each value's error by its
    /// input channel's second moment in the block-scale search (true by default).
    /// </summary>
    public bool ActivationWeightedScales { get; init; } = true;

    /// <summary>QPiSSA order: take the rank-r approximation of W first and quantize the residual (<see cref="AlternatingOptimizer.LowRankFirst"/>).</summary>
    public bool LowRankFirst { get; init; }

    /// <summary>The low-rank solver.</summary>
    public SolverKind Solver { get; init; } = SolverKind.Randomized;

    /// <summary>LoRA alpha written to the adapter; <c>null</c> means alpha = r. B is divided by alpha/r so that Q + (alpha/r)·B·A reproduces the optimizer's result.</summary>
    public int? Alpha { get; init; }

    /// <summary>Seed for the randomized solver and the QLoRA initialisation of A.</summary>
    public int Seed { get; init; }

    /// <summary>Target modules: module names (e.g. <c>q_proj</c>) or <c>re:</c>-prefixed regular expressions over the module path; <c>null</c> = the architecture's defaults.</summary>
    public IReadOnlyList<string>? Targets { get; init; }

    /// <summary>Explicit mixed precision: (regex over the tensor name, bits) rules, first match wins; unmatched targets use <see cref="Bits"/>.</summary>
    public IReadOnlyList<(string Pattern, int Bits)>? BitsPatterns { get; init; }

    /// <summary>A custom per-tensor quantizer policy; overrides <see cref="Bits"/>, <see cref="Quantizer"/> and <see cref="BitsPatterns"/>.</summary>
    public IQuantizationPolicy? Policy { get; init; }

    /// <summary>The backbone layout.</summary>
    public OutputFormat Format { get; init; } = OutputFormat.Peft;

    /// <summary>With <see cref="OutputFormat.BitsAndBytesNf4"/>: quantize the absmax values too (bitsandbytes double quantization).</summary>
    public bool DoubleQuant { get; init; }

    /// <summary>
    /// Where each target's LoftQ loop runs (<see cref="ComputeDevice.Cpu"/> by default). The GPU path runs the weight
    /// objective with the randomized solver and the built-in quantizers; <see cref="LoftQ.Describe"/> says whether a GPU
    /// was found and why not.
    /// </summary>
    public ComputeDevice Device { get; init; } = ComputeDevice.Cpu;

    /// <summary>Threads to use; <c>null</c> = <see cref="Numerics.ComputeSettings.MaxThreads"/>.</summary>
    public int? Threads { get; init; }

    /// <summary>Replace an existing non-empty output directory (atomically, only once the new one is complete).</summary>
    public bool Overwrite { get; init; }
}
