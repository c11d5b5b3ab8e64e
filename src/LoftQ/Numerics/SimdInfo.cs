using System.Numerics;
using System.Runtime.Intrinsics;

namespace LoftQNet.Numerics;

/// <summary>Describes the SIMD and threading capabilities the numeric kernels use on this machine.</summary>
internal static class SimdInfo
{
    /// <summary>
    /// One line such as <c>SIMD: Vector512=yes Vector256=yes Vector128=yes Vector&lt;float&gt;.Count=16;
    /// GEMM kernel: Kernel512 (8x32); threads: 2 of 2 processors</c>.
    /// </summary>
    public static string Describe()
    {
        string kernel = Gemm.ActiveKernel;
        return $"SIMD: Vector512={YesNo(Vector512.IsHardwareAccelerated)} Vector256={YesNo(Vector256.IsHardwareAccelerated)} " +
               $"Vector128={YesNo(Vector128.IsHardwareAccelerated)} Vector<float>.Count={Vector<float>.Count}; " +
               $"GEMM kernel: {kernel} ({Gemm.ActiveTile}); threads: {ComputeSettings.MaxThreads} of {Environment.ProcessorCount} processors";
    }

    private static string YesNo(bool value) => value ? "yes" : "no";
}
