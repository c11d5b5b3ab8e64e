using System.Runtime.CompilerServices;

namespace LoftQNet.Cuda.Native;

/// <summary>Turns every CUDA library status into an exception that names the call (<see cref="CudaException"/>).</summary>
internal static class Status
{
    /// <summary>Throws unless a driver call returned CUDA_SUCCESS.</summary>
    internal static void Driver(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != 0)
        {
            throw new CudaException("CUDA driver", Shorten(call), status, CudaDriver.StatusText(status));
        }
    }

    /// <summary>Throws unless a cuBLAS call returned CUBLAS_STATUS_SUCCESS.</summary>
    internal static void Blas(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != 0)
        {
            throw new CudaException("cuBLAS", Shorten(call), status, Cublas.StatusText(status));
        }
    }

    /// <summary>Throws unless a cuSOLVER call returned CUSOLVER_STATUS_SUCCESS.</summary>
    internal static void Solver(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != 0)
        {
            throw new CudaException("cuSOLVER", Shorten(call), status, Cusolver.StatusText(status));
        }
    }

    /// <summary>Throws unless a cuRAND call returned CURAND_STATUS_SUCCESS.</summary>
    internal static void Rand(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != 0)
        {
            throw new CudaException("cuRAND", Shorten(call), status, Curand.StatusText(status));
        }
    }

    /// <summary>Throws unless an NVRTC call returned NVRTC_SUCCESS.</summary>
    internal static void Rtc(int status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != 0)
        {
            throw new CudaException("NVRTC", Shorten(call), status, Nvrtc.StatusText(status));
        }
    }

    /// <summary>The call's name and a bounded argument list ("Cublas.cublasSgemm(handle, ...)").</summary>
    internal static string Shorten(string call)
    {
        string flat = string.Join(' ', call.Split((char[])['\r', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries).Select(s => s.Trim()));
        return flat.Length <= 160 ? flat : string.Concat(flat.AsSpan(0, 157), "...");
    }
}
