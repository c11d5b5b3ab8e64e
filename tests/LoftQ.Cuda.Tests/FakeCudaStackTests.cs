using System.Diagnostics;
using LoftQNet.Cuda.Kernels;

namespace LoftQNet.Cuda.Tests;

/// <summary>
/// The whole GPU path on a machine without a GPU: Emulation/fake_cuda.cpp stands in for the CUDA driver, cuBLAS,
/// cuSOLVER, cuRAND and NVRTC (their real C signatures and semantics, every device access bounds-checked, the real
/// kernels run through the emulation), and the GPU runner (benchmarks/gpu's LoftQ.GpuCheck) runs its agreement checks
/// against it in a child process. This exercises the resolver, every binding's marshalling, CudaContext, CudaOps'
/// row-major to column-major mappings, workspaces, kernel arguments and the device loop, exactly as on a GPU.
/// </summary>
public sealed class FakeCudaStackTests(FakeCudaStackTests.Stack stack) : IClassFixture<FakeCudaStackTests.Stack>
{
    private static string Runner => Path.Combine(AppContext.BaseDirectory, "LoftQ.GpuCheck.dll");

    [EmulationFact]
    public void TheGpuRunnersChecksPassOnTheEmulatedStackAndFreeEverything()
    {
        (int code, string output) = RunChecks();
        Assert.True(code == 0, output);
        Assert.Contains("| pass | exports |", output, StringComparison.Ordinal);
        Assert.Contains("| pass | open | ", output, StringComparison.Ordinal);
        foreach (string check in new[] { "quantize-bitwise", "gemm", "orthonormalize", "gaussian", "sum-squares", "loftq-agreement", "gram-agreement", "lanes-agree", "no-leaks" })
        {
            Assert.Contains($"| pass | {check} |", output, StringComparison.Ordinal);
        }

        Assert.Contains("cuda:0 Emulated GPU", output, StringComparison.Ordinal);
        Assert.Contains("ALL CHECKS PASSED", output, StringComparison.Ordinal);
    }

    [EmulationFact]
    public void AFailingLibraryCallBecomesACudaExceptionNamingTheCall()
    {
        (int code, string output) = RunChecks(("FAKE_CUDA_FAIL", "cublasSgemm_v2"));
        Assert.Equal(1, code);
        Assert.Contains("| FAIL | gemm |", output, StringComparison.Ordinal);
        Assert.Contains("CudaException: cuBLAS call Cublas.cublasSgemm(", output, StringComparison.Ordinal);
        Assert.Contains("failed with CUBLAS_STATUS_EXECUTION_FAILED (13)", output, StringComparison.Ordinal);
        Assert.Contains("| pass | no-leaks |", output, StringComparison.Ordinal); // the failed checks released their buffers
    }

    [EmulationFact]
    public void OutOfDeviceMemoryIsReportedWithTheSizeAsked()
    {
        (int code, string output) = RunChecks(("FAKE_CUDA_FAIL", "cuMemAlloc_v2"));
        Assert.Equal(1, code);
        Assert.Contains("CUDA driver call cuMemAlloc(", output, StringComparison.Ordinal);
        Assert.Contains("CUDA_ERROR_OUT_OF_MEMORY", output, StringComparison.Ordinal);
    }

    private (int Code, string Output) RunChecks(params (string Name, string Value)[] environment)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { Runner, "check", "--small" })
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["LOFTQ_CUDA_LIB_DIR"] = stack.Directory;
        foreach ((string name, string value) in environment)
        {
            start.Environment[name] = value;
        }

        using Process process = Process.Start(start)!;
        Task<string> errors = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        if (!process.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException("The GPU runner did not finish on the emulated stack within 5 minutes:\n" + output);
        }

        return (process.ExitCode, output + errors.Result);
    }

    /// <summary>fake_cuda.so built once for the class and linked under every CUDA library's file name (one object, shared state).</summary>
    public sealed class Stack : IDisposable
    {
        private readonly Lazy<string> _directory = new(Build);

        public string Directory => _directory.Value;

        public void Dispose()
        {
            if (_directory.IsValueCreated)
            {
                System.IO.Directory.Delete(_directory.Value, recursive: true);
            }
        }

        private static string Build()
        {
            string directory = System.IO.Directory.CreateTempSubdirectory("loftq-fake-cuda").FullName;
            string source = Path.Combine(directory, "quantize.cu");
            File.WriteAllText(source, KernelLaunch.LoadSource());
            string library = Path.Combine(directory, "libfake_cuda.so");
            Gpp.Compile(Path.Combine(AppContext.BaseDirectory, "Emulation", "fake_cuda.cpp"), library, source, KernelLaunch.CpuSumLanes, KernelLaunch.CpuFusedError);
            foreach (string name in new[] { "libcuda.so.1", "libcublas.so.13", "libcusolver.so.12", "libcurand.so.10", "libnvrtc.so.13" })
            {
                File.CreateSymbolicLink(Path.Combine(directory, name), library);
            }

            return directory;
        }
    }
}
