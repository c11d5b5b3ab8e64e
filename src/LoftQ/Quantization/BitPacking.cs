using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace LoftQNet.Quantization;

/// <summary>Big-endian bit-stream packing of b-bit codes (code i at bits [i·b, (i+1)·b) from the MSB of byte 0).</summary>
/// <remarks>
/// For 4 bits this is bitsandbytes' order (byte j = code[2j] &lt;&lt; 4 | code[2j+1]); for 2 bits byte j holds
/// code[4j] in its two most significant bits; for 8 bits it is one byte per code. 2, 4 and 8 bits take SIMD
/// paths; other widths a scalar bit stream. The scalar reference methods are kept for tests.
/// </remarks>
internal static class BitPacking
{
    /// <summary>Bytes needed for <paramref name="count"/> codes of <paramref name="bits"/> bits.</summary>
    public static long PackedLength(long count, int bits) => ((count * bits) + 7) / 8;

    /// <summary>Reads code <paramref name="index"/>.</summary>
    public static int Get(ReadOnlySpan<byte> packed, long index, int bits)
    {
        long bit = index * bits;
        int value = 0;
        for (int k = 0; k < bits; k++, bit++)
        {
            int b = (packed[(int)(bit >> 3)] >> (7 - (int)(bit & 7))) & 1;
            value = (value << 1) | b;
        }

        return value;
    }

    /// <summary>Packs one code per byte of <paramref name="codes"/> into <paramref name="packed"/>.</summary>
    /// <exception cref="ArgumentException">The packed length is wrong or a code does not fit in <paramref name="bits"/> bits.</exception>
    public static void Pack(ReadOnlySpan<byte> codes, int bits, Span<byte> packed)
    {
        if (bits is < 1 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), $"Bits must be in 1..8, got {bits}.");
        }

        if (packed.Length != PackedLength(codes.Length, bits))
        {
            throw new ArgumentException($"{codes.Length} codes of {bits} bits need {PackedLength(codes.Length, bits)} bytes, got {packed.Length}.", nameof(packed));
        }

        if (bits < 8 && codes.Length > 0)
        {
            int max = TensorPrimitives.Max(codes);
            if (max >= 1 << bits)
            {
                throw new ArgumentException($"Code {max} at index {codes.IndexOf((byte)max)} does not fit in {bits} bits.", nameof(codes));
            }
        }

        PackUnchecked(codes, bits, packed);
    }

    /// <summary>Unpacks codes into one byte each.</summary>
    /// <exception cref="ArgumentException">The packed span is too short for <paramref name="codes"/>.Length codes.</exception>
    public static void Unpack(ReadOnlySpan<byte> packed, int bits, Span<byte> codes)
    {
        if (bits is < 1 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), $"Bits must be in 1..8, got {bits}.");
        }

        if (packed.Length < PackedLength(codes.Length, bits))
        {
            throw new ArgumentException($"{codes.Length} codes of {bits} bits need {PackedLength(codes.Length, bits)} bytes, got {packed.Length}.", nameof(packed));
        }

        UnpackUnchecked(packed, bits, codes);
    }

    /// <summary>
    /// Packs codes (each already &lt; 2^bits) into exactly <see cref="PackedLength"/> bytes of <paramref name="packed"/>;
    /// every destination byte is overwritten.
    /// </summary>
    internal static void PackUnchecked(ReadOnlySpan<byte> codes, int bits, Span<byte> packed)
    {
        switch (bits)
        {
            case 8:
                codes.CopyTo(packed);
                return;
            case 4:
                Pack4(codes, packed);
                return;
            case 2:
                Pack2(codes, packed);
                return;
            default:
                PackGroups(codes, bits, packed);
                return;
        }
    }

    /// <summary>Unpacks <paramref name="codes"/>.Length codes (the packed span holds at least that many).</summary>
    internal static void UnpackUnchecked(ReadOnlySpan<byte> packed, int bits, Span<byte> codes)
    {
        switch (bits)
        {
            case 8:
                packed[..codes.Length].CopyTo(codes);
                return;
            case 4:
                Unpack4(packed, codes);
                return;
            case 2:
                Unpack2(packed, codes);
                return;
            default:
                UnpackGroups(packed, bits, codes);
                return;
        }
    }

    /// <summary>Scalar bit-stream packing for any width (also the reference the SIMD paths are tested against).</summary>
    internal static void PackScalar(ReadOnlySpan<byte> codes, int bits, Span<byte> packed)
    {
        int length = (int)PackedLength(codes.Length, bits);
        packed[..length].Clear();
        long bit = 0;
        foreach (byte code in codes)
        {
            for (int k = bits - 1; k >= 0; k--, bit++)
            {
                packed[(int)(bit >> 3)] |= (byte)(((code >> k) & 1) << (7 - (int)(bit & 7)));
            }
        }
    }

    /// <summary>Scalar bit-stream unpacking for any width: reads a 16-bit big-endian window per code.</summary>
    internal static void UnpackScalar(ReadOnlySpan<byte> packed, int bits, Span<byte> codes)
    {
        int mask = (1 << bits) - 1;
        for (int i = 0; i < codes.Length; i++)
        {
            long bit = (long)i * bits;
            int at = (int)(bit >> 3);
            int window = packed[at] << 8;
            if (at + 1 < packed.Length)
            {
                window |= packed[at + 1];
            }

            codes[i] = (byte)((window >> (16 - bits - (int)(bit & 7))) & mask);
        }
    }

    /// <summary>Any width: every 8 codes fill exactly <paramref name="bits"/> bytes, assembled in a 64-bit word.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackGroups(ReadOnlySpan<byte> codes, int bits, Span<byte> packed)
    {
        int n = codes.Length;
        int groups = n / 8;
        for (int g = 0; g < groups; g++)
        {
            ReadOnlySpan<byte> c = codes.Slice(g * 8, 8);
            ulong word = 0;
            for (int k = 0; k < 8; k++)
            {
                word = (word << bits) | c[k];
            }

            Span<byte> d = packed.Slice(g * bits, bits);
            for (int k = bits - 1; k >= 0; k--)
            {
                d[k] = (byte)word;
                word >>= 8;
            }
        }

        if (groups * 8 < n)
        {
            PackScalar(codes[(groups * 8)..], bits, packed[(groups * bits)..]);
        }
    }

    /// <summary>Any width: every <paramref name="bits"/> bytes hold exactly 8 codes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackGroups(ReadOnlySpan<byte> packed, int bits, Span<byte> codes)
    {
        int n = codes.Length;
        int groups = n / 8;
        ulong mask = (1UL << bits) - 1;
        for (int g = 0; g < groups; g++)
        {
            ReadOnlySpan<byte> p = packed.Slice(g * bits, bits);
            ulong word = 0;
            for (int k = 0; k < bits; k++)
            {
                word = (word << 8) | p[k];
            }

            Span<byte> c = codes.Slice(g * 8, 8);
            for (int k = 7; k >= 0; k--)
            {
                c[k] = (byte)(word & mask);
                word >>= bits;
            }
        }

        if (groups * 8 < n)
        {
            UnpackScalar(packed[(groups * bits)..], bits, codes[(groups * 8)..]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Pack4(ReadOnlySpan<byte> codes, Span<byte> packed)
    {
        ref byte src = ref MemoryMarshal.GetReference(codes);
        ref byte dst = ref MemoryMarshal.GetReference(packed);
        int n = codes.Length;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var low = Vector256.Create((ushort)0xFF);
            for (; i <= n - 64; i += 64)
            {
                // Lane = code[2j] | code[2j+1] << 8 (little endian); packed byte = code[2j] << 4 | code[2j+1].
                Vector256<ushort> a = Vector256.LoadUnsafe(ref src, (nuint)i).AsUInt16();
                Vector256<ushort> b = Vector256.LoadUnsafe(ref src, (nuint)(i + 32)).AsUInt16();
                a = ((a << 4) | (a >> 8)) & low;
                b = ((b << 4) | (b >> 8)) & low;
                Vector256.Narrow(a, b).StoreUnsafe(ref dst, (nuint)(i / 2));
            }
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            var low = Vector128.Create((ushort)0xFF);
            for (; i <= n - 32; i += 32)
            {
                Vector128<ushort> a = Vector128.LoadUnsafe(ref src, (nuint)i).AsUInt16();
                Vector128<ushort> b = Vector128.LoadUnsafe(ref src, (nuint)(i + 16)).AsUInt16();
                a = ((a << 4) | (a >> 8)) & low;
                b = ((b << 4) | (b >> 8)) & low;
                Vector128.Narrow(a, b).StoreUnsafe(ref dst, (nuint)(i / 2));
            }
        }

        for (; i + 1 < n; i += 2)
        {
            Unsafe.Add(ref dst, i / 2) = (byte)((Unsafe.Add(ref src, i) << 4) | Unsafe.Add(ref src, i + 1));
        }

        if (i < n)
        {
            Unsafe.Add(ref dst, i / 2) = (byte)(Unsafe.Add(ref src, i) << 4);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Pack2(ReadOnlySpan<byte> codes, Span<byte> packed)
    {
        ref byte src = ref MemoryMarshal.GetReference(codes);
        ref byte dst = ref MemoryMarshal.GetReference(packed);
        int n = codes.Length;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - 128; i += 128)
            {
                Vector256<uint> a = Combine2(Vector256.LoadUnsafe(ref src, (nuint)i).AsUInt32());
                Vector256<uint> b = Combine2(Vector256.LoadUnsafe(ref src, (nuint)(i + 32)).AsUInt32());
                Vector256<uint> c = Combine2(Vector256.LoadUnsafe(ref src, (nuint)(i + 64)).AsUInt32());
                Vector256<uint> d = Combine2(Vector256.LoadUnsafe(ref src, (nuint)(i + 96)).AsUInt32());
                Vector256.Narrow(Vector256.Narrow(a, b), Vector256.Narrow(c, d)).StoreUnsafe(ref dst, (nuint)(i / 4));
            }
        }

        for (; i + 3 < n; i += 4)
        {
            Unsafe.Add(ref dst, i / 4) = (byte)((Unsafe.Add(ref src, i) << 6) | (Unsafe.Add(ref src, i + 1) << 4)
                | (Unsafe.Add(ref src, i + 2) << 2) | Unsafe.Add(ref src, i + 3));
        }

        if (i < n)
        {
            int v = 0;
            for (int k = 0; k < 4; k++)
            {
                v = (v << 2) | (i + k < n ? Unsafe.Add(ref src, i + k) : 0);
            }

            Unsafe.Add(ref dst, i / 4) = (byte)v;
        }
    }

    /// <summary>Lane = c0 | c1 &lt;&lt; 8 | c2 &lt;&lt; 16 | c3 &lt;&lt; 24 → c0 &lt;&lt; 6 | c1 &lt;&lt; 4 | c2 &lt;&lt; 2 | c3 (codes &lt; 4).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Combine2(Vector256<uint> u) =>
        ((u << 6) & Vector256.Create(0xC0u)) | ((u >> 4) & Vector256.Create(0x30u))
        | ((u >> 14) & Vector256.Create(0x0Cu)) | (u >> 24);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Unpack4(ReadOnlySpan<byte> packed, Span<byte> codes)
    {
        ref byte src = ref MemoryMarshal.GetReference(packed);
        ref byte dst = ref MemoryMarshal.GetReference(codes);
        int n = codes.Length;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var nibble = Vector256.Create((ushort)0x0F);
            for (; i <= n - 64; i += 64)
            {
                // Widen packed byte p to a 16-bit lane; (p >> 4) | (p & 15) << 8 is the byte pair [hi, lo].
                (Vector256<ushort> a, Vector256<ushort> b) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)(i / 2)));
                ((a >> 4) | ((a & nibble) << 8)).AsByte().StoreUnsafe(ref dst, (nuint)i);
                ((b >> 4) | ((b & nibble) << 8)).AsByte().StoreUnsafe(ref dst, (nuint)(i + 32));
            }
        }

        for (; i + 1 < n; i += 2)
        {
            int p = Unsafe.Add(ref src, i / 2);
            Unsafe.Add(ref dst, i) = (byte)(p >> 4);
            Unsafe.Add(ref dst, i + 1) = (byte)(p & 15);
        }

        if (i < n)
        {
            Unsafe.Add(ref dst, i) = (byte)(Unsafe.Add(ref src, i / 2) >> 4);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Unpack2(ReadOnlySpan<byte> packed, Span<byte> codes)
    {
        ref byte src = ref MemoryMarshal.GetReference(packed);
        ref byte dst = ref MemoryMarshal.GetReference(codes);
        int n = codes.Length;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var three = Vector256.Create(3u);
            for (; i <= n - 64; i += 64)
            {
                // 16 packed bytes → 16 uint lanes → 4 code bytes each.
                Vector128<byte> p = Vector128.LoadUnsafe(ref src, (nuint)(i / 4));
                (Vector256<uint> a, Vector256<uint> b) = Vector256.Widen(Vector256.Create(Vector128.WidenLower(p), Vector128.WidenUpper(p)));
                Spread2(a, three).AsByte().StoreUnsafe(ref dst, (nuint)i);
                Spread2(b, three).AsByte().StoreUnsafe(ref dst, (nuint)(i + 32));
            }
        }

        for (; i + 3 < n; i += 4)
        {
            int p = Unsafe.Add(ref src, i / 4);
            Unsafe.Add(ref dst, i) = (byte)(p >> 6);
            Unsafe.Add(ref dst, i + 1) = (byte)((p >> 4) & 3);
            Unsafe.Add(ref dst, i + 2) = (byte)((p >> 2) & 3);
            Unsafe.Add(ref dst, i + 3) = (byte)(p & 3);
        }

        for (; i < n; i++)
        {
            Unsafe.Add(ref dst, i) = (byte)((Unsafe.Add(ref src, i / 4) >> (6 - (2 * (i & 3)))) & 3);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Spread2(Vector256<uint> p, Vector256<uint> three) =>
        (p >> 6) | (((p >> 4) & three) << 8) | (((p >> 2) & three) << 16) | ((p & three) << 24);
}
