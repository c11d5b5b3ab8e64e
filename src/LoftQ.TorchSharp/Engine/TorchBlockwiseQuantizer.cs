using LoftQNet.Numerics;
using LoftQNet.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Engine;

/// <summary>
/// Blockwise quantization in torch operations, on whatever device the input tensor lives: the same rule as the
/// core's <see cref="NormalFloatQuantizer"/> and <see cref="UniformQuantizer"/> (per-block absmax, or per-block
/// min/max with an offset; code = nearest level of <c>(x − offset) · (1 / scale)</c>, ties to the lower index;
/// an all-zero block gets scale 0 and dequantizes to zeros).
/// </summary>
/// <remarks>
/// <para>The code search compares the ratio with precomputed decision thresholds (<c>bucketize</c>, right side):
/// threshold k is the smallest float for which level k+1 is strictly nearer than level k, so the count of
/// thresholds ≤ ratio is the nearest level with ties to the lower index, bit for bit the core's rule given the same
/// float32 ratio.</para>
/// <para>Tensor API: <see cref="Quantize(Tensor)"/> gives one uint8 code per element (the input's shape), fp32
/// scales and, when asymmetric, fp32 offsets (one per block), all on the input's device; <see cref="Pack"/> packs
/// codes into the core's <see cref="QuantizedTensor"/> bit stream on the device and
/// <see cref="ToQuantizedTensor"/> copies the result to the CPU. The class also implements the core's
/// <see cref="IQuantizer"/> (through CPU tensors), so it plugs into <c>AlternatingOptimizer</c>. Instances are
/// immutable; the code-book and threshold tensors are cached per device.</para>
/// </remarks>
public sealed class TorchBlockwiseQuantizer : IQuantizer, IDisposable
{
    private readonly float[] _levels;
    private readonly float[] _thresholds;
    private readonly Dictionary<string, (Tensor Levels, Tensor Thresholds)> _tables = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    /// <summary>Creates a quantizer over an ascending code book.</summary>
    /// <param name="name">A short name for reports (e.g. <c>nf4</c>).</param>
    /// <param name="codeBook">2^<paramref name="bits"/> strictly ascending levels.</param>
    /// <param name="bits">Bits per code, 1..8.</param>
    /// <param name="blockSize">Values per block, 2..1,048,576.</param>
    /// <param name="asymmetric">Per-block min/max (scale = max − min, offset = min) instead of the symmetric absmax.</param>
    /// <exception cref="ArgumentException">The code book does not have 2^bits strictly ascending finite levels.</exception>
    /// <exception cref="ArgumentOutOfRangeException">Bits or block size out of range.</exception>
    public TorchBlockwiseQuantizer(string name, ReadOnlySpan<float> codeBook, int bits, int blockSize = 64, bool asymmetric = false)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (bits is < 1 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), bits, "Bits must be in 1..8.");
        }

        if (blockSize is < 2 or > 1 << 20)
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "Block size must be in 2..1048576.");
        }

        if (codeBook.Length != 1 << bits)
        {
            throw new ArgumentException($"A {bits}-bit code book has {1 << bits} levels, got {codeBook.Length}.", nameof(codeBook));
        }

        foreach (float level in codeBook)
        {
            if (!float.IsFinite(level))
            {
                throw new ArgumentException($"Code book levels must be finite, got {level}.", nameof(codeBook));
            }
        }

        Name = name;
        Bits = bits;
        BlockSize = blockSize;
        IsAsymmetric = asymmetric;
        _levels = codeBook.ToArray();
        _thresholds = Thresholds(_levels);
    }

    /// <summary>The NormalFloat quantizer of <paramref name="bits"/> bits (the core's <see cref="NormalFloatQuantizer"/> code book and name).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Bits other than 2, 3, 4 or 8, or a bad block size.</exception>
    public static TorchBlockwiseQuantizer NormalFloat(int bits, int blockSize = 64)
    {
        if (bits is not (2 or 3 or 4 or 8))
        {
            throw new ArgumentOutOfRangeException(nameof(bits), bits, "NormalFloat supports 2, 3, 4 or 8 bits.");
        }

        return new TorchBlockwiseQuantizer($"nf{bits}", NormalFloatQuantizer.CreateCodeBook(bits), bits, blockSize);
    }

    /// <summary>The uniform quantizer of <paramref name="bits"/> bits (the core's <see cref="UniformQuantizer"/> levels and name).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Bits outside 2..8, or a bad block size.</exception>
    public static TorchBlockwiseQuantizer Uniform(int bits, int blockSize = 64, bool asymmetric = false)
    {
        if (bits is < 2 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), bits, "Uniform quantization supports 2..8 bits.");
        }

        return new TorchBlockwiseQuantizer(
            asymmetric ? $"uniform{bits}-asym" : $"uniform{bits}", UniformQuantizer.CreateLevels(bits, asymmetric), bits, blockSize, asymmetric);
    }

    /// <summary>The torch twin of a built-in quantizer: same code book, bits, block size, symmetry and name.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="quantizer"/> is null.</exception>
    /// <exception cref="NotSupportedException">The quantizer searches its block scales (the torch engine uses absmax scales only).</exception>
    public static TorchBlockwiseQuantizer From(BlockwiseQuantizer quantizer)
    {
        ArgumentNullException.ThrowIfNull(quantizer);
        if (quantizer.ScaleSearch is not null)
        {
            throw new NotSupportedException($"The torch engine uses absmax block scales; {quantizer} searches them. Run it on the managed engine (LoftQEngine.Managed).");
        }

        bool asymmetric = quantizer is UniformQuantizer { IsAsymmetric: true };
        return new TorchBlockwiseQuantizer(quantizer.Name, quantizer.CodeBook, quantizer.Bits, quantizer.BlockSize, asymmetric);
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public int Bits { get; }

    /// <inheritdoc/>
    public int BlockSize { get; }

    /// <summary>Whether blocks use min/max (scale and offset) rather than the symmetric absmax.</summary>
    public bool IsAsymmetric { get; }

    /// <summary>The 2^<see cref="Bits"/> ascending levels.</summary>
    public ReadOnlySpan<float> CodeBook => _levels;

    /// <summary>The decision thresholds: entry k is the smallest float strictly nearer level k+1 than level k.</summary>
    internal ReadOnlySpan<float> DecisionThresholds => _thresholds;

    /// <summary>
    /// Quantizes <paramref name="weight"/> (any shape, any floating dtype, taken as fp32, row-major order) on its
    /// device.
    /// </summary>
    /// <returns>uint8 codes of the weight's shape, fp32 scales [blocks], and fp32 offsets [blocks] when asymmetric.</returns>
    /// <exception cref="ArgumentException">The tensor is empty, not floating point, or holds NaN or infinity (the message names the flat index).</exception>
    public (Tensor Codes, Tensor Scales, Tensor? Offsets) Quantize(Tensor weight)
    {
        (Tensor codes, Tensor scales, Tensor? offsets, Tensor? _) = Run(weight, dequantize: false);
        return (codes, scales, offsets);
    }

    /// <summary>Quantizes and dequantizes in one call (one pass over the blocks; the result has the weight's shape, fp32).</summary>
    /// <exception cref="ArgumentException">As for <see cref="Quantize(Tensor)"/>.</exception>
    public (Tensor Codes, Tensor Scales, Tensor? Offsets, Tensor Dequantized) QuantizeDequantize(Tensor weight)
    {
        (Tensor codes, Tensor scales, Tensor? offsets, Tensor? dequantized) = Run(weight, dequantize: true);
        return (codes, scales, offsets, dequantized!);
    }

    /// <summary>
    /// Dequantizes one-per-element codes: <c>CodeBook[code] · scale + offset</c> per block, fp32, the codes' shape,
    /// on the codes' device.
    /// </summary>
    /// <exception cref="ArgumentException">The scales or offsets do not match the number of blocks, or offsets are missing or extra.</exception>
    public Tensor Dequantize(Tensor codes, Tensor scales, Tensor? offsets)
    {
        ArgumentNullException.ThrowIfNull(codes);
        ArgumentNullException.ThrowIfNull(scales);
        long n = codes.numel();
        long blocks = (n + BlockSize - 1) / BlockSize;
        if (scales.numel() != blocks)
        {
            throw new ArgumentException($"{n} codes in blocks of {BlockSize} need {blocks} scales, got {scales.numel()}.", nameof(scales));
        }

        if (IsAsymmetric != (offsets is not null) || (offsets is not null && offsets.numel() != blocks))
        {
            throw new ArgumentException(
                IsAsymmetric ? $"{Name} needs {blocks} offsets." : $"{Name} is symmetric and takes no offsets.", nameof(offsets));
        }

        using var scope = NewDisposeScope();
        long padded = blocks * BlockSize;
        Tensor flat = codes.reshape(-1);
        if (padded != n)
        {
            flat = cat([flat, zeros(padded - n, ScalarType.Byte, codes.device)]);
        }

        (Tensor levels, _) = TablesFor(codes.device);
        Tensor values = Lookup(flat.view(blocks, BlockSize), levels, scales.reshape(blocks, 1), offsets?.reshape(blocks, 1));
        Tensor result = (padded != n ? values.view(-1).narrow(0, 0, n) : values).reshape(codes.shape);
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Packs one-per-element codes (uint8, each below 2^<paramref name="bits"/>) on their device into the core's
    /// bit stream: code i occupies bits [i·bits, (i+1)·bits) counted from the most significant bit of byte 0
    /// (bitsandbytes' high-nibble-first order for 4 bits); ⌈n·bits/8⌉ bytes, uint8, one dimension.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="bits"/> outside 1..8.</exception>
    public static Tensor Pack(Tensor codes, int bits)
    {
        ArgumentNullException.ThrowIfNull(codes);
        if (bits is < 1 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), bits, "Bits must be in 1..8.");
        }

        long n = codes.numel();
        long bytes = ((n * bits) + 7) / 8;
        if (bits == 8)
        {
            return codes.reshape(-1).to(ScalarType.Byte, copy: true);
        }

        using var scope = NewDisposeScope();
        Device device = codes.device;
        if (8 % bits == 0)
        {
            // 1, 2 or 4 bits: whole codes per byte, combined in uint8 (first code in the highest bits).
            int perByte = 8 / bits;
            Tensor c = codes.reshape(-1).to(ScalarType.Byte);
            if (bytes * perByte != n)
            {
                c = cat([c, zeros((bytes * perByte) - n, ScalarType.Byte, device)]);
            }

            Tensor grouped = c.view(bytes, perByte);
            Tensor acc = grouped.select(1, 0).clone();
            for (int j = 1; j < perByte; j++)
            {
                acc = acc.bitwise_left_shift_(tensor((byte)bits, ScalarType.Byte, device)).bitwise_or_(grouped.select(1, j));
            }

            return acc.MoveToOuterDisposeScope();
        }

        long groups = (n + 7) / 8;
        Tensor flat = codes.reshape(-1).to(ScalarType.Int64);
        if (groups * 8 != n)
        {
            flat = cat([flat, zeros(groups * 8 - n, ScalarType.Int64, device)]);
        }

        // Eight codes make bits whole bytes: combine them into one 8·bits-bit integer, first code highest.
        var weights = new long[8];
        for (int j = 0; j < 8; j++)
        {
            weights[j] = 1L << (bits * (7 - j));
        }

        Tensor combined = (flat.view(groups, 8) * tensor(weights, device: device)).sum(1, keepdim: true);
        var shifts = new long[bits];
        for (int k = 0; k < bits; k++)
        {
            shifts[k] = 8L * (bits - 1 - k);
        }

        Tensor packed = combined.bitwise_right_shift(tensor(shifts, device: device)).bitwise_and(0xFF).to(ScalarType.Byte).view(-1);
        if (packed.numel() != bytes)
        {
            packed = packed.narrow(0, 0, bytes);
        }

        return packed.contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>The inverse of <see cref="Pack"/>: <paramref name="count"/> uint8 codes, one per element, on the packed tensor's device.</summary>
    /// <exception cref="ArgumentException">The packed length is not ⌈count·bits/8⌉.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="bits"/> outside 1..8 or a negative count.</exception>
    public static Tensor Unpack(Tensor packed, int bits, long count)
    {
        ArgumentNullException.ThrowIfNull(packed);
        if (bits is < 1 or > 8)
        {
            throw new ArgumentOutOfRangeException(nameof(bits), bits, "Bits must be in 1..8.");
        }

        ArgumentOutOfRangeException.ThrowIfNegative(count);
        long bytes = ((count * bits) + 7) / 8;
        if (packed.numel() != bytes)
        {
            throw new ArgumentException($"{count} codes of {bits} bits pack into {bytes} bytes, got {packed.numel()}.", nameof(packed));
        }

        if (bits == 8)
        {
            return packed.reshape(-1).to(ScalarType.Byte, copy: true);
        }

        using var scope = NewDisposeScope();
        Device device = packed.device;
        long groups = (count + 7) / 8;
        Tensor flat = packed.reshape(-1).to(ScalarType.Int64);
        if (groups * bits != bytes)
        {
            flat = cat([flat, zeros(groups * bits - bytes, ScalarType.Int64, device)]);
        }

        var byteShifts = new long[bits];
        for (int k = 0; k < bits; k++)
        {
            byteShifts[k] = 8L * (bits - 1 - k);
        }

        Tensor combined = flat.view(groups, bits).bitwise_left_shift(tensor(byteShifts, device: device)).sum(1, keepdim: true);
        var codeShifts = new long[8];
        for (int j = 0; j < 8; j++)
        {
            codeShifts[j] = bits * (7 - j);
        }

        Tensor codes = combined.bitwise_right_shift(tensor(codeShifts, device: device)).bitwise_and((1 << bits) - 1).to(ScalarType.Byte).view(-1);
        if (codes.numel() != count)
        {
            codes = codes.narrow(0, 0, count);
        }

        return codes.contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Packs <paramref name="codes"/> and copies codes, scales and offsets to a CPU <see cref="QuantizedTensor"/> of
    /// the codes' shape (dimensions must fit in <see cref="int"/>).
    /// </summary>
    /// <exception cref="ArgumentException">A part does not match the number of blocks.</exception>
    public QuantizedTensor ToQuantizedTensor(Tensor codes, Tensor scales, Tensor? offsets)
    {
        ArgumentNullException.ThrowIfNull(codes);
        using var scope = NewDisposeScope();
        Tensor packed = Pack(codes, Bits);
        return ToQuantizedTensorFromPacked(packed, ShapeOf(codes), scales, offsets);
    }

    /// <summary>As <see cref="ToQuantizedTensor"/> for codes already packed by <see cref="Pack"/>.</summary>
    /// <exception cref="ArgumentException">A part does not match the shape, bits and block size.</exception>
    public QuantizedTensor ToQuantizedTensorFromPacked(Tensor packed, TensorShape shape, Tensor scales, Tensor? offsets)
    {
        ArgumentNullException.ThrowIfNull(packed);
        ArgumentNullException.ThrowIfNull(scales);
        if (IsAsymmetric != (offsets is not null))
        {
            throw new ArgumentException(IsAsymmetric ? $"{Name} needs offsets." : $"{Name} is symmetric and takes no offsets.", nameof(offsets));
        }

        byte[] bytes = ToArray<byte>(packed, ScalarType.Byte);
        float[] s = ToArray<float>(scales, ScalarType.Float32);
        float[]? o = offsets is null ? null : ToArray<float>(offsets, ScalarType.Float32);
        return new QuantizedTensor(shape, Bits, BlockSize, bytes, s, (float[])_levels.Clone(), Name, o);
    }

    /// <inheritdoc/>
    public QuantizedTensor Quantize(ReadOnlySpan<float> values, TensorShape shape)
    {
        CheckLength(values, shape);
        TorchRuntime.EnsureLoaded();
        using var scope = NewDisposeScope();
        Tensor w = TorchEngine.NativeCopy(values, Dims(shape), ScalarType.Float32);
        (Tensor codes, Tensor scales, Tensor? offsets) = Quantize(w);
        return ToQuantizedTensorFromPacked(Pack(codes, Bits), shape, scales, offsets);
    }

    /// <inheritdoc/>
    public void Dequantize(QuantizedTensor quantized, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(quantized);
        quantized.Dequantize(destination);
    }

    /// <inheritdoc/>
    public QuantizedTensor QuantizeDequantize(ReadOnlySpan<float> values, TensorShape shape, Span<float> dequantized)
    {
        CheckLength(values, shape);
        if (dequantized.Length != shape.ElementCount)
        {
            throw new ArgumentException($"Expected a destination of {shape.ElementCount} values for shape {shape}, got {dequantized.Length}.", nameof(dequantized));
        }

        TorchRuntime.EnsureLoaded();
        using var scope = NewDisposeScope();
        Tensor w = TorchEngine.NativeCopy(values, Dims(shape), ScalarType.Float32);
        (Tensor codes, Tensor scales, Tensor? offsets, Tensor d) = QuantizeDequantize(w);
        ToArray<float>(d, ScalarType.Float32).CopyTo(dequantized);
        return ToQuantizedTensorFromPacked(Pack(codes, Bits), shape, scales, offsets);
    }

    /// <summary>Frees the cached code-book tensors (they are recreated on the next use).</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            foreach ((Tensor levels, Tensor thresholds) in _tables.Values)
            {
                levels.Dispose();
                thresholds.Dispose();
            }

            _tables.Clear();
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name} (torch, block {BlockSize})";

    /// <summary>
    /// Decision thresholds of strictly ascending levels: entry k is the smallest float x with
    /// <c>|x − levels[k+1]| &lt; |x − levels[k]|</c> in float arithmetic (a binary search over the floats of the interval).
    /// </summary>
    internal static float[] Thresholds(ReadOnlySpan<float> levels)
    {
        var thresholds = new float[levels.Length - 1];
        for (int k = 0; k < thresholds.Length; k++)
        {
            float lo = levels[k], hi = levels[k + 1];
            if (!(lo < hi))
            {
                throw new ArgumentException($"Levels must be strictly ascending; level {k + 1} ({hi}) is not above level {k} ({lo}).", nameof(levels));
            }

            int a = OrderedKey(lo), b = OrderedKey(hi);
            while (b - a > 1)
            {
                int mid = a + ((b - a) / 2);
                float x = FromOrderedKey(mid);
                if (Math.Abs(x - hi) < Math.Abs(x - lo))
                {
                    b = mid;
                }
                else
                {
                    a = mid;
                }
            }

            thresholds[k] = FromOrderedKey(b);
        }

        return thresholds;
    }

    /// <summary>The flat index of the first NaN or infinity in <paramref name="values"/>, or −1 (one device sync).</summary>
    internal static long IndexOfNonFinite(Tensor values)
    {
        using var scope = NewDisposeScope();
        Tensor bad = values.isfinite().logical_not().reshape(-1);
        if (!bad.any().item<bool>())
        {
            return -1;
        }

        return bad.to(ScalarType.Byte).argmax().item<long>();
    }

    /// <summary>Throws, naming the first non-finite element of <paramref name="weight"/>, when a block statistic is not finite.</summary>
    private static void ThrowIfNonFinite(Tensor weight, Tensor blockStatistic)
    {
        if (IndexOfNonFinite(blockStatistic) < 0)
        {
            return;
        }

        long bad = IndexOfNonFinite(weight);
        if (bad >= 0)
        {
            throw new ArgumentException($"Value at flat index {bad} is {ValueAt(weight, bad)}; quantization needs finite values.", nameof(weight));
        }
    }

    /// <summary>The value at a flat index, for error messages.</summary>
    internal static float ValueAt(Tensor values, long index)
    {
        using var scope = NewDisposeScope();
        return values.reshape(-1)[index].to(ScalarType.Float32).item<float>();
    }

    private static TensorShape ShapeOf(Tensor t) => new(t.shape.Select(d => checked((int)d)).ToArray());

    private static long[] Dims(TensorShape shape)
    {
        var dims = new long[shape.Rank];
        for (int i = 0; i < dims.Length; i++)
        {
            dims[i] = shape[i];
        }

        return dims;
    }

    private static void CheckLength(ReadOnlySpan<float> values, TensorShape shape)
    {
        if (values.Length != shape.ElementCount)
        {
            throw new ArgumentException($"Shape {shape} has {shape.ElementCount} elements but {values.Length} values were given.", nameof(values));
        }
    }

    private static T[] ToArray<T>(Tensor t, ScalarType type)
        where T : unmanaged
    {
        using var scope = NewDisposeScope();
        Tensor cpu = t.reshape(-1).to(type).cpu().contiguous();
        return cpu.data<T>().ToArray();
    }

    private static int OrderedKey(float f)
    {
        int bits = BitConverter.SingleToInt32Bits(f);
        return bits >= 0 ? bits : -(bits & int.MaxValue);
    }

    private static float FromOrderedKey(int key) =>
        key >= 0 ? BitConverter.Int32BitsToSingle(key) : -BitConverter.Int32BitsToSingle(-key);

    private static Tensor Lookup(Tensor codes, Tensor levels, Tensor scales, Tensor? offsets)
    {
        // Gather the level, then multiply by the block's scale and add its offset: two roundings, as the core does.
        Tensor values = levels.index_select(0, codes.reshape(-1).to(ScalarType.Int32)).view(codes.shape);
        values = values.mul_(scales);
        return offsets is null ? values : values.add_(offsets);
    }

    private (Tensor Levels, Tensor Thresholds) TablesFor(Device device)
    {
        string key = device.ToString();
        lock (_gate)
        {
            if (!_tables.TryGetValue(key, out var tables))
            {
                Tensor levels = tensor(_levels, device: device).DetachFromDisposeScope();
                Tensor thresholds = tensor(_thresholds, device: device).DetachFromDisposeScope();
                tables = (levels, thresholds);
                _tables[key] = tables;
            }

            return tables;
        }
    }

    private (Tensor Codes, Tensor Scales, Tensor? Offsets, Tensor? Dequantized) Run(Tensor weight, bool dequantize)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (!weight.is_floating_point())
        {
            throw new ArgumentException($"Quantization needs a floating-point tensor, got {weight.dtype}.", nameof(weight));
        }

        long n = weight.numel();
        if (n == 0)
        {
            throw new ArgumentException("Cannot quantize an empty tensor.", nameof(weight));
        }

        using var scope = NewDisposeScope();
        Tensor flat = weight.to(ScalarType.Float32).reshape(-1);
        long blocks = (n + BlockSize - 1) / BlockSize;
        long padded = blocks * BlockSize;
        if (padded != n)
        {
            // Repeat the last element: it belongs to the last block, so neither its absmax nor its min/max change.
            flat = cat([flat, flat.narrow(0, n - 1, 1).expand(padded - n)]);
        }

        Tensor x = flat.view(blocks, BlockSize);
        Tensor scales;
        Tensor? offsets = null;
        bool fresh = false;
        if (IsAsymmetric)
        {
            Tensor min = x.amin([1], keepdim: true);
            Tensor max = x.amax([1], keepdim: true);
            scales = max - min;
            offsets = min;
            ThrowIfNonFinite(weight, scales); // NaN and ±∞ propagate into the block's min/max
            long overflow = IndexOfNonFinite(scales);
            if (overflow >= 0)
            {
                throw new ArgumentException(
                    $"Block {overflow} spans [{ValueAt(min, overflow)}, {ValueAt(max, overflow)}], a range that overflows float32.", nameof(weight));
            }

            x = x - offsets;
            fresh = true;
        }
        else
        {
            scales = x.abs().amax([1], keepdim: true);
            ThrowIfNonFinite(weight, scales); // NaN and ±∞ propagate into the block's absmax
        }

        // ratio = (x − offset) · (1 / scale); a zero scale gives ratio 0; a subnormal scale (1/scale = ∞) divides.
        Tensor inverse = scales.reciprocal();
        Tensor infinite = inverse.isinf();
        Tensor ratio;
        if (infinite.any().item<bool>())
        {
            Tensor zero = scales.eq(0);
            ratio = where(infinite.logical_and(zero.logical_not()), x / scales, x * where(zero, zeros_like(inverse), inverse));
        }
        else
        {
            ratio = fresh ? x.mul_(inverse) : x * inverse;
        }

        (Tensor levels, Tensor thresholds) = TablesFor(weight.device);
        Tensor codes = bucketize(ratio, thresholds, outInt32: true, right: true).to(ScalarType.Byte);
        Tensor? dequantized = null;
        if (dequantize)
        {
            Tensor values = Lookup(codes, levels, scales, offsets);
            dequantized = (padded != n ? values.view(-1).narrow(0, 0, n) : values.view(-1)).reshape(weight.shape);
        }

        Tensor codesOut = (padded != n ? codes.view(-1).narrow(0, 0, n) : codes.view(-1)).reshape(weight.shape).contiguous();
        Tensor scalesOut = scales.reshape(blocks);
        Tensor? offsetsOut = offsets?.reshape(blocks);
        codesOut.MoveToOuterDisposeScope();
        scalesOut.MoveToOuterDisposeScope();
        offsetsOut?.MoveToOuterDisposeScope();
        dequantized = dequantized?.contiguous().MoveToOuterDisposeScope();
        return (codesOut, scalesOut, offsetsOut, dequantized);
    }
}
