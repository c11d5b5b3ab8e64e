namespace LoftQNet.Quantization;

/// <summary>Big-endian bit-stream packing of b-bit codes (code i at bits [i·b, (i+1)·b) from the MSB of byte 0).</summary>
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

    /// <summary>Packs one code per byte of <paramref name="codes"/> into <paramref name="packed"/> (cleared first).</summary>
    public static void Pack(ReadOnlySpan<byte> codes, int bits, Span<byte> packed)
    {
        if (packed.Length != PackedLength(codes.Length, bits))
        {
            throw new ArgumentException($"{codes.Length} codes of {bits} bits need {PackedLength(codes.Length, bits)} bytes, got {packed.Length}.", nameof(packed));
        }

        packed.Clear();
        long bit = 0;
        int mask = (1 << bits) - 1;
        foreach (byte code in codes)
        {
            if (code > mask)
            {
                throw new ArgumentException($"Code {code} does not fit in {bits} bits.", nameof(codes));
            }

            for (int k = bits - 1; k >= 0; k--, bit++)
            {
                packed[(int)(bit >> 3)] |= (byte)(((code >> k) & 1) << (7 - (int)(bit & 7)));
            }
        }
    }

    /// <summary>Unpacks codes into one byte each.</summary>
    public static void Unpack(ReadOnlySpan<byte> packed, int bits, Span<byte> codes)
    {
        for (int i = 0; i < codes.Length; i++)
        {
            codes[i] = (byte)Get(packed, i, bits);
        }
    }
}
