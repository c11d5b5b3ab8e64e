using System.Globalization;
using System.Numerics;
using System.Runtime.Intrinsics;

namespace LoftQNet.Cuda.Kernels;

/// <summary>The launch configuration of one kernel: grid and block size along x, and the dynamic shared memory.</summary>
/// <param name="GridX">Thread blocks (gridDim.x), 1..2^31−1.</param>
/// <param name="BlockX">Threads per block (blockDim.x), a multiple of 32.</param>
/// <param name="SharedBytes">Dynamic shared memory per block in bytes (the kernels of quantize.cu use static shared memory only).</param>
internal readonly record struct LaunchGeometry(uint GridX, uint BlockX, uint SharedBytes);

/// <summary>
/// The kernels of <c>Kernels/quantize.cu</c> (an embedded resource compiled at run time by NVRTC): their names, the
/// NVRTC options they need, and the launch geometry of each. All kernels loop grid-stride, so any grid is correct;
/// the geometry here gives every warp one unit of work for inputs up to about a billion values.
/// </summary>
/// <remarks>
/// <para><c>loftq_quantize_blocks</c> without a scale search gives each quantization block a group of lanes (a power of
/// two up to a warp; 16 lanes of 16-byte loads for blocks of 64 when the buffers are 16-byte aligned), so it streams at
/// memory bandwidth. With a search each block gets 4 lanes (8 blocks per warp) that replay the CPU's summation order.</para>
/// <para>The results equal the CPU quantizers' bit for bit (codes, scales, offsets, dequantized values) provided the
/// kernels are compiled with <see cref="CompileOptions"/>: no FMA contraction, IEEE division, no flushing of
/// subnormals, and the defines describing this process's SIMD width (the scale search reproduces the CPU's float
/// summation order, which depends on it).</para>
/// </remarks>
internal static class KernelLaunch
{
    /// <summary>Manifest name of the kernel source (Kernels/quantize.cu, embedded by LoftQ.Cuda.csproj).</summary>
    internal const string QuantizeSourceResource = "LoftQNet.Cuda.Kernels.quantize.cu";

    /// <summary>Name of the blockwise quantize (and fused dequantize) kernel.</summary>
    internal const string QuantizeKernel = "loftq_quantize_blocks";

    /// <summary>Name of the bit-packing kernel.</summary>
    internal const string PackKernel = "loftq_pack_codes";

    /// <summary>Name of the sum-of-squared-differences kernel.</summary>
    internal const string SumSquaresKernel = "loftq_sum_squares";

    /// <summary>Threads per block of every kernel (8 warps).</summary>
    internal const int ThreadsPerBlock = 256;

    /// <summary>The largest grid the grid-stride kernels are given (more blocks only add scheduling work).</summary>
    internal const long MaxGrid = 1L << 20;

    /// <summary>The grid of <see cref="SumSquaresKernel"/> at most (one double atomic per block).</summary>
    internal const long MaxSumSquaresGrid = 2048;

    /// <summary>Lanes per quantization block in the scale-search path of quantize.cu (LOFTQ_SEARCH_LANES).</summary>
    internal const int SearchLanes = 4;

    /// <summary>
    /// Float lanes of <c>TensorPrimitives</c>' aggregation in this process: 16 with Vector512 acceleration, 8 with
    /// Vector256, otherwise 4 (the kernel's LOFTQ_CPU_SUM_LANES).
    /// </summary>
    internal static int CpuSumLanes => Vector512.IsHardwareAccelerated ? 16 : Vector256.IsHardwareAccelerated ? 8 : 4;

    /// <summary>
    /// Whether the CPU scale search of code books of at most 16 levels uses the fused 8-lane error kernel
    /// (<c>QuantizationKernels.TrySquaredError</c>, which needs Vector256 acceleration; the kernel's LOFTQ_CPU_FUSED_ERROR).
    /// </summary>
    internal static bool CpuFusedError => Vector256.IsHardwareAccelerated;

    /// <summary>The preprocessor defines that make the kernels reproduce this process's CPU results (see <see cref="CpuSumLanes"/>).</summary>
    internal static string[] HostDefines() =>
    [
        string.Create(CultureInfo.InvariantCulture, $"-DLOFTQ_CPU_SUM_LANES={CpuSumLanes}"),
        CpuFusedError ? "-DLOFTQ_CPU_FUSED_ERROR=1" : "-DLOFTQ_CPU_FUSED_ERROR=0",
    ];

    /// <summary>
    /// NVRTC options for quantize.cu on <paramref name="architecture"/> (e.g. "sm_90" or "compute_90"): C++17, IEEE
    /// float semantics (no FMA contraction, no flush to zero, correctly rounded division and square root) and
    /// <see cref="HostDefines"/>. Never add -use_fast_math: it breaks the bit identity with the CPU.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="architecture"/> is empty.</exception>
    internal static string[] CompileOptions(string architecture)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(architecture);
        return
        [
            "--gpu-architecture=" + architecture,
            "--std=c++17",
            "--fmad=false",
            "--ftz=false",
            "--prec-div=true",
            "--prec-sqrt=true",
            .. HostDefines(),
        ];
    }

    /// <summary>Reads the kernel source from the assembly's resources.</summary>
    /// <exception cref="InvalidOperationException">The resource is missing (a build problem).</exception>
    internal static string LoadSource()
    {
        using Stream stream = typeof(KernelLaunch).Assembly.GetManifestResourceStream(QuantizeSourceResource)
            ?? throw new InvalidOperationException($"The kernel source resource '{QuantizeSourceResource}' is missing from {typeof(KernelLaunch).Assembly.GetName().Name}.");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>
    /// Geometry of <see cref="QuantizeKernel"/> for <paramref name="n"/> values in blocks of <paramref name="blockSize"/>
    /// with a code book of <paramref name="levelCount"/> levels; <paramref name="searchSteps"/> &gt; 0 sizes the grid for
    /// the scale-search path. The kernel needs no dynamic shared memory (the code book lives in 2 KiB of static shared memory).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative count, a block size below 1, a level count that is not a power of two in 2..256, or negative steps.</exception>
    internal static LaunchGeometry Quantize(long n, int blockSize, int levelCount, int searchSteps = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(searchSteps);
        if (levelCount is < 2 or > 256 || !BitOperations.IsPow2(levelCount))
        {
            throw new ArgumentOutOfRangeException(nameof(levelCount), levelCount, "A code book has 2^bits levels for 1..8 bits.");
        }

        long blocks = (n + blockSize - 1) / blockSize;
        long warps = Ceiling(blocks, BlocksPerWarp(blockSize, searchSteps > 0));
        return new LaunchGeometry(Grid(Ceiling(warps, ThreadsPerBlock / 32), MaxGrid), ThreadsPerBlock, 0);
    }

    /// <summary>Geometry of <see cref="PackKernel"/>: one thread per packed byte.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="packedLength"/> is negative.</exception>
    internal static LaunchGeometry Pack(long packedLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(packedLength);
        return new LaunchGeometry(Grid(Ceiling(packedLength, ThreadsPerBlock), MaxGrid), ThreadsPerBlock, 0);
    }

    /// <summary>Geometry of <see cref="SumSquaresKernel"/>: about four 16-byte loads per thread, at most <see cref="MaxSumSquaresGrid"/> blocks.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> is negative.</exception>
    internal static LaunchGeometry SumSquares(long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        return new LaunchGeometry(Grid(Ceiling(n, ThreadsPerBlock * 16L), MaxSumSquaresGrid), ThreadsPerBlock, 0);
    }

    /// <summary>
    /// Quantization blocks one warp handles at a time: 32 / lanes per block, where the plain path gives a block the
    /// smallest power of two of lanes (at most 32) covering its 4-value chunks (single values when the block size is
    /// not a multiple of 4), and the search path 4 lanes.
    /// </summary>
    internal static int BlocksPerWarp(int blockSize, bool search)
    {
        if (search)
        {
            return 32 / SearchLanes;
        }

        int vector = blockSize % 4 == 0 ? 4 : 1;
        long chunks = Ceiling(blockSize, vector);
        int lanes = 1;
        while (lanes < chunks && lanes < 32)
        {
            lanes <<= 1;
        }

        return 32 / lanes;
    }

    private static long Ceiling(long value, long divisor) => (value + divisor - 1) / divisor;

    private static uint Grid(long blocks, long max) => (uint)Math.Clamp(blocks, 1, max);
}
