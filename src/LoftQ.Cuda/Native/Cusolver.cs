using System.Runtime.InteropServices;

namespace LoftQNet.Cuda.Native;

/// <summary>The cuSOLVER dense calls this package uses (column-major LAPACK: QR factorisation and Q formation).</summary>
internal static partial class Cusolver
{
    [LibraryImport(CudaLibraries.Cusolver)]
    internal static partial int cusolverDnCreate(out nint handle);

    [LibraryImport(CudaLibraries.Cusolver)]
    internal static partial int cusolverDnDestroy(nint handle);

    [LibraryImport(CudaLibraries.Cusolver)]
    internal static partial int cusolverDnSetStream(nint handle, nint stream);

    [LibraryImport(CudaLibraries.Cusolver)]
    internal static partial int cusolverGetVersion(out int version);

    [LibraryImport(CudaLibraries.Cusolver)]
    internal static partial int cusolverDnSgeqrf_bufferSize(nint handle, int m, int n, ulong a, int lda, out int workspaceLength);

    [LibraryImport(CudaLibraries.Cusolver)]
    internal static partial int cusolverDnSgeqrf(nint handle, int m, int n, ulong a, int lda, ulong tau, ulong workspace, int workspaceLength, ulong info);

    [LibraryImport(CudaLibraries.Cusolver)]
    internal static partial int cusolverDnSorgqr_bufferSize(nint handle, int m, int n, int k, ulong a, int lda, ulong tau, out int workspaceLength);

    [LibraryImport(CudaLibraries.Cusolver)]
    internal static partial int cusolverDnSorgqr(nint handle, int m, int n, int k, ulong a, int lda, ulong tau, ulong workspace, int workspaceLength, ulong info);

    /// <summary>The name of a cusolverStatus_t.</summary>
    internal static string StatusText(int status) => status switch
    {
        0 => "CUSOLVER_STATUS_SUCCESS",
        1 => "CUSOLVER_STATUS_NOT_INITIALIZED",
        2 => "CUSOLVER_STATUS_ALLOC_FAILED",
        3 => "CUSOLVER_STATUS_INVALID_VALUE",
        4 => "CUSOLVER_STATUS_ARCH_MISMATCH",
        5 => "CUSOLVER_STATUS_MAPPING_ERROR",
        6 => "CUSOLVER_STATUS_EXECUTION_FAILED",
        7 => "CUSOLVER_STATUS_INTERNAL_ERROR",
        8 => "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED",
        9 => "CUSOLVER_STATUS_NOT_SUPPORTED",
        _ => $"cusolverStatus_t {status}",
    };
}
