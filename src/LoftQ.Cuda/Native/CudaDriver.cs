using System.Runtime.InteropServices;

namespace LoftQNet.Cuda.Native;

/// <summary>The CUDA driver API calls this package uses (libcuda.so.1 / nvcuda.dll); every one returns a CUresult.</summary>
internal static partial class CudaDriver
{
    internal const int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    internal const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    internal const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    internal const uint CU_STREAM_NON_BLOCKING = 1;
    internal const uint CU_EVENT_DEFAULT = 0;

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuInit(uint flags);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuDriverGetVersion(out int version);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuDeviceGetCount(out int count);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuDeviceGet(out int device, int ordinal);

    [LibraryImport(CudaLibraries.Driver)]
    internal static unsafe partial int cuDeviceGetName(byte* name, int length, int device);

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuDeviceTotalMem_v2")]
    internal static partial int cuDeviceTotalMem(out nuint bytes, int device);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuDeviceGetAttribute(out int value, int attribute, int device);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuDevicePrimaryCtxRetain(out nint context, int device);

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuDevicePrimaryCtxRelease_v2")]
    internal static partial int cuDevicePrimaryCtxRelease(int device);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuCtxSetCurrent(nint context);



    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuStreamCreate(out nint stream, uint flags);

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuStreamDestroy_v2")]
    internal static partial int cuStreamDestroy(nint stream);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuStreamSynchronize(nint stream);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuEventCreate(out nint evt, uint flags);

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuEventDestroy_v2")]
    internal static partial int cuEventDestroy(nint evt);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuEventRecord(nint evt, nint stream);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuEventSynchronize(nint evt);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuEventElapsedTime(out float milliseconds, nint start, nint end);


    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemAlloc_v2")]
    internal static partial int cuMemAlloc(out ulong pointer, nuint bytes);

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemFree_v2")]
    internal static partial int cuMemFree(ulong pointer);



    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyHtoDAsync_v2")]
    internal static partial int cuMemcpyHtoDAsync(ulong destination, nint source, nuint bytes, nint stream);

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyDtoHAsync_v2")]
    internal static partial int cuMemcpyDtoHAsync(nint destination, ulong source, nuint bytes, nint stream);

    [LibraryImport(CudaLibraries.Driver, EntryPoint = "cuMemcpyDtoDAsync_v2")]
    internal static partial int cuMemcpyDtoDAsync(ulong destination, ulong source, nuint bytes, nint stream);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuMemsetD8Async(ulong destination, byte value, nuint count, nint stream);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuMemsetD32Async(ulong destination, uint value, nuint count, nint stream);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuModuleLoadData(out nint module, nint image);

    [LibraryImport(CudaLibraries.Driver)]
    internal static partial int cuModuleUnload(nint module);

    [LibraryImport(CudaLibraries.Driver, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int cuModuleGetFunction(out nint function, nint module, string name);

    [LibraryImport(CudaLibraries.Driver)]
    internal static unsafe partial int cuLaunchKernel(
        nint function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, nint stream, void** parameters, void** extra);

    [LibraryImport(CudaLibraries.Driver)]
    internal static unsafe partial int cuGetErrorName(int status, byte** name);

    [LibraryImport(CudaLibraries.Driver)]
    internal static unsafe partial int cuGetErrorString(int status, byte** text);

    /// <summary>"CUDA_ERROR_OUT_OF_MEMORY: out of memory", or the bare number when the driver does not know it.</summary>
    internal static unsafe string StatusText(int status)
    {
        try
        {
            byte* name = null, text = null;
            if (cuGetErrorName(status, &name) != 0 || name == null)
            {
                return $"CUresult {status}";
            }

            _ = cuGetErrorString(status, &text);
            string n = Marshal.PtrToStringUTF8((nint)name) ?? $"CUresult {status}";
            return text == null ? n : $"{n}: {Marshal.PtrToStringUTF8((nint)text)}";
        }
        catch (DllNotFoundException)
        {
            return $"CUresult {status}";
        }
    }
}
