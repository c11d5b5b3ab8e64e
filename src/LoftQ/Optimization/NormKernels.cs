using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace LoftQNet.Optimization;

/// <summary>Squared norms accumulated in double precision, SIMD (Vector512 → 256 → 128 → scalar).</summary>
internal static class NormKernels
{
    /// <summary>Σ (a[i] − b[i])², accumulated in double.</summary>
    public static double DifferenceSquared(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length)
        {
            throw new ArgumentException($"Spans differ in length: {a.Length} and {b.Length}.", nameof(b));
        }

        if (Vector512.IsHardwareAccelerated && a.Length >= Vector512<float>.Count)
        {
            return DifferenceSquared512(a, b);
        }

        if (Vector256.IsHardwareAccelerated && a.Length >= Vector256<float>.Count)
        {
            return DifferenceSquared256(a, b);
        }

        if (Vector128.IsHardwareAccelerated && a.Length >= Vector128<float>.Count)
        {
            return DifferenceSquared128(a, b);
        }

        return DifferenceSquaredScalar(a, b, 0);
    }

    /// <summary>Σ a[i]², accumulated in double.</summary>
    public static double SumOfSquares(ReadOnlySpan<float> a)
    {
        if (Vector256.IsHardwareAccelerated && a.Length >= Vector256<float>.Count)
        {
            ref float ra = ref MemoryMarshal.GetReference(a);
            Vector256<double> acc0 = Vector256<double>.Zero, acc1 = Vector256<double>.Zero;
            int i = 0;
            for (; i <= a.Length - Vector256<float>.Count; i += Vector256<float>.Count)
            {
                Vector256<float> d = Vector256.LoadUnsafe(ref ra, (nuint)i);
                (Vector256<double> lo, Vector256<double> hi) = Vector256.Widen(d);
                acc0 = Vector256.FusedMultiplyAdd(lo, lo, acc0);
                acc1 = Vector256.FusedMultiplyAdd(hi, hi, acc1);
            }

            double sum = Vector256.Sum(acc0 + acc1);
            for (; i < a.Length; i++)
            {
                sum += (double)a[i] * a[i];
            }

            return sum;
        }

        double total = 0;
        foreach (float v in a)
        {
            total += (double)v * v;
        }

        return total;
    }

    internal static double DifferenceSquaredScalar(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int start)
    {
        double sum = 0;
        for (int i = start; i < a.Length; i++)
        {
            double d = a[i] - b[i]; // float difference, as the vector paths compute it
            sum += d * d;
        }

        return sum;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static double DifferenceSquared512(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        ref float ra = ref MemoryMarshal.GetReference(a);
        ref float rb = ref MemoryMarshal.GetReference(b);
        Vector512<double> acc0 = Vector512<double>.Zero, acc1 = Vector512<double>.Zero;
        int i = 0;
        for (; i <= a.Length - Vector512<float>.Count; i += Vector512<float>.Count)
        {
            Vector512<float> d = Vector512.LoadUnsafe(ref ra, (nuint)i) - Vector512.LoadUnsafe(ref rb, (nuint)i);
            (Vector512<double> lo, Vector512<double> hi) = Vector512.Widen(d);
            acc0 = Vector512.FusedMultiplyAdd(lo, lo, acc0);
            acc1 = Vector512.FusedMultiplyAdd(hi, hi, acc1);
        }

        return Vector512.Sum(acc0 + acc1) + DifferenceSquaredScalar(a, b, i);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static double DifferenceSquared256(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        ref float ra = ref MemoryMarshal.GetReference(a);
        ref float rb = ref MemoryMarshal.GetReference(b);
        Vector256<double> acc0 = Vector256<double>.Zero, acc1 = Vector256<double>.Zero;
        int i = 0;
        for (; i <= a.Length - Vector256<float>.Count; i += Vector256<float>.Count)
        {
            Vector256<float> d = Vector256.LoadUnsafe(ref ra, (nuint)i) - Vector256.LoadUnsafe(ref rb, (nuint)i);
            (Vector256<double> lo, Vector256<double> hi) = Vector256.Widen(d);
            acc0 = Vector256.FusedMultiplyAdd(lo, lo, acc0);
            acc1 = Vector256.FusedMultiplyAdd(hi, hi, acc1);
        }

        return Vector256.Sum(acc0 + acc1) + DifferenceSquaredScalar(a, b, i);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static double DifferenceSquared128(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        ref float ra = ref MemoryMarshal.GetReference(a);
        ref float rb = ref MemoryMarshal.GetReference(b);
        Vector128<double> acc0 = Vector128<double>.Zero, acc1 = Vector128<double>.Zero;
        int i = 0;
        for (; i <= a.Length - Vector128<float>.Count; i += Vector128<float>.Count)
        {
            Vector128<float> d = Vector128.LoadUnsafe(ref ra, (nuint)i) - Vector128.LoadUnsafe(ref rb, (nuint)i);
            (Vector128<double> lo, Vector128<double> hi) = Vector128.Widen(d);
            acc0 = Vector128.FusedMultiplyAdd(lo, lo, acc0);
            acc1 = Vector128.FusedMultiplyAdd(hi, hi, acc1);
        }

        return Vector128.Sum(acc0 + acc1) + DifferenceSquaredScalar(a, b, i);
    }
}
