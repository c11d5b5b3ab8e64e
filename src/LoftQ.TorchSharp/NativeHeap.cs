using System.Runtime.InteropServices;

namespace LoftQNet.TorchSharp;

/// <summary>
/// Hands the C allocator's free memory back to the OS (glibc's <c>malloc_trim</c>). libtorch allocates activations
/// through malloc, and glibc keeps freed blocks in its arenas; between training steps nothing of a step's
/// activations is live, so trimming there keeps the resident set near what the next step needs instead of
/// ratcheting up with fragmentation. A no-op where the C library has no <c>malloc_trim</c> (not Linux, musl).
/// </summary>
internal static partial class NativeHeap
{
    private static int s_unavailable;

    /// <summary>Trims every arena; returns whether memory was released (false when unavailable).</summary>
    public static bool Trim()
    {
        if (!OperatingSystem.IsLinux() || Volatile.Read(ref s_unavailable) != 0)
        {
            return false;
        }

        try
        {
            return MallocTrim(0) != 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Volatile.Write(ref s_unavailable, 1);
            return false;
        }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
