using LoftQNet.GpuCheck;

namespace LoftQNet.Cuda.Tests;

/// <summary>A test that needs a usable NVIDIA GPU; skipped elsewhere with the probe's reason.</summary>
public sealed class GpuFactAttribute : FactAttribute
{
    public GpuFactAttribute()
    {
        if (!CudaProbe.Current.Available)
        {
            Skip = $"needs an NVIDIA GPU: {CudaProbe.Current.Failure}";
        }
    }
}

/// <summary>
/// The device agreement checks (benchmarks/gpu/LoftQ.GpuCheck's <see cref="DeviceChecks"/>) as tests, for a machine
/// with a GPU and the .NET SDK; benchmarks/gpu/run.sh runs the same checks from a self-contained publish.
/// </summary>
[Collection("gpu")]
public sealed class GpuTests : IDisposable
{
    private readonly CudaAccelerator? _gpu = CudaProbe.Current.Available ? DeviceChecks.Open() : null;

    public void Dispose() => _gpu?.Dispose();

    [GpuFact]
    public void EveryBoundEntryPointResolves() => AssertPassed(DeviceChecks.ExportsResolve());

    [GpuFact]
    public void QuantizeKernelsMatchTheCpuBitForBit() => AssertPassed(DeviceChecks.QuantizeMatchesCpuBitForBit(_gpu!));

    [GpuFact]
    public void GemmMapsRowMajorOntoCublas() => AssertPassed(DeviceChecks.GemmMatchesCpu(_gpu!));

    [GpuFact]
    public void OrthonormalizeRowsGivesAnOrthonormalBasisOfTheSameSpan() => AssertPassed(DeviceChecks.OrthonormalizeRows(_gpu!));

    [GpuFact]
    public void GaussianFillIsRepeatableAndStandardNormal() => AssertPassed(DeviceChecks.GaussianFill(_gpu!));

    [GpuFact]
    public void SumOfSquaresMatchesADoubleHostSum() => AssertPassed(DeviceChecks.SumOfSquares(_gpu!));

    [GpuFact]
    public void LoftQLoopAgreesWithTheCpuWithinHalfAPercent() => AssertPassed(DeviceChecks.LoftQAgreesWithCpu(_gpu!));

    [GpuFact]
    public void GramSmallStepAgreesWithTheCpuWithinHalfAPercent() => AssertPassed(DeviceChecks.GramAgreesWithCpu(_gpu!));

    [GpuFact]
    public void ConcurrentRunsOnAllLanesAgreeWithARunAlone() => AssertPassed(DeviceChecks.LanesAgree(_gpu!));

    [GpuFact]
    public void PipelineOnTheBundledModelAgreesWithTheCpu()
    {
        Environment.SetEnvironmentVariable("LOFTQ_CUDA_UNVERIFIED", "1");
        string model = Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "data", "byte-llama-14m");
        AssertPassed(DeviceChecks.PipelineAgreesWithCpu(Path.GetFullPath(model)));
    }

    private static void AssertPassed(CheckResult result) => Assert.True(result.Passed, $"{result.Name}: {result.Detail}");
}
