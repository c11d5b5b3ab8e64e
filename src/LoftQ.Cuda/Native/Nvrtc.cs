using System.Runtime.InteropServices;

namespace LoftQNet.Cuda.Native;

/// <summary>The NVRTC calls this package uses: compile the embedded kernel source to a cubin for the GPU at hand.</summary>
internal static partial class Nvrtc
{
    [LibraryImport(CudaLibraries.Nvrtc)]
    internal static partial int nvrtcVersion(out int major, out int minor);

    [LibraryImport(CudaLibraries.Nvrtc, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int nvrtcCreateProgram(out nint program, string source, string name, int headerCount, nint headers, nint includeNames);

    [LibraryImport(CudaLibraries.Nvrtc)]
    internal static unsafe partial int nvrtcCompileProgram(nint program, int optionCount, byte** options);

    [LibraryImport(CudaLibraries.Nvrtc)]
    internal static partial int nvrtcGetProgramLogSize(nint program, out nuint size);

    [LibraryImport(CudaLibraries.Nvrtc)]
    internal static unsafe partial int nvrtcGetProgramLog(nint program, byte* log);

    [LibraryImport(CudaLibraries.Nvrtc, EntryPoint = "nvrtcGetCUBINSize")]
    internal static partial int nvrtcGetCubinSize(nint program, out nuint size);

    [LibraryImport(CudaLibraries.Nvrtc, EntryPoint = "nvrtcGetCUBIN")]
    internal static unsafe partial int nvrtcGetCubin(nint program, byte* cubin);

    [LibraryImport(CudaLibraries.Nvrtc)]
    internal static partial int nvrtcDestroyProgram(ref nint program);

    [LibraryImport(CudaLibraries.Nvrtc)]
    internal static partial nint nvrtcGetErrorString(int status);

    /// <summary>The name of an nvrtcResult.</summary>
    internal static string StatusText(int status)
    {
        try
        {
            return Marshal.PtrToStringUTF8(nvrtcGetErrorString(status)) ?? $"nvrtcResult {status}";
        }
        catch (DllNotFoundException)
        {
            return $"nvrtcResult {status}";
        }
    }
}
