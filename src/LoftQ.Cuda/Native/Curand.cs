using System.Runtime.InteropServices;

namespace LoftQNet.Cuda.Native;

/// <summary>The cuRAND host-API calls this package uses (Philox Gaussian test matrices for the randomized SVD).</summary>
internal static partial class Curand
{
    internal const int CURAND_RNG_PSEUDO_PHILOX4_32_10 = 161;

    [LibraryImport(CudaLibraries.Curand)]
    internal static partial int curandCreateGenerator(out nint generator, int type);

    [LibraryImport(CudaLibraries.Curand)]
    internal static partial int curandDestroyGenerator(nint generator);

    [LibraryImport(CudaLibraries.Curand)]
    internal static partial int curandSetStream(nint generator, nint stream);

    [LibraryImport(CudaLibraries.Curand)]
    internal static partial int curandSetPseudoRandomGeneratorSeed(nint generator, ulong seed);

    [LibraryImport(CudaLibraries.Curand)]
    internal static partial int curandSetGeneratorOffset(nint generator, ulong offset);

    [LibraryImport(CudaLibraries.Curand)]
    internal static partial int curandGenerateNormal(nint generator, ulong output, nuint count, float mean, float stddev);

    [LibraryImport(CudaLibraries.Curand)]
    internal static partial int curandGetVersion(out int version);

    /// <summary>The name of a curandStatus_t.</summary>
    internal static string StatusText(int status) => status switch
    {
        0 => "CURAND_STATUS_SUCCESS",
        100 => "CURAND_STATUS_VERSION_MISMATCH",
        101 => "CURAND_STATUS_NOT_INITIALIZED",
        102 => "CURAND_STATUS_ALLOCATION_FAILED",
        103 => "CURAND_STATUS_TYPE_ERROR",
        104 => "CURAND_STATUS_OUT_OF_RANGE",
        105 => "CURAND_STATUS_LENGTH_NOT_MULTIPLE",
        106 => "CURAND_STATUS_DOUBLE_PRECISION_REQUIRED",
        201 => "CURAND_STATUS_LAUNCH_FAILURE",
        202 => "CURAND_STATUS_PREEXISTING_FAILURE",
        203 => "CURAND_STATUS_INITIALIZATION_FAILED",
        204 => "CURAND_STATUS_ARCH_MISMATCH",
        999 => "CURAND_STATUS_INTERNAL_ERROR",
        _ => $"curandStatus_t {status}",
    };
}
