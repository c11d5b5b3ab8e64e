using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using LoftQNet.Numerics;

namespace LoftQNet.Quantization;

/// <summary>
/// The engine behind the built-in quantizers: blockwise scaling (symmetric absmax, or asymmetric min/max with a
/// per-block offset) onto an ascending code book, with fused single-pass quantize, pack and dequantize kernels,
/// multi-threaded over chunks of whole blocks. Immutable and thread-safe; results do not depend on the thread count.
/// </summary>
internal sealed class BlockwiseCodec
{
    /// <summary>Elements per work item (rounded to whole blocks whose packed codes start on a byte boundary).</summary>
    internal const int TargetChunkElements = 32768;

    /// <summary>Fewest elements worth giving a thread of its own.</summary>
    internal const long MinElementsPerThread = 1 << 16;

    private readonly float[] _levels;
    private readonly float[] _thresholds;
    private readonly int[]? _bucketBases;
    private readonly float _bucketLow;
    private readonly float _bucketsPerUnit;

    private readonly BlockScaleSearch? _search;
    private readonly (System.Runtime.Intrinsics.Vector256<float>[] Thresholds, System.Runtime.Intrinsics.Vector256<float>[] Levels)? _errorTables;

    /// <summary>Creates the codec; <paramref name="levels"/> must be strictly ascending with 2^<paramref name="bits"/> entries.</summary>
    public BlockwiseCodec(string name, int bits, int blockSize, float[] levels, bool asymmetric, BlockScaleSearch? search = null)
    {
        if (levels.Length != 1 << bits)
        {
            throw new ArgumentException($"A {bits}-bit code book has {1 << bits} levels, got {levels.Length}.", nameof(levels));
        }

        Name = name;
        Bits = bits;
        BlockSize = blockSize;
        Asymmetric = asymmetric;
        _levels = (float[])levels.Clone();
        _thresholds = QuantizationKernels.ComputeThresholds(_levels);
        _bucketBases = QuantizationKernels.BuildBuckets(_levels, _thresholds, out _bucketLow, out _bucketsPerUnit);
        search?.Validate();
        _search = search;
        _errorTables = search is null ? null : QuantizationKernels.SquaredErrorTables(_thresholds, _levels);
    }

    /// <summary>The per-block scale search, or null for absmax (min/max) scales.</summary>
    public BlockScaleSearch? Search => _search;

    public string Name { get; }

    public int Bits { get; }

    public int BlockSize { get; }

    public bool Asymmetric { get; }

    public ReadOnlySpan<float> Levels => _levels;

    public ReadOnlySpan<float> Thresholds => _thresholds;

    /// <summary>Whether the AVX-512 path uses the bucketed code search (code books of ≤ 16 well-spread levels).</summary>
    public bool HasBuckets => _bucketBases is not null;

    /// <summary>Quantizes (and, when <paramref name="fused"/>, dequantizes into <paramref name="dequantized"/> in the same pass).</summary>
    /// <param name="values">Row-major values.</param>
    /// <param name="shape">Their shape.</param>
    /// <param name="dequantized">Destination of the dequantized values when fused.</param>
    /// <param name="fused">Whether to dequantize too.</param>
    /// <param name="columnWeights">
    /// With a scale search: one non-negative weight per column (the last dimension), so that each block's scale
    /// minimises Σ weight·error² instead of Σ error²; null weighs every value the same. Ignored without a search.
    /// </param>
    public unsafe QuantizedTensor Run(ReadOnlySpan<float> values, TensorShape shape, Span<float> dequantized, bool fused, float[]? columnWeights = null)
    {
        long n = shape.ElementCount;
        if (values.Length != n)
        {
            throw new ArgumentException($"Shape {shape} has {n} elements but {values.Length} values were given.", nameof(values));
        }

        if (fused && dequantized.Length != n)
        {
            throw new ArgumentException($"Expected a destination of {n} values for shape {shape}, got {dequantized.Length}.", nameof(dequantized));
        }

        int columns = shape.Rank == 0 ? 1 : shape[shape.Rank - 1];
        if (columnWeights is not null && columnWeights.Length != columns)
        {
            throw new ArgumentException($"Expected one weight per column ({columns}) for shape {shape}, got {columnWeights.Length}.", nameof(columnWeights));
        }

        if (_search is null)
        {
            columnWeights = null;
        }

        int blocks = (int)((n + BlockSize - 1) / BlockSize);
        var scales = new float[blocks];
        float[]? offsets = Asymmetric ? new float[blocks] : null;
        var packed = new byte[BitPacking.PackedLength(n, Bits)];
        int blocksPerChunk = BlocksPerChunk(BlockSize, Bits);
        int chunks = (blocks + blocksPerChunk - 1) / blocksPerChunk;
        var failure = new Failure();
        fixed (float* pv = values)
        fixed (float* pd = dequantized)
        {
            nint src = (nint)pv;
            nint dst = fused ? (nint)pd : 0;
            int threads = ComputeSettings.ThreadsFor(n, MinElementsPerThread);
            ComputeSettings.ParallelFor(chunks, threads, c => QuantizeChunk(c, blocksPerChunk, src, n, scales, offsets, packed, dst, failure, columnWeights));
        }

        failure.ThrowIfAny();
        return new QuantizedTensor(shape, Bits, BlockSize, packed, scales, (float[])_levels.Clone(), Name, offsets);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void QuantizeChunk(int chunk, int blocksPerChunk, nint source, long n, float[] scales, float[]? offsets, byte[] packed, nint destination, Failure failure, float[]? columnWeights)
    {
        int b0 = chunk * blocksPerChunk;
        int b1 = Math.Min(scales.Length, b0 + blocksPerChunk);
        long e0 = (long)b0 * BlockSize;
        int length = (int)(Math.Min(n, (long)b1 * BlockSize) - e0);
        if (failure.Index < e0)
        {
            return; // an earlier element already failed; nothing here can be reported
        }

        byte[] scratch = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            var x = new ReadOnlySpan<float>((float*)source + e0, length);
            Span<byte> codes = scratch.AsSpan(0, length);
            var y = destination != 0 ? new Span<float>((float*)destination + e0, length) : default;
            int done = 0;
            bool fusedDone = false;
            if (_search is null && QuantizationKernels.UseVector512 && BlockSize % 16 == 0)
            {
                int full = length / BlockSize;
                int fullLength = full * BlockSize;
                done = QuantizationKernels.QuantizeBlocksVector512(
                    x[..fullLength], BlockSize, full, Asymmetric, _levels, _thresholds, scales.AsSpan(b0, full),
                    offsets is null ? default : offsets.AsSpan(b0, full), codes, y.IsEmpty ? default : y[..fullLength],
                    _bucketBases, _bucketLow, _bucketsPerUnit);
                fusedDone = _levels.Length <= QuantizationKernels.SmallCodeBook;
            }

            for (int blk = b0 + done; blk < b1; blk++)
            {
                int s = (int)(((long)blk * BlockSize) - e0);
                int len = Math.Min(BlockSize, length - s);
                ReadOnlySpan<float> segment = x.Slice(s, len);
                if (!TryBlockParameters(segment, e0 + s, blk, failure, out float scale, out float offset))
                {
                    return;
                }

                if (_search is not null && scale > 0f)
                {
                    (scale, offset) = SearchScale(segment, scale, offset, codes.Slice(s, len), columnWeights, e0 + s);
                }

                scales[blk] = scale;
                if (offsets is not null)
                {
                    offsets[blk] = offset;
                }

                float inverse = scale > 0f ? 1f / scale : 0f;
                QuantizationKernels.Codes(segment, offset, scale, inverse, _thresholds, codes.Slice(s, len));
            }

            long byteStart = e0 * Bits / 8;
            BitPacking.PackUnchecked(codes, Bits, packed.AsSpan((int)byteStart, (int)BitPacking.PackedLength(length, Bits)));
            if (!y.IsEmpty)
            {
                for (int blk = fusedDone ? b0 + done : b0; blk < b1; blk++)
                {
                    int s = (int)(((long)blk * BlockSize) - e0);
                    int len = Math.Min(BlockSize, length - s);
                    QuantizationKernels.Lookup(codes.Slice(s, len), _levels, scales[blk], offsets is null ? 0f : offsets[blk], offsets is not null, y.Slice(s, len));
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    /// <summary>
    /// The clip ratio of <see cref="_search"/>'s grid with the least (weighted) squared error on <paramref name="segment"/>
    /// (ties keep the larger ratio), as the block's scale and offset; <paramref name="codes"/> is scratch. With
    /// <paramref name="columnWeights"/>, element i (flat index <paramref name="start"/> + i) counts with the weight of its column.
    /// </summary>
    internal (float Scale, float Offset) SearchScale(ReadOnlySpan<float> segment, float scale, float offset, Span<byte> codes, float[]? columnWeights = null, long start = 0)
    {
        BlockScaleSearch search = _search!;
        int len = segment.Length;
        int need = columnWeights is null ? len : 2 * len;
        float[]? rented = need <= 1024 ? null : ArrayPool<float>.Shared.Rent(need);
        Span<float> buffer = rented is null ? stackalloc float[need] : rented.AsSpan(0, need);
        try
        {
            Span<float> scratch = buffer[..len];
            scoped ReadOnlySpan<float> weights = default;
            int columns = columnWeights?.Length ?? 0;
            int first = columnWeights is null ? 0 : (int)(start % columns);
            if (columnWeights is not null && first + len <= columns)
            {
                weights = columnWeights.AsSpan(first, len); // the block lies within one row
            }
            else if (columnWeights is not null)
            {
                Span<float> w = buffer.Slice(len, len);
                int column = first;
                for (int i = 0; i < len;)
                {
                    int run = Math.Min(len - i, columns - column);
                    columnWeights.AsSpan(column, run).CopyTo(w.Slice(i, run));
                    i += run;
                    column = 0;
                }

                weights = w;
            }

            float bestScale = scale, bestOffset = offset;
            double bestError = double.PositiveInfinity;
            for (int k = 0; k <= search.Steps; k++)
            {
                float c = search.Ratio(k);
                float s = scale * c;
                float o = Asymmetric ? offset + (0.5f * (scale - s)) : 0f;
                if (!(s > 0f) || !float.IsFinite(s))
                {
                    continue;
                }

                double error = BlockError(segment, s, o, codes, scratch, weights);
                if (error < bestError)
                {
                    bestError = error;
                    bestScale = s;
                    bestOffset = o;
                }
            }

            return (bestScale, bestOffset);
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<float>.Shared.Return(rented);
            }
        }
    }

    /// <summary>
    /// Squared error (weighted by <paramref name="weights"/> when not empty) of quantizing <paramref name="segment"/> with
    /// <paramref name="scale"/> and <paramref name="offset"/>; <paramref name="codes"/> and <paramref name="scratch"/>
    /// (the segment's length each) are overwritten.
    /// </summary>
    private double BlockError(ReadOnlySpan<float> segment, float scale, float offset, Span<byte> codes, Span<float> scratch, ReadOnlySpan<float> weights)
    {
        if (_errorTables is { } tables
            && QuantizationKernels.TrySquaredError(segment, offset, scale, 1f / scale, tables.Thresholds, tables.Levels, Asymmetric, weights, out double fused))
        {
            return fused;
        }

        QuantizationKernels.Codes(segment, offset, scale, 1f / scale, _thresholds, codes);
        QuantizationKernels.Lookup(codes, _levels, scale, offset, Asymmetric, scratch);
        TensorPrimitives.Subtract(segment, scratch, scratch);
        if (weights.IsEmpty)
        {
            return TensorPrimitives.SumOfSquares(scratch);
        }

        TensorPrimitives.Multiply(scratch, scratch, scratch);
        return TensorPrimitives.Dot(scratch, weights);
    }

    /// <summary>Scale (and offset) of one block; reports a non-finite value or an overflowing range to <paramref name="failure"/>.</summary>
    private bool TryBlockParameters(ReadOnlySpan<float> segment, long start, int block, Failure failure, out float scale, out float offset)
    {
        offset = 0f;
        if (!Asymmetric)
        {
            // MaxMagnitude returns the signed element (and NaN if any element is NaN).
            scale = Math.Abs(TensorPrimitives.MaxMagnitude(segment));
            if (float.IsFinite(scale))
            {
                return true;
            }
        }
        else
        {
            float min = TensorPrimitives.Min(segment);
            float max = TensorPrimitives.Max(segment);
            scale = max - min;
            offset = min;
            if (float.IsFinite(min) && float.IsFinite(max))
            {
                if (float.IsFinite(scale))
                {
                    return true;
                }

                failure.Report(start, $"Block {block} (flat indices {start}..{start + segment.Length - 1}) spans [{min}, {max}], a range that overflows float32.");
                return false;
            }
        }

        int bad = IndexOfNonFinite(segment);
        failure.Report(start + bad, NonFiniteMessage(start + bad, segment[bad]));
        return false;
    }

    /// <summary>
    /// The scalar reference: absmax (or min/max) by a plain loop, nearest level by float distance with ties to the
    /// lower index, bit-stream packing one bit at a time. The fast path must match it bit for bit.
    /// </summary>
    internal QuantizedTensor QuantizeReference(ReadOnlySpan<float> values, TensorShape shape)
    {
        long n = shape.ElementCount;
        if (values.Length != n)
        {
            throw new ArgumentException($"Shape {shape} has {n} elements but {values.Length} values were given.", nameof(values));
        }

        int blocks = (int)((n + BlockSize - 1) / BlockSize);
        var scales = new float[blocks];
        float[]? offsets = Asymmetric ? new float[blocks] : null;
        var codes = new byte[n];
        for (int blk = 0; blk < blocks; blk++)
        {
            int start = blk * BlockSize;
            int end = (int)Math.Min(n, (long)start + BlockSize);
            float absmax = 0f, min = float.PositiveInfinity, max = float.NegativeInfinity;
            for (int i = start; i < end; i++)
            {
                float v = values[i];
                if (!float.IsFinite(v))
                {
                    throw new ArgumentException(NonFiniteMessage(i, v), nameof(values));
                }

                absmax = Math.Max(absmax, Math.Abs(v));
                min = Math.Min(min, v);
                max = Math.Max(max, v);
            }

            float scale = Asymmetric ? max - min : absmax;
            float offset = Asymmetric ? min : 0f;
            if (!float.IsFinite(scale))
            {
                throw new ArgumentException($"Block {blk} spans [{min}, {max}], a range that overflows float32.", nameof(values));
            }

            scales[blk] = scale;
            if (offsets is not null)
            {
                offsets[blk] = offset;
            }

            float inverse = scale > 0f ? 1f / scale : 0f;
            for (int i = start; i < end; i++)
            {
                float r = float.IsInfinity(inverse) ? (values[i] - offset) / scale : (values[i] - offset) * inverse;
                codes[i] = (byte)QuantizationKernels.NearestScalar(_levels, r);
            }
        }

        var packed = new byte[BitPacking.PackedLength(n, Bits)];
        BitPacking.PackScalar(codes, Bits, packed);
        return new QuantizedTensor(shape, Bits, BlockSize, packed, scales, (float[])_levels.Clone(), Name, offsets);
    }

    /// <summary>Generic dequantization of any <see cref="QuantizedTensor"/>, multi-threaded over chunks of blocks.</summary>
    internal static unsafe void Dequantize(QuantizedTensor quantized, Span<float> destination)
    {
        fixed (byte* codes = quantized.PackedCodes)
        fixed (float* scales = quantized.Scales, offsets = quantized.Offsets, codeBook = quantized.CodeBook, pd = destination)
        {
            var source = new PackedSource((nint)codes, (nint)scales, quantized.HasOffsets ? (nint)offsets : 0, (nint)codeBook, quantized.CodeBook.Length, quantized.Bits, quantized.BlockSize, quantized.ElementCount);
            Dequantize(source, (nint)pd);
        }
    }

    /// <summary>
    /// Dequantizes packed codes held in memory the caller keeps alive and unmoved for the call (e.g. a CPU tensor's
    /// storage): <paramref name="source"/> describes it, <paramref name="destination"/> receives
    /// <see cref="PackedSource.Count"/> floats. Multi-threaded over chunks of blocks like the array form.
    /// </summary>
    internal static void Dequantize(in PackedSource source, nint destination)
    {
        int blocksPerChunk = BlocksPerChunk(source.BlockSize, source.Bits);
        long blockCount = (source.Count + source.BlockSize - 1) / source.BlockSize;
        int chunks = (int)((blockCount + blocksPerChunk - 1) / blocksPerChunk);
        int threads = ComputeSettings.ThreadsFor(source.Count, MinElementsPerThread);
        PackedSource s = source;
        ComputeSettings.ParallelFor(chunks, threads, c => DequantizeChunk(s, c, blocksPerChunk, destination));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void DequantizeChunk(PackedSource q, int chunk, int blocksPerChunk, nint destination)
    {
        long n = q.Count;
        int blockSize = q.BlockSize;
        long b0 = (long)chunk * blocksPerChunk;
        long b1 = Math.Min((n + blockSize - 1) / blockSize, b0 + blocksPerChunk);
        long e0 = b0 * blockSize;
        int length = (int)(Math.Min(n, b1 * blockSize) - e0);
        byte[] scratch = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            Span<byte> codes = scratch.AsSpan(0, length);
            long firstByte = e0 * q.Bits / 8;
            long packedLength = (n + 7) / 8 * q.Bits; // whole 8-code groups, as QuantizedTensor and PackedWeight store them
            var packed = new ReadOnlySpan<byte>((byte*)q.Codes + firstByte, (int)Math.Min(packedLength - firstByte, int.MaxValue));
            BitPacking.UnpackUnchecked(packed, q.Bits, codes);
            var y = new Span<float>((float*)destination + e0, length);
            var levels = new ReadOnlySpan<float>((float*)q.CodeBook, q.CodeBookLength);
            float* scales = (float*)q.Scales, offsets = (float*)q.Offsets;
            bool hasOffsets = q.Offsets != 0;
            for (long blk = b0; blk < b1; blk++)
            {
                int s = (int)((blk * blockSize) - e0);
                int len = Math.Min(blockSize, length - s);
                QuantizationKernels.Lookup(codes.Slice(s, len), levels, scales[blk], hasOffsets ? offsets[blk] : 0f, hasOffsets, y.Slice(s, len));
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    /// <summary>
    /// Blocks per work item: about <see cref="TargetChunkElements"/> elements, at least one block, and a multiple
    /// that keeps every chunk's packed codes starting on a byte boundary.
    /// </summary>
    internal static int BlocksPerChunk(int blockSize, int bits)
    {
        long bitsPerBlock = (long)blockSize * bits;
        int align = 8 / (int)Gcd(bitsPerBlock, 8);
        long perChunk = Math.Max(1, TargetChunkElements / blockSize);
        perChunk = (perChunk + align - 1) / align * align;
        return (int)perChunk;
    }

    private static long Gcd(long a, long b)
    {
        while (b != 0)
        {
            (a, b) = (b, a % b);
        }

        return a;
    }

    private static int IndexOfNonFinite(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                return i;
            }
        }

        throw new InvalidOperationException("A block reported a non-finite extreme but holds only finite values.");
    }

    internal static string NonFiniteMessage(long index, float value) =>
        $"Value at flat index {index} is {value}; quantization needs finite values.";

    /// <summary>The lowest failing flat index reported by any worker, and its message.</summary>
    private sealed class Failure
    {
        private readonly Lock _gate = new();
        private long _index = long.MaxValue;
        private string? _message;

        public long Index => Volatile.Read(ref _index);

        public void Report(long index, string message)
        {
            lock (_gate)
            {
                if (index < _index)
                {
                    _message = message;
                    Volatile.Write(ref _index, index);
                }
            }
        }

        public void ThrowIfAny()
        {
            if (_message is not null)
            {
                throw new ArgumentException(_message, "values");
            }
        }
    }
}

/// <summary>
/// Packed blockwise codes in caller-owned memory: <see cref="Codes"/> holds ⌈Count/8⌉·Bits bytes (MSB-first, the
/// <see cref="QuantizedTensor"/> layout), <see cref="Scales"/> and <see cref="Offsets"/> (0 when symmetric) one float
/// per block, <see cref="CodeBook"/> <see cref="CodeBookLength"/> floats.
/// </summary>
internal readonly record struct PackedSource(nint Codes, nint Scales, nint Offsets, nint CodeBook, int CodeBookLength, int Bits, int BlockSize, long Count);
