using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace LoftQNet.Numerics;

/// <summary>
/// Single-precision general matrix multiply on row-major flat buffers:
/// <c>C[m×n] = alpha · op(A)[m×k] · op(B)[k×n] + beta · C</c>.
/// </summary>
/// <remarks>
/// <para>
/// Leading dimensions are row strides: op(A) = A is m×k with stride <c>lda ≥ k</c>; op(A) = Aᵀ means A is
/// stored k×m with stride <c>lda ≥ m</c>; likewise for B. When <c>beta == 0</c>, C is overwritten (NaNs in C
/// do not propagate), as in BLAS. When <c>alpha == 0</c> or <c>k == 0</c>, A and B are not read.
/// </para>
/// <para>
/// Implementation (GotoBLAS / BLIS structure): op(B) is packed into KC×NR micro-panels and op(A) into MR×KC
/// micro-panels (the packing absorbs the transposes), the loops are blocked for the caches (NC, KC, MC) and a
/// register-blocked micro-kernel accumulates an MR×NR tile with fused multiply-adds (8×32 with Vector512, 6×16
/// with Vector256, 6×8 with Vector128, 4×4 scalar; a half-width variant serves a narrow last panel). An operand
/// that few tiles reuse — A when n ≤ <see cref="DirectThreshold"/>, an untransposed B when m ≤ it — is read in
/// place by strided micro-kernels, since packing it would cost about as much as the multiply (W·Ω, Wᵀ·Y, Qᵀ·W in
/// the LoftQ solver). B is packed for groups of k blocks so the workers of a group meet at one barrier.
/// </para>
/// <para>
/// Determinism: every element of C is the FMA chain over p in order, restarted from zero for each KC block and
/// combined as <c>fma(alpha, acc, beta·c)</c>; the blocking depends on the shape only and threads only split M and
/// N, so the result is bit-identical for any thread count. All micro-kernels (scalar, Vector128, Vector256,
/// Vector512) compute the same chains and therefore give identical results too.
/// </para>
/// </remarks>
internal static partial class Gemm
{
    /// <summary>Depth of a packed panel (the k block).</summary>
    internal const int KC = 256;

    /// <summary>Rows of op(A) packed per block (a multiple of every kernel's MR).</summary>
    internal const int MC = 192;

    /// <summary>Columns of op(B) packed per block (a multiple of every kernel's NR).</summary>
    internal const int NC = 4096;

    /// <summary>An operand reused by at most this many rows (B) or columns (A) of C is read in place, not packed.</summary>
    internal const int DirectThreshold = 128;

    /// <summary>
    /// Most floats of packed B held at once (default 16 MiB): consecutive k blocks are packed together up to this.
    /// Results do not depend on it (tests lower it to cover the grouping).
    /// </summary>
    internal static int MaxPackedB { get; set; } = 1 << 22;

    /// <summary>Floating-point work below which a call stays on one thread.</summary>
    private const long MinFlopsPerThread = 1L << 21;

    /// <summary>The micro-kernel the dispatcher uses on this machine.</summary>
    internal static string ActiveKernel => Vector512.IsHardwareAccelerated
        ? nameof(Kernel512)
        : Vector256.IsHardwareAccelerated ? nameof(Kernel256)
        : Vector128.IsHardwareAccelerated ? nameof(Kernel128) : nameof(KernelScalar);

    /// <summary>The tile shape (MR x NR) of <see cref="ActiveKernel"/>.</summary>
    internal static string ActiveTile => Vector512.IsHardwareAccelerated
        ? Tile<Kernel512>()
        : Vector256.IsHardwareAccelerated ? Tile<Kernel256>()
        : Vector128.IsHardwareAccelerated ? Tile<Kernel128>() : Tile<KernelScalar>();

    public static void Multiply(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb,
        float beta, Span<float> c, int ldc)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            Multiply<Kernel512>(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            Multiply<Kernel256>(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            Multiply<Kernel128>(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
        else
        {
            Multiply<KernelScalar>(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
    }

    /// <summary>The same operation with an explicitly chosen micro-kernel (tests use it to cover the fallbacks).</summary>
    internal static unsafe void Multiply<TKernel>(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb,
        float beta, Span<float> c, int ldc)
        where TKernel : struct, IGemmKernel
    {
        Validate(transA, transB, m, n, k, a.Length, lda, b.Length, ldb, c.Length, ldc);
        if (m == 0 || n == 0)
        {
            return;
        }

        fixed (float* pc = c)
        {
            if (k == 0 || alpha == 0f)
            {
                ScaleC(m, n, beta, pc, ldc);
                return;
            }

            fixed (float* pa = a)
            fixed (float* pb = b)
            {
                int threads = ComputeSettings.ThreadsFor(2L * m * n * k, MinFlopsPerThread);
                Run<TKernel>(transA == Transpose.Yes, transB == Transpose.Yes, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc, threads);
            }
        }
    }

    internal static void Validate(
        Transpose transA, Transpose transB, int m, int n, int k,
        int aLength, int lda, int bLength, int ldb, int cLength, int ldc)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        int aRows = transA == Transpose.No ? m : k, aCols = transA == Transpose.No ? k : m;
        int bRows = transB == Transpose.No ? k : n, bCols = transB == Transpose.No ? n : k;
        CheckOperand("A", aRows, aCols, aLength, lda);
        CheckOperand("B", bRows, bCols, bLength, ldb);
        CheckOperand("C", m, n, cLength, ldc);
    }

    private static void CheckOperand(string name, int rows, int cols, int length, int ld)
    {
        if (ld < Math.Max(1, cols))
        {
            throw new ArgumentException($"GEMM operand {name}: leading dimension {ld} is smaller than its {cols} columns.");
        }

        if (rows > 0 && cols > 0 && ((long)(rows - 1) * ld) + cols > length)
        {
            throw new ArgumentException($"GEMM operand {name}: a {rows}x{cols} matrix with stride {ld} needs {((long)(rows - 1) * ld) + cols} elements, the buffer has {length}.");
        }
    }

    private static unsafe void ScaleC(int m, int n, float beta, float* c, int ldc)
    {
        for (int i = 0; i < m; i++)
        {
            var row = new Span<float>(c + ((nint)i * ldc), n);
            if (beta == 0f)
            {
                row.Clear();
            }
            else if (beta != 1f)
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(row, beta, row);
            }
        }
    }

    private static unsafe void Run<TKernel>(
        bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc, int threads)
        where TKernel : struct, IGemmKernel
    {
        int mr = TKernel.MR, nr = TKernel.NR;
        nint ia = (nint)a, ib = (nint)b, ic = (nint)c;

        // An operand that only a few micro-tiles reuse is read in place instead of packed: copying it would
        // cost about as much as the multiply (W·Ω and Wᵀ·Y with few columns, Qᵀ·W with few rows).
        bool directA = n <= DirectThreshold;
        bool directB = !transB && m <= DirectThreshold;
        int kBlocks = (k + KC - 1) / KC;
        int kcMax = Math.Min(KC, k);
        int ncMax = Math.Min(NC, RoundUp(n, nr));

        // Packed B for a group of consecutive k blocks: the workers then run through the whole group without
        // meeting at a barrier after every k block. The group size depends on the shape only, never on threads.
        int slotFloats = (directB ? nr : ncMax) * kcMax;
        int blocksPerGroup = Math.Clamp(MaxPackedB / slotFloats, 1, kBlocks);
        float[] bPackArray = BufferPool.Floats.Rent(blocksPerGroup * slotFloats);
        try
        {
            fixed (float* bPackPtr = bPackArray)
            {
                nint ibPack = (nint)bPackPtr;
                for (int jc = 0; jc < n; jc += NC)
                {
                    int nc = Math.Min(NC, n - jc);
                    int panels = (nc + nr - 1) / nr;
                    int jcLocal = jc;
                    for (int group = 0; group < kBlocks; group += blocksPerGroup)
                    {
                        int groupBlocks = Math.Min(blocksPerGroup, kBlocks - group);
                        int groupStart = group;

                        // Pack op(B)[pc:pc+kc, jc:jc+nc] of every k block of the group into kc×NR micro-panels
                        // (only the ragged last panel when B is read in place).
                        if (directB)
                        {
                            if (nc % nr != 0)
                            {
                                int jLast = jc + ((panels - 1) * nr);
                                for (int g = 0; g < groupBlocks; g++)
                                {
                                    int pc = (group + g) * KC;
                                    PackB(b, ldb, transB, pc, Math.Min(KC, k - pc), jLast, n - jLast, nr, bPackPtr + ((nint)g * slotFloats));
                                }
                            }
                        }
                        else
                        {
                            int packTasks = Math.Min(threads, panels * groupBlocks);
                            ComputeSettings.ParallelFor(packTasks, packTasks, t =>
                            {
                                (int u0, int u1) = Split(panels * groupBlocks, packTasks, t);
                                for (int u = u0; u < u1;)
                                {
                                    int g = u / panels, q0 = u % panels, q1 = Math.Min(panels, q0 + (u1 - u));
                                    int pc = (groupStart + g) * KC;
                                    PackBPanels((float*)ib, ldb, transB, pc, Math.Min(KC, k - pc), jcLocal, q0, q1, n, nr, (float*)ibPack + ((nint)g * slotFloats));
                                    u += q1 - q0;
                                }
                            });
                        }

                        // Split M into MC blocks and, when there are fewer blocks than threads, N into panel groups.
                        int mBlocks = (m + MC - 1) / MC;
                        int nGroups = mBlocks >= threads ? 1 : Math.Min(panels, (threads + mBlocks - 1) / mBlocks);
                        int tasks = mBlocks * nGroups;
                        ComputeSettings.ParallelFor(tasks, Math.Min(threads, tasks), t =>
                        {
                            int blockIndex = t / nGroups;
                            (int g0, int g1) = Split(panels, nGroups, t % nGroups);
                            int i0 = blockIndex * MC;
                            int mcRows = Math.Min(MC, m - i0);
                            float[] aPackArray = BufferPool.Floats.Rent((directA ? mr : MC) * KC);
                            try
                            {
                                fixed (float* aPack = aPackArray)
                                {
                                    for (int g = 0; g < groupBlocks; g++)
                                    {
                                        int pc = (groupStart + g) * KC;
                                        int kc = Math.Min(KC, k - pc);
                                        var operands = new Operands
                                        {
                                            A = (float*)ia, Lda = lda, TransA = transA, DirectA = directA, APack = aPack,
                                            B = (float*)ib, Ldb = ldb, DirectB = directB, BPack = (float*)ibPack + ((nint)g * slotFloats),
                                            C = (float*)ic, Ldc = ldc, Alpha = alpha, Beta = pc == 0 ? beta : 1f,
                                            Pc = pc, Kc = kc, Jc = jcLocal, N = n,
                                        };
                                        if (directA)
                                        {
                                            int fullRows = mcRows / mr * mr;
                                            if (fullRows < mcRows)
                                            {
                                                PackA(operands.A, lda, transA, i0 + fullRows, mcRows - fullRows, pc, kc, mr, aPack);
                                            }
                                        }
                                        else
                                        {
                                            PackABlock((float*)ia, lda, transA, i0, mcRows, pc, kc, mr, aPack);
                                        }

                                        MacroKernel<TKernel>(in operands, i0, mcRows, g0, g1);
                                    }
                                }
                            }
                            finally
                            {
                                BufferPool.Floats.Return(aPackArray);
                            }
                        });
                    }
                }
            }
        }
        finally
        {
            BufferPool.Floats.Return(bPackArray);
        }
    }

    private static (int Start, int End) Split(int count, int parts, int index)
    {
        int q = count / parts, r = count % parts;
        int start = (index * q) + Math.Min(index, r);
        return (start, start + q + (index < r ? 1 : 0));
    }

    private static string Tile<TKernel>()
        where TKernel : struct, IGemmKernel => $"{TKernel.MR}x{TKernel.NR}";

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;

    private static unsafe void MacroKernel<TKernel>(in Operands o, int i0, int mcRows, int panelStart, int panelEnd)
        where TKernel : struct, IGemmKernel
    {
        int mr = TKernel.MR, nr = TKernel.NR, kc = o.Kc;
        float* tile = stackalloc float[mr * nr];
        for (int q = panelStart; q < panelEnd; q++)
        {
            int j0 = o.Jc + (q * nr);
            int cols = Math.Min(nr, o.N - j0);

            // The B micro-panel: in place (row stride ldb) or packed (row stride NR).
            float* bPanel;
            nint bps;
            if (o.DirectB && cols == nr)
            {
                bPanel = o.B + ((nint)o.Pc * o.Ldb) + j0;
                bps = o.Ldb;
            }
            else
            {
                bPanel = o.BPack + (o.DirectB ? 0 : (nint)q * kc * nr);
                bps = nr;
            }

            for (int r0 = 0; r0 < mcRows; r0 += mr)
            {
                int rows = Math.Min(mr, mcRows - r0);

                // The A micro-panel: in place (element (r, p) at r·ars + p·aps) or packed (ars = 1, aps = MR).
                float* aPanel;
                nint ars, aps;
                if (o.DirectA && rows == mr)
                {
                    int row = i0 + r0;
                    aPanel = o.TransA ? o.A + ((nint)o.Pc * o.Lda) + row : o.A + ((nint)row * o.Lda) + o.Pc;
                    ars = o.TransA ? 1 : o.Lda;
                    aps = o.TransA ? o.Lda : 1;
                }
                else
                {
                    aPanel = o.APack + (o.DirectA ? 0 : (nint)(r0 / mr) * kc * mr);
                    ars = 1;
                    aps = mr;
                }

                float* cTile = o.C + ((nint)(i0 + r0) * o.Ldc) + j0;
                bool narrow = cols <= nr / 2;
                if (rows == mr && cols == nr)
                {
                    TKernel.Run(kc, aPanel, ars, aps, bPanel, bps, cTile, o.Ldc, o.Alpha, o.Beta);
                }
                else if (narrow && rows == mr && cols == nr / 2)
                {
                    TKernel.RunNarrow(kc, aPanel, ars, aps, bPanel, bps, cTile, o.Ldc, o.Alpha, o.Beta);
                }
                else
                {
                    if (narrow)
                    {
                        TKernel.RunNarrow(kc, aPanel, ars, aps, bPanel, bps, tile, nr, 1f, 0f);
                    }
                    else
                    {
                        TKernel.Run(kc, aPanel, ars, aps, bPanel, bps, tile, nr, 1f, 0f);
                    }

                    float alpha = o.Alpha, beta = o.Beta;
                    for (int r = 0; r < rows; r++)
                    {
                        float* src = tile + (r * nr);
                        float* dst = cTile + ((nint)r * o.Ldc);
                        for (int j = 0; j < cols; j++)
                        {
                            dst[j] = beta == 0f ? alpha * src[j] : MathF.FusedMultiplyAdd(alpha, src[j], beta * dst[j]);
                        }
                    }
                }
            }
        }
    }

    /// <summary>Where the operands of one (pc, jc) block live and how to combine the result with C.</summary>
    private unsafe struct Operands
    {
        public float* A;
        public int Lda;
        public bool TransA;
        public bool DirectA;
        public float* APack;
        public float* B;
        public int Ldb;
        public bool DirectB;
        public float* BPack;
        public float* C;
        public int Ldc;
        public float Alpha;
        public float Beta;
        public int Pc;
        public int Kc;
        public int Jc;
        public int N;
    }
}
