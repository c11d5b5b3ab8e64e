using LoftQNet.Numerics;
using LoftQNet.Quantization;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp;

/// <summary>
/// The tensors of a blockwise-quantized weight [out, in] as torch sees them: packed codes, per-block scales (and
/// offsets), the code book. Value i (row-major) is <c>CodeBook[code(i)] · Scales[i / BlockSize] + Offsets[i / BlockSize]</c>.
/// </summary>
/// <remarks>
/// <para><see cref="Codes"/> holds the core's <see cref="QuantizedTensor"/> bit stream: code i occupies bits
/// [i·Bits, (i+1)·Bits) counted from the most significant bit of byte 0 (for 4 bits, bitsandbytes' order: the first
/// element in the high nibble), zero-padded to a whole number of 8-code groups (Bits bytes each). So the bytes are
/// exactly <see cref="QuantizedTensor.PackedCodes"/> followed by at most Bits − 1 bytes of zeros.</para>
/// <para>Scales, offsets and the code book are float32 whatever the compute dtype; dequantization runs in float32 and
/// casts once at the end.</para>
/// </remarks>
/// <param name="Codes">uint8 [⌈n/8⌉·Bits], the packed codes.</param>
/// <param name="Scales">float32 [⌈n/BlockSize⌉].</param>
/// <param name="Offsets">float32 [⌈n/BlockSize⌉] for asymmetric quantizers, or null.</param>
/// <param name="CodeBook">float32 [2^Bits].</param>
/// <param name="Bits">Bits per code, 1..8.</param>
/// <param name="BlockSize">Values per scale.</param>
/// <param name="OutFeatures">Rows of the weight.</param>
/// <param name="InFeatures">Columns of the weight.</param>
public readonly record struct PackedWeight(
    Tensor Codes, Tensor Scales, Tensor? Offsets, Tensor CodeBook, int Bits, int BlockSize, long OutFeatures, long InFeatures)
{
    /// <summary>Number of weights, out × in.</summary>
    public long ElementCount => OutFeatures * InFeatures;

    /// <summary>Bytes <see cref="Codes"/> must hold for <paramref name="count"/> codes of <paramref name="bits"/> bits: whole 8-code groups.</summary>
    public static long PackedLength(long count, int bits) => (count + 7) / 8 * bits;

    /// <summary>
    /// Copies a core <see cref="QuantizedTensor"/> of shape [out, in] into new tensors on <paramref name="device"/>
    /// (the caller owns them).
    /// </summary>
    /// <exception cref="ArgumentException">The tensor is not two-dimensional.</exception>
    public static PackedWeight FromQuantizedTensor(QuantizedTensor quantized, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(quantized);
        if (quantized.Shape.Rank != 2)
        {
            throw new ArgumentException($"A linear layer's quantized weight must be two-dimensional, got shape {quantized.Shape}.", nameof(quantized));
        }

        long n = quantized.ElementCount;
        device ??= CPU;
        Tensor codes = torch.zeros(PackedLength(n, quantized.Bits), ScalarType.Byte);
        quantized.PackedCodes.CopyTo(codes.bytes);
        codes = OnDevice(codes, device);
        Tensor scales = OnDevice(TorchEngine.NativeCopy(quantized.Scales, [quantized.Scales.Length], ScalarType.Float32), device);
        Tensor? offsets = quantized.HasOffsets ? OnDevice(TorchEngine.NativeCopy(quantized.Offsets, [quantized.Offsets.Length], ScalarType.Float32), device) : null;
        Tensor codeBook = OnDevice(TorchEngine.NativeCopy(quantized.CodeBook, [quantized.CodeBook.Length], ScalarType.Float32), device);
        return new PackedWeight(codes, scales, offsets, codeBook, quantized.Bits, quantized.BlockSize, quantized.Shape.Rows, quantized.Shape.Columns);
    }

    /// <summary><paramref name="cpu"/> on <paramref name="device"/>: itself on the CPU, else a copy (the CPU tensor is disposed).</summary>
    private static Tensor OnDevice(Tensor cpu, Device device)
    {
        if (device.type == DeviceType.CPU)
        {
            return cpu;
        }

        using (cpu)
        {
            return cpu.to(device);
        }
    }

    /// <summary>Copies the tensors back into a core <see cref="QuantizedTensor"/> (on the CPU).</summary>
    /// <param name="quantizerName">The name recorded in the result, e.g. <c>nf4</c>.</param>
    public QuantizedTensor ToQuantizedTensor(string quantizerName)
    {
        ArgumentNullException.ThrowIfNull(quantizerName);
        long n = ElementCount;
        byte[] all = Codes.cpu().data<byte>().ToArray();
        byte[] packed = all.AsSpan(0, checked((int)(((n * Bits) + 7) / 8))).ToArray();
        float[] scales = Scales.to(ScalarType.Float32).cpu().data<float>().ToArray();
        float[]? offsets = Offsets is null ? null : Offsets.to(ScalarType.Float32).cpu().data<float>().ToArray();
        float[] codeBook = CodeBook.to(ScalarType.Float32).cpu().data<float>().ToArray();
        return new QuantizedTensor(new TensorShape(checked((int)OutFeatures), checked((int)InFeatures)), Bits, BlockSize, packed, scales, codeBook, quantizerName, offsets);
    }

    /// <summary>Checks that the tensors agree with the bits, block size and shape.</summary>
    /// <exception cref="ArgumentException">A tensor has the wrong dtype or length (the message names it).</exception>
    public void Validate()
    {
        if (Bits is < 1 or > 8)
        {
            throw new ArgumentException($"Bits must be in 1..8, got {Bits}.");
        }

        if (BlockSize < 1 || OutFeatures < 1 || InFeatures < 1)
        {
            throw new ArgumentException($"Block size and shape must be positive, got block {BlockSize}, shape [{OutFeatures}, {InFeatures}].");
        }

        long n = ElementCount, blocks = (n + BlockSize - 1) / BlockSize;
        Check(Codes, "codes", ScalarType.Byte, PackedLength(n, Bits));
        Check(Scales, "scales", ScalarType.Float32, blocks);
        if (Offsets is not null)
        {
            Check(Offsets, "offsets", ScalarType.Float32, blocks);
        }

        Check(CodeBook, "code_book", ScalarType.Float32, 1L << Bits);
    }

    private static void Check(Tensor t, string name, ScalarType dtype, long length)
    {
        if (t.dtype != dtype || t.Dimensions != 1 || t.shape[0] != length)
        {
            throw new ArgumentException($"Quantized weight tensor '{name}' must be {dtype} [{length}], got {t.dtype} [{string.Join(", ", t.shape)}].");
        }
    }
}
