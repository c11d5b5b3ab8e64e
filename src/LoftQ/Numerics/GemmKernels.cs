using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace LoftQNet.Numerics;

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
