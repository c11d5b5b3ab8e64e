using System.Buffers;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Modules;

/// <summary>Dequantizes a range of a <see cref="QuantizedTensor"/> (e.g. a block of weight rows) without touching the rest.</summary>
internal static class QuantizedRows
{
    /// <summary>Target size of one dequantized row block, in floats (256 KiB: stays in L2).</summary>
    internal const int BlockFloats = 1 << 16;

    /// <summary>Rows of length <paramref name="columns"/> per block so a block holds about <see cref="BlockFloats"/> values.</summary>
    public static int RowsPerBlock(int columns, int rows) => Math.Clamp(BlockFloats / Math.Max(1, columns), 1, Math.Max(1, rows));

    /// <summary>Writes elements [start, start + destination.Length) of <paramref name="q"/> (flat, row-major) into <paramref name="destination"/>.</summary>
    public static void Dequantize(QuantizedTensor q, long start, Span<float> destination)
    {
        if (start < 0 || start + destination.Length > q.ElementCount)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"Range [{start}, {start + destination.Length}) is outside the tensor's {q.ElementCount} elements.");
        }

        ReadOnlySpan<byte> packed = q.PackedCodes;
        ReadOnlySpan<float> book = q.CodeBook;
        ReadOnlySpan<float> scales = q.Scales;
        ReadOnlySpan<float> offsets = q.Offsets;
        bool hasOffsets = q.HasOffsets;
        int bits = q.Bits, blockSize = q.BlockSize;
        bool aligned = 8 % bits == 0; // 1, 2, 4, 8: a code never straddles two bytes.
        int mask = (1 << bits) - 1;
        long i = start;
        int d = 0;
        while (d < destination.Length)
        {
            long block = i / blockSize;
            int run = (int)Math.Min(destination.Length - d, ((block + 1) * blockSize) - i);
            float scale = scales[(int)block];
            float offset = hasOffsets ? offsets[(int)block] : 0f;
            Span<float> target = destination.Slice(d, run);
            if (bits == 4)
            {
                for (int k = 0; k < run; k++, i++)
                {
                    int b = packed[(int)(i >> 1)];
                    int code = (i & 1) == 0 ? b >> 4 : b & 0xF;
                    target[k] = (book[code] * scale) + offset;
                }
            }
            else if (aligned)
            {
                for (int k = 0; k < run; k++, i++)
                {
                    long bit = i * bits;
                    int code = (packed[(int)(bit >> 3)] >> (8 - bits - (int)(bit & 7))) & mask;
                    target[k] = (book[code] * scale) + offset;
                }
            }
            else
            {
                for (int k = 0; k < run; k++, i++)
                {
                    target[k] = (book[BitPacking.Get(packed, i, bits)] * scale) + offset;
                }
            }

            d += run;
        }
    }

    /// <summary>
    /// Calls <paramref name="body"/>(firstRow, rowCount, block) for consecutive row blocks of the [rows, columns]
    /// tensor, each dequantized into a pooled buffer that is valid only during the call.
    /// </summary>
    public static void ForEachRowBlock(QuantizedTensor q, RowBlockAction body)
    {
        int rows = q.Shape.Rows, columns = q.Shape.Columns;
        int perBlock = RowsPerBlock(columns, rows);
        float[] buffer = ArrayPool<float>.Shared.Rent(perBlock * columns);
        try
        {
            for (int r0 = 0; r0 < rows; r0 += perBlock)
            {
                int count = Math.Min(perBlock, rows - r0);
                Span<float> block = buffer.AsSpan(0, count * columns);
                Dequantize(q, (long)r0 * columns, block);
                body(r0, count, block);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(buffer);
        }
    }

    /// <summary>The callback of <see cref="ForEachRowBlock"/>.</summary>
    public delegate void RowBlockAction(int firstRow, int rowCount, ReadOnlySpan<float> block);
}
