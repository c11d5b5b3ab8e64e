using LoftQNet.Pipeline;
using LoftQNet.TorchSharp.Models;
using LoftQNet.TorchSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Tests;

// Builds models from torch's global generator: must not run beside another class that draws from it.
[Collection(LoftQNet.TorchSharp.Tests.Models.TorchCollection.Name)]
public sealed class TrainingTests : TorchTestBase
{
    private static readonly LoftQOptions Tiny4Bit = new() { Bits = 4, Rank = 4, Alpha = 8, Iterations = 2, ScaleSearch = null };

    /// <summary>A randomly initialised 2-layer byte-level LLaMA (hidden 64), the same weights for the same seed.</summary>
    internal static LlamaForCausalLM TinyLlama(int seed = 0)
    {
        torch.manual_seed(seed);
        return new LlamaForCausalLM(new LlamaModelConfig(64, 128, 2, 2, 2, 32, 256));
    }

    private static byte[] Text(int length, int seed = 1)
    {
        // Printable, repetitive enough to be learnable: words from a small vocabulary.
        string[] words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"];
        var random = new Random(seed);
        var bytes = new List<byte>(length + 16);
        while (bytes.Count < length)
        {
            bytes.AddRange(System.Text.Encoding.ASCII.GetBytes(words[random.Next(words.Length)] + " "));
        }

        return bytes.Take(length).ToArray();
    }

    private static LlamaForCausalLM TinyLoftQ(int seed = 0, double dropout = 0)
    {
        LlamaForCausalLM model = TinyLlama(seed);
        LoftQ.Initialize(model, Tiny4Bit, modelOptions: new LoftQModelOptions { Dropout = dropout });
        return model;
    }

    private static Dictionary<string, double[]> LoraValues(nn.Module model) =>
        LoraAdapters.Find(model).SelectMany(l => new[] { (l.Path + ".A", Doubles(l.Layer.A)), (l.Path + ".B", Doubles(l.Layer.B)) })
            .ToDictionary(x => x.Item1, x => x.Item2);

    [Fact]
    public void OneAdamWStepIsTheHandComputedUpdate()
    {
        const double lr = 1e-2, decay = 0.1, eps = 1e-8;
        using LlamaForCausalLM model = TinyLoftQ();
        var data = new ByteWindowDataset(Text(4096), 32);

        // The gradient of the first step's batch (windows 0..3), computed here independently of the trainer.
        var ids = new long[4 * 33];
        for (int j = 0; j < 4; j++)
        {
            data.CopyWindow(j, ids.AsSpan(j * 33, 33));
        }

        var layers = LoraAdapters.Find(model);
        var grads = new Dictionary<string, double[]>();
        using (var scope = torch.NewDisposeScope())
        {
            Tensor batch = torch.tensor(ids, [4, 33]);
            Tensor logits = model.forward(batch.narrow(1, 0, 32));
            Tensor loss = nn.functional.cross_entropy(logits.reshape(-1, 256), batch.narrow(1, 1, 32).reshape(-1));
            loss.backward();
            foreach ((string path, LoraLinear layer) in layers)
            {
                grads[path + ".A"] = Doubles(layer.A.grad!);
                grads[path + ".B"] = Doubles(layer.B.grad!);
                layer.A.grad!.zero_();
                layer.B.grad!.zero_();
            }
        }

        Dictionary<string, double[]> before = LoraValues(model);
        double[] frozenBefore = Doubles(model.LmHead.weight!);
        new LoraTrainer(model, new LoraTrainingOptions { Steps = 1, BatchSize = 4, LearningRate = lr, WeightDecay = decay, Epsilon = eps })
            .Train(data);
        Dictionary<string, double[]> after = LoraValues(model);

        // Step 1 of AdamW: m̂ = g, v̂ = g², p ← p·(1 − lr·λ) − lr·g / (|g| + ε).
        int checkedValues = 0;
        foreach ((string key, double[] p0) in before)
        {
            double[] g = grads[key];
            for (int i = 0; i < p0.Length; i++)
            {
                double expected = (p0[i] * (1 - (lr * decay))) - (lr * g[i] / (Math.Abs(g[i]) + eps));
                Assert.True(Math.Abs(after[key][i] - expected) <= 1e-6 + (1e-5 * Math.Abs(expected)), $"{key}[{i}]: {after[key][i]} vs hand-computed {expected} (p0 {p0[i]}, g {g[i]})");
                checkedValues++;
            }
        }

        Assert.Equal(28, before.Count); // 7 projections × 2 layers, A and B each
        Assert.Equal(2 * ((4 * 2 * 4 * 64) + (2 * 4 * (64 + 128)) + (4 * (128 + 64))), checkedValues);
        Assert.Equal(frozenBefore, Doubles(model.LmHead.weight!)); // only the LoRA factors move
    }

    [Fact]
    public void LearningRateScheduleFollowsWarmupAndCosine()
    {
        var cosine = new LoraTrainingOptions { Steps = 12, WarmupSteps = 4, LearningRate = 1.0, Schedule = LearningRateSchedule.WarmupCosine };
        Assert.Equal(0.25, cosine.LearningRateAt(0), 12);
        Assert.Equal(0.75, cosine.LearningRateAt(2), 12);
        Assert.Equal(1.0, cosine.LearningRateAt(3), 12);
        Assert.Equal(1.0, cosine.LearningRateAt(4), 12);
        Assert.Equal(0.5, cosine.LearningRateAt(8), 12);
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI * 7 / 8)), cosine.LearningRateAt(11), 12);
        var constant = cosine with { Schedule = LearningRateSchedule.Constant };
        Assert.Equal(0.5, constant.LearningRateAt(1), 12);
        Assert.Equal(1.0, constant.LearningRateAt(11), 12);
        Assert.Equal(3e-4, new LoraTrainingOptions { LearningRate = 3e-4 }.LearningRateAt(150), 15);
    }

    [Fact]
    public void GradientAccumulationEqualsTheBigBatch()
    {
        // With a large ε, AdamW's first update is ≈ lr·g/ε: linear in the gradient, so a wrongly scaled accumulated
        // gradient (a missing 1/n) would show; a small ε would hide it (Adam's update is scale-free).
        var data = new ByteWindowDataset(Text(8192), 32);
        var common = new LoraTrainingOptions { Steps = 2, LearningRate = 1.0, Epsilon = 10 };
        using LlamaForCausalLM big = TinyLoftQ();
        using LlamaForCausalLM accumulated = TinyLoftQ();
        TrainingResult a = new LoraTrainer(big, common with { BatchSize = 8 }).Train(data);
        TrainingResult b = new LoraTrainer(accumulated, common with { BatchSize = 2, GradientAccumulationSteps = 4 }).Train(data);
        Dictionary<string, double[]> x = LoraValues(big), y = LoraValues(accumulated);
        double moved = 0, differ = 0;
        using LlamaForCausalLM start = TinyLoftQ();
        Dictionary<string, double[]> s = LoraValues(start);
        foreach (string key in x.Keys)
        {
            for (int i = 0; i < x[key].Length; i++)
            {
                moved = Math.Max(moved, Math.Abs(x[key][i] - s[key][i]));
                differ = Math.Max(differ, Math.Abs(x[key][i] - y[key][i]));
            }
        }

        Assert.True(moved > 1e-4, $"the parameters moved only {moved}");
        Assert.True(differ < 1e-3 * moved, $"accumulated and big-batch parameters differ by {differ} (moves {moved})");
        Assert.Equal(a.Losses[0], b.Losses[0], 5);
        Assert.Equal(a.Losses[1], b.Losses[1], 5);
    }

    [Fact]
    public void SameSeedGivesTheSameAdapterBytesAndAnotherSeedDoesNot()
    {
        using var dir = new TempDir();
        var data = new ByteWindowDataset(Text(8192), 32);

        byte[] Run(string name, int seed)
        {
            using LlamaForCausalLM model = TinyLoftQ(dropout: 0.1);
            string adapter = Path.Combine(dir.Path, name);
            new LoraTrainer(model, new LoraTrainingOptions { Steps = 3, BatchSize = 4, Seed = seed, AdapterDirectory = adapter }).Train(data);
            return File.ReadAllBytes(Path.Combine(adapter, "adapter_model.safetensors"));
        }

        byte[] first = Run("a", 7), again = Run("b", 7), other = Run("c", 8);
        Assert.Equal(first, again);
        Assert.NotEqual(first, other); // the seed drives LoRA dropout

        // Handing free C-heap memory back between steps changes no result.
        using LlamaForCausalLM trimmed = TinyLoftQ(dropout: 0.1);
        string trimmedAdapter = Path.Combine(dir.Path, "trimmed");
        new LoraTrainer(trimmed, new LoraTrainingOptions { Steps = 3, BatchSize = 4, Seed = 7, AdapterDirectory = trimmedAdapter, TrimNativeMemory = true }).Train(data);
        Assert.Equal(first, File.ReadAllBytes(Path.Combine(trimmedAdapter, "adapter_model.safetensors")));
    }

    [Fact]
    public void CancellationLeavesNoAdapterAndNothingBehind()
    {
        using var dir = new TempDir();
        using LlamaForCausalLM model = TinyLoftQ();
        string adapter = Path.Combine(dir.Path, "adapter");
        using var cts = new CancellationTokenSource();
        var progress = new Callback(p =>
        {
            if (p.Step == 2)
            {
                cts.Cancel();
            }
        });
        var trainer = new LoraTrainer(model, new LoraTrainingOptions { Steps = 10, BatchSize = 2, AdapterDirectory = adapter });
        Assert.ThrowsAny<OperationCanceledException>(() => trainer.Train(new ByteWindowDataset(Text(4096), 32), progress: progress, cancellationToken: cts.Token));
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path)); // no adapter, no staging folder, no lock file
    }

    [Fact]
    public void AnExistingAdapterIsKeptUnlessOverwriteIsSet()
    {
        using var dir = new TempDir();
        string adapter = Path.Combine(dir.Path, "adapter");
        Directory.CreateDirectory(adapter);
        File.WriteAllText(Path.Combine(adapter, "keep.txt"), "mine");
        var data = new ByteWindowDataset(Text(4096), 32);
        using LlamaForCausalLM model = TinyLoftQ();
        var e = Assert.Throws<ArgumentException>(() => new LoraTrainer(model, new LoraTrainingOptions { Steps = 1, BatchSize = 2, AdapterDirectory = adapter }).Train(data));
        Assert.Contains("LoraTrainingOptions.Overwrite", e.Message);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(adapter, "keep.txt")));

        TrainingResult result = new LoraTrainer(model, new LoraTrainingOptions { Steps = 1, BatchSize = 2, AdapterDirectory = adapter, Overwrite = true, SaveEvery = 1, CheckpointDirectory = Path.Combine(dir.Path, "checkpoints") }).Train(data);
        Assert.Equal(Path.GetFullPath(adapter), result.AdapterDirectory);
        Assert.False(File.Exists(Path.Combine(adapter, "keep.txt")));
        Assert.True(File.Exists(Path.Combine(adapter, "adapter_config.json")));
        Assert.Equal(
            File.ReadAllBytes(Path.Combine(adapter, "adapter_model.safetensors")),
            File.ReadAllBytes(Path.Combine(dir.Path, "checkpoints", "step-000001", "adapter_model.safetensors")));
    }

    [Fact]
    public void TrainingKeepsNativeMemoryFlat()
    {
        using LlamaForCausalLM model = TinyLoftQ();
        var data = new ByteWindowDataset(Text(16384), 16);
        var trainer = new LoraTrainer(model, new LoraTrainingOptions { Steps = 2, BatchSize = 2 });
        trainer.Train(data); // gradients now exist on the LoRA parameters
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        new LoraTrainer(model, new LoraTrainingOptions { Steps = 200, BatchSize = 2, EvaluateEvery = 50 }).Train(data, new ByteWindowDataset(Text(2048, seed: 5), 64));
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    [Fact]
    public void EachStepEndsWithTheFinalizersOfItsGarbageRun()
    {
        // TorchSharp frees some native objects only from finalizers; the trainer collects them between steps (see
        // LoraTrainingOptions.CollectGarbageEachStep). Sentinels dropped while a step reads its batch must be finalized
        // by the time the step is reported.
        using LlamaForCausalLM model = TinyLoftQ();
        var data = new SentinelDataset(new ByteWindowDataset(Text(4096), 16));
        var seen = new List<(long Created, long Finalized)>();
        long before = Interlocked.Read(ref Sentinel.Created);
        new LoraTrainer(model, new LoraTrainingOptions { Steps = 3, BatchSize = 2 })
            .Train(data, progress: new Callback(_ => seen.Add((Interlocked.Read(ref Sentinel.Created), Interlocked.Read(ref Sentinel.Finalized)))));
        Assert.Equal(3, seen.Count);
        Assert.All(seen, s => Assert.Equal(s.Created, s.Finalized));
        Assert.Equal(before + 6, seen[^1].Created); // two windows a step
    }

    [Fact]
    public void GradientsAndTheDequantizationBufferExistBeforeTheFirstStep()
    {
        // Allocated inside the first step they would sit between its activations for the whole run; the trainer makes
        // them first. The dataset is read at the start of the first step, before its forward pass.
        using LlamaForCausalLM model = TinyLoftQ();
        long largest = LoraAdapters.Find(model).Max(l => l.Layer.OutFeatures * l.Layer.InFeatures);
        TorchCodec.ReleaseScratch();
        var seen = new List<(long Scratch, bool ZeroGradients)>();
        var data = new ProbeDataset(new ByteWindowDataset(Text(4096), 16), () =>
        {
            using var scope = torch.NewDisposeScope();
            bool zero = LoraAdapters.Find(model).All(l => l.Layer.A.grad is { } ga && l.Layer.B.grad is { } gb && ga.count_nonzero().item<long>() == 0 && gb.count_nonzero().item<long>() == 0);
            seen.Add((TorchCodec.ScratchElements, zero));
        });
        new LoraTrainer(model, new LoraTrainingOptions { Steps = 1, BatchSize = 1 }).Train(data);
        Assert.Equal((largest, true), seen[0]);
    }

    private sealed class ProbeDataset(ICausalLMDataset inner, Action probe) : ICausalLMDataset
    {
        public long WindowCount => inner.WindowCount;

        public int WindowLength => inner.WindowLength;

        public void CopyWindow(long index, Span<long> destination)
        {
            probe();
            inner.CopyWindow(index, destination);
        }
    }

    private sealed class Sentinel
    {
        public static long Created;
        public static long Finalized;

        public Sentinel() => Interlocked.Increment(ref Created);

        ~Sentinel() => Interlocked.Increment(ref Finalized);
    }

    private sealed class SentinelDataset(ICausalLMDataset inner) : ICausalLMDataset
    {
        public long WindowCount => inner.WindowCount;

        public int WindowLength => inner.WindowLength;

        public void CopyWindow(long index, Span<long> destination)
        {
            Drop();
            inner.CopyWindow(index, destination);
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
        private static void Drop() => GC.KeepAlive(new Sentinel());
    }

    [Fact]
    public void TheSavedAdapterLoadsIntoAFreshModelWithIdenticalLogits()
    {
        using var dir = new TempDir();
        string adapter = Path.Combine(dir.Path, "adapter");
        using LlamaForCausalLM trained = TinyLoftQ();
        new LoraTrainer(trained, new LoraTrainingOptions { Steps = 5, BatchSize = 2, LearningRate = 1e-2, AdapterDirectory = adapter }).Train(new ByteWindowDataset(Text(4096), 32));

        using LlamaForCausalLM fresh = TinyLoftQ();
        using var ids = torch.tensor(Text(48, seed: 9).Select(b => (long)b).ToArray(), [1, 48]);
        float[] freshLogits = Values(fresh.forward(ids));
        LoraAdapters.Load(fresh, adapter);
        float[] expected = Values(trained.forward(ids));
        Assert.Equal(expected, Values(fresh.forward(ids)));
        Assert.NotEqual(expected, freshLogits); // the training changed the model
    }

    [Fact]
    public void EvaluateIsTheBitsPerByteOfLanguageModelMetrics()
    {
        using LlamaForCausalLM model = TinyLoftQ();
        byte[] text = Text(3000, seed: 3);
        double metrics = LanguageModelMetrics.BitsPerByte(model, text, windows: 10, windowLength: 256, batchSize: 4);
        double trainer = new LoraTrainer(model).Evaluate(new ByteWindowDataset(text, 256), maxWindows: 10, batchSize: 3);
        Assert.Equal(metrics, trainer, 5);
        Assert.InRange(trainer, 6.0, 10.0); // an untrained byte model scores near log2(256) = 8
    }

    [Fact]
    public void AddLoraStartsFromTheModelItselfWithTheQLoRABaselinesA()
    {
        using LlamaForCausalLM dense = TinyLlama();
        using LlamaForCausalLM qlora = TinyLlama();
        using var ids = torch.tensor(Text(40).Select(b => (long)b).ToArray(), [1, 40]);
        float[] original = Values(dense.forward(ids));
        IReadOnlyList<string> wrapped = LoftQ.AddLora(dense, Tiny4Bit);
        LoftQ.Initialize(qlora, Tiny4Bit with { Iterations = 0 });
        Assert.Equal(14, wrapped.Count);
        Assert.Equal(original, Values(dense.forward(ids))); // B = 0: the same function as before
        var denseLayers = LoraAdapters.Find(dense);
        var qloraLayers = LoraAdapters.Find(qlora);
        for (int i = 0; i < denseLayers.Count; i++)
        {
            Assert.Equal(qloraLayers[i].Path, denseLayers[i].Path);
            Assert.Null(denseLayers[i].Layer.QuantizedBase);
            Assert.Equal(Values(qloraLayers[i].Layer.A), Values(denseLayers[i].Layer.A));
            Assert.All(Values(denseLayers[i].Layer.B), v => Assert.Equal(0f, v));
            Assert.DoesNotContain(denseLayers[i].Layer.BaseLayer.parameters(), p => p.requires_grad);
        }

        Assert.Equal(28, dense.parameters().Count(p => p.requires_grad));
    }

    [Fact]
    public void BadInputGetsClearErrors()
    {
        using LlamaForCausalLM plain = TinyLlama();
        Assert.Contains("LoftQ.Initialize(model) or LoftQ.AddLora(model)", Assert.Throws<InvalidOperationException>(() => new LoraTrainer(plain)).Message);
        using LlamaForCausalLM model = TinyLoftQ();
        Assert.Contains("LoraTrainingOptions.Steps", Assert.Throws<ArgumentOutOfRangeException>(() => new LoraTrainer(model, new LoraTrainingOptions { Steps = 0 })).Message);
        Assert.Contains("LoraTrainingOptions.LearningRate", Assert.Throws<ArgumentOutOfRangeException>(() => new LoraTrainer(model, new LoraTrainingOptions { LearningRate = double.NaN })).Message);
        Assert.Contains("CheckpointDirectory", Assert.Throws<ArgumentException>(() => new LoraTrainer(model, new LoraTrainingOptions { SaveEvery = 5 })).Message);
        Assert.Contains("one window of 128 predictions needs 129", Assert.Throws<ArgumentException>(() => new ByteWindowDataset(new byte[100], 128)).Message);
        Assert.Throws<FileNotFoundException>(() => ByteWindowDataset.FromFile("/nonexistent/train.txt", 128));

        // A NaN in a LoRA factor makes the loss NaN: an error naming the step, not a silently ruined adapter.
        using (torch.no_grad())
        {
            LoraAdapters.Find(model)[0].Layer.A.fill_(double.NaN);
        }

        var e = Assert.Throws<InvalidOperationException>(() => new LoraTrainer(model, new LoraTrainingOptions { Steps = 3, BatchSize = 2 }).Train(new ByteWindowDataset(Text(4096), 32)));
        Assert.Contains("at step 1", e.Message);
    }

    [Fact]
    public void ByteWindowsAreTheProtocolsWindows()
    {
        byte[] text = Enumerable.Range(0, 1000).Select(i => (byte)(i % 251)).ToArray();
        var data = new ByteWindowDataset(text, 128);
        Assert.Equal((1000 - 129) / 128 + 1, data.WindowCount);
        var window = new long[129];
        data.CopyWindow(3, window);
        Assert.Equal(Enumerable.Range(384, 129).Select(i => (long)(i % 251)), window);
        Assert.Throws<ArgumentOutOfRangeException>(() => data.CopyWindow(data.WindowCount, window));
        var strided = new ByteWindowDataset(text, 256, stride: 100);
        Assert.Equal((1000 - 257) / 100 + 1, strided.WindowCount);
    }

    private sealed class Callback(Action<TrainingProgress> action) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => action(value);
    }
}
