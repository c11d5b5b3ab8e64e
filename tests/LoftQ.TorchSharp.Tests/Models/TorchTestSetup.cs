using LoftQNet.TorchSharp.Models;
using TorchSharp;

namespace LoftQNet.TorchSharp.Tests.Models;

/// <summary>Loads TorchSharp once, pins its threads (the machine has 2 cores) and shares the bundled model in float32.</summary>
public sealed class BundledModelFixture : IDisposable
{
    public BundledModelFixture()
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        TorchSetup.Ensure();
        LoadMilliseconds = watch.ElapsedMilliseconds;
        Float32 = LlamaForCausalLM.FromPretrained(TestFiles.FixtureModel, torch.ScalarType.Float32);
        LoadMilliseconds = watch.ElapsedMilliseconds - LoadMilliseconds;
    }

    public LlamaForCausalLM Float32 { get; }

    /// <summary>How long FromPretrained took for the bundled model (bf16 shards into float32).</summary>
    public long LoadMilliseconds { get; }

    public void Dispose() => Float32.Dispose();
}

internal static class TorchSetup
{
    private static readonly Lazy<bool> s_once = new(() =>
    {
        TorchRuntime.EnsureLoaded();
        torch.set_num_threads(2);
        return true;
    });

    public static void Ensure() => _ = s_once.Value;
}

/// <summary>Torch tests share the 2 cores: run them one class at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TorchCollection : ICollectionFixture<BundledModelFixture>
{
    public const string Name = "Torch";
}
