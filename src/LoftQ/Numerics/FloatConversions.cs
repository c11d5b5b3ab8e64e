using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace LoftQNet.Numerics;

/// <summary>
/// Conversions between <see cref="float"/> and the 16-bit floating-point formats stored in model files:
/// bfloat16 (as its raw <see cref="ushort"/> bit pattern) and IEEE 754 binary16 (<see cref="Half"/>).
/// Narrowing conversions round to nearest, ties to even; NaN stays NaN (quiet) and ±∞ is preserved.
/// </summary>
internal static class FloatConversions
{
    /// <summary>Widens bfloat16 bit patterns to <see cref="float"/> (exact: bfloat16 is the top half of a float).</summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public static void BFloat16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        CheckLengths(source.Length, destination.Length, nameof(destination));
        BFloat16ToSingleCore(source, destination, 512);
    }

    /// <summary>The kernel behind the public overload; <paramref name="maxVectorBits"/> (512, 256, 128 or 0) caps the SIMD width so tests can exercise every fallback.</summary>
    internal static void BFloat16ToSingleCore(ReadOnlySpan<ushort> source, Span<float> destination, int maxVectorBits)
    {
        ref ushort src = ref MemoryMarshal.GetReference(source);
        ref uint dst = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination));
        int n = source.Length;
        int i = 0;
        if (maxVectorBits >= 512 && Vector512.IsHardwareAccelerated && n >= Vector512<ushort>.Count)
        {
            for (; i <= n - Vector512<ushort>.Count; i += Vector512<ushort>.Count)
            {
                (Vector512<uint> lo, Vector512<uint> hi) = Vector512.Widen(Vector512.LoadUnsafe(ref src, (nuint)i));
                (lo << 16).StoreUnsafe(ref dst, (nuint)i);
                (hi << 16).StoreUnsafe(ref dst, (nuint)(i + Vector512<uint>.Count));
            }
        }
        else if (maxVectorBits >= 256 && Vector256.IsHardwareAccelerated && n >= Vector256<ushort>.Count)
        {
            for (; i <= n - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
            {
                (Vector256<uint> lo, Vector256<uint> hi) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
                (lo << 16).StoreUnsafe(ref dst, (nuint)i);
                (hi << 16).StoreUnsafe(ref dst, (nuint)(i + Vector256<uint>.Count));
            }
        }
        else if (maxVectorBits >= 128 && Vector128.IsHardwareAccelerated && n >= Vector128<ushort>.Count)
        {
            for (; i <= n - Vector128<ushort>.Count; i += Vector128<ushort>.Count)
            {
                (Vector128<uint> lo, Vector128<uint> hi) = Vector128.Widen(Vector128.LoadUnsafe(ref src, (nuint)i));
                (lo << 16).StoreUnsafe(ref dst, (nuint)i);
                (hi << 16).StoreUnsafe(ref dst, (nuint)(i + Vector128<uint>.Count));
            }
        }

        for (; i < n; i++)
        {
            Unsafe.Add(ref dst, i) = (uint)Unsafe.Add(ref src, i) << 16;
        }
    }

    /// <summary>
    /// Narrows <see cref="float"/> values to bfloat16 bit patterns, rounding to nearest with ties to even.
    /// NaN becomes a quiet NaN with the same sign and top payload bits; ±∞ stays ±∞; finite values beyond the
    /// bfloat16 range round to ±∞ as IEEE rounding prescribes.
    /// </summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public static void SingleToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        CheckLengths(source.Length, destination.Length, nameof(destination));
        SingleToBFloat16Core(source, destination, 512);
    }

    /// <summary>The kernel behind the public overload; <paramref name="maxVectorBits"/> (512, 256, 128 or 0) caps the SIMD width so tests can exercise every fallback.</summary>
    internal static void SingleToBFloat16Core(ReadOnlySpan<float> source, Span<ushort> destination, int maxVectorBits)
    {
        ref uint src = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source));
        ref ushort dst = ref MemoryMarshal.GetReference(destination);
        int n = source.Length;
        int i = 0;
        if (maxVectorBits >= 512 && Vector512.IsHardwareAccelerated && n >= Vector512<ushort>.Count)
        {
            for (; i <= n - Vector512<ushort>.Count; i += Vector512<ushort>.Count)
            {
                Vector512<uint> lo = RoundToBFloat16(Vector512.LoadUnsafe(ref src, (nuint)i));
                Vector512<uint> hi = RoundToBFloat16(Vector512.LoadUnsafe(ref src, (nuint)(i + Vector512<uint>.Count)));
                Vector512.Narrow(lo, hi).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (maxVectorBits >= 256 && Vector256.IsHardwareAccelerated && n >= Vector256<ushort>.Count)
        {
            for (; i <= n - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
            {
                Vector256<uint> lo = RoundToBFloat16(Vector256.LoadUnsafe(ref src, (nuint)i));
                Vector256<uint> hi = RoundToBFloat16(Vector256.LoadUnsafe(ref src, (nuint)(i + Vector256<uint>.Count)));
                Vector256.Narrow(lo, hi).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (maxVectorBits >= 128 && Vector128.IsHardwareAccelerated && n >= Vector128<ushort>.Count)
        {
            for (; i <= n - Vector128<ushort>.Count; i += Vector128<ushort>.Count)
            {
                Vector128<uint> lo = RoundToBFloat16(Vector128.LoadUnsafe(ref src, (nuint)i));
                Vector128<uint> hi = RoundToBFloat16(Vector128.LoadUnsafe(ref src, (nuint)(i + Vector128<uint>.Count)));
                Vector128.Narrow(lo, hi).StoreUnsafe(ref dst, (nuint)i);
            }
        }

        for (; i < n; i++)
        {
            Unsafe.Add(ref dst, i) = SingleToBFloat16Scalar(Unsafe.Add(ref src, i));
        }
    }

    /// <summary>Widens <see cref="Half"/> values to <see cref="float"/> (exact).</summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public static void HalfToSingle(ReadOnlySpan<Half> source, Span<float> destination)
    {
        CheckLengths(source.Length, destination.Length, nameof(destination));
        TensorPrimitives.ConvertToSingle(source, destination);
    }

    /// <summary>
    /// Narrows <see cref="float"/> values to <see cref="Half"/>, rounding to nearest with ties to even
    /// (overflow goes to ±∞, NaN stays NaN).
    /// </summary>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    public static void SingleToHalf(ReadOnlySpan<float> source, Span<Half> destination)
    {
        CheckLengths(source.Length, destination.Length, nameof(destination));
        TensorPrimitives.ConvertToHalf(source, destination);
    }

    /// <summary>Widens one bfloat16 bit pattern.</summary>
    public static float BFloat16ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Narrows one value to a bfloat16 bit pattern (round to nearest, ties to even).</summary>
    public static ushort SingleToBFloat16(float value) => SingleToBFloat16Scalar(BitConverter.SingleToUInt32Bits(value));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ushort SingleToBFloat16Scalar(uint bits)
    {
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u)
        {
            return (ushort)((bits >> 16) | 0x0040u); // NaN: keep sign and top payload, force quiet bit
        }

        // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; a carry into the exponent is the
        // correct rounding up (to the next binade or to infinity).
        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> RoundToBFloat16(Vector512<uint> bits)
    {
        Vector512<uint> rounded = (bits + Vector512.Create(0x7FFFu) + ((bits >> 16) & Vector512<uint>.One)) >> 16;
        Vector512<uint> nan = Vector512.GreaterThan(bits & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(0x7F80_0000u));
        return Vector512.ConditionalSelect(nan, (bits >> 16) | Vector512.Create(0x0040u), rounded);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> RoundToBFloat16(Vector256<uint> bits)
    {
        Vector256<uint> rounded = (bits + Vector256.Create(0x7FFFu) + ((bits >> 16) & Vector256<uint>.One)) >> 16;
        Vector256<uint> nan = Vector256.GreaterThan(bits & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(0x7F80_0000u));
        return Vector256.ConditionalSelect(nan, (bits >> 16) | Vector256.Create(0x0040u), rounded);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<uint> RoundToBFloat16(Vector128<uint> bits)
    {
        Vector128<uint> rounded = (bits + Vector128.Create(0x7FFFu) + ((bits >> 16) & Vector128<uint>.One)) >> 16;
        Vector128<uint> nan = Vector128.GreaterThan(bits & Vector128.Create(0x7FFF_FFFFu), Vector128.Create(0x7F80_0000u));
        return Vector128.ConditionalSelect(nan, (bits >> 16) | Vector128.Create(0x0040u), rounded);
    }

    /// <summary>Index of the first NaN or infinity in <paramref name="values"/>, or -1.</summary>
    internal static int IndexOfNonFinite(ReadOnlySpan<float> values) =>
        IndexOfAllOnesExponent(MemoryMarshal.Cast<float, uint>(values), 0x7F80_0000u);

    /// <summary>Index of the first NaN or infinity among IEEE binary16 values, or -1.</summary>
    internal static int IndexOfNonFinite(ReadOnlySpan<Half> values) =>
        IndexOfAllOnesExponent(MemoryMarshal.Cast<Half, ushort>(values), (ushort)0x7C00);

    /// <summary>Index of the first NaN or infinity among bfloat16 bit patterns, or -1.</summary>
    internal static int IndexOfNonFiniteBFloat16(ReadOnlySpan<ushort> bits) => IndexOfAllOnesExponent(bits, (ushort)0x7F80);

    /// <summary>Index of the first element whose exponent field (<paramref name="exponentMask"/>) is all ones: NaN or ±∞.</summary>
    private static int IndexOfAllOnesExponent<T>(ReadOnlySpan<T> bits, T exponentMask)
        where T : unmanaged, System.Numerics.IBinaryInteger<T>
    {
        int i = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated && bits.Length >= System.Numerics.Vector<T>.Count)
        {
            var mask = new System.Numerics.Vector<T>(exponentMask);
            ref T start = ref MemoryMarshal.GetReference(bits);
            for (; i <= bits.Length - System.Numerics.Vector<T>.Count; i += System.Numerics.Vector<T>.Count)
            {
                var v = System.Numerics.Vector.LoadUnsafe(ref start, (nuint)i);
                if (System.Numerics.Vector.EqualsAny(v & mask, mask))
                {
                    break; // the scalar loop below finds the exact element
                }
            }
        }

        for (; i < bits.Length; i++)
        {
            if ((bits[i] & exponentMask) == exponentMask)
            {
                return i;
            }
        }

        return -1;
    }

    private static void CheckLengths(int source, int destination, string name)
    {
        if (source != destination)
        {
            throw new ArgumentException($"The destination holds {destination} elements but the source has {source}.", name);
        }
    }
}
