using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.Pipeline;

/// <summary>
/// The model-level run: streams a Hugging Face checkpoint shard by shard, LoftQ-initialises every target matrix
/// (several at once when they are small, one at a time with multi-threaded kernels when they are large), and
/// writes the backbone, the PEFT adapter and the report into a staging directory that is moved into place last.
/// </summary>
internal static class CheckpointPipeline
{
    /// <summary>Targets at most this large run several at a time, each single-threaded.</summary>
    private const long LayerParallelMaxElements = 4L << 20;

    /// <summary>
    /// Checks the options and the model, takes the output name (staging), writes every shard (<see cref="WriteShard"/>),
    /// then the index, the model's other files, the adapter and the report, and moves the output into place.
    /// </summary>
    public static LoftQReport Run(
        string modelDirectory, string outputDirectory, LoftQOptions options,
        IProgress<LoftQProgress>? progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        OptionChecks.Validate(options);
        var clock = Stopwatch.StartNew();
        if (!Directory.Exists(modelDirectory))
        {
            throw new DirectoryNotFoundException(File.Exists(modelDirectory)
                ? $"Model directory '{modelDirectory}' is a file, not a model directory (pass the folder holding config.json and the safetensors files)."
                : $"Model directory '{modelDirectory}' does not exist.");
        }

        // This run's thread count flows with the call; the process-wide ComputeSettings.MaxThreads is never changed.
        using ComputeSettings.ThreadScope threads = options.Threads is int t ? ComputeSettings.UseThreads(t) : default;

        using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(modelDirectory);
        ConfigConsistency.Validate(checkpoint);
        OptionChecks.CheckLayerCountForMixedPrecision(options, checkpoint.Config);
        if (options.Objective != LoftQObjective.Weight && options.Calibration!.ModelFingerprint != CalibrationStatistics.ModelFingerprintOf(modelDirectory))
        {
            throw new ArgumentException($"LoftQOptions.Calibration was collected from another model (its config.json differs from '{Path.Combine(modelDirectory, "config.json")}').");
        }

        IReadOnlyList<string> targets = TargetSelector.Select(checkpoint, options.Targets);
        List<string> warnings = NonMatrixTargetWarnings(checkpoint, options.Targets);
        void Notice(string message) => progress?.Report(new LoftQProgress(LoftQProgressKind.Notice, 0, targets.Count, Message: message));
        var targetSet = new HashSet<string>(targets, StringComparer.Ordinal);
        bool fanInFanOut = checkpoint.Config.FanInFanOut;
        IQuantizationPolicy? allocated = options.BitBudget is null
            ? null
            : BitAllocator.Allocate(
                checkpoint, targets, options, fanInFanOut,
                Notice,
                cancellationToken).Policy;
        using ILoftQAccelerator? accelerator = Accelerators.Select(
            options, Notice);
        var plan = new LoftQPlan(options, checkpoint.Config.NumHiddenLayers, allocated) { Accelerator = accelerator };
        IQuantizationPolicy policy = plan.Policy;
        CheckTargets(checkpoint, targets, options, policy, fanInFanOut);

        using OutputStaging staging = OutputStaging.Create(
            outputDirectory, modelDirectory, options.Overwrite,
            Notice);
        foreach (string warning in warnings)
        {
            Notice(warning);
        }

        progress?.Report(new LoftQProgress(LoftQProgressKind.Started, 0, targets.Count));

        var layers = new List<LayerReport>(targets.Count);
        var adapters = new List<LoraTensors>(targets.Count);
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        long totalBytes = 0;
        int done = 0;
        try
        {
            foreach (string shard in checkpoint.ShardFiles)
            {
                cancellationToken.ThrowIfCancellationRequested();
                List<SafeTensorInfo> descriptors = WriteShard(
                    checkpoint, shard, staging.Path, targetSet, plan, fanInFanOut, layers, adapters,
                    output =>
                    {
                        int completed = Interlocked.Increment(ref done);
                        progress?.Report(new LoftQProgress(LoftQProgressKind.LayerCompleted, completed, targets.Count, output.Report));
                    },
                    cancellationToken);
                foreach (SafeTensorInfo d in descriptors)
                {
                    weightMap[d.Name] = shard;
                    totalBytes += d.ByteLength;
                }

                progress?.Report(new LoftQProgress(LoftQProgressKind.ShardWritten, done, targets.Count, Message: shard));
            }

            cancellationToken.ThrowIfCancellationRequested();
            if (checkpoint.IsSharded)
            {
                CheckpointOutputs.WriteIndex(staging.Path, checkpoint, weightMap, totalBytes);
            }

            CheckpointOutputs.CopyOtherFiles(modelDirectory, staging.Path, checkpoint.Config, options);
            CheckpointOutputs.WriteAdapter(staging.Path, modelDirectory, options, adapters, fanInFanOut);
            var report = new LoftQReport
            {
                Model = Path.GetFullPath(modelDirectory),
                Output = staging.Target,
                Settings = plan.DescribeSettings(),
                Layers = layers,
                Seconds = clock.Elapsed.TotalSeconds,
                Warnings = warnings,
            };
            AtomicFile.WriteAllText(Path.Combine(staging.Path, "loftq_report.json"), report.ToJson());
            cancellationToken.ThrowIfCancellationRequested();
            staging.Commit();
            progress?.Report(new LoftQProgress(LoftQProgressKind.Completed, done, targets.Count, Message: staging.Target));
            return report with { Seconds = clock.Elapsed.TotalSeconds };
        }
        finally
        {
            foreach (LoraTensors adapter in adapters)
            {
                adapter.A.Dispose();
                adapter.B.Dispose();
            }
        }
    }

    /// <summary>Tensors the targets match by name that are not 2-D: they are copied unchanged, and the user is told.</summary>
    private static List<string> NonMatrixTargetWarnings(HuggingFaceCheckpoint checkpoint, IReadOnlyList<string>? targets) =>
        TargetSelector.SelectNonMatrices(checkpoint, targets).Select(name =>
        {
            TensorShape shape = checkpoint.GetInfo(name).Shape;
            return $"Tensor '{name}' matches the targets but has shape {shape} ({shape.Rank}-D); LoftQ initialises only 2-D weights, so it was copied unchanged.";
        }).ToList();

    private static void CheckTargets(
        HuggingFaceCheckpoint checkpoint, IReadOnlyList<string> targets, LoftQOptions options,
        IQuantizationPolicy policy, bool fanInFanOut)
    {
        foreach (string name in targets)
        {
            SafeTensorInfo info = checkpoint.GetInfo(name);
            if (info.Rank != 2)
            {
                throw new ArgumentException($"Target tensor '{name}' has shape {info.Shape}; only 2-D weights can be LoftQ-initialised.");
            }

            if (info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
            {
                throw new ArgumentException($"Target tensor '{name}' is {info.DType}; LoftQ needs a floating-point weight (F32, F16 or BF16).");
            }

            long outFeatures = fanInFanOut ? info.Shape[1] : info.Shape[0];
            long inFeatures = fanInFanOut ? info.Shape[0] : info.Shape[1];
            if (options.Rank > Math.Min(outFeatures, inFeatures))
            {
                throw new ArgumentException($"LoftQOptions.Rank = {options.Rank} is larger than min(out, in) = {Math.Min(outFeatures, inFeatures)} of target tensor '{name}' [{outFeatures}, {inFeatures}].");
            }

            if (options.Format == OutputFormat.BitsAndBytesNf4)
            {
                IQuantizer q = policy.Select(name);
                if (q is not NormalFloatQuantizer { Bits: 4 })
                {
                    throw new ArgumentException($"LoftQOptions.Format = OutputFormat.BitsAndBytesNf4 needs NF4 for every target, but '{name}' gets {q.Name}.");
                }

                if (fanInFanOut)
                {
                    throw new ArgumentException($"LoftQOptions.Format = OutputFormat.BitsAndBytesNf4 is not supported for {checkpoint.Config.ModelType} (fan-in-fan-out Conv1D weights); use LoftQOptions.Format = OutputFormat.Peft.");
                }
            }
        }
    }

    /// <summary>
    /// One shard: LoftQ-initialises its targets (their new tensors parked in a spill file as they finish), then writes
    /// the shard from the input and the spill; returns the tensors written, in order. The targets' reports and
    /// adapters are appended to <paramref name="layers"/> and <paramref name="adapters"/> in file order.
    /// </summary>
    private static List<SafeTensorInfo> WriteShard(
        HuggingFaceCheckpoint checkpoint, string shard, string stagingPath, HashSet<string> targetSet, LoftQPlan plan, bool fanInFanOut,
        List<LayerReport> layers, List<LoraTensors> adapters, Action<SpilledTarget> completed, CancellationToken cancellationToken)
    {
        SafeTensorsFile file = checkpoint.OpenShard(shard);
        List<SafeTensorInfo> shardTargets = file.Tensors.Where(t => targetSet.Contains(t.Name)).ToList();

        // Each finished target's new tensors are parked in a spill file in the staging folder at once, so
        // memory holds the targets being computed, not the whole shard's output (a 7B model's shard holds
        // gigabytes of them). The shard is then written from the input and the spill, 1 MiB at a time.
        using var spill = new BackboneSpill(Path.Combine(stagingPath, ".backbone-spill"));
        Dictionary<string, SpilledTarget> outputs = ProcessTargets(file, shardTargets, plan, fanInFanOut, spill, completed, cancellationToken);

        var descriptors = new List<SafeTensorInfo>(file.Tensors.Count);
        foreach (SafeTensorInfo info in file.Tensors)
        {
            if (outputs.TryGetValue(info.Name, out SpilledTarget? output))
            {
                descriptors.AddRange(spill.Descriptors(info.Name));
                layers.Add(output.Report);
                adapters.Add(output.Adapter);
            }
            else
            {
                descriptors.Add(info);
            }
        }

        using (SafeTensorsWriter writer = SafeTensorsWriter.Create(Path.Combine(stagingPath, shard), descriptors, file.Metadata))
        {
            foreach (SafeTensorInfo info in file.Tensors)
            {
                if (outputs.ContainsKey(info.Name))
                {
                    spill.CopyTo(info.Name, writer);
                }
                else
                {
                    writer.WriteTensorFrom(file, info.Name);
                }
            }

            writer.Commit();
        }

        return descriptors;
    }

    private static Dictionary<string, SpilledTarget> ProcessTargets(
        SafeTensorsFile file, List<SafeTensorInfo> targets, LoftQPlan plan,
        bool fanInFanOut, BackboneSpill spill, Action<SpilledTarget> completed, CancellationToken cancellationToken)
    {
        var outputs = new ConcurrentDictionary<string, SpilledTarget>(StringComparer.Ordinal);
        // One target at a time (large layers, or a GPU): read the next weight while this one is computed.
        using WeightPrefetcher? prefetcher = TargetThreads(targets, plan.Accelerator) == 1 && targets.Count > 1 ? new WeightPrefetcher(file, targets) : null;
        ForEachTarget(targets, i =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            TargetOutput output;
            try
            {
                output = ProcessTarget(file, targets[i], plan, fanInFanOut, spill, prefetcher, i);
            }
            catch (ArgumentException e)
            {
                // E.g. a NaN weight: say which tensor of which file, not only which element.
                throw new ArgumentException($"Tensor '{targets[i].Name}' in '{file.Path}': {ExplainHugeWeight(file, targets[i])}{e.Message}", e);
            }
            catch (OverflowException e)
            {
                throw new OverflowException(
                    $"{e.Message} The input '{file.Path}' stores this weight as {targets[i].DType.ToHeaderString()}; LoftQ's Q quantizes W - B·A, " +
                    "whose range can exceed W's own. With LoftQOptions.Iterations = 1 (Q = q(W)) it cannot; or convert the checkpoint to a wider dtype.", e);
            }
            catch (NotFiniteNumberException e)
            {
                throw new NotFiniteNumberException($"{ExplainHugeWeight(file, targets[i])}{e.Message} (input '{file.Path}')", e.OffendingNumber, e);
            }

            if (output.BackboneEntries.Count > 0)
            {
                spill.Add(targets[i].Name, output.BackboneEntries);
            }

            if (targets[i].ElementCount > Matrix.PoolLimit)
            {
                // A weight-sized target leaves megabytes of short-lived large-object garbage (codes, scales, the
                // best pass's Q); collecting it now keeps peak memory flat instead of letting it pile up for
                // hundreds of megabytes until the GC's own budget runs out. Costs milliseconds per target.
                GC.Collect();
            }

            var spilled = new SpilledTarget(output.Adapter, output.Report);
            outputs[targets[i].Name] = spilled;
            completed(spilled);
        }, plan.Accelerator);
        return new Dictionary<string, SpilledTarget>(outputs, StringComparer.Ordinal);
    }

    /// <summary>
    /// Runs <paramref name="body"/> for every target of one shard: several at a time (each single-threaded) when they
    /// are all small, one at a time (with multi-threaded kernels) otherwise. The first real failure (a bad tensor, a
    /// cancellation) is rethrown rather than the AggregateException around it.
    /// </summary>
    internal static void ForEachTarget(IReadOnlyList<SafeTensorInfo> targets, Action<int> body, ILoftQAccelerator? accelerator = null)
    {
        int threads = TargetThreads(targets, accelerator);
        if (accelerator is not null && threads > 1)
        {
            OnDedicatedThreads(targets.Count, threads, body);
            return;
        }

        try
        {
            ComputeSettings.ParallelFor(targets.Count, threads, body);
        }
        catch (AggregateException e)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.Flatten().InnerExceptions[0]).Throw();
            throw;
        }
    }

    /// <summary>
    /// Runs <paramref name="body"/> for [0, <paramref name="count"/>) on <paramref name="threads"/> threads of its own, in
    /// index order as each thread frees up. A device's lanes are only kept busy by that many callers at once, which a
    /// busy thread pool does not promise. After a failure no new index starts; the failure of the lowest index is
    /// rethrown once the running ones finish.
    /// </summary>
    internal static void OnDedicatedThreads(int count, int threads, Action<int> body)
    {
        int next = -1;
        var failures = new ConcurrentDictionary<int, Exception>();
        var workers = new Thread[Math.Min(threads, count)];
        for (int t = 0; t < workers.Length; t++)
        {
            workers[t] = new Thread(() =>
            {
                using ComputeSettings.SerialRegion region = ComputeSettings.EnterSerialRegion();
                int i;
                while (failures.IsEmpty && (i = Interlocked.Increment(ref next)) < count)
                {
                    try
                    {
                        body(i);
                    }
                    catch (Exception e)
                    {
                        failures[i] = e;
                    }
                }
            })
            {
                IsBackground = true,
                Name = $"LoftQ target {t}",
            };
            workers[t].Start();
        }

        foreach (Thread worker in workers)
        {
            worker.Join();
        }

        if (!failures.IsEmpty)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failures[failures.Keys.Min()]).Throw();
        }
    }

    /// <summary>
    /// Targets computed at once by <see cref="ForEachTarget"/>: as many as <paramref name="accelerator"/> runs at once
    /// when there is one; otherwise several when they are all small (each single-threaded), else one (with
    /// multi-threaded kernels).
    /// </summary>
    internal static int TargetThreads(IReadOnlyList<SafeTensorInfo> targets, ILoftQAccelerator? accelerator = null)
    {
        if (accelerator is not null)
        {
            return Math.Clamp(targets.Count, 1, accelerator.Concurrency);
        }

        long largest = targets.Count == 0 ? 0 : targets.Max(t => t.ElementCount);
        return largest <= LayerParallelMaxElements ? ComputeSettings.ThreadsFor(targets.Count, 1) : 1;
    }

    /// <summary>
    /// When a target fails on finite but huge values (float32 arithmetic overflowing into ±∞ or NaN), the reason to
    /// lead the message with; empty when the weight is ordinary or itself holds NaN/∞ (the message says so already).
    /// </summary>
    private static string ExplainHugeWeight(SafeTensorsFile file, SafeTensorInfo info)
    {
        float[] w;
        try
        {
            w = file.ReadAsSingle(info.Name);
        }
        catch (IOException)
        {
            return string.Empty; // the original error stands on its own
        }

        if (FloatConversions.IndexOfNonFinite(w) >= 0)
        {
            return string.Empty;
        }

        int at = System.Numerics.Tensors.TensorPrimitives.IndexOfMaxMagnitude(w);
        if (at < 0 || Math.Abs(w[at]) < 1e15f)
        {
            return string.Empty;
        }

        return string.Create(CultureInfo.InvariantCulture,
            $"its values are finite but reach {w[at]:R} (element {at}), so LoftQ's float32 arithmetic (residuals, products, norms) overflowed to infinity; weights this large cannot be LoftQ-initialised. Details: ");
    }

    private static TargetOutput ProcessTarget(SafeTensorsFile file, SafeTensorInfo info, LoftQPlan plan, bool fanInFanOut, BackboneSpill spill, WeightPrefetcher? prefetcher, int index)
    {
        LoftQOptions options = plan.Options;
        using Matrix stored = ReadWeight(file, info, prefetcher, index);
        // GPT-2's Conv1D stores [in, out]: optimise in the [out, in] orientation, write back transposed.
        using Matrix? transposed = fanInFanOut ? stored.Transpose() : null;
        Matrix weight = transposed ?? stored;
        using LoftQLayerResult layer = plan.InitializeLayer(info.Name, weight);
        LoftQResult result = layer.Result;

        var entries = new List<SafeTensorEntry>();
        if (options.Format == OutputFormat.BitsAndBytesNf4)
        {
            entries.AddRange(BitsAndBytesNf4.CreateEntries(info.Name, result.Quantized, TorchDTypeName(info.DType), options.DoubleQuant));
        }
        else
        {
            using Matrix q = Matrix.Uninitialized(weight.Rows, weight.Columns);
            layer.Quantizer.Dequantize(result.Quantized, q.Span);
            using Matrix? backTransposed = fanInFanOut ? q.Transpose() : null;
            spill.AddSingle(info.Name, info.Shape, info.DType, (backTransposed ?? q).Span); // converted chunk by chunk, no tensor-sized copy
        }

        return new TargetOutput(entries, new LoraTensors(TargetSelector.ModulePathOf(info.Name), result.A.Clone(), layer.AdapterB.Clone()), layer.Report);
    }

    /// <summary>The target's weight as stored (target <paramref name="index"/> of the shard), from <paramref name="prefetcher"/> when one reads ahead.</summary>
    private static Matrix ReadWeight(SafeTensorsFile file, SafeTensorInfo info, WeightPrefetcher? prefetcher, int index) =>
        prefetcher is not null ? prefetcher.Take(index) : WeightPrefetcher.Read(file, info);

    private static string TorchDTypeName(SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.BF16 => "bfloat16",
        SafeTensorDType.F16 => "float16",
        _ => "float32",
    };

    private sealed record TargetOutput(List<SafeTensorEntry> BackboneEntries, LoraTensors Adapter, LayerReport Report);

    /// <summary>A finished target whose backbone tensors are in the shard's <see cref="BackboneSpill"/>.</summary>
    private sealed record SpilledTarget(LoraTensors Adapter, LayerReport Report);

    /// <summary>
    /// A shard's new backbone tensors, parked on disk (in the staging folder, deleted on close) from the moment each
    /// target finishes until the shard is written, so that peak memory does not grow with the shard's size.
    /// </summary>
    private sealed class BackboneSpill : IDisposable
    {
        private const int ChunkBytes = 1 << 20;
        private readonly Microsoft.Win32.SafeHandles.SafeFileHandle _handle;
        private readonly string _path;
        private readonly Dictionary<string, List<(SafeTensorInfo Descriptor, long Offset)>> _entries = new(StringComparer.Ordinal);
        private readonly Lock _gate = new();
        private long _length;

        public BackboneSpill(string path)
        {
            _path = path;
            _handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
        }

        /// <summary>Appends a target's tensors (any thread).</summary>
        public void Add(string target, List<SafeTensorEntry> entries)
        {
            lock (_gate)
            {
                var placed = new List<(SafeTensorInfo, long)>(entries.Count);
                foreach (SafeTensorEntry e in entries)
                {
                    RandomAccess.Write(_handle, e.Data.Span, _length);
                    placed.Add((e.Info, _length));
                    _length += e.Data.Length;
                }

                _entries[target] = placed;
            }
        }

        /// <summary>Converts a target's float32 values to <paramref name="dtype"/> and appends them (any thread; conversion outside the lock).</summary>
        /// <exception cref="OverflowException">A value does not fit the dtype.</exception>
        /// <exception cref="NotFiniteNumberException">A value is NaN or infinite.</exception>
        public void AddSingle(string name, TensorShape shape, SafeTensorDType dtype, ReadOnlySpan<float> values)
        {
            int size = SafeTensorsWriter.FloatTargetSize(name, dtype);
            long start;
            lock (_gate)
            {
                start = _length;
                _length += (long)values.Length * size;
            }

            const int chunk = ChunkBytes / 4;
            byte[] buffer = ArrayPool<byte>.Shared.Rent(chunk * size);
            try
            {
                for (int at = 0; at < values.Length; at += chunk)
                {
                    int n = Math.Min(chunk, values.Length - at);
                    Span<byte> bytes = buffer.AsSpan(0, n * size);
                    SafeTensorsWriter.ConvertSingle(name, shape, at, values.Slice(at, n), dtype, bytes);
                    RandomAccess.Write(_handle, bytes, start + ((long)at * size));
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }

            lock (_gate)
            {
                _entries[name] = [(new SafeTensorInfo(name, dtype, shape), start)];
            }
        }

        public IEnumerable<SafeTensorInfo> Descriptors(string target) => _entries[target].Select(e => e.Descriptor);

        /// <summary>Writes a target's tensors, in order, as the writer's next tensors.</summary>
        public void CopyTo(string target, SafeTensorsWriter writer)
        {
            byte[] buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
            try
            {
                foreach ((SafeTensorInfo d, long offset) in _entries[target])
                {
                    if (writer.NextTensor?.Name != d.Name)
                    {
                        throw new InvalidOperationException($"The shard writer expects '{writer.NextTensor?.Name}', not '{d.Name}'.");
                    }

                    long left = d.ByteLength;
                    long at = offset;
                    if (left == 0)
                    {
                        writer.WriteTensor(d.Name, []);
                    }

                    while (left > 0)
                    {
                        int n = (int)Math.Min(left, ChunkBytes);
                        int read = RandomAccess.Read(_handle, buffer.AsSpan(0, n), at);
                        if (read != n)
                        {
                            throw new IOException($"The spill file '{_path}' ended early while copying '{d.Name}'.");
                        }

                        writer.WriteChunk(buffer.AsSpan(0, n));
                        at += n;
                        left -= n;
                    }
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        public void Dispose() => _handle.Dispose();
    }
}
