using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;

namespace LoftQNet.TorchSharp.Tests;

/// <summary>
/// LoftQOptions.Device on a TorchSharp model: the managed engine's layers go to the GPU backend found at run time, as in
/// the checkpoint pipeline (a fake accelerator stands in for the GPU).
/// </summary>
[Collection(LoftQNet.TorchSharp.Tests.Models.TorchCollection.Name)]
public sealed class DeviceOptionTests : TorchTestBase, IDisposable
{
    public void Dispose() => Accelerators.ProviderOverride = null;

    private sealed class CountingAccelerator : ILoftQAccelerator
    {
        public int Runs;

        public string Name => "fake:0 Test GPU";

        public int Concurrency => 2;

        public string? Unsupported(IQuantizer quantizer) => null;

        public LoftQResult Run(Matrix weight, IQuantizer quantizer, int rank, int iterations, int seed, bool lowRankFirst)
        {
            Interlocked.Increment(ref Runs);
            return new AlternatingOptimizer(quantizer, new RandomizedSvdSolver(seed: seed)) { Seed = seed, LowRankFirst = lowRankFirst }.Run(weight, rank, iterations);
        }

        public void Dispose()
        {
        }
    }

    private sealed class Provider(ILoftQAccelerator? accelerator) : ILoftQAcceleratorProvider
    {
        public ILoftQAccelerator? TryCreate(out string reason)
        {
            reason = "no GPU in this test";
            return accelerator;
        }

        public string Describe() => "CUDA: fake";
    }

    [Fact]
    public void TheManagedEngineHandsEveryTargetToTheDeviceAndTheReportSaysSo()
    {
        var accelerator = new CountingAccelerator();
        Accelerators.ProviderOverride = () => new Provider(accelerator);
        var options = new LoftQOptions { Bits = 2, Rank = 4, Iterations = 2 };
        using var onDevice = new InitializeTests.TinyModel();
        using var onCpu = new InitializeTests.TinyModel();
        LoftQReport gpu = LoftQ.Initialize(onDevice, options with { Device = ComputeDevice.Cuda });
        Accelerators.ProviderOverride = null;
        LoftQReport cpu = LoftQ.Initialize(onCpu, options);

        Assert.Equal(gpu.Layers.Count, accelerator.Runs);
        Assert.Equal("fake:0 Test GPU", gpu.Settings.Device);
        Assert.Equal("cpu", cpu.Settings.Device);
        Assert.Equal(cpu.Layers.Select(l => l.RelativeError), gpu.Layers.Select(l => l.RelativeError));
    }

    [Fact]
    public void CudaWithoutAGpuFailsBeforeTheModelChanges()
    {
        Accelerators.ProviderOverride = () => new Provider(null);
        using var model = new InitializeTests.TinyModel();
        Assert.Throws<DeviceUnavailableException>(() => LoftQ.Initialize(model, new LoftQOptions { Rank = 4, Iterations = 1, Device = ComputeDevice.Cuda }));
        Assert.Empty(LoraAdapters.Find(model));

        var notices = new List<string>();
        LoftQ.Initialize(model, new LoftQOptions { Rank = 4, Iterations = 1, Device = ComputeDevice.Auto }, progress: new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.Notice)
            {
                notices.Add(p.Message!);
            }
        }));
        Assert.Equal("Running on the CPU: no usable GPU (no GPU in this test).", Assert.Single(notices));
        Assert.NotEmpty(LoraAdapters.Find(model));
    }

    private sealed class SyncProgress(Action<LoftQProgress> report) : IProgress<LoftQProgress>
    {
        public void Report(LoftQProgress value) => report(value);
    }
}
