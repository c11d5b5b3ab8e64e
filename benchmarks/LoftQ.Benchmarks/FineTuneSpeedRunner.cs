using System.Globalization;
using System.Runtime;
using System.Runtime.InteropServices;
using System.Text.Json;
using LoftQNet.Pipeline;
using LoftQNet.TorchSharp;
using LoftQNet.TorchSharp.Models;
using LoftQNet.TorchSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.Benchmarks;

/// <summary>
/// <c>-- finetune-speed &lt;lora|nf4|nf2&gt; [steps] [threads] [model] [train.txt] [trim] [no-collect]</c>: the fine-tuning protocol's step
/// (batch 8 × 128 bytes, AdamW over the LoRA factors, r = 16) for LoRA over the dense float32 base or over the packed
/// NF4/NF2 base; <c>trim</c> sets <see cref="LoraTrainingOptions.TrimNativeMemory"/> and <c>no-collect</c> clears
/// <see cref="LoraTrainingOptions.CollectGarbageEachStep"/>. Prints one JSON line: the median
/// seconds per step (the first two steps excluded), tokens/s, the peak RSS during training (VmHWM after resetting it
/// once the model is ready), and the resident set and glibc's heap size after each step, so each configuration runs in
/// its own process (benchmarks/finetune/run.sh).
/// </summary>
internal static class FineTuneSpeedRunner
{
    public static int Run(string config, int steps, int threads, string model, string trainPath, bool trim, bool collect)
    {
        TorchRuntime.EnsureLoaded();
        torch.set_num_threads(threads);
        using var llama = LlamaForCausalLM.FromPretrained(model, ScalarType.Float32);
        var options = new LoftQOptions { Rank = 16, Alpha = 16, Threads = threads, ScaleSearch = null };
        switch (config)
        {
            case "lora":
                LoftQ.AddLora(llama, options);
                break;
            case "nf4":
            case "nf2":
                LoftQ.Initialize(llama, options with { Bits = config == "nf4" ? 4 : 2 });
                break;
            default:
                Console.Error.WriteLine($"Unknown configuration '{config}': lora, nf4 or nf2.");
                return 2;
        }

        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true); // both configurations start from the same clean managed heap
        GCMemoryInfo managed = GC.GetGCMemoryInfo();
        long before = Status("VmRSS");
        File.WriteAllText("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
        var train = ByteWindowDataset.FromFile(trainPath, 128);
        var trainer = new LoraTrainer(llama, new LoraTrainingOptions { Steps = steps, TrimNativeMemory = trim, CollectGarbageEachStep = collect });
        var stamps = new List<TimeSpan>();
        var progress = new Stamps(stamps);
        TrainingResult result = trainer.Train(train, evaluation: null, progress);
        var perStep = new List<double>();
        for (int i = 1; i < stamps.Count; i++)
        {
            perStep.Add((stamps[i] - stamps[i - 1]).TotalSeconds);
        }

        List<double> warm = perStep.Count > 4 ? perStep.Skip(2).ToList() : perStep;
        warm.Sort();
        double median = warm.Count % 2 == 1 ? warm[warm.Count / 2] : (warm[(warm.Count / 2) - 1] + warm[warm.Count / 2]) / 2;
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["impl"] = "LoftQ.NET " + config,
            ["steps"] = steps,
            ["median_step_s"] = median,
            ["tokens_per_s"] = 8 * 128 / median,
            ["first_loss"] = result.Losses[0],
            ["last_loss"] = result.Losses[^1],
            ["rss_before_training_mb"] = before / 1024.0,
            ["gc_committed_before_mb"] = managed.TotalCommittedBytes / 1048576.0,
            ["gc_pinned_objects_before"] = managed.PinnedObjectsCount,
            ["peak_rss_training_mb"] = Status("VmHWM") / 1024.0,
            ["rss_after_each_step_mb"] = progress.ResidentMb,
            ["heap_after_each_step_mb"] = progress.HeapMb,
            ["heap_in_use_after_mb"] = MallInfo2().Uordblks / 1048576.0,
            ["trim_native_memory"] = trim,
            ["collect_garbage_each_step"] = collect,
            ["gc_committed_after_mb"] = GC.GetGCMemoryInfo().TotalCommittedBytes / 1048576.0,
        }));
        return 0;
    }

    /// <summary>A /proc/self/status value in KiB.</summary>
    private static long Status(string key)
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith(key + ":", StringComparison.Ordinal))
            {
                return long.Parse(line[(key.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
            }
        }

        throw new InvalidOperationException($"/proc/self/status has no {key}.");
    }

    /// <summary>glibc's <c>struct mallinfo2</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    private static extern MallInfo MallInfo2();

    private sealed class Stamps(List<TimeSpan> stamps) : IProgress<TrainingProgress>
    {
        public List<long> ResidentMb { get; } = [];

        /// <summary>glibc's heap size (free and in use, all arenas, without mmapped blocks) after each step.</summary>
        public List<ulong> HeapMb { get; } = [];

        public void Report(TrainingProgress value)
        {
            stamps.Add(value.Elapsed);
            ResidentMb.Add(Status("VmRSS") / 1024);
            HeapMb.Add(MallInfo2().Arena / 1048576);
        }
    }
}
