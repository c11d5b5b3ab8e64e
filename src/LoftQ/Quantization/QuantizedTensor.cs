using LoftQNet.Numerics;

namespace LoftQNet.Quantization;

/// <summary>
/// A blockwise-quantized tensor: packed codes, one fp32 scale per block (and optionally one fp32 offset per
/// block), and the code book the codes index. Value i dequantizes to
/// <c>CodeBook[code(i)] · Scales[i / BlockSize] + (Offsets?[i / BlockSize] ?? 0)</c>.
/// </summary>
/// <remarks>
/// Codes are packed as a big-endian bit stream: code i occupies bits [i·Bits, (i+1)·Bits) counted from the most
/// significant bit of byte 0. For 4 bits this is exactly bitsandbytes' order (the first element in the high
/// nibble); for 8 bits it is one byte per code. The last block may be partial.
/// </remarks>
public sealed class QuantizedTensor
{
    private readonly byte[] _codes;
    private readonly float[] _scales;
    private readonly float[]? _offsets;
    private readonly float[] _codeBook;

    /// <summary>Creates a quantized tensor from its parts (the arrays are taken, not copied).</summary>
    /// <exception cref="ArgumentException">A part's length does not match the shape, bits and block size.</exception>
    public QuantizedTensor(
        TensorShape shape, int bits, int blockSize, byte[] packedCodes, float[] scales, float[] codeBook,
        string quantizerName, float[]? offsets = null)
    {
        ArgumentNullException.ThrowIfNull(packedCodes);
        ArgumentNullException.ThrowIfNull(scales);
        ArgumentNullException.ThrowIfNull(codeBook);
        ArgumentNullException.ThrowIfNull(quantizerName);
        if (bits is < 1 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), $"Bits must be in 1..8, got {bits}.");
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        long n = shape.ElementCount;
        long blocks = (n + blockSize - 1) / blockSize;
        long bytes = BitPacking.PackedLength(n, bits);
        if (packedCodes.LongLength != bytes)
        {
            throw new ArgumentException($"{n} codes of {bits} bits pack into {bytes} bytes, got {packedCodes.LongLength}.", nameof(packedCodes));
        }

        if (scales.LongLength != blocks)
        {
            throw new ArgumentException($"{n} values in blocks of {blockSize} need {blocks} scales, got {scales.LongLength}.", nameof(scales));
        }

        if (offsets is not null && offsets.LongLength != blocks)
        {
            throw new ArgumentException($"{n} values in blocks of {blockSize} need {blocks} offsets, got {offsets.LongLength}.", nameof(offsets));
        }

        if (codeBook.Length != 1 << bits)
        {
            throw new ArgumentException($"A {bits}-bit code book has {1 << bits} levels, got {codeBook.Length}.", nameof(codeBook));
        }

        Shape = shape;
        Bits = bits;
        BlockSize = blockSize;
        QuantizerName = quantizerName;
        _codes = packedCodes;
        _scales = scales;
        _offsets = offsets;
        _codeBook = codeBook;
    }

    /// <summary>
    /// Builds a quantized tensor from one code per value (the bit packing is done here): the building block of a
    /// custom <see cref="IQuantizer"/> with its own scaling rule. The arrays are taken, not copied.
    /// </summary>
    /// <param name="shape">The logical shape; <paramref name="codes"/> holds shape.ElementCount codes, row-major.</param>
    /// <param name="bits">Bits per code, 1..8; every code must be below 2^bits.</param>
    /// <param name="blockSize">Values per scale.</param>
    /// <param name="codes">One code per value.</param>
    /// <param name="scales">One scale per block.</param>
    /// <param name="codeBook">The 2^bits levels the codes index.</param>
    /// <param name="quantizerName">Your quantizer's name (reports and file metadata).</param>
    /// <param name="offsets">One offset per block, or null.</param>
    /// <exception cref="ArgumentException">A length does not match, or a code is 2^bits or more (the message names its index).</exception>
    public static QuantizedTensor FromCodes(
        TensorShape shape, int bits, int blockSize, ReadOnlySpan<byte> codes, float[] scales, float[] codeBook,
        string quantizerName, float[]? offsets = null)
    {
        if (bits is < 1 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), $"Bits must be in 1..8, got {bits}.");
        }

        if (codes.Length != shape.ElementCount)
        {
            throw new ArgumentException($"Shape {shape} has {shape.ElementCount} values but {codes.Length} codes were given.", nameof(codes));
        }

        int limit = 1 << bits;
        for (int i = 0; i < codes.Length; i++)
        {
            if (codes[i] >= limit)
            {
                throw new ArgumentException($"Code {codes[i]} at index {i} does not fit in {bits} bits.", nameof(codes));
            }
        }

        var packed = new byte[BitPacking.PackedLength(codes.Length, bits)];
        BitPacking.Pack(codes, bits, packed);
        return new QuantizedTensor(shape, bits, blockSize, packed, scales, codeBook, quantizerName, offsets);
    }

    /// <summary>The logical shape of the tensor.</summary>
    public TensorShape Shape { get; }

    /// <summary>Bits per code.</summary>
    public int Bits { get; }

    /// <summary>Values per block (the last block may be shorter).</summary>
    public int BlockSize { get; }

    /// <summary>Name of the quantizer that produced this tensor.</summary>
    public string QuantizerName { get; }

    /// <summary>Number of quantized values.</summary>
    public long ElementCount => Shape.ElementCount;

    /// <summary>Number of blocks, ⌈ElementCount / BlockSize⌉.</summary>
    public int BlockCount => _scales.Length;

    /// <summary>The packed codes (see the type's remarks for the bit order).</summary>
    public ReadOnlySpan<byte> PackedCodes => _codes;

    /// <summary>One scale per block (the absmax for symmetric quantizers).</summary>
    public ReadOnlySpan<float> Scales => _scales;

    /// <summary>One offset per block for asymmetric quantizers; empty when there is none.</summary>
    public ReadOnlySpan<float> Offsets => _offsets;

    /// <summary>Whether the tensor carries per-block offsets.</summary>
    public bool HasOffsets => _offsets is not null;

    /// <summary>The 2^Bits levels the codes index, ascending for the built-in quantizers.</summary>
    public ReadOnlySpan<float> CodeBook => _codeBook;

    /// <summary>Storage in bytes: packed codes plus 4 bytes per scale and per offset (the code book is shared and not counted).</summary>
    public long StorageBytes => _codes.LongLength + (4L * _scales.Length) + (4L * (_offsets?.Length ?? 0));

    /// <summary>The code of element <paramref name="index"/>.</summary>
    public int GetCode(long index)
    {
        if ((ulong)index >= (ulong)ElementCount)
        {
            throw new ArgumentOutOfRangeException(nameof(index), $"Index {index} is outside [0, {ElementCount}).");
        }

        return BitPacking.Get(_codes, index, Bits);
    }

    /// <summary>Writes all codes, one per byte, into <paramref name="destination"/>.</summary>
    public void UnpackCodes(Span<byte> destination)
    {
        if (destination.Length != ElementCount)
        {
            throw new ArgumentException($"Expected a destination of {ElementCount} codes, got {destination.Length}.", nameof(destination));
        }

        BitPacking.Unpack(_codes, Bits, destination);
    }

    /// <summary>
    /// Dequantizes into <paramref name="destination"/> (generic path, valid for every quantizer's output):
    /// SIMD unpacking and table lookup, multi-threaded over blocks per <see cref="ComputeSettings"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The destination length differs from <see cref="ElementCount"/>.</exception>
    public void Dequantize(Span<float> destination)
    {
        if (destination.Length != ElementCount)
        {
            throw new ArgumentException($"Expected a destination of {ElementCount} values, got {destination.Length}.", nameof(destination));
        }

        BlockwiseCodec.Dequantize(this, destination);
    }

    /// <summary>
    /// The scalar reference for <see cref="Dequantize"/>: one code at a time through <see cref="GetCode"/>
    /// (tests compare the fast path with it bit for bit).
    /// </summary>
    internal void DequantizeReference(Span<float> destination)
    {
        if (destination.Length != ElementCount)
        {
            throw new ArgumentException($"Expected a destination of {ElementCount} values, got {destination.Length}.", nameof(destination));
        }

        for (long i = 0; i < destination.Length; i++)
        {
            long block = i / BlockSize;
            float v = _codeBook[BitPacking.Get(_codes, i, Bits)] * _scales[block];
            destination[(int)i] = _offsets is null ? v : v + _offsets[block];
        }
    }
}
