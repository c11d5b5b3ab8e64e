using LoftQNet.Cuda.Native;
using LoftQNet.Pipeline;

namespace LoftQNet.Cuda.Tests;

/// <summary>The native-library resolver, the status checks and the probe: everything of the CUDA layer that runs without a GPU.</summary>
public sealed class NativeTests
{
    [Fact]
    public void ProbeTriesThePinnedFolderThenTheLoaderThenTheCudaFoldersAndTracesEachFailure()
    {
        string root = Directory.CreateTempSubdirectory("loftq-cuda-probe").FullName;
        try
        {
            string pinned = Directory.CreateDirectory(Path.Combine(root, "pinned")).FullName;
            string cudaHome = Directory.CreateDirectory(Path.Combine(root, "cuda", "lib64")).FullName;
            File.WriteAllText(Path.Combine(pinned, "libcublas.so.12"), "not a library");
            File.WriteAllText(Path.Combine(cudaHome, "libcublas.so.13"), "not a library either");
            var env = new Dictionary<string, string?> { ["LOFTQ_CUDA_LIB_DIR"] = pinned, ["CUDA_PATH"] = Path.Combine(root, "cuda") };
            var attempts = new List<string>();
            CudaLibraries.LoadResult failed = CudaLibraries.Probe(CudaLibraries.Cublas, v => env.GetValueOrDefault(v), windows: false, path =>
            {
                attempts.Add(path);
                return (0, "invalid ELF header");
            });

            Assert.False(failed.Loaded);
            // Pinned folder (only the file that exists), then bare names for the loader, then CUDA_PATH/lib64.
            Assert.Equal(
                [Path.Combine(pinned, "libcublas.so.12"), "libcublas.so.13", "libcublas.so.12", "libcublas.so", Path.Combine(cudaHome, "libcublas.so.13")],
                attempts.Take(5));
            string description = failed.Describe();
            Assert.StartsWith("not found (tried ", description, StringComparison.Ordinal);
            Assert.Contains($"{Path.Combine(pinned, "libcublas.so.12")}: invalid ELF header", description, StringComparison.Ordinal);

            CudaLibraries.LoadResult found = CudaLibraries.Probe(CudaLibraries.Cublas, v => env.GetValueOrDefault(v), windows: false, path =>
                path == "libcublas.so.12" ? (42, null) : (0, "nope"));
            Assert.True(found.Loaded);
            Assert.Equal("libcublas.so.12", found.Path);
            Assert.Equal("libcublas.so.12", found.Describe());
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void TheLoadersOwnReasonIsKeptAndAbsentFilesReadAsAList()
    {
        const string Advice = "Unable to load shared library 'x' or one of its dependencies. In order to help diagnose loading problems, consider using a tool like strace. If you're using glibc, consider setting the LD_DEBUG environment variable: ";
        Assert.Equal("no such file", CudaLibraries.LoaderReason("libcuda.so.1", Advice + "\nlibcuda.so.1: cannot open shared object file: No such file or directory\n"));
        Assert.Equal("invalid ELF header", CudaLibraries.LoaderReason("/opt/libcublas.so.13", Advice + "\n/opt/libcublas.so.13: invalid ELF header\n"));
        // A missing dependency is named, not reported as the library itself missing.
        Assert.Equal(
            "libcublasLt.so.13: cannot open shared object file: No such file or directory",
            CudaLibraries.LoaderReason("libcublas.so.13", Advice + "\nlibcublasLt.so.13: cannot open shared object file: No such file or directory"));

        var absent = new CudaLibraries.LoadResult("x", 0, null, ["libcuda.so.1: no such file", "libcuda.so: no such file"]);
        Assert.Equal("not found (tried libcuda.so.1, libcuda.so)", absent.Describe());
        var broken = new CudaLibraries.LoadResult("x", 0, null, ["libcuda.so.1: no such file", "/usr/local/cuda/lib64/libcuda.so: invalid ELF header"]);
        Assert.Equal("not found (tried libcuda.so.1: no such file; /usr/local/cuda/lib64/libcuda.so: invalid ELF header)", broken.Describe());
    }

    [Fact]
    public void CandidateNamesAreTheVersionedSonamesNewestFirst()
    {
        Assert.Equal(["libcuda.so.1", "libcuda.so"], CudaLibraries.CandidateNames(CudaLibraries.Driver, windows: false));
        Assert.Equal("libcublas.so.13", CudaLibraries.CandidateNames(CudaLibraries.Cublas, windows: false)[0]);
        Assert.Equal("libcusolver.so.12", CudaLibraries.CandidateNames(CudaLibraries.Cusolver, windows: false)[0]);
        Assert.Equal("libcurand.so.10", CudaLibraries.CandidateNames(CudaLibraries.Curand, windows: false)[0]);
        Assert.Equal("libnvrtc.so.13", CudaLibraries.CandidateNames(CudaLibraries.Nvrtc, windows: false)[0]);
        Assert.Equal("nvcuda.dll", CudaLibraries.CandidateNames(CudaLibraries.Driver, windows: true)[0]);
        Assert.Throws<ArgumentException>(() => CudaLibraries.CandidateNames("libfoo", windows: false));
    }

    [Fact]
    public void FailedStatusesNameTheCallTheLibraryAndTheStatus()
    {
        var blas = Assert.Throws<CudaException>(() => Status.Blas(7, "Cublas.cublasSgemm(handle, ...)"));
        Assert.Equal("cuBLAS call Cublas.cublasSgemm(handle, ...) failed with CUBLAS_STATUS_INVALID_VALUE (7).", blas.Message);
        Assert.Equal(7, blas.Status);
        Assert.Equal("cuBLAS", blas.Library);

        Assert.Contains("CUSOLVER_STATUS_EXECUTION_FAILED", Assert.Throws<CudaException>(() => Status.Solver(6, "geqrf")).Message, StringComparison.Ordinal);
        Assert.Contains("CURAND_STATUS_LENGTH_NOT_MULTIPLE", Assert.Throws<CudaException>(() => Status.Rand(105, "normal")).Message, StringComparison.Ordinal);
        Status.Blas(0, "fine"); // success does not throw

        // A status from a call whose library is absent still gives a message (the driver's names need libcuda).
        if (!CudaProbe.Current.Available)
        {
            Assert.Contains("CUresult 2", Assert.Throws<CudaException>(() => Status.Driver(2, "cuMemAlloc")).Message, StringComparison.Ordinal);
        }

        string longCall = "Cusolver.cusolverDnSgeqrf(\n    solver, columns, rows, a, columns, tau, work, workLength, info" + new string('x', 300) + ")";
        string shortened = Status.Shorten(longCall);
        Assert.Equal(160, shortened.Length);
        Assert.DoesNotContain('\n', shortened);
        Assert.EndsWith("...", shortened, StringComparison.Ordinal);
    }

    [Fact]
    public void ProbeOnThisMachineExplainsItsAnswer()
    {
        CudaProbe probe = CudaProbe.Current;
        string text = probe.Describe();
        if (probe.Available)
        {
            Assert.NotEmpty(probe.Devices);
            Assert.All(probe.Devices, d => Assert.False(string.IsNullOrWhiteSpace(d.Name)));
            Assert.Contains("GPU 0: ", text, StringComparison.Ordinal);
        }
        else
        {
            Assert.NotNull(probe.Failure);
            Assert.Contains("CUDA: no usable GPU: ", text, StringComparison.Ordinal);
            Assert.Contains("cuBLAS: ", text, StringComparison.Ordinal); // every library's outcome is listed
        }
    }

    [Fact]
    public void UnverifiedBuildRefusesWithoutTheOptInAndDescribeSaysSo()
    {
        // CudaAcceleratorProvider.VerifiedOnDevice is false until the GPU tests pass on a device (benchmarks/gpu/run.sh).
        if (CudaAcceleratorProvider.VerifiedOnDevice || Environment.GetEnvironmentVariable("LOFTQ_CUDA_UNVERIFIED") == "1")
        {
            return;
        }

        var provider = new CudaAcceleratorProvider();
        Assert.Null(provider.TryCreate(out string reason));
        Assert.Contains("LOFTQ_CUDA_UNVERIFIED=1", reason, StringComparison.Ordinal);
        Assert.Contains("LOFTQ_CUDA_UNVERIFIED=1", provider.Describe(), StringComparison.Ordinal);
    }

    [Fact]
    public void TheCoreFindsThisPackageAtRunTime()
    {
        // No compile-time reference from the core: LoftQ.Describe() reaches the provider by name.
        string describe = LoftQ.Describe();
        Assert.Contains("CUDA: ", describe, StringComparison.Ordinal);
        Assert.DoesNotContain("not part of this application", describe, StringComparison.Ordinal);
        Assert.Equal(Accelerators.CudaProviderType, typeof(CudaAcceleratorProvider).FullName + ", " + typeof(CudaAcceleratorProvider).Assembly.GetName().Name);
    }

    [Fact]
    public void CudaDeviceOnAMachineWithoutOneIsAClearErrorAndAutoFallsBack()
    {
        if (CudaProbe.Current.Available && Environment.GetEnvironmentVariable("LOFTQ_CUDA_UNVERIFIED") == "1")
        {
            return; // a GPU machine: the device tests cover it
        }

        var e = Assert.Throws<DeviceUnavailableException>(() => Accelerators.Select(new LoftQOptions { Device = ComputeDevice.Cuda }, _ => { }));
        Assert.Contains("no usable GPU was found", e.Message, StringComparison.Ordinal);
        var notices = new List<string>();
        Assert.Null(Accelerators.Select(new LoftQOptions { Device = ComputeDevice.Auto }, notices.Add));
        Assert.StartsWith("Running on the CPU: no usable GPU (", Assert.Single(notices), StringComparison.Ordinal);
    }
}
