using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Pipeline;

/// <summary>
/// LoftQOptions.Device: how the core picks the GPU backend it finds at run time, falls back, refuses, and hands it the
/// targets. A fake accelerator (the CPU optimizer behind the seam) stands in for the GPU.
/// </summary>
public sealed class DeviceSelectionTests : IDisposable
{
    public void Dispose() => Accelerators.ProviderOverride = null;

    /// <summary>Runs the CPU optimizer with the randomized solver, counting calls (what the GPU computes, within rounding).</summary>
    private sealed class FakeAccelerator(Func<IQuantizer, string?>? unsupported = null) : ILoftQAccelerator
    {
        public int Runs;
        public bool Disposed;

        public string Name => "fake:0 Test GPU";

        public int Concurrency => 3;

        public int MostAtOnce;

        private int _running;

        public string? Unsupported(IQuantizer quantizer) => unsupported?.Invoke(quantizer);

        public LoftQResult Run(Matrix weight, IQuantizer quantizer, int rank, int iterations, int seed, bool lowRankFirst)
        {
            Interlocked.Increment(ref Runs);
            int now = Interlocked.Increment(ref _running);
            InterlockedMax(ref MostAtOnce, now);
            try
            {
                Thread.Sleep(20); // long enough for the pipeline to start the next targets meanwhile
                return new AlternatingOptimizer(quantizer, new RandomizedSvdSolver(seed: seed)) { Seed = seed, LowRankFirst = lowRankFirst }.Run(weight, rank, iterations);
            }
            finally
            {
                Interlocked.Decrement(ref _running);
            }
        }

        public void Dispose() => Disposed = true;

        private static void InterlockedMax(ref int target, int value)
        {
            int seen;
            while ((seen = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, seen) != seen)
            {
            }
        }
    }

    private sealed class FakeProvider(ILoftQAccelerator? accelerator, string reason = "no GPU in this test") : ILoftQAcceleratorProvider
    {
        public int Created;

        public ILoftQAccelerator? TryCreate(out string why)
        {
            Created++;
            why = accelerator is null ? reason : string.Empty;
            return accelerator;
        }

        public string Describe() => "CUDA: fake";
    }

    [Fact]
    public void CpuNeverLooksForAGpu()
    {
        var provider = new FakeProvider(new FakeAccelerator());
        Accelerators.ProviderOverride = () => provider;
        var notices = new List<string>();
        Assert.Null(Accelerators.Select(new LoftQOptions(), notices.Add));
        Assert.Equal(0, provider.Created);
        Assert.Empty(notices);
    }

    [Fact]
    public void CudaWithoutAGpuIsAClearError()
    {
        Accelerators.ProviderOverride = () => new FakeProvider(null, "libcuda.so.1 not found");
        var e = Assert.Throws<DeviceUnavailableException>(() => Accelerators.Select(new LoftQOptions { Device = ComputeDevice.Cuda }, _ => { }));
        Assert.Contains("--device cuda", e.Message, StringComparison.Ordinal);
        Assert.Contains("libcuda.so.1 not found", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AutoWithoutAGpuFallsBackWithOneNotice()
    {
        Accelerators.ProviderOverride = () => new FakeProvider(null, "libcuda.so.1 not found");
        var notices = new List<string>();
        Assert.Null(Accelerators.Select(new LoftQOptions { Device = ComputeDevice.Auto }, notices.Add));
        string notice = Assert.Single(notices);
        Assert.Equal("Running on the CPU: no usable GPU (libcuda.so.1 not found).", notice);
    }

    [Fact]
    public void WithoutTheCudaPackageTheReasonSaysSo()
    {
        Accelerators.ProviderOverride = () => null;
        var notices = new List<string>();
        Assert.Null(Accelerators.Select(new LoftQOptions { Device = ComputeDevice.Auto }, notices.Add));
        Assert.Single(notices);
        Assert.Throws<DeviceUnavailableException>(() => Accelerators.Select(new LoftQOptions { Device = ComputeDevice.Cuda }, _ => { }));
    }

    [Theory]
    [InlineData(LoftQObjective.ActivationDiagonal, SolverKind.Randomized, "activation-diag")]
    [InlineData(LoftQObjective.Weight, SolverKind.Exact, "--solver exact")]
    public void OptionsTheGpuLacksAreRefusedOrFallBack(LoftQObjective objective, SolverKind solver, string named)
    {
        var provider = new FakeProvider(new FakeAccelerator());
        Accelerators.ProviderOverride = () => provider;
        var e = Assert.Throws<ArgumentException>(() => Accelerators.Select(new LoftQOptions { Device = ComputeDevice.Cuda, Objective = objective, Solver = solver }, _ => { }));
        Assert.Contains(named, e.Message, StringComparison.Ordinal);
        var notices = new List<string>();
        Assert.Null(Accelerators.Select(new LoftQOptions { Device = ComputeDevice.Auto, Objective = objective, Solver = solver }, notices.Add));
        Assert.Contains(named, Assert.Single(notices), StringComparison.Ordinal);
        Assert.Equal(0, provider.Created);
    }

    [Fact]
    public void TheCheckpointRunHandsEveryTargetToTheDeviceRecordsItAndReleasesIt()
    {
        using var dir = new TempDirectory();
        var accelerator = new FakeAccelerator();
        Accelerators.ProviderOverride = () => new FakeProvider(accelerator);
        LoftQOptions options = SyntheticLlama.QuickOptions with { Device = ComputeDevice.Cuda };
        LoftQReport gpu = LoftQ.Initialize(TestData.Model, dir.Combine("gpu"), options);
        Assert.Equal(gpu.Layers.Count, accelerator.Runs);
        Assert.Equal(3, accelerator.MostAtOnce); // the targets of a shard run as many at a time as the device takes
        Assert.True(accelerator.Disposed);
        Assert.Equal("fake:0 Test GPU", gpu.Settings.Device);
        Assert.Equal("fake:0 Test GPU", LoftQReport.FromJson(File.ReadAllText(Path.Combine(dir.Combine("gpu"), "loftq_report.json"))).Settings.Device);

        // Same numbers as the CPU run (the fake computes exactly what the CPU path does): the seam passes seeds and options through.
        Accelerators.ProviderOverride = null;
        LoftQReport cpu = LoftQ.Initialize(TestData.Model, dir.Combine("cpu"), SyntheticLlama.QuickOptions);
        Assert.Equal("cpu", cpu.Settings.Device);
        Assert.Equal(cpu.Layers.Select(l => l.RelativeError), gpu.Layers.Select(l => l.RelativeError));
        Assert.Equal(
            File.ReadAllBytes(Path.Combine(dir.Combine("cpu"), "loftq_init", "adapter_model.safetensors")),
            File.ReadAllBytes(Path.Combine(dir.Combine("gpu"), "loftq_init", "adapter_model.safetensors")));
    }

    [Fact]
    public void AQuantizerTheDeviceLacksFailsUnderCudaAndRunsOnTheCpuUnderAuto()
    {
        using var dir = new TempDirectory();
        var accelerator = new FakeAccelerator(q => q.Bits == 2 ? "2-bit is not on this fake device." : null);
        Accelerators.ProviderOverride = () => new FakeProvider(accelerator);
        var e = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(TestData.Model, dir.Combine("a"), SyntheticLlama.QuickOptions with { Device = ComputeDevice.Cuda }));
        Assert.Contains("2-bit is not on this fake device.", e.Message, StringComparison.Ordinal);
        Assert.Contains("q_proj", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dir.Combine("a")));

        LoftQReport auto = LoftQ.Initialize(TestData.Model, dir.Combine("b"), SyntheticLlama.QuickOptions with { Device = ComputeDevice.Auto });
        Assert.Equal(0, accelerator.Runs);
        Assert.NotEmpty(auto.Layers);
    }

    [Fact]
    public void DedicatedThreadsRethrowTheLowestFailureAndStartNothingAfterIt()
    {
        var started = new System.Collections.Concurrent.ConcurrentBag<int>();
        var e = Assert.Throws<InvalidOperationException>(() => CheckpointPipeline.OnDedicatedThreads(100, 3, i =>
        {
            started.Add(i);
            Thread.Sleep(5);
            if (i is 4 or 5)
            {
                throw new InvalidOperationException($"target {i}");
            }
        }));
        Assert.Equal("target 4", e.Message);
        Assert.True(started.Count < 20, $"{started.Count} targets started after the failure");

        var seen = new int[50];
        CheckpointPipeline.OnDedicatedThreads(50, 4, i => Interlocked.Increment(ref seen[i]));
        Assert.All(seen, c => Assert.Equal(1, c));
    }

    [Fact]
    public void TheCliSummaryNamesTheDeviceTheLoopsRanOn()
    {
        using var dir = new TempDirectory();
        Accelerators.ProviderOverride = () => new FakeProvider(new FakeAccelerator());
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = LoftQNet.Cli.CliApp.Run(
            ["quantize", TestData.Model, "--out", dir.Combine("out"), "--bits", "2", "--rank", "4", "--iters", "1", "--targets", "k_proj", "--device", "cuda"],
            stdout, stderr, interactive: false);
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains(" s on fake:0 Test GPU", stdout.ToString(), StringComparison.Ordinal);
    }
}
