using System.Diagnostics;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace LoftQNet.TorchSharp;

/// <summary>Where <c>LoftQ.Initialize(model)</c> runs the LoftQ computation.</summary>
public enum LoftQEngine
{
    /// <summary>The managed engine for weights on the CPU; the torch engine for weights on another device (e.g. CUDA).</summary>
    Auto,

    /// <summary>Always the managed engine (weights on another device are copied to the CPU and back).</summary>
    Managed,

    /// <summary>Always the torch engine, on the weights' device.</summary>
    Torch,
}

/// <summary>TorchSharp-specific settings of <c>LoftQ.Initialize(model, …)</c>; the LoftQ settings themselves are in <see cref="LoftQOptions"/>.</summary>
public sealed record LoftQModelOptions
{
    /// <summary>Where the computation runs.</summary>
    public LoftQEngine Engine { get; init; } = LoftQEngine.Auto;

    /// <summary>LoRA dropout of the new layers.</summary>
    public double Dropout { get; init; }

    /// <summary>
    /// dtype of the LoRA factors; null means float32 (float64 for float64 weights), as PEFT's default
    /// <c>autocast_adapter_dtype</c> does: half-precision factors would round away the LoftQ initialisation.
    /// </summary>
    public ScalarType? LoraDType { get; init; }

    /// <summary>Default targets when <see cref="LoftQOptions.Targets"/> is null: LLaMA-family projection names.</summary>
    public IReadOnlyList<string> DefaultTargets { get; init; } = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
}

/// <summary>
/// <c>LoftQ.Initialize</c> on a TorchSharp model: with <c>using LoftQNet.TorchSharp;</c> the core's <see cref="LoftQ"/>
/// class gains the overloads below.
/// </summary>
public static class LoftQModelInitializer
{
    extension(LoftQ)
    {
        /// <summary>
        /// LoftQ-initialises a TorchSharp model in place: every target <c>Linear</c> (selected by
        /// <see cref="LoftQOptions.Targets"/> exactly as the checkpoint pipeline selects tensors) is replaced by a
        /// <see cref="LoraLinear"/> whose packed base Q and factors A, B come from the LoftQ optimizer — the same Q, A and
        /// B, bit for bit, that <c>loftq quantize</c> writes for the same weights and options. Afterwards only the LoRA
        /// factors require gradients. The replaced layers are disposed.
        /// </summary>
        /// <param name="model">The model. Module paths (from <c>named_modules()</c>) name the targets and pick their seeds and, with mixed precision, their bits, so use Hugging Face names to match a checkpoint run.</param>
        /// <param name="options">LoftQ options (bits, rank, passes, solver, alpha, seed, targets, policy); <see cref="LoftQOptions.Format"/>, <see cref="LoftQOptions.DoubleQuant"/> and <see cref="LoftQOptions.Overwrite"/> concern checkpoint output and must keep their defaults.</param>
        /// <param name="progress">One report per finished target.</param>
        /// <param name="modelOptions">TorchSharp-specific settings (engine, LoRA dropout and dtype, default targets).</param>
        /// <param name="cancellationToken">Cancels the run; the model is left unchanged.</param>
        /// <returns>The per-layer report (<see cref="LoftQReport.Output"/> is <c>(in memory)</c>).</returns>
        /// <exception cref="ArgumentException">An option is invalid, no <c>Linear</c> matches the targets (for instance because the model was already initialised: LoRA layers are not candidates), or a weight holds NaN or infinity (the message names the module).</exception>
        /// <exception cref="InvalidOperationException">A target is held where a <see cref="LoraLinear"/> cannot go (the message names the field and the fix).</exception>
        /// <exception cref="DeviceUnavailableException"><see cref="LoftQOptions.Device"/> is <see cref="ComputeDevice.Cuda"/> and no usable GPU backend was found (the model is unchanged).</exception>
        /// <remarks>
        /// With <see cref="LoftQOptions.Device"/> set to Cuda or Auto, the layers the managed engine computes run on the
        /// GPU backend when the application references the LoftQ.Cuda package, exactly as in the checkpoint pipeline.
        /// </remarks>
        public static LoftQReport Initialize(
            Module model, LoftQOptions? options = null, IProgress<LoftQProgress>? progress = null,
            LoftQModelOptions? modelOptions = null, CancellationToken cancellationToken = default) =>
            Run(model, options ?? new LoftQOptions(), modelOptions ?? new LoftQModelOptions(), progress, cancellationToken);

        /// <summary>
        /// Full-precision LoRA, the baseline LoftQ and QLoRA are compared with: every target <c>Linear</c> (chosen
        /// exactly as <c>Initialize</c> chooses them) becomes a <see cref="LoraLinear"/> over the same dense layer,
        /// with B = 0 and A drawn from PEFT's default U(−1/√in, 1/√in) with the same per-module seed as the QLoRA
        /// baseline (<see cref="LoftQOptions.Iterations"/> = 0) of <c>Initialize</c>, so the two start from the same A.
        /// Afterwards only the LoRA factors require gradients.
        /// </summary>
        /// <param name="model">The model.</param>
        /// <param name="options">Only <see cref="LoftQOptions.Rank"/>, <see cref="LoftQOptions.Alpha"/>, <see cref="LoftQOptions.Seed"/> and <see cref="LoftQOptions.Targets"/> are used.</param>
        /// <param name="modelOptions">LoRA dropout and dtype, default targets (the engine is not used).</param>
        /// <returns>The module paths that were wrapped, in module order.</returns>
        /// <exception cref="ArgumentException">An option is invalid or no <c>Linear</c> matches the targets.</exception>
        /// <exception cref="InvalidOperationException">A target is held where a <see cref="LoraLinear"/> cannot go.</exception>
        public static IReadOnlyList<string> AddLora(Module model, LoftQOptions? options = null, LoftQModelOptions? modelOptions = null) =>
            AddDenseLora(model, options ?? new LoftQOptions(), modelOptions ?? new LoftQModelOptions());
    }

    private static List<string> AddDenseLora(Module model, LoftQOptions options, LoftQModelOptions modelOptions)
    {
        ArgumentNullException.ThrowIfNull(model);
        TorchRuntime.EnsureLoaded();
        CheckDropout(modelOptions);
        (LoftQPlan plan, List<(string Path, Linear Linear, ModuleSlot Slot)> slots) = Prepare(model, options, modelOptions);
        var factors = new (Tensor A, Tensor B)[slots.Count];
        try
        {
            for (int k = 0; k < slots.Count; k++)
            {
                Tensor w = slots[k].Linear.weight!;
                int outF = (int)w.shape[0], inF = (int)w.shape[1];
                ScalarType loraType = modelOptions.LoraDType ?? (w.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32);
                using Matrix a = AlternatingOptimizer.KaimingUniformA(options.Rank, inF, plan.LayerSeed(slots[k].Path + ".weight"));
                using var scope = NewDisposeScope();
                factors[k] = (
                    TorchEngine.ToTensor(a).to(loraType).to(w.device).DetachFromDisposeScope(),
                    torch.zeros([outF, options.Rank], dtype: loraType, device: w.device).DetachFromDisposeScope());
            }

            for (int k = 0; k < slots.Count; k++)
            {
                var layer = new LoraLinear(slots[k].Linear, factors[k].A, factors[k].B, plan.Alpha, modelOptions.Dropout);
                slots[k].Slot.Replace(layer);
            }
        }
        finally
        {
            foreach ((Tensor a, Tensor b) in factors)
            {
                a?.Dispose();
                b?.Dispose();
            }
        }

        Freeze(model);
        return slots.Select(s => s.Path).ToList();
    }

    private static void CheckDropout(LoftQModelOptions modelOptions)
    {
        if (!(modelOptions.Dropout >= 0 && modelOptions.Dropout < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(modelOptions), modelOptions.Dropout, "LoftQModelOptions.Dropout must be in [0, 1).");
        }
    }

    private static LoftQReport Run(Module model, LoftQOptions options, LoftQModelOptions modelOptions, IProgress<LoftQProgress>? progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(model);
        TorchRuntime.EnsureLoaded();
        var clock = Stopwatch.StartNew();
        if (options.Format != OutputFormat.Peft || options.DoubleQuant || options.Overwrite)
        {
            throw new ArgumentException("LoftQOptions.Format, DoubleQuant and Overwrite describe checkpoint output; leave them at their defaults when initialising a TorchSharp model.", nameof(options));
        }

        CheckDropout(modelOptions);
        (LoftQPlan prepared, List<(string Path, Linear Linear, ModuleSlot Slot)> slots) = Prepare(model, options, modelOptions);

        // LoftQOptions.Device: the layers the managed engine computes (host copies of the weights) go to the GPU backend
        // when the application ships LoftQ.Cuda, as in the checkpoint pipeline.
        using ILoftQAccelerator? accelerator = Accelerators.Select(
            options, message => progress?.Report(new LoftQProgress(LoftQProgressKind.Notice, 0, slots.Count, Message: message)));
        LoftQPlan plan = accelerator is null ? prepared : prepared.WithAccelerator(accelerator);
        progress?.Report(new LoftQProgress(LoftQProgressKind.Started, 0, slots.Count));
        // This run's thread count flows with the call; the process-wide ComputeSettings.MaxThreads is never changed.
        using ComputeSettings.ThreadScope threads = options.Threads is int t ? ComputeSettings.UseThreads(t) : default;

        // 3. Compute every replacement; the model is untouched until all succeed.
        var created = new LoraLinear?[slots.Count];
        var reports = new LayerReport[slots.Count];
        try
        {
            int done = 0;
            var managed = new List<int>();
            for (int k = 0; k < slots.Count; k++)
            {
                if (!UseTorchEngine(modelOptions.Engine, slots[k], plan))
                {
                    managed.Add(k);
                    continue;
                }

                cancellationToken.ThrowIfCancellationRequested();
                (created[k], reports[k]) = RunOnDevice(plan, slots[k].Path, slots[k].Linear, modelOptions);
                progress?.Report(new LoftQProgress(LoftQProgressKind.LayerCompleted, ++done, slots.Count, reports[k]));
            }

            foreach (List<int> local in Batches(managed.Select(k => slots[k].Linear.weight!.numel()).ToList()))
            {
                List<int> batch = local.Select(i => managed[i]).ToList();
                cancellationToken.ThrowIfCancellationRequested();
                var inputs = new (Matrix Weight, Device Device, ScalarType DType)[batch.Count];
                try
                {
                    for (int i = 0; i < batch.Count; i++)
                    {
                        Tensor w = slots[batch[i]].Linear.weight!;
                        inputs[i] = (ToMatrix(w, slots[batch[i]].Path), w.device, w.dtype);
                    }

                    var results = new LoftQLayerResult?[batch.Count];
                    try
                    {
                        RunBatch(plan, batch, slots, inputs, results, cancellationToken);
                        for (int i = 0; i < batch.Count; i++)
                        {
                            int k = batch[i];
                            LoftQLayerResult r = results[i]!;
                            Tensor? bias = slots[k].Linear.bias;
                            created[k] = LoraLinear.Create(
                                r.Result.Quantized, r.Result.A.Span, r.AdapterB.Span, options.Rank, plan.Alpha, bias?.detach(),
                                modelOptions.LoraDType ?? (inputs[i].DType == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32), inputs[i].Device, modelOptions.Dropout);
                            reports[k] = r.Report;
                            progress?.Report(new LoftQProgress(LoftQProgressKind.LayerCompleted, ++done, slots.Count, r.Report));
                        }
                    }
                    finally
                    {
                        foreach (LoftQLayerResult? r in results)
                        {
                            r?.Dispose();
                        }
                    }
                }
                finally
                {
                    foreach ((Matrix weight, _, _) in inputs)
                    {
                        weight?.Dispose();
                    }
                }
            }
        }
        catch
        {
            foreach (LoraLinear? layer in created)
            {
                layer?.Dispose();
            }

            throw;
        }

        // 4. Swap, dispose what was replaced, freeze everything but the LoRA factors.
        for (int k = 0; k < slots.Count; k++)
        {
            slots[k].Slot.Replace(created[k]!);
            slots[k].Linear.Dispose();
        }

        Freeze(model);

        // The managed solver's weight-sized buffers are garbage now: drop the pooled ones and let an aggressive,
        // compacting collection hand the memory back to the OS instead of leaving it committed under the fine-tuning
        // that usually follows (byte-llama-14m, with the packed weights no longer pinning managed arrays: 70 MB
        // committed before, under 1 MB after).
        BufferPool.Release();
        System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        var report = new LoftQReport
        {
            Model = model.GetType().FullName ?? model.GetType().Name,
            Output = "(in memory)",
            Settings = plan.DescribeSettings(),
            Layers = reports,
            Seconds = clock.Elapsed.TotalSeconds,
        };
        progress?.Report(new LoftQProgress(LoftQProgressKind.Completed, slots.Count, slots.Count, Message: "(in memory)"));
        return report;
    }

    /// <summary>Steps shared by Initialize and AddLora: the candidates (every Linear, by module path), the targets chosen with the pipeline's rules, and a check that every target can be swapped, before anything is computed or changed.</summary>
    private static (LoftQPlan Plan, List<(string Path, Linear Linear, ModuleSlot Slot)> Slots) Prepare(Module model, LoftQOptions options, LoftQModelOptions modelOptions)
    {
        // 1. Candidates: every Linear, by module path; targets chosen with the pipeline's rules.
        var modules = new Dictionary<string, Module>(StringComparer.Ordinal);
        var parents = new Dictionary<string, (Module Parent, string Name)>(StringComparer.Ordinal);
        Collect(model, string.Empty, modules, parents);
        var linears = modules.Where(m => m.Value is Linear).Select(m => m.Key).ToList();
        int layerCount = Math.Max(1, modules.Keys.Select(p => QuantizationPolicies.LayerIndexOf(p + ".weight")).Max(i => i is int v ? v + 1 : 0));
        var plan = new LoftQPlan(options, layerCount);
        IReadOnlyList<string> targets = plan.SelectTargets(linears, modelOptions.DefaultTargets);
        if (targets.Count == 0)
        {
            IReadOnlyList<string> wanted = options.Targets is { Count: > 0 } t ? t : modelOptions.DefaultTargets;
            bool lora = modules.Values.Any(m => m is LoraLinear);
            throw new ArgumentException(
                $"No Linear module of the {model.GetType().Name} matches the targets [{string.Join(", ", wanted)}]" +
                (lora ? " (the model already has LoraLinear layers: it has been initialised)." : $"; its Linear modules are [{string.Join(", ", linears.Take(8))}{(linears.Count > 8 ? ", …" : string.Empty)}]. Set LoftQOptions.Targets."),
                nameof(options));
        }

        // 2. Every target must be swappable before anything is computed or changed.
        var slots = new List<(string Path, Linear Linear, ModuleSlot Slot)>(targets.Count);
        foreach (string path in targets)
        {
            var linear = (Linear)modules[path];
            (Module parent, string name) = parents[path];
            slots.Add((path, linear, ModuleSlot.Find(parent, name, linear, path, typeof(LoraLinear))));
            if (linear.weight is null || linear.weight.Dimensions != 2)
            {
                throw new ArgumentException($"Target '{path}' has no two-dimensional weight.", nameof(model));
            }

            if (options.Rank > Math.Min(linear.weight.shape[0], linear.weight.shape[1]))
            {
                throw new ArgumentException($"LoftQOptions.Rank {options.Rank} is larger than min(out, in) = {Math.Min(linear.weight.shape[0], linear.weight.shape[1])} of target '{path}' [{linear.weight.shape[0]}, {linear.weight.shape[1]}].", nameof(options));
            }
        }

        return (plan, slots);
    }

    /// <summary>Whether a target runs on the torch engine (on its weight's device) rather than the managed one.</summary>
    private static bool UseTorchEngine(LoftQEngine engine, (string Path, Linear Linear, ModuleSlot Slot) slot, LoftQPlan plan)
    {
        if (engine == LoftQEngine.Managed)
        {
            return false;
        }

        IQuantizer quantizer = plan.Policy.Select(slot.Path + ".weight");
        bool blockwise = quantizer is BlockwiseQuantizer { ScaleSearch: null };
        bool plainObjective = plan.Options is { Objective: LoftQObjective.Weight, LowRankFirst: false };
        if (engine == LoftQEngine.Torch)
        {
            if (!plainObjective)
            {
                throw new ArgumentException("LoftQEngine.Torch runs the weight objective in LoftQ order only; LoftQOptions.Objective = "
                    + $"{plan.Options.Objective} / LowRankFirst = {plan.Options.LowRankFirst} need LoftQEngine.Managed or Auto.");
            }

            return blockwise
                ? true
                : throw new ArgumentException(quantizer is BlockwiseQuantizer
                    ? $"LoftQEngine.Torch does not search block scales yet; '{slot.Path}' gets {quantizer}. Use LoftQEngine.Managed or Auto, or LoftQOptions.ScaleSearch = null."
                    : $"LoftQEngine.Torch runs the built-in blockwise quantizers only; '{slot.Path}' gets the custom quantizer {quantizer.Name}. Use LoftQEngine.Managed or Auto.");
        }

        return blockwise && plainObjective && slot.Linear.weight!.device_type != DeviceType.CPU;
    }

    /// <summary>One target on the torch engine, on its weight's device: the same quantizer and seed as the managed path.</summary>
    private static (LoraLinear Layer, LayerReport Report) RunOnDevice(LoftQPlan plan, string path, Linear linear, LoftQModelOptions modelOptions)
    {
        var clock = Stopwatch.StartNew();
        string tensorName = path + ".weight";
        var quantizer = (BlockwiseQuantizer)plan.Policy.Select(tensorName);
        int seed = plan.LayerSeed(tensorName);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        using TorchBlockwiseQuantizer torchQuantizer = TorchBlockwiseQuantizer.From(quantizer);
        ITorchLowRankSolver solver = plan.Options.Solver == SolverKind.Exact ? new TorchExactSvdSolver() : new TorchRandomizedSvdSolver(seed: seed);
        TorchLoftQResult result;
        try
        {
            result = TorchLoftQ.Run(linear.weight!.detach(), torchQuantizer, solver, plan.Options.Rank, plan.Options.Iterations, seed);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"Module '{path}': {e.Message}", e);
        }

        using (result)
        {
            Device device = linear.weight!.device;
            long outF = result.Shape.Rows, inF = result.Shape.Columns;
            Tensor codes = result.PackedCodes;
            long padded = PackedWeight.PackedLength(outF * inF, quantizer.Bits);
            if (codes.shape[0] < padded)
            {
                codes = torch.nn.functional.pad(codes, [0, padded - codes.shape[0]]);
            }

            var packed = new PackedWeight(
                codes.clone(), result.Scales.clone(), result.Offsets?.clone(),
                torch.tensor(quantizer.CodeBook.ToArray(), dtype: ScalarType.Float32).to(device), quantizer.Bits, quantizer.BlockSize, outF, inF);
            var baseLayer = new QuantizedLinear(packed, linear.bias?.detach(), quantizer.Name);
            ScalarType loraType = modelOptions.LoraDType ?? (linear.weight.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32);
            Tensor b = result.B.mul((double)plan.Options.Rank / plan.Alpha).to(loraType);
            var layer = new LoraLinear(baseLayer, result.A.to(loraType), b, plan.Alpha, modelOptions.Dropout);
            var report = new LayerReport
            {
                Name = tensorName,
                Shape = [(int)outF, (int)inF],
                Quantizer = quantizer.Name,
                Bits = quantizer.Bits,
                QLoRAError = result.QLoRAError,
                ErrorTrace = result.ErrorTrace.ToArray(),
                BestPass = result.BestPass,
                RelativeError = result.RelativeError,
                Seconds = clock.Elapsed.TotalSeconds,
            };
            return (layer, report);
        }
    }

    /// <summary>Sets requires_grad on every parameter: true for LoRA factors, false for everything else.</summary>
    internal static void Freeze(Module model)
    {
        var trainable = new HashSet<IntPtr>();
        foreach (Module m in model.modules())
        {
            if (m is LoraLinear lora)
            {
                trainable.Add(lora.A.Handle);
                trainable.Add(lora.B.Handle);
            }
        }

        foreach (Parameter p in model.parameters())
        {
            p.requires_grad = trainable.Contains(p.Handle);
        }
    }

    private static void Collect(Module module, string prefix, Dictionary<string, Module> modules, Dictionary<string, (Module, string)> parents)
    {
        foreach ((string name, Module child) in module.named_children())
        {
            string path = prefix.Length == 0 ? name : prefix + "." + name;
            modules[path] = child;
            parents[path] = (module, name);
            Collect(child, path, modules, parents);
        }
    }

    /// <summary>Small targets run several at a time (each single-threaded), large ones alone with multi-threaded kernels.</summary>
    private static IEnumerable<List<int>> Batches(List<long> sizes)
    {
        const long LayerParallelMaxElements = 4L << 20;
        int width = Math.Max(1, ComputeSettings.EffectiveMaxThreads);
        var batch = new List<int>();
        for (int i = 0; i < sizes.Count; i++)
        {
            if (sizes[i] > LayerParallelMaxElements)
            {
                if (batch.Count > 0)
                {
                    yield return batch;
                    batch = [];
                }

                yield return [i];
                continue;
            }

            batch.Add(i);
            if (batch.Count == width)
            {
                yield return batch;
                batch = [];
            }
        }

        if (batch.Count > 0)
        {
            yield return batch;
        }
    }

    private static void RunBatch(
        LoftQPlan plan, List<int> batch, List<(string Path, Linear Linear, ModuleSlot Slot)> slots,
        (Matrix Weight, Device Device, ScalarType DType)[] inputs, LoftQLayerResult?[] results, CancellationToken cancellationToken)
    {
        LoftQLayerResult One(int i)
        {
            string path = slots[batch[i]].Path;
            try
            {
                return plan.InitializeLayer(path + ".weight", inputs[i].Weight);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"Module '{path}': {e.Message}", e);
            }
        }

        if (batch.Count == 1)
        {
            results[0] = One(0);
            return;
        }

        try
        {
            Parallel.For(0, batch.Count, new ParallelOptions { MaxDegreeOfParallelism = batch.Count, CancellationToken = cancellationToken }, i =>
            {
                using ComputeSettings.SerialRegion serial = ComputeSettings.EnterSerialRegion();
                results[i] = One(i);
            });
        }
        catch (AggregateException e)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.Flatten().InnerExceptions[0]).Throw();
            throw;
        }
    }

    /// <summary>Copies a weight [out, in] into a float32 matrix (exact for fp32, bf16 and fp16 weights).</summary>
    private static Matrix ToMatrix(Tensor weight, string path) => weight.is_floating_point()
        ? TorchEngine.ToMatrix(weight)
        : throw new ArgumentException($"Target '{path}' has a {weight.dtype} weight; LoftQ needs a floating-point weight.");
}
