using System.Diagnostics;
using LoftQNet.Numerics;

namespace LoftQNet.Cuda.Device;

/// <summary>
/// <see cref="IDeviceOps"/> that waits for the device before and after every call of an inner implementation and adds
/// the wall time to the call's category, so that a run's time splits into GEMM, QR, quantizer, copies, read-backs and
/// (what is left) host work. Slower than the inner implementation: for finding where time goes, not for timing runs.
/// </summary>
internal sealed class ProfilingOps(IDeviceOps inner) : IDeviceOps
{
    private readonly Dictionary<string, (int Calls, double Seconds)> _categories = new(StringComparer.Ordinal);

    /// <summary>Calls and seconds by category, in first-use order.</summary>
    public IReadOnlyDictionary<string, (int Calls, double Seconds)> Categories => _categories;

    public DeviceBuffer<T> Allocate<T>(long length)
        where T : unmanaged => Time("allocate", () => inner.Allocate<T>(length));

    public void Upload<T>(ReadOnlySpan<T> source, DeviceSpan<T> destination)
        where T : unmanaged
    {
        inner.Synchronize();
        long start = Stopwatch.GetTimestamp();
        inner.Upload(source, destination);
        Add("upload", start);
    }

    public void Download<T>(DeviceSpan<T> source, Span<T> destination)
        where T : unmanaged
    {
        inner.Synchronize();
        long start = Stopwatch.GetTimestamp();
        inner.Download(source, destination);
        Add("download", start);
    }

    public void Copy<T>(DeviceSpan<T> source, DeviceSpan<T> destination)
        where T : unmanaged => Time("copy", () => inner.Copy(source, destination));

    public void Clear<T>(DeviceSpan<T> destination)
        where T : unmanaged => Time("copy", () => inner.Clear(destination));

    public void Gemm(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha, DeviceSpan<float> a, int lda,
        DeviceSpan<float> b, int ldb, float beta, DeviceSpan<float> c, int ldc) =>
        Time(k <= 128 || m <= 128 ? "gemm (rank-side)" : "gemm", () => inner.Gemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc));

    public void OrthonormalizeRows(DeviceSpan<float> x, int rows, int columns) => Time("qr", () => inner.OrthonormalizeRows(x, rows, columns));

    public void FillGaussian(DeviceSpan<float> destination, long seed, long stream) => Time("gaussian", () => inner.FillGaussian(destination, seed, stream));

    public long Quantize(
        DeviceCodec codec, DeviceSpan<float> x, DeviceSpan<float> w, DeviceSpan<float> output, DeviceSpan<byte> codes,
        DeviceSpan<float> scales, DeviceSpan<float>? offsets) => Time("quantize", () => inner.Quantize(codec, x, w, output, codes, scales, offsets));

    public void Pack(DeviceSpan<byte> codes, int bits, DeviceSpan<byte> packed) => Time("pack", () => inner.Pack(codes, bits, packed));

    public double SumOfSquares(DeviceSpan<float> x) => Time("sum of squares", () => inner.SumOfSquares(x));

    public void Synchronize() => inner.Synchronize();

    private T Time<T>(string category, Func<T> call)
    {
        inner.Synchronize();
        long start = Stopwatch.GetTimestamp();
        T result = call();
        inner.Synchronize();
        Add(category, start);
        return result;
    }

    private void Time(string category, Action call) => Time(category, () =>
    {
        call();
        return 0;
    });

    private void Add(string category, long start)
    {
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        _categories[category] = _categories.TryGetValue(category, out (int Calls, double Seconds) c) ? (c.Calls + 1, c.Seconds + seconds) : (1, seconds);
    }
}
