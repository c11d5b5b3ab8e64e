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
internal static class Gemm
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

    /// <summary>
    /// Packs op(A)[i0:i0+rows, p0:p0+kc] as consecutive MR-row slabs (slab s at dst + s·kc·mr). For a transposed A
    /// the stored rows are walked in order (p outer) so the reads stream through memory.
    /// </summary>
    internal static unsafe void PackABlock(float* a, int lda, bool transA, int i0, int rows, int p0, int kc, int mr, float* dst)
    {
        int slabs = (rows + mr - 1) / mr;
        if (!transA)
        {
            for (int s = 0; s < slabs; s++)
            {
                PackA(a, lda, transA: false, i0 + (s * mr), Math.Min(mr, rows - (s * mr)), p0, kc, mr, dst + ((nint)s * kc * mr));
            }

            return;
        }

        bool vector8 = mr == 8 && Vector256.IsHardwareAccelerated;
        for (int p = 0; p < kc; p++)
        {
            float* src = a + ((nint)(p0 + p) * lda) + i0;
            for (int s = 0; s < slabs; s++)
            {
                float* d = dst + ((nint)s * kc * mr) + ((nint)p * mr);
                int r0 = s * mr, count = Math.Min(mr, rows - r0);
                if (vector8 && count == 8)
                {
                    Vector256.Store(Vector256.Load(src + r0), d);
                    continue;
                }

                int r = 0;
                for (; r < count; r++)
                {
                    d[r] = src[r0 + r];
                }

                for (; r < mr; r++)
                {
                    d[r] = 0f;
                }
            }
        }
    }

    /// <summary>
    /// Packs the micro-panels [panelStart, panelEnd) of op(B)[p0:p0+kc, jc:] (panel q at dst + q·kc·nr). For an
    /// untransposed B the stored rows are walked in order (p outer) so the reads stream through memory.
    /// </summary>
    internal static unsafe void PackBPanels(float* b, int ldb, bool transB, int p0, int kc, int jc, int panelStart, int panelEnd, int n, int nr, float* dst)
    {
        if (transB)
        {
            for (int q = panelStart; q < panelEnd; q++)
            {
                int j0 = jc + (q * nr);
                PackB(b, ldb, transB: true, p0, kc, j0, Math.Min(nr, n - j0), nr, dst + ((nint)q * kc * nr));
            }

            return;
        }

        for (int p = 0; p < kc; p++)
        {
            float* src = b + ((nint)(p0 + p) * ldb) + jc;
            for (int q = panelStart; q < panelEnd; q++)
            {
                float* d = dst + ((nint)q * kc * nr) + ((nint)p * nr);
                int j0 = q * nr, count = Math.Min(nr, n - jc - j0);
                if (count == nr)
                {
                    Buffer.MemoryCopy(src + j0, d, nr * sizeof(float), nr * sizeof(float));
                    continue;
                }

                int j = 0;
                for (; j < count; j++)
                {
                    d[j] = src[j0 + j];
                }

                for (; j < nr; j++)
                {
                    d[j] = 0f;
                }
            }
        }
    }

    /// <summary>Packs op(A)[r0:r0+rows, p0:p0+kc] as dst[p·mr + r], zero-padding rows up to mr.</summary>
    internal static unsafe void PackA(float* a, int lda, bool transA, int r0, int rows, int p0, int kc, int mr, float* dst)
    {
        if (transA)
        {
            // A is stored k×m: row p of the stored matrix holds op(A)[·, p] contiguously.
            if (rows == 8 && mr == 8 && Vector256.IsHardwareAccelerated)
            {
                for (int p = 0; p < kc; p++)
                {
                    Vector256.Store(Vector256.Load(a + ((nint)(p0 + p) * lda) + r0), dst + ((nint)p * 8));
                }

                return;
            }

            for (int p = 0; p < kc; p++)
            {
                float* src = a + ((nint)(p0 + p) * lda) + r0;
                float* d = dst + ((nint)p * mr);
                int r = 0;
                for (; r < rows; r++)
                {
                    d[r] = src[r];
                }

                for (; r < mr; r++)
                {
                    d[r] = 0f;
                }
            }

            return;
        }

        int pStart = 0;
        if (rows == 8 && mr == 8 && Transposer.IsAccelerated)
        {
            for (; pStart + 8 <= kc; pStart += 8)
            {
                Transposer.Transpose8x8(a + ((nint)r0 * lda) + p0 + pStart, lda, dst + ((nint)pStart * 8), 8);
            }
        }

        for (int r = 0; r < mr; r++)
        {
            float* src = a + ((nint)(r0 + r) * lda) + p0;
            if (r < rows)
            {
                for (int p = pStart; p < kc; p++)
                {
                    dst[((nint)p * mr) + r] = src[p];
                }
            }
            else
            {
                for (int p = pStart; p < kc; p++)
                {
                    dst[((nint)p * mr) + r] = 0f;
                }
            }
        }
    }

    /// <summary>Packs op(B)[p0:p0+kc, j0:j0+cols] as dst[p·nr + j], zero-padding columns up to nr.</summary>
    internal static unsafe void PackB(float* b, int ldb, bool transB, int p0, int kc, int j0, int cols, int nr, float* dst)
    {
        if (!transB)
        {
            for (int p = 0; p < kc; p++)
            {
                float* src = b + ((nint)(p0 + p) * ldb) + j0;
                float* d = dst + ((nint)p * nr);
                if (cols == nr)
                {
                    Buffer.MemoryCopy(src, d, nr * sizeof(float), nr * sizeof(float));
                }
                else
                {
                    int j = 0;
                    for (; j < cols; j++)
                    {
                        d[j] = src[j];
                    }

                    for (; j < nr; j++)
                    {
                        d[j] = 0f;
                    }
                }
            }

            return;
        }

        // B is stored n×k: op(B)[p, j] = b[j·ldb + p]; transpose 8×8 tiles where possible.
        int fullCols = Transposer.IsAccelerated ? cols / 8 * 8 : 0;
        int pFull = Transposer.IsAccelerated ? kc / 8 * 8 : 0;
        for (int j = 0; j < fullCols; j += 8)
        {
            float* src = b + ((nint)(j0 + j) * ldb) + p0;
            for (int p = 0; p < pFull; p += 8)
            {
                Transposer.Transpose8x8(src + p, ldb, dst + ((nint)p * nr) + j, nr);
            }
        }

        for (int j = 0; j < nr; j++)
        {
            bool inFullBlock = j < fullCols;
            float* src = b + ((nint)(j0 + j) * ldb) + p0;
            for (int p = inFullBlock ? pFull : 0; p < kc; p++)
            {
                dst[((nint)p * nr) + j] = j < cols ? src[p] : 0f;
            }
        }
    }
}

/// <summary>
/// A register-blocked GEMM micro-kernel: from panels a[r·ars + p·aps] and b[p·bps + j] (packed: ars = 1, aps = MR,
/// bps = NR; or read in place from a suitably laid out operand) it computes the tile
/// acc[r, j] = Σ_p a·b (one FMA chain per element, p ascending, starting from zero) and stores
/// <c>c = alpha·acc</c> when beta is zero, otherwise <c>c = fma(alpha, acc, beta·c)</c>.
/// </summary>
internal interface IGemmKernel
{
    /// <summary>Tile rows.</summary>
    static abstract int MR { get; }

    /// <summary>Tile columns.</summary>
    static abstract int NR { get; }

    /// <summary>Computes and stores one MR×NR tile.</summary>
    static abstract unsafe void Run(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta);

    /// <summary>
    /// Computes and stores the left MR×(NR/2) half of a tile (B is still read with row stride bps); used for the
    /// last, narrow panel so that little work is spent on zero padding.
    /// </summary>
    static abstract unsafe void RunNarrow(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta);
}

/// <summary>8×32 tile: sixteen Vector512 accumulators.</summary>
internal readonly struct Kernel512 : IGemmKernel
{
    public static int MR => 8;

    public static int NR => 32;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void Run(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector512<float> c20 = default, c21 = default, c30 = default, c31 = default;
        Vector512<float> c40 = default, c41 = default, c50 = default, c51 = default;
        Vector512<float> c60 = default, c61 = default, c70 = default, c71 = default;
        nint o1 = 1 * ars, o2 = 2 * ars, o3 = 3 * ars, o4 = 4 * ars, o5 = 5 * ars, o6 = 6 * ars, o7 = 7 * ars;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.Load(b);
            Vector512<float> b1 = Vector512.Load(b + 16);
            Vector512<float> x = Vector512.Create(a[0]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a[o1]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a[o2]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a[o3]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a[o4]);
            c40 = Vector512.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a[o5]);
            c50 = Vector512.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(a[o6]);
            c60 = Vector512.FusedMultiplyAdd(x, b0, c60);
            c61 = Vector512.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(a[o7]);
            c70 = Vector512.FusedMultiplyAdd(x, b0, c70);
            c71 = Vector512.FusedMultiplyAdd(x, b1, c71);
            a += aps;
            b += bps;
        }

        Store(c, c00, c01, alpha, beta);
        Store(c + ldc, c10, c11, alpha, beta);
        Store(c + (2 * ldc), c20, c21, alpha, beta);
        Store(c + (3 * ldc), c30, c31, alpha, beta);
        Store(c + (4 * ldc), c40, c41, alpha, beta);
        Store(c + (5 * ldc), c50, c51, alpha, beta);
        Store(c + (6 * ldc), c60, c61, alpha, beta);
        Store(c + (7 * ldc), c70, c71, alpha, beta);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store(float* c, Vector512<float> v0, Vector512<float> v1, float alpha, float beta)
    {
        var va = Vector512.Create(alpha);
        if (beta == 0f)
        {
            Vector512.Store(v0 * va, c);
            Vector512.Store(v1 * va, c + 16);
        }
        else
        {
            var vb = Vector512.Create(beta);
            Vector512.Store(Vector512.FusedMultiplyAdd(va, v0, vb * Vector512.Load(c)), c);
            Vector512.Store(Vector512.FusedMultiplyAdd(va, v1, vb * Vector512.Load(c + 16)), c + 16);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void RunNarrow(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta)
    {
        Vector512<float> c0 = default;
        Vector512<float> c1 = default;
        Vector512<float> c2 = default;
        Vector512<float> c3 = default;
        Vector512<float> c4 = default;
        Vector512<float> c5 = default;
        Vector512<float> c6 = default;
        Vector512<float> c7 = default;
        nint o1 = 1 * ars, o2 = 2 * ars, o3 = 3 * ars, o4 = 4 * ars, o5 = 5 * ars, o6 = 6 * ars, o7 = 7 * ars;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.Load(b);
            c0 = Vector512.FusedMultiplyAdd(Vector512.Create(a[0]), b0, c0);
            c1 = Vector512.FusedMultiplyAdd(Vector512.Create(a[o1]), b0, c1);
            c2 = Vector512.FusedMultiplyAdd(Vector512.Create(a[o2]), b0, c2);
            c3 = Vector512.FusedMultiplyAdd(Vector512.Create(a[o3]), b0, c3);
            c4 = Vector512.FusedMultiplyAdd(Vector512.Create(a[o4]), b0, c4);
            c5 = Vector512.FusedMultiplyAdd(Vector512.Create(a[o5]), b0, c5);
            c6 = Vector512.FusedMultiplyAdd(Vector512.Create(a[o6]), b0, c6);
            c7 = Vector512.FusedMultiplyAdd(Vector512.Create(a[o7]), b0, c7);
            a += aps;
            b += bps;
        }

        var va = Vector512.Create(alpha);
        var vb = Vector512.Create(beta);
        StoreOne(c, c0, va, vb, beta);
        StoreOne(c + ldc, c1, va, vb, beta);
        StoreOne(c + (2 * ldc), c2, va, vb, beta);
        StoreOne(c + (3 * ldc), c3, va, vb, beta);
        StoreOne(c + (4 * ldc), c4, va, vb, beta);
        StoreOne(c + (5 * ldc), c5, va, vb, beta);
        StoreOne(c + (6 * ldc), c6, va, vb, beta);
        StoreOne(c + (7 * ldc), c7, va, vb, beta);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void StoreOne(float* c, Vector512<float> v, Vector512<float> va, Vector512<float> vb, float beta)
    {
        Vector512.Store(beta == 0f ? v * va : Vector512.FusedMultiplyAdd(va, v, vb * Vector512.Load(c)), c);
    }
}

/// <summary>6×16 tile: twelve Vector256 accumulators (fits the sixteen AVX2 registers).</summary>
internal readonly struct Kernel256 : IGemmKernel
{
    public static int MR => 6;

    public static int NR => 16;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void Run(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector256<float> c20 = default, c21 = default, c30 = default, c31 = default;
        Vector256<float> c40 = default, c41 = default, c50 = default, c51 = default;
        nint o1 = 1 * ars, o2 = 2 * ars, o3 = 3 * ars, o4 = 4 * ars, o5 = 5 * ars;
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.Load(b);
            Vector256<float> b1 = Vector256.Load(b + 8);
            Vector256<float> x = Vector256.Create(a[0]);
            c00 = Vector256.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
            x = Vector256.Create(a[o1]);
            c10 = Vector256.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
            x = Vector256.Create(a[o2]);
            c20 = Vector256.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(x, b1, c21);
            x = Vector256.Create(a[o3]);
            c30 = Vector256.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(x, b1, c31);
            x = Vector256.Create(a[o4]);
            c40 = Vector256.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(x, b1, c41);
            x = Vector256.Create(a[o5]);
            c50 = Vector256.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(x, b1, c51);
            a += aps;
            b += bps;
        }

        Store(c, c00, c01, alpha, beta);
        Store(c + ldc, c10, c11, alpha, beta);
        Store(c + (2 * ldc), c20, c21, alpha, beta);
        Store(c + (3 * ldc), c30, c31, alpha, beta);
        Store(c + (4 * ldc), c40, c41, alpha, beta);
        Store(c + (5 * ldc), c50, c51, alpha, beta);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store(float* c, Vector256<float> v0, Vector256<float> v1, float alpha, float beta)
    {
        var va = Vector256.Create(alpha);
        if (beta == 0f)
        {
            Vector256.Store(v0 * va, c);
            Vector256.Store(v1 * va, c + 8);
        }
        else
        {
            var vb = Vector256.Create(beta);
            Vector256.Store(Vector256.FusedMultiplyAdd(va, v0, vb * Vector256.Load(c)), c);
            Vector256.Store(Vector256.FusedMultiplyAdd(va, v1, vb * Vector256.Load(c + 8)), c + 8);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void RunNarrow(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta)
    {
        Vector256<float> c0 = default;
        Vector256<float> c1 = default;
        Vector256<float> c2 = default;
        Vector256<float> c3 = default;
        Vector256<float> c4 = default;
        Vector256<float> c5 = default;
        nint o1 = 1 * ars, o2 = 2 * ars, o3 = 3 * ars, o4 = 4 * ars, o5 = 5 * ars;
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.Load(b);
            c0 = Vector256.FusedMultiplyAdd(Vector256.Create(a[0]), b0, c0);
            c1 = Vector256.FusedMultiplyAdd(Vector256.Create(a[o1]), b0, c1);
            c2 = Vector256.FusedMultiplyAdd(Vector256.Create(a[o2]), b0, c2);
            c3 = Vector256.FusedMultiplyAdd(Vector256.Create(a[o3]), b0, c3);
            c4 = Vector256.FusedMultiplyAdd(Vector256.Create(a[o4]), b0, c4);
            c5 = Vector256.FusedMultiplyAdd(Vector256.Create(a[o5]), b0, c5);
            a += aps;
            b += bps;
        }

        var va = Vector256.Create(alpha);
        var vb = Vector256.Create(beta);
        StoreOne(c, c0, va, vb, beta);
        StoreOne(c + ldc, c1, va, vb, beta);
        StoreOne(c + (2 * ldc), c2, va, vb, beta);
        StoreOne(c + (3 * ldc), c3, va, vb, beta);
        StoreOne(c + (4 * ldc), c4, va, vb, beta);
        StoreOne(c + (5 * ldc), c5, va, vb, beta);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void StoreOne(float* c, Vector256<float> v, Vector256<float> va, Vector256<float> vb, float beta)
    {
        Vector256.Store(beta == 0f ? v * va : Vector256.FusedMultiplyAdd(va, v, vb * Vector256.Load(c)), c);
    }
}

/// <summary>6×8 tile: twelve Vector128 accumulators.</summary>
internal readonly struct Kernel128 : IGemmKernel
{
    public static int MR => 6;

    public static int NR => 8;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void Run(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta)
    {
        Vector128<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector128<float> c20 = default, c21 = default, c30 = default, c31 = default;
        Vector128<float> c40 = default, c41 = default, c50 = default, c51 = default;
        nint o1 = 1 * ars, o2 = 2 * ars, o3 = 3 * ars, o4 = 4 * ars, o5 = 5 * ars;
        for (int p = 0; p < kc; p++)
        {
            Vector128<float> b0 = Vector128.Load(b);
            Vector128<float> b1 = Vector128.Load(b + 4);
            Vector128<float> x = Vector128.Create(a[0]);
            c00 = Vector128.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector128.FusedMultiplyAdd(x, b1, c01);
            x = Vector128.Create(a[o1]);
            c10 = Vector128.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector128.FusedMultiplyAdd(x, b1, c11);
            x = Vector128.Create(a[o2]);
            c20 = Vector128.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector128.FusedMultiplyAdd(x, b1, c21);
            x = Vector128.Create(a[o3]);
            c30 = Vector128.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector128.FusedMultiplyAdd(x, b1, c31);
            x = Vector128.Create(a[o4]);
            c40 = Vector128.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector128.FusedMultiplyAdd(x, b1, c41);
            x = Vector128.Create(a[o5]);
            c50 = Vector128.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector128.FusedMultiplyAdd(x, b1, c51);
            a += aps;
            b += bps;
        }

        Store(c, c00, c01, alpha, beta);
        Store(c + ldc, c10, c11, alpha, beta);
        Store(c + (2 * ldc), c20, c21, alpha, beta);
        Store(c + (3 * ldc), c30, c31, alpha, beta);
        Store(c + (4 * ldc), c40, c41, alpha, beta);
        Store(c + (5 * ldc), c50, c51, alpha, beta);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store(float* c, Vector128<float> v0, Vector128<float> v1, float alpha, float beta)
    {
        var va = Vector128.Create(alpha);
        if (beta == 0f)
        {
            Vector128.Store(v0 * va, c);
            Vector128.Store(v1 * va, c + 4);
        }
        else
        {
            var vb = Vector128.Create(beta);
            Vector128.Store(Vector128.FusedMultiplyAdd(va, v0, vb * Vector128.Load(c)), c);
            Vector128.Store(Vector128.FusedMultiplyAdd(va, v1, vb * Vector128.Load(c + 4)), c + 4);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static unsafe void RunNarrow(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta)
    {
        Vector128<float> c0 = default;
        Vector128<float> c1 = default;
        Vector128<float> c2 = default;
        Vector128<float> c3 = default;
        Vector128<float> c4 = default;
        Vector128<float> c5 = default;
        nint o1 = 1 * ars, o2 = 2 * ars, o3 = 3 * ars, o4 = 4 * ars, o5 = 5 * ars;
        for (int p = 0; p < kc; p++)
        {
            Vector128<float> b0 = Vector128.Load(b);
            c0 = Vector128.FusedMultiplyAdd(Vector128.Create(a[0]), b0, c0);
            c1 = Vector128.FusedMultiplyAdd(Vector128.Create(a[o1]), b0, c1);
            c2 = Vector128.FusedMultiplyAdd(Vector128.Create(a[o2]), b0, c2);
            c3 = Vector128.FusedMultiplyAdd(Vector128.Create(a[o3]), b0, c3);
            c4 = Vector128.FusedMultiplyAdd(Vector128.Create(a[o4]), b0, c4);
            c5 = Vector128.FusedMultiplyAdd(Vector128.Create(a[o5]), b0, c5);
            a += aps;
            b += bps;
        }

        var va = Vector128.Create(alpha);
        var vb = Vector128.Create(beta);
        StoreOne(c, c0, va, vb, beta);
        StoreOne(c + ldc, c1, va, vb, beta);
        StoreOne(c + (2 * ldc), c2, va, vb, beta);
        StoreOne(c + (3 * ldc), c3, va, vb, beta);
        StoreOne(c + (4 * ldc), c4, va, vb, beta);
        StoreOne(c + (5 * ldc), c5, va, vb, beta);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void StoreOne(float* c, Vector128<float> v, Vector128<float> va, Vector128<float> vb, float beta)
    {
        Vector128.Store(beta == 0f ? v * va : Vector128.FusedMultiplyAdd(va, v, vb * Vector128.Load(c)), c);
    }
}

/// <summary>4×4 scalar tile: the portable fallback (same FMA chain as the vector kernels).</summary>
internal readonly struct KernelScalar : IGemmKernel
{
    public static int MR => 4;

    public static int NR => 4;

    public static unsafe void Run(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta)
    {
        float* acc = stackalloc float[16];
        new Span<float>(acc, 16).Clear();
        for (int p = 0; p < kc; p++)
        {
            for (int r = 0; r < 4; r++)
            {
                float x = a[r * ars];
                for (int j = 0; j < 4; j++)
                {
                    acc[(r * 4) + j] = MathF.FusedMultiplyAdd(x, b[j], acc[(r * 4) + j]);
                }
            }

            a += aps;
            b += bps;
        }

        for (int r = 0; r < 4; r++)
        {
            float* row = c + (r * ldc);
            for (int j = 0; j < 4; j++)
            {
                float v = acc[(r * 4) + j];
                row[j] = beta == 0f ? alpha * v : MathF.FusedMultiplyAdd(alpha, v, beta * row[j]);
            }
        }
    }

    public static unsafe void RunNarrow(int kc, float* a, nint ars, nint aps, float* b, nint bps, float* c, nint ldc, float alpha, float beta)
    {
        float* acc = stackalloc float[8];
        new Span<float>(acc, 8).Clear();
        for (int p = 0; p < kc; p++)
        {
            for (int r = 0; r < 4; r++)
            {
                acc[(r * 2) + 0] = MathF.FusedMultiplyAdd(a[r * ars], b[0], acc[(r * 2) + 0]);
                acc[(r * 2) + 1] = MathF.FusedMultiplyAdd(a[r * ars], b[1], acc[(r * 2) + 1]);
            }

            a += aps;
            b += bps;
        }

        for (int r = 0; r < 4; r++)
        {
            float* row = c + (r * ldc);
            for (int j = 0; j < 2; j++)
            {
                float v = acc[(r * 2) + j];
                row[j] = beta == 0f ? alpha * v : MathF.FusedMultiplyAdd(alpha, v, beta * row[j]);
            }
        }
    }
}
