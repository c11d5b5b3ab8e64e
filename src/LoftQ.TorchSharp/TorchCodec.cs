using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp;

/// <summary>Torch-side unpacking and dequantization of <see cref="PackedWeight"/> (any device).</summary>
internal static class TorchCodec
{
    /// <summary>
    /// The dense weight [out, in] in <paramref name="dtype"/>, computed in float32 and cast once. Widths that divide 8
    /// gather code-book values straight from the packed bytes (a [256, 8/bits] value table), so the only full-size
    /// temporaries are the int32 byte indices and the result itself; scaling is in place.
    /// </summary>
    public static Tensor Dequantize(in PackedWeight w, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        long n = w.ElementCount;
        long blocks = w.Scales.shape[0];
        long padded = blocks * w.BlockSize;
        Tensor values;
        if (w.Bits == 8)
        {
            values = w.CodeBook.index_select(0, w.Codes.to(ScalarType.Int32));
        }
        else if (8 % w.Bits == 0)
        {
            Tensor table = w.CodeBook.index_select(0, ByteTable(w.Bits, w.Codes.device).view(-1)).view(256, 8 / w.Bits);
            values = table.index_select(0, w.Codes.to(ScalarType.Int32)).view(-1);
        }
        else
        {
            // 3, 5, 6, 7 bits: codes straddle bytes; the engine's unpacker reads the stream without the group padding.
            Tensor stream = w.Codes.narrow(0, 0, ((n * w.Bits) + 7) / 8);
            values = w.CodeBook.index_select(0, TorchBlockwiseQuantizer.Unpack(stream, w.Bits, n).to(ScalarType.Int32));
        }

        long m = values.shape[0];
        if (m > padded)
        {
            values = values.narrow(0, 0, padded);
        }
        else if (m < padded)
        {
            values = torch.nn.functional.pad(values, [0, padded - m]);
        }

        Tensor blocked = values.view(blocks, w.BlockSize);
        blocked.mul_(w.Scales.unsqueeze(1));
        if (w.Offsets is not null)
        {
            blocked.add_(w.Offsets.unsqueeze(1));
        }

        Tensor flat = blocked.view(-1);
        if (padded != n)
        {
            flat = flat.narrow(0, 0, n);
        }

        Tensor result = flat.view(w.OutFeatures, w.InFeatures);
        if (result.dtype != dtype)
        {
            result = result.to(dtype);
        }

        return result.MoveToOuterDisposeScope();
    }

    private static readonly Dictionary<(int Bits, string Device), Tensor> s_tables = new();
    private static readonly Lock s_tablesGate = new();

    /// <summary>[256, 8/bits] int32: the codes in a byte, most significant first.</summary>
    private static Tensor ByteTable(int bits, Device device)
    {
        lock (s_tablesGate)
        {
            string key = device.ToString();
            if (s_tables.TryGetValue((bits, key), out Tensor? table))
            {
                return table;
            }

            int perByte = 8 / bits, mask = (1 << bits) - 1;
            var values = new int[256 * perByte];
            for (int b = 0; b < 256; b++)
            {
                for (int j = 0; j < perByte; j++)
                {
                    values[(b * perByte) + j] = (b >> (8 - ((j + 1) * bits))) & mask;
                }
            }

            table = torch.tensor(values, [256, perByte], ScalarType.Int32).to(device);
            table.DetachFromDisposeScope();
            s_tables[(bits, key)] = table;
            return table;
        }
    }
}
