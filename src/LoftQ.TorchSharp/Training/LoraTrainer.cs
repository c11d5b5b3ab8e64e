using System.Diagnostics;
using LoftQNet.Pipeline;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Training;

/// <summary>How the learning rate changes over the steps of a run.</summary>
public enum LearningRateSchedule
{
    /// <summary>The learning rate after the warm-up (if any) stays constant.</summary>
    Constant,

    /// <summary>After the warm-up, the learning rate follows half a cosine from its peak towards zero at the last step.</summary>
    WarmupCosine,
}

/// <summary>Settings of a <see cref="LoraTrainer"/> run. The defaults are the protocol of docs/finetuning.md.</summary>
public sealed record LoraTrainingOptions
{
    /// <summary>Optimizer steps.</summary>
    public int Steps { get; init; } = 200;

    /// <summary>Windows per forward/backward pass (micro-batch).</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>Micro-batches whose gradients are summed (each loss scaled by 1/n) before one optimizer step; the effective batch is <see cref="BatchSize"/> × this.</summary>
    public int GradientAccumulationSteps { get; init; } = 1;

    /// <summary>Peak learning rate of AdamW.</summary>
    public double LearningRate { get; init; } = 5e-4;

    /// <summary>AdamW β1.</summary>
    public double Beta1 { get; init; } = 0.9;

    /// <summary>AdamW β2.</summary>
    public double Beta2 { get; init; } = 0.999;

    /// <summary>AdamW ε.</summary>
    public double Epsilon { get; init; } = 1e-8;

    /// <summary>AdamW decoupled weight decay (0: none).</summary>
    public double WeightDecay { get; init; }

    /// <summary>Clip the global L2 norm of the LoRA gradients to this value before each step; null: no clipping.</summary>
    public double? MaxGradientNorm { get; init; }

    /// <summary>The schedule after the warm-up.</summary>
    public LearningRateSchedule Schedule { get; init; } = LearningRateSchedule.Constant;

    /// <summary>Steps of linear warm-up: step s &lt; W (0-based) uses <see cref="LearningRate"/>·(s + 1)/W.</summary>
    public int WarmupSteps { get; init; }

    /// <summary>Seeds torch's global generator at the start of <see cref="LoraTrainer.Train"/> (LoRA dropout draws from it). Same seed, data and options: the same adapter, byte for byte, on the same machine and thread count, as long as nothing else in the process draws from torch's global generator while the run trains (a second model trained or randomly initialised on another thread would).</summary>
    public int Seed { get; init; }

    /// <summary>
    /// After every optimizer step, run a generation-1 garbage collection and the pending finalizers (on by default).
    /// TorchSharp frees some small native objects only from finalizers: for one, the <c>Scalar</c> it makes for every
    /// number passed to a tensor operation, its own AdamW's included. Freed at arbitrary points inside later steps,
    /// they splinter glibc's heap between the activations, and the resident set creeps up over a run
    /// (byte-llama-14m, batch 8 × 128, 60 steps: peaks of 1.3–1.5 GB without this, 0.69–0.76 GB with it;
    /// docs/benchmarks.md). Collecting between steps, when the step's tensors are already freed, took 1–5 ms per step
    /// there (the managed heap is small); turn it off where the process's managed heap is large.
    /// </summary>
    public bool CollectGarbageEachStep { get; init; } = true;

    /// <summary>
    /// After every optimizer step, return the C allocator's free memory to the OS (glibc's <c>malloc_trim</c>; no
    /// effect elsewhere). libtorch's activations come from malloc and glibc keeps freed blocks between steps. Trimming
    /// lowers the peak a little more (byte-llama-14m, batch 8 × 128, 20 steps: 7–11%) but the next step faults the
    /// pages back in (23–34% slower there), so it is off by default.
    /// </summary>
    public bool TrimNativeMemory { get; init; }

    /// <summary>Evaluate every this many steps (0: only before the first and after the last step) when an evaluation dataset is given.</summary>
    public int EvaluateEvery { get; init; }

    /// <summary>At most this many windows of the evaluation dataset are scored (its first ones).</summary>
    public int EvaluationWindows { get; init; } = 64;

    /// <summary>Where the final adapter is written (PEFT format), all at once when the run ends; null: not written.</summary>
    public string? AdapterDirectory { get; init; }

    /// <summary>Replace an existing non-empty <see cref="AdapterDirectory"/> (it is swapped out only when the new adapter is complete).</summary>
    public bool Overwrite { get; init; }

    /// <summary>Also write the adapter every this many steps (0: never), to <see cref="CheckpointDirectory"/>/step-NNNNNN.</summary>
    public int SaveEvery { get; init; }

    /// <summary>Where periodic adapters go; required when <see cref="SaveEvery"/> is positive.</summary>
    public string? CheckpointDirectory { get; init; }

    /// <summary><c>base_model_name_or_path</c> written into adapter_config.json; when it is a directory, adapters are never written into or over it.</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>The learning rate used at step <paramref name="step"/> (0-based).</summary>
    public double LearningRateAt(int step)
    {
        if (step < WarmupSteps)
        {
            return LearningRate * (step + 1) / WarmupSteps;
        }

        if (Schedule == LearningRateSchedule.Constant || Steps <= WarmupSteps)
        {
            return LearningRate;
        }

        double progress = (double)(step - WarmupSteps) / (Steps - WarmupSteps);
        return LearningRate * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }

    internal void Validate()
    {
        static void Positive(int value, string name)
        {
            if (value < 1)
            {
                throw new ArgumentOutOfRangeException(name, value, $"LoraTrainingOptions.{name} must be at least 1.");
            }
        }

        static void NonNegative(int value, string name)
        {
            if (value < 0)
            {
                throw new ArgumentOutOfRangeException(name, value, $"LoraTrainingOptions.{name} must not be negative.");
            }
        }

        Positive(Steps, nameof(Steps));
        Positive(BatchSize, nameof(BatchSize));
        Positive(GradientAccumulationSteps, nameof(GradientAccumulationSteps));
        Positive(EvaluationWindows, nameof(EvaluationWindows));
        NonNegative(WarmupSteps, nameof(WarmupSteps));
        NonNegative(EvaluateEvery, nameof(EvaluateEvery));
        NonNegative(SaveEvery, nameof(SaveEvery));
        if (!(LearningRate > 0) || !double.IsFinite(LearningRate))
        {
            throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "LoraTrainingOptions.LearningRate must be positive and finite.");
        }

        if (!(Beta1 >= 0 && Beta1 < 1) || !(Beta2 >= 0 && Beta2 < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(Beta1), $"LoraTrainingOptions.Beta1 and Beta2 must be in [0, 1), got {Beta1} and {Beta2}.");
        }

        if (!(Epsilon > 0) || !(WeightDecay >= 0) || !double.IsFinite(WeightDecay))
        {
            throw new ArgumentOutOfRangeException(nameof(Epsilon), $"LoraTrainingOptions.Epsilon must be positive and WeightDecay non-negative, got {Epsilon} and {WeightDecay}.");
        }

        if (MaxGradientNorm is double clip && !(clip > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(MaxGradientNorm), clip, "LoraTrainingOptions.MaxGradientNorm must be positive (or null for no clipping).");
        }

        if (SaveEvery > 0 && string.IsNullOrWhiteSpace(CheckpointDirectory))
        {
            throw new ArgumentException("LoraTrainingOptions.SaveEvery needs a CheckpointDirectory.", nameof(CheckpointDirectory));
        }
    }
}

/// <summary>One report of a <see cref="LoraTrainer"/> run: after every optimizer step, and after every evaluation.</summary>
/// <param name="Step">Steps done (0 before the first).</param>
/// <param name="TotalSteps">Steps of the run.</param>
/// <param name="Loss">Mean next-token cross-entropy (nats) of this step's batch; NaN in a report before the first step.</param>
/// <param name="LearningRate">Learning rate of this step.</param>
/// <param name="TokensPerSecond">Predicted tokens per second of training so far (evaluation excluded).</param>
/// <param name="Elapsed">Time since the run started.</param>
/// <param name="Remaining">Estimated time to the last step.</param>
/// <param name="EvaluationBitsPerToken">Set on evaluation reports: mean cross-entropy in bits per token on the evaluation windows (bits per byte for byte-level data).</param>
public sealed record TrainingProgress(
    int Step, int TotalSteps, double Loss, double LearningRate, double TokensPerSecond, TimeSpan Elapsed, TimeSpan Remaining, double? EvaluationBitsPerToken = null);

/// <summary>An evaluation during a run.</summary>
/// <param name="Step">Steps done when it ran.</param>
/// <param name="BitsPerToken">Mean cross-entropy in bits per token.</param>
public readonly record struct EvaluationPoint(int Step, double BitsPerToken);

/// <summary>What a <see cref="LoraTrainer"/> run did.</summary>
/// <param name="Losses">The loss of every step (nats per token).</param>
/// <param name="Evaluations">Every evaluation, in order.</param>
/// <param name="TrainingSeconds">Time spent in training steps (evaluation and saving excluded).</param>
/// <param name="TokensPerSecond">Predicted tokens per second of training.</param>
/// <param name="AdapterDirectory">Where the final adapter was written, if it was.</param>
public sealed record TrainingResult(IReadOnlyList<double> Losses, IReadOnlyList<EvaluationPoint> Evaluations, double TrainingSeconds, double TokensPerSecond, string? AdapterDirectory);

/// <summary>
/// Fine-tunes the LoRA factors of a causal language model: AdamW over every <see cref="LoraLinear"/>'s lora_A and
/// lora_B (and nothing else), next-token cross-entropy, optional clipping, warm-up and cosine schedules, gradient
/// accumulation, periodic evaluation, and the adapter saved in PEFT format. Prepare the model with
/// <c>LoftQ.Initialize(model)</c> (LoftQ or QLoRA) or <c>LoftQ.AddLora(model)</c> (full-precision LoRA) first.
/// </summary>
/// <remarks>
/// Step s uses windows E·s … E·s + E − 1 of the training dataset (modulo its size), E = batch × accumulation, in
/// micro-batches of <see cref="LoraTrainingOptions.BatchSize"/>. Every micro-batch runs in its own dispose scope, so
/// native memory stays flat. The model is put in training mode for the steps and in evaluation mode for scoring,
/// and is left in evaluation mode.
/// </remarks>
public sealed class LoraTrainer
{
    private readonly nn.Module<Tensor, Tensor> _model;

    /// <summary>A trainer for <paramref name="model"/>, which maps int64 token ids [batch, L] to logits [batch, L, vocab].</summary>
    /// <exception cref="ArgumentException">The options are invalid.</exception>
    /// <exception cref="InvalidOperationException">The model has no <see cref="LoraLinear"/> layers.</exception>
    public LoraTrainer(nn.Module<Tensor, Tensor> model, LoraTrainingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        Options = options ?? new LoraTrainingOptions();
        Options.Validate();
        TorchRuntime.EnsureLoaded();
        if (LoraAdapters.Find(model).Count == 0)
        {
            throw new InvalidOperationException($"The {model.GetType().Name} has no LoraLinear layers to train; call LoftQ.Initialize(model) or LoftQ.AddLora(model) first.");
        }

        _model = model;
    }

    /// <summary>The run's settings.</summary>
    public LoraTrainingOptions Options { get; }

    /// <summary>
    /// Runs <see cref="LoraTrainingOptions.Steps"/> optimizer steps on <paramref name="train"/>, evaluating on
    /// <paramref name="evaluation"/> (if given) before the first step, every <see cref="LoraTrainingOptions.EvaluateEvery"/>
    /// steps and after the last, then writes the adapter if <see cref="LoraTrainingOptions.AdapterDirectory"/> is set.
    /// </summary>
    /// <param name="train">Training windows.</param>
    /// <param name="evaluation">Evaluation windows, or null.</param>
    /// <param name="progress">Reports after every step and every evaluation.</param>
    /// <param name="cancellationToken">Stops between micro-batches: no adapter is written (periodic ones already written stay), the LoRA factors keep the last finished step.</param>
    /// <returns>Losses, evaluations and speed.</returns>
    /// <exception cref="ArgumentException">The adapter directory exists and is not empty without <see cref="LoraTrainingOptions.Overwrite"/>, or lies in the base model's directory.</exception>
    /// <exception cref="OperationCanceledException">The run was cancelled.</exception>
    /// <exception cref="InvalidOperationException">A loss became NaN or infinite (the message names the step).</exception>
    public TrainingResult Train(ICausalLMDataset train, ICausalLMDataset? evaluation = null, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        LoraTrainingOptions o = Options;
        var adapters = LoraAdapters.Find(_model);
        List<Parameter> parameters = adapters.SelectMany(l => new[] { l.Layer.A, l.Layer.B }).ToList();
        Device device = parameters[0].device;
        string? baseDirectory = o.BaseModelNameOrPath is { } b && Directory.Exists(b) ? b : null;

        // Take the adapter's output first: a run that cannot write its result fails before it trains.
        using OutputStaging? staging = o.AdapterDirectory is null ? null : OutputStaging.Create(o.AdapterDirectory, baseDirectory, o.Overwrite, overwriteOption: "LoraTrainingOptions.Overwrite");

        torch.manual_seed(o.Seed);
        using optim.Optimizer optimizer = torch.optim.AdamW(parameters, lr: o.LearningRate, beta1: o.Beta1, beta2: o.Beta2, eps: o.Epsilon, weight_decay: o.WeightDecay);
        var losses = new List<double>(o.Steps);
        var evaluations = new List<EvaluationPoint>();
        int windowLength = train.WindowLength;
        long tokensPerStep = (long)o.BatchSize * o.GradientAccumulationSteps * windowLength;
        var ids = new long[(long)o.BatchSize * (windowLength + 1)];
        var total = Stopwatch.StartNew();
        var training = new Stopwatch();

        void Evaluate(int step)
        {
            if (evaluation is null)
            {
                return;
            }

            double bits = this.Evaluate(evaluation, o.EvaluationWindows, o.BatchSize, cancellationToken);
            evaluations.Add(new EvaluationPoint(step, bits));
            progress?.Report(new TrainingProgress(step, o.Steps, step == 0 ? double.NaN : losses[^1], o.LearningRateAt(Math.Max(0, step - 1)), Speed(step), total.Elapsed, Remaining(step), bits));
        }

        double Speed(int step) => step == 0 ? 0 : step * tokensPerStep / training.Elapsed.TotalSeconds;

        TimeSpan Remaining(int step) => step == 0 ? TimeSpan.Zero : training.Elapsed / step * (o.Steps - step);

        PrepareMemory(adapters, parameters);

        Evaluate(0);
        for (int step = 0; step < o.Steps; step++)
        {
            training.Start();
            _model.train();
            double lr = o.LearningRateAt(step);
            foreach (var group in optimizer.ParamGroups)
            {
                group.LearningRate = lr;
            }

            using (torch.NewDisposeScope())
            {
                optimizer.zero_grad(); // reads every .grad: wrappers that would outlive the step without a scope
            }

            double loss = 0;
            for (int micro = 0; micro < o.GradientAccumulationSteps; micro++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                long first = ((long)step * o.GradientAccumulationSteps + micro) * o.BatchSize;
                for (int j = 0; j < o.BatchSize; j++)
                {
                    train.CopyWindow((first + j) % train.WindowCount, ids.AsSpan(j * (windowLength + 1), windowLength + 1));
                }

                Tensor batch = TorchEngine.NativeCopy<long>(ids, [o.BatchSize, windowLength + 1], ScalarType.Int64).to(device);
                Tensor microLoss = Loss(batch, windowLength);
                loss += microLoss.item<float>() / o.GradientAccumulationSteps;
                (o.GradientAccumulationSteps == 1 ? microLoss : microLoss.div(o.GradientAccumulationSteps)).backward();
            }

            if (!double.IsFinite(loss))
            {
                training.Stop();
                throw new InvalidOperationException($"The training loss became {loss} at step {step + 1}; lower LoraTrainingOptions.LearningRate or set MaxGradientNorm.");
            }

            using (torch.NewDisposeScope())
            {
                if (o.MaxGradientNorm is double clip)
                {
                    torch.nn.utils.clip_grad_norm_(parameters, clip);
                }

                optimizer.step();
            }

            if (o.CollectGarbageEachStep)
            {
                GC.Collect(1, GCCollectionMode.Forced, blocking: true);
                GC.WaitForPendingFinalizers();
            }

            if (o.TrimNativeMemory)
            {
                NativeHeap.Trim();
            }

            training.Stop();
            losses.Add(loss);
            int done = step + 1;
            progress?.Report(new TrainingProgress(done, o.Steps, loss, lr, Speed(done), total.Elapsed, Remaining(done)));
            if (o.SaveEvery > 0 && done % o.SaveEvery == 0 && done < o.Steps)
            {
                SaveCheckpoint(Path.Combine(o.CheckpointDirectory!, $"step-{done:D6}"), baseDirectory);
            }

            if (o.EvaluateEvery > 0 && done % o.EvaluateEvery == 0 && done < o.Steps)
            {
                Evaluate(done);
            }
        }

        Evaluate(o.Steps);
        _model.eval();
        if (o.SaveEvery > 0 && o.Steps % o.SaveEvery == 0)
        {
            SaveCheckpoint(Path.Combine(o.CheckpointDirectory!, $"step-{o.Steps:D6}"), baseDirectory);
        }

        if (staging is not null)
        {
            cancellationToken.ThrowIfCancellationRequested();
            LoraAdapters.Save(_model, staging.Path, o.BaseModelNameOrPath);
            staging.Commit();
        }

        return new TrainingResult(losses, evaluations, training.Elapsed.TotalSeconds, Speed(o.Steps), staging?.Target);
    }

    /// <summary>
    /// Mean next-token cross-entropy in bits per token over the first <paramref name="maxWindows"/> windows of
    /// <paramref name="data"/>, under no_grad and in evaluation mode (bits per byte for byte-level data: the same
    /// number as <see cref="Models.LanguageModelMetrics.BitsPerByte"/> for windows of the same length).
    /// </summary>
    /// <param name="data">The windows.</param>
    /// <param name="maxWindows">At most this many windows (its first ones).</param>
    /// <param name="batchSize">Windows per forward pass.</param>
    /// <param name="cancellationToken">Checked between batches.</param>
    public double Evaluate(ICausalLMDataset data, int maxWindows = 64, int batchSize = 8, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxWindows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        long windows = Math.Min(maxWindows, data.WindowCount);
        int length = data.WindowLength;
        Device device = LoraAdapters.Find(_model)[0].Layer.A.device;
        var ids = new long[(long)batchSize * (length + 1)];
        double nats = 0;
        _model.eval();
        using (torch.no_grad())
        {
            for (long first = 0; first < windows; first += batchSize)
            {
                cancellationToken.ThrowIfCancellationRequested();
                using var scope = torch.NewDisposeScope();
                int n = (int)Math.Min(batchSize, windows - first);
                for (int j = 0; j < n; j++)
                {
                    data.CopyWindow(first + j, ids.AsSpan(j * (length + 1), length + 1));
                }

                Tensor batch = TorchEngine.NativeCopy<long>(ids.AsSpan(0, n * (length + 1)), [n, length + 1], ScalarType.Int64).to(device);
                nats += Loss(batch, length, nn.Reduction.Sum).to(ScalarType.Float64).item<double>();
            }
        }

        return nats / (windows * length) / Math.Log(2);
    }

    /// <summary>
    /// Allocates, before the first step, what would otherwise be allocated during it and then live for the whole run
    /// in the middle of that step's activations: the LoRA factors' gradients (zero, so the first backward adds into
    /// them exactly as it would have stored them) and this thread's dequantization buffer for the largest packed base.
    /// </summary>
    private static void PrepareMemory(IReadOnlyList<(string Path, LoraLinear Layer)> adapters, List<Parameter> parameters)
    {
        long largest = adapters.Select(l => l.Layer.QuantizedBase is { } q ? q.OutFeatures * q.InFeatures : 0).DefaultIfEmpty(0).Max();
        if (largest > 0 && parameters[0].device_type == DeviceType.CPU)
        {
            TorchCodec.ReserveScratch(largest);
        }

        List<Parameter> trainable = parameters.Where(p => p.requires_grad).ToList();
        if (trainable.Count > 0)
        {
            using var scope = torch.NewDisposeScope();
            Tensor total = trainable.Select(p => p.sum()).Aggregate((x, y) => x.add(y));
            total.mul(0).backward();
        }
    }

    private Tensor Loss(Tensor batch, int length, nn.Reduction reduction = nn.Reduction.Mean)
    {
        Tensor inputs = batch.narrow(1, 0, length);
        Tensor targets = batch.narrow(1, 1, length);
        Tensor logits = _model.forward(inputs);
        if (logits.ndim != 3 || logits.shape[1] != length)
        {
            throw new ArgumentException($"The model returned logits of shape [{string.Join(", ", logits.shape)}]; causal-LM training needs [batch, {length}, vocab].");
        }

        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[2]).to(ScalarType.Float32), targets.reshape(-1), reduction: reduction);
    }

    private void SaveCheckpoint(string directory, string? baseDirectory)
    {
        using OutputStaging staging = OutputStaging.Create(directory, baseDirectory, overwrite: true);
        LoraAdapters.Save(_model, staging.Path, Options.BaseModelNameOrPath);
        staging.Commit();
    }
}
