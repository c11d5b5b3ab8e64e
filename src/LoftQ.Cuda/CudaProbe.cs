using System.Runtime.InteropServices;
using System.Text;
using LoftQNet.Cuda.Native;

namespace LoftQNet.Cuda;

/// <summary>One GPU as the driver reports it.</summary>
/// <param name="Ordinal">The device ordinal.</param>
/// <param name="Name">The marketing name, e.g. <c>NVIDIA H100 80GB HBM3</c>.</param>
/// <param name="ComputeMajor">Compute capability, major.</param>
/// <param name="ComputeMinor">Compute capability, minor.</param>
/// <param name="TotalBytes">Device memory in bytes.</param>
/// <param name="Multiprocessors">Streaming multiprocessors.</param>
internal sealed record GpuInfo(int Ordinal, string Name, int ComputeMajor, int ComputeMinor, long TotalBytes, int Multiprocessors)
{
    public override string ToString() =>
        $"{Ordinal}: {Name}, compute {ComputeMajor}.{ComputeMinor}, {TotalBytes / (double)(1L << 30):F1} GiB, {Multiprocessors} SMs";
}

/// <summary>
/// What the machine offers the GPU backend: the CUDA libraries found (with the load trace), the driver version and
/// the GPUs, or the first reason there is no usable GPU. Never throws.
/// </summary>
internal sealed record CudaProbe(
    IReadOnlyList<CudaLibraries.LoadResult> Libraries, int DriverVersion, IReadOnlyList<GpuInfo> Devices,
    IReadOnlyDictionary<string, string> LibraryVersions, string? Failure)
{
    private static readonly Lock s_gate = new();
    private static CudaProbe? s_cached;

    /// <summary>The probe of this process (run once).</summary>
    public static CudaProbe Current
    {
        get
        {
            lock (s_gate)
            {
                return s_cached ??= Run();
            }
        }
    }

    /// <summary>Whether a usable GPU was found.</summary>
    public bool Available => Failure is null && Devices.Count > 0;

    private static CudaProbe Run()
    {
        CudaLibraries.EnsureResolver();
        string[] names = [CudaLibraries.Driver, CudaLibraries.Cublas, CudaLibraries.Cusolver, CudaLibraries.Curand, CudaLibraries.Nvrtc];
        List<CudaLibraries.LoadResult> libraries = names.Select(CudaLibraries.Load).ToList();
        var versions = new Dictionary<string, string>(StringComparer.Ordinal);
        CudaLibraries.LoadResult? missing = libraries.FirstOrDefault(l => !l.Loaded);
        if (missing is not null)
        {
            return new CudaProbe(libraries, 0, [], versions, $"{LibraryTitle(missing.LogicalName)} {missing.Describe()}");
        }

        try
        {
            int init = CudaDriver.cuInit(0);
            if (init != 0)
            {
                return new CudaProbe(libraries, 0, [], versions, $"cuInit failed with {CudaDriver.StatusText(init)} (no GPU, or the driver cannot reach it)");
            }

            Status.Driver(CudaDriver.cuDriverGetVersion(out int driver));
            Status.Driver(CudaDriver.cuDeviceGetCount(out int count));
            var devices = new List<GpuInfo>(count);
            for (int i = 0; i < count; i++)
            {
                devices.Add(Device(i));
            }

            if (Curand.curandGetVersion(out int rand) == 0)
            {
                versions["cuRAND"] = rand.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }

            if (Cusolver.cusolverGetVersion(out int solver) == 0)
            {
                versions["cuSOLVER"] = solver.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }

            if (Nvrtc.nvrtcVersion(out int major, out int minor) == 0)
            {
                versions["NVRTC"] = $"{major}.{minor}";
            }

            string? failure = count == 0 ? "the driver reports no GPU" : null;
            return new CudaProbe(libraries, driver, devices, versions, failure);
        }
        catch (Exception e) when (e is CudaException or DllNotFoundException or EntryPointNotFoundException)
        {
            return new CudaProbe(libraries, 0, [], versions, e.Message);
        }
    }

    private static unsafe GpuInfo Device(int ordinal)
    {
        Status.Driver(CudaDriver.cuDeviceGet(out int device, ordinal));
        byte* name = stackalloc byte[256];
        Status.Driver(CudaDriver.cuDeviceGetName(name, 256, device));
        Status.Driver(CudaDriver.cuDeviceTotalMem(out nuint bytes, device));
        Status.Driver(CudaDriver.cuDeviceGetAttribute(out int major, CudaDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device));
        Status.Driver(CudaDriver.cuDeviceGetAttribute(out int minor, CudaDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device));
        Status.Driver(CudaDriver.cuDeviceGetAttribute(out int sms, CudaDriver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device));
        return new GpuInfo(device, Marshal.PtrToStringUTF8((nint)name) ?? "unknown", major, minor, (long)bytes, sms);
    }

    /// <summary>The user-facing name of a logical library.</summary>
    internal static string LibraryTitle(string logicalName) => logicalName switch
    {
        CudaLibraries.Driver => "the CUDA driver library",
        CudaLibraries.Cublas => "cuBLAS",
        CudaLibraries.Cusolver => "cuSOLVER",
        CudaLibraries.Curand => "cuRAND",
        _ => "NVRTC",
    };

    /// <summary>Lines for <c>loftq describe</c>.</summary>
    public string Describe()
    {
        var sb = new StringBuilder();
        if (Available)
        {
            sb.AppendLine($"CUDA: driver {DriverVersion / 1000}.{DriverVersion % 1000 / 10}, {Devices.Count} GPU(s)");
            foreach (GpuInfo gpu in Devices)
            {
                sb.AppendLine($"  GPU {gpu}");
            }
        }
        else
        {
            sb.AppendLine($"CUDA: no usable GPU: {Failure}");
        }

        foreach (CudaLibraries.LoadResult library in Libraries)
        {
            string version = LibraryVersions.TryGetValue(LibraryTitle(library.LogicalName), out string? v) ? $" (version {v})" : string.Empty;
            sb.AppendLine($"  {LibraryTitle(library.LogicalName)}: {library.Describe()}{version}");
        }

        return sb.ToString();
    }
}
