using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace LoftQNet.Numerics;

/// <summary>Small kernels on flat row-major buffers shared by the numeric code.</summary>
internal static class MatrixKernels
{
    private const int TransposeTile = 32;

    /// <summary>Writes the transpose of a rows×cols source into a cols×rows destination.</summary>
    /// <exception cref="ArgumentException">A span is shorter than rows × cols or the two overlap.</exception>
    public static unsafe void Transpose(ReadOnlySpan<float> source, int rows, int cols, Span<float> destination)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        long length = (long)rows * cols;
        if (source.Length < length)
        {
            throw new ArgumentException($"The source holds {source.Length} values, a {rows}x{cols} matrix needs {length}.", nameof(source));
        }

        if (destination.Length < length)
        {
            throw new ArgumentException($"The destination holds {destination.Length} values, a {cols}x{rows} matrix needs {length}.", nameof(destination));
        }

        if (length == 0)
        {
            return;
        }

        if (source[..(int)length].Overlaps(destination[..(int)length]))
        {
            throw new ArgumentException("Transpose cannot run in place: the source and destination overlap.", nameof(destination));
        }

        fixed (float* src = source)
        fixed (float* dst = destination)
        {
            TransposeCore(src, rows, cols, dst, Transposer.IsAccelerated);
        }
    }

    /// <summary>The blocked transpose; <paramref name="simd"/> = false forces the scalar path (tests).</summary>
    internal static unsafe void TransposeCore(float* src, int rows, int cols, float* dst, bool simd)
    {
        for (int i0 = 0; i0 < rows; i0 += TransposeTile)
        {
            int i1 = Math.Min(i0 + TransposeTile, rows);
            for (int j0 = 0; j0 < cols; j0 += TransposeTile)
            {
                int j1 = Math.Min(j0 + TransposeTile, cols);
                int iFull = simd ? i0 + ((i1 - i0) / 8 * 8) : i0;
                int jFull = simd ? j0 + ((j1 - j0) / 8 * 8) : j0;
                for (int i = i0; i < iFull; i += 8)
                {
                    for (int j = j0; j < jFull; j += 8)
                    {
                        Transposer.Transpose8x8(src + ((nint)i * cols) + j, cols, dst + ((nint)j * rows) + i, rows);
                    }
                }

                // Edges: the rows below the 8-aligned part, and the columns right of it.
                for (int i = i0; i < i1; i++)
                {
                    int jStart = i < iFull ? jFull : j0;
                    float* s = src + ((nint)i * cols);
                    for (int j = jStart; j < j1; j++)
                    {
                        dst[((nint)j * rows) + i] = s[j];
                    }
                }
            }
        }
    }

    /// <summary>√Σx², accumulated in double precision.</summary>
    public static double FrobeniusNorm(ReadOnlySpan<float> values) => Math.Sqrt(SumOfSquares(values));

    /// <summary>Σx² in double precision, with the widest accelerated vectors.</summary>
    internal static double SumOfSquares(ReadOnlySpan<float> values) =>
        SumOfSquares(values, Vector512.IsHardwareAccelerated ? 512 : Vector256.IsHardwareAccelerated ? 256 : 0);

    /// <summary>Σx² in double precision using vectors of <paramref name="width"/> bits (512, 256, or 0 for scalar; tests force the fallbacks).</summary>
    internal static double SumOfSquares(ReadOnlySpan<float> values, int width)
    {
        ref float x = ref MemoryMarshal.GetReference(values);
        int n = values.Length, i = 0;
        double sum = 0;
        if (width == 512 && Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<double> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i + 32 <= n; i += 32)
            {
                Vector512<float> v = Vector512.LoadUnsafe(ref x, (nuint)i);
                Vector512<float> w = Vector512.LoadUnsafe(ref x, (nuint)(i + 16));
                (Vector512<double> lo, Vector512<double> hi) = Vector512.Widen(v);
                s0 = Vector512.FusedMultiplyAdd(lo, lo, s0);
                s1 = Vector512.FusedMultiplyAdd(hi, hi, s1);
                (lo, hi) = Vector512.Widen(w);
                s2 = Vector512.FusedMultiplyAdd(lo, lo, s2);
                s3 = Vector512.FusedMultiplyAdd(hi, hi, s3);
            }

            sum = Vector512.Sum((s0 + s1) + (s2 + s3));
        }
        else if (width >= 256 && Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<double> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i + 16 <= n; i += 16)
            {
                Vector256<float> v = Vector256.LoadUnsafe(ref x, (nuint)i);
                Vector256<float> w = Vector256.LoadUnsafe(ref x, (nuint)(i + 8));
                (Vector256<double> lo, Vector256<double> hi) = Vector256.Widen(v);
                s0 = Vector256.FusedMultiplyAdd(lo, lo, s0);
                s1 = Vector256.FusedMultiplyAdd(hi, hi, s1);
                (lo, hi) = Vector256.Widen(w);
                s2 = Vector256.FusedMultiplyAdd(lo, lo, s2);
                s3 = Vector256.FusedMultiplyAdd(hi, hi, s3);
            }

            sum = Vector256.Sum((s0 + s1) + (s2 + s3));
        }

        for (; i < n; i++)
        {
            double v = Unsafe.Add(ref x, i);
            sum += v * v;
        }

        return sum;
    }

    /// <summary><c>destination[i] -= source[i]</c>.</summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public static void SubtractInPlace(Span<float> destination, ReadOnlySpan<float> source)
    {
        CheckSameLength(destination.Length, source.Length, nameof(source));
        TensorPrimitives.Subtract(destination, source, destination);
    }

    /// <summary><c>destination[i] += alpha · source[i]</c> (fused multiply-add).</summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public static void AddScaled(Span<float> destination, float alpha, ReadOnlySpan<float> source)
    {
        CheckSameLength(destination.Length, source.Length, nameof(source));
        TensorPrimitives.FusedMultiplyAdd(source, alpha, destination, destination);
    }

    /// <summary><c>destination[i] = a[i] − b[i]</c>.</summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public static void Subtract(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> destination)
    {
        CheckSameLength(a.Length, b.Length, nameof(b));
        CheckSameLength(a.Length, destination.Length, nameof(destination));
        TensorPrimitives.Subtract(a, b, destination);
    }

    /// <summary>Σ (a[i] − b[i])², differences and sum in double precision (for ‖A − B‖_F without a temporary).</summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public static double SquaredDistance(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        CheckSameLength(a.Length, b.Length, nameof(b));
        ref float x = ref MemoryMarshal.GetReference(a);
        ref float y = ref MemoryMarshal.GetReference(b);
        int n = a.Length, i = 0;
        double sum = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<double> s0 = default, s1 = default;
            for (; i + 8 <= n; i += 8)
            {
                (Vector256<double> xl, Vector256<double> xh) = Vector256.Widen(Vector256.LoadUnsafe(ref x, (nuint)i));
                (Vector256<double> yl, Vector256<double> yh) = Vector256.Widen(Vector256.LoadUnsafe(ref y, (nuint)i));
                Vector256<double> dl = xl - yl, dh = xh - yh;
                s0 = Vector256.FusedMultiplyAdd(dl, dl, s0);
                s1 = Vector256.FusedMultiplyAdd(dh, dh, s1);
            }

            sum = Vector256.Sum(s0 + s1);
        }

        for (; i < n; i++)
        {
            double d = (double)Unsafe.Add(ref x, i) - Unsafe.Add(ref y, i);
            sum += d * d;
        }

        return sum;
    }

    private static void CheckSameLength(int expected, int actual, string name)
    {
        if (expected != actual)
        {
            throw new ArgumentException($"Length mismatch: expected {expected} elements, got {actual}.", name);
        }
    }
}

/// <summary>In-register 8×8 transposes (AVX) used by the transpose kernel and GEMM packing.</summary>
internal static class Transposer
{
    /// <summary>Whether <see cref="Transpose8x8"/> runs with AVX.</summary>
    public static bool IsAccelerated => Avx.IsSupported;

    /// <summary>dst[c·dstStride + r] = src[r·srcStride + c] for r, c in [0, 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void Transpose8x8(float* src, nint srcStride, float* dst, nint dstStride)
    {
        if (!Avx.IsSupported)
        {
            for (int r = 0; r < 8; r++)
            {
                for (int c = 0; c < 8; c++)
                {
                    dst[(c * dstStride) + r] = src[(r * srcStride) + c];
                }
            }

            return;
        }

        Vector256<float> r0 = Avx.LoadVector256(src);
        Vector256<float> r1 = Avx.LoadVector256(src + srcStride);
        Vector256<float> r2 = Avx.LoadVector256(src + (2 * srcStride));
        Vector256<float> r3 = Avx.LoadVector256(src + (3 * srcStride));
        Vector256<float> r4 = Avx.LoadVector256(src + (4 * srcStride));
        Vector256<float> r5 = Avx.LoadVector256(src + (5 * srcStride));
        Vector256<float> r6 = Avx.LoadVector256(src + (6 * srcStride));
        Vector256<float> r7 = Avx.LoadVector256(src + (7 * srcStride));

        Vector256<float> t0 = Avx.UnpackLow(r0, r1);
        Vector256<float> t1 = Avx.UnpackHigh(r0, r1);
        Vector256<float> t2 = Avx.UnpackLow(r2, r3);
        Vector256<float> t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5);
        Vector256<float> t5 = Avx.UnpackHigh(r4, r5);
        Vector256<float> t6 = Avx.UnpackLow(r6, r7);
        Vector256<float> t7 = Avx.UnpackHigh(r6, r7);

        Vector256<float> u0 = Avx.Shuffle(t0, t2, 0x44);
        Vector256<float> u1 = Avx.Shuffle(t0, t2, 0xEE);
        Vector256<float> u2 = Avx.Shuffle(t1, t3, 0x44);
        Vector256<float> u3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> u4 = Avx.Shuffle(t4, t6, 0x44);
        Vector256<float> u5 = Avx.Shuffle(t4, t6, 0xEE);
        Vector256<float> u6 = Avx.Shuffle(t5, t7, 0x44);
        Vector256<float> u7 = Avx.Shuffle(t5, t7, 0xEE);

        Avx.Store(dst, Avx.Permute2x128(u0, u4, 0x20));
        Avx.Store(dst + dstStride, Avx.Permute2x128(u1, u5, 0x20));
        Avx.Store(dst + (2 * dstStride), Avx.Permute2x128(u2, u6, 0x20));
        Avx.Store(dst + (3 * dstStride), Avx.Permute2x128(u3, u7, 0x20));
        Avx.Store(dst + (4 * dstStride), Avx.Permute2x128(u0, u4, 0x31));
        Avx.Store(dst + (5 * dstStride), Avx.Permute2x128(u1, u5, 0x31));
        Avx.Store(dst + (6 * dstStride), Avx.Permute2x128(u2, u6, 0x31));
        Avx.Store(dst + (7 * dstStride), Avx.Permute2x128(u3, u7, 0x31));
    }
}
