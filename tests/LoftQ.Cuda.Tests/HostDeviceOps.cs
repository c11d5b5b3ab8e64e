using System.Runtime.InteropServices;
using LoftQNet.Cuda.Device;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Cuda.Tests;

/// <summary>
/// <see cref="IDeviceOps"/> on the host, from the core's own kernels (Gemm, Qr, the counter-based Gaussian, the
/// blockwise codec): runs the device LoftQ loop without a GPU, so its orchestration is tested on every machine. It also
/// records what the loop moves between host and device.
/// </summary>
internal sealed class HostDeviceOps : IDeviceOps
{
    public long BytesUploaded { get; private set; }

    public long BytesDownloaded { get; private set; }

    public int LiveBuffers { get; private set; }

    /// <summary>When set, <see cref="Quantize"/> reports this index as failed (a kernel that disagrees with the CPU).</summary>
    public long? InjectQuantizeFailureAt { get; set; }

    public DeviceBuffer<T> Allocate<T>(long length)
        where T : unmanaged
    {
        LiveBuffers++;
        var buffer = new HostBuffer<T>(this, length);
        // Uninitialised memory: fill with a pattern so that reading before writing shows up in results.
        MemoryMarshal.AsBytes(buffer.Data.AsSpan()).Fill(0xA5);
        return buffer;
    }

    public unsafe void Upload<T>(ReadOnlySpan<T> source, DeviceSpan<T> destination)
        where T : unmanaged
    {
        Assert.Equal(destination.Length, source.Length);
        source.CopyTo(Span(destination));
        BytesUploaded += (long)source.Length * sizeof(T);
    }

    public unsafe void Download<T>(DeviceSpan<T> source, Span<T> destination)
        where T : unmanaged
    {
        Assert.Equal(source.Length, destination.Length);
        Span(source).CopyTo(destination);
        BytesDownloaded += (long)destination.Length * sizeof(T);
    }

    public void Copy<T>(DeviceSpan<T> source, DeviceSpan<T> destination)
        where T : unmanaged
    {
        Assert.Equal(source.Length, destination.Length);
        Span(source).CopyTo(Span(destination));
    }

    public void Clear<T>(DeviceSpan<T> destination)
        where T : unmanaged => Span(destination).Clear();

    public void Gemm(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha, DeviceSpan<float> a, int lda,
        DeviceSpan<float> b, int ldb, float beta, DeviceSpan<float> c, int ldc) =>
        Numerics.Gemm.Multiply(transA, transB, m, n, k, alpha, Span(a), lda, Span(b), ldb, beta, Span(c), ldc);

    public void OrthonormalizeRows(DeviceSpan<float> x, int rows, int columns) => Qr.OrthonormalizeRows(Span(x), rows, columns);

    public void FillGaussian(DeviceSpan<float> destination, long seed, long stream) => Gaussian.Fill(Span(destination), seed, 1f, stream);

    public long Quantize(
        DeviceCodec codec, DeviceSpan<float> x, DeviceSpan<float> w, DeviceSpan<float> output, DeviceSpan<byte> codes,
        DeviceSpan<float> scales, DeviceSpan<float>? offsets)
    {
        Span<float> values = Span(x);
        int bad = FloatConversions.IndexOfNonFinite(values);
        if (bad >= 0)
        {
            return bad;
        }

        if (InjectQuantizeFailureAt is long injected)
        {
            return injected;
        }

        var deq = new float[values.Length];
        QuantizedTensor q;
        try
        {
            q = codec.Quantizer.QuantizeDequantize(values, new TensorShape(values.Length), deq);
        }
        catch (ArgumentException)
        {
            return 0; // like the kernel: some index of the failing block (the loop asks the CPU quantizer for the message)
        }

        BitPacking.Unpack(q.PackedCodes, q.Bits, Span(codes));
        q.Scales.CopyTo(Span(scales));
        if (offsets is { } off)
        {
            q.Offsets.CopyTo(Span(off));
        }

        System.Numerics.Tensors.TensorPrimitives.Subtract(Span(w), deq, Span(output));
        return -1;
    }

    public void Pack(DeviceSpan<byte> codes, int bits, DeviceSpan<byte> packed) => BitPacking.Pack(Span(codes), bits, Span(packed));

    public double SumOfSquares(DeviceSpan<float> x)
    {
        double sum = 0;
        foreach (float v in Span(x))
        {
            sum += (double)v * v;
        }

        return sum;
    }

    public void Synchronize()
    {
    }

    private static Span<T> Span<T>(DeviceSpan<T> span)
        where T : unmanaged
    {
        var buffer = (HostBuffer<T>)span.Buffer;
        ObjectDisposedException.ThrowIf(buffer.Disposed, buffer);
        return buffer.Data.AsSpan((int)span.Offset, (int)span.Length);
    }

    private sealed class HostBuffer<T>(HostDeviceOps owner, long length) : DeviceBuffer<T>(length)
        where T : unmanaged
    {
        public T[] Data { get; } = new T[length];

        public bool Disposed { get; private set; }

        public override void Dispose()
        {
            if (!Disposed)
            {
                Disposed = true;
                owner.LiveBuffers--;
            }
        }
    }
}
