using LoftQNet.Quantization;
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
        if (IsCpuKernelEligible(w))
        {
            Tensor dense = torch.empty([w.OutFeatures, w.InFeatures], ScalarType.Float32);
            DequantizeCpu(w, dense);
            if (dtype == ScalarType.Float32)
            {
                return dense;
            }

            using (dense)
            {
                return dense.to(dtype);
            }
        }

        return DequantizeWithTorchOps(w, dtype);
    }

    /// <summary>
    /// <see cref="Dequantize"/> with torch operations only, on the tensors' own device (the path for GPUs; tests run it
    /// on the CPU against the managed kernel).
    /// </summary>
    internal static Tensor DequantizeWithTorchOps(in PackedWeight w, ScalarType dtype)
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

    /// <summary>
    /// deq(W) as a float32 [out, in] view of this thread's scratch buffer, valid only until the thread's next call: for
    /// a product that does not keep its operand (a forward or backward under no_grad). On the CPU the managed kernel
    /// writes the buffer in place, so a layer allocates nothing weight-sized per call; elsewhere it is
    /// <see cref="Dequantize"/>'s result. The caller disposes the returned tensor (the view, not the buffer).
    /// </summary>
    public static Tensor DequantizeTransient(in PackedWeight w)
    {
        if (!IsCpuKernelEligible(w))
        {
            return Dequantize(w, ScalarType.Float32);
        }

        long n = w.ElementCount;
        ReserveScratch(n);
        Tensor view = t_scratch!.narrow(0, 0, n).view(w.OutFeatures, w.InFeatures);
        DequantizeCpu(w, view);
        return view;
    }

    /// <summary>
    /// Makes this thread's scratch buffer hold at least <paramref name="elements"/> floats now, so that a later
    /// dequantization of that size allocates nothing (a trainer reserves it before its first step, away from that step's
    /// activations).
    /// </summary>
    internal static void ReserveScratch(long elements)
    {
        if (t_scratch is null || t_scratch.numel() < elements)
        {
            t_scratch?.Dispose();
            t_scratch = null;
            Tensor buffer = torch.empty(elements, ScalarType.Float32);
            buffer.DetachFromDisposeScope();
            t_scratch = buffer;
        }
    }

    /// <summary>Releases this thread's scratch buffer (the next transient dequantization allocates a new one).</summary>
    public static void ReleaseScratch()
    {
        t_scratch?.Dispose();
        t_scratch = null;
    }

    /// <summary>This thread's scratch buffer size in floats (0 when it has none): tests check it is reused, not regrown.</summary>
    internal static long ScratchElements => t_scratch?.numel() ?? 0;

    [ThreadStatic]
    private static Tensor? t_scratch;

    /// <summary>Every tensor of <paramref name="w"/> is a contiguous CPU tensor of the layout the managed kernel reads.</summary>
    private static bool IsCpuKernelEligible(in PackedWeight w) =>
        w.Codes.device_type == DeviceType.CPU && w.Codes.dtype == ScalarType.Byte && w.Codes.is_contiguous()
        && w.Scales.device_type == DeviceType.CPU && w.Scales.dtype == ScalarType.Float32 && w.Scales.is_contiguous()
        && w.CodeBook.device_type == DeviceType.CPU && w.CodeBook.dtype == ScalarType.Float32 && w.CodeBook.is_contiguous()
        && (w.Offsets is null || (w.Offsets.device_type == DeviceType.CPU && w.Offsets.dtype == ScalarType.Float32 && w.Offsets.is_contiguous() && w.Offsets.numel() == w.Scales.numel()))
        && w.Codes.numel() >= PackedWeight.PackedLength(w.ElementCount, w.Bits)
        && w.Scales.numel() * w.BlockSize >= w.ElementCount && w.CodeBook.numel() >= 1L << w.Bits;

    /// <summary>The core's SIMD, multi-threaded dequantization kernel reading the CPU tensors' storage in place.</summary>
    private static unsafe void DequantizeCpu(in PackedWeight w, Tensor destination)
    {
        fixed (byte* codes = w.Codes.bytes)
        fixed (byte* scales = w.Scales.bytes, codeBook = w.CodeBook.bytes, offsets = w.Offsets is null ? default : w.Offsets.bytes)
        fixed (byte* dst = destination.bytes)
        {
            var source = new PackedSource((nint)codes, (nint)scales, (nint)offsets, (nint)codeBook, (int)w.CodeBook.numel(), w.Bits, w.BlockSize, w.ElementCount);
            BlockwiseCodec.Dequantize(source, (nint)dst);
        }
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
