using System.Runtime.InteropServices;

namespace LoftQNet.Cuda.Native;

/// <summary>The cuBLAS calls this package uses (column-major BLAS; scalars passed by host pointer).</summary>
internal static partial class Cublas
{
    internal const int CUBLAS_OP_N = 0;
    internal const int CUBLAS_OP_T = 1;

    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasCreate_v2")]
    internal static partial int cublasCreate(out nint handle);

    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasDestroy_v2")]
    internal static partial int cublasDestroy(nint handle);

    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasSetStream_v2")]
    internal static partial int cublasSetStream(nint handle, nint stream);


    [LibraryImport(CudaLibraries.Cublas, EntryPoint = "cublasSgemm_v2")]
    internal static unsafe partial int cublasSgemm(
        nint handle, int transA, int transB, int m, int n, int k, float* alpha, ulong a, int lda, ulong b, int ldb,
        float* beta, ulong c, int ldc);

    /// <summary>The name of a cublasStatus_t.</summary>
    internal static string StatusText(int status) => status switch
    {
        0 => "CUBLAS_STATUS_SUCCESS",
        1 => "CUBLAS_STATUS_NOT_INITIALIZED",
        3 => "CUBLAS_STATUS_ALLOC_FAILED",
        7 => "CUBLAS_STATUS_INVALID_VALUE",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        16 => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => $"cublasStatus_t {status}",
    };
}
