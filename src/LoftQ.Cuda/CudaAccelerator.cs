using System.Collections.Concurrent;
using LoftQNet.Cuda.Device;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.Cuda;

/// <summary>
/// The LoftQ loop on one GPU: <see cref="DeviceLoftQ"/> over a <see cref="CudaLane"/> per concurrent run. Thread-safe:
/// up to <see cref="Concurrency"/> runs proceed at once, each on its own stream; more wait for a free lane.
/// </summary>
internal sealed class CudaAccelerator : ILoftQAccelerator
{
    /// <summary>Lanes when neither the caller nor <c>LOFTQ_CUDA_LANES</c> says otherwise.</summary>
    internal const int DefaultLanes = 4;

    private readonly CudaContext _context;
    private readonly List<CudaLane> _lanes = [];
    private readonly ConcurrentBag<CudaLane> _free = [];
    private readonly SemaphoreSlim _available;
    private int _disposed;

    internal CudaAccelerator(GpuInfo gpu, int lanes = DefaultLanes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(lanes, 1);
        Gpu = gpu;
        _context = CudaContext.Create(gpu.Ordinal, gpu.ComputeMajor, gpu.ComputeMinor);
        try
        {
            for (int i = 0; i < lanes; i++)
            {
                var lane = new CudaLane(_context);
                _lanes.Add(lane);
                _free.Add(lane);
            }
        }
        catch
        {
            DisposeLanes();
            _context.Dispose();
            throw;
        }

        _available = new SemaphoreSlim(lanes, lanes);
    }

    public GpuInfo Gpu { get; }

    public string Name => $"cuda:{Gpu.Ordinal} {Gpu.Name}";

    /// <summary>How each solve splits its small problem (<c>LOFTQ_CUDA_SMALL_STEP</c> = svd or gram; svd by default).</summary>
    internal SmallStepKind SmallStep { get; set; } = SmallStepKind.Svd;

    /// <summary>Runs that can proceed at once (one per lane).</summary>
    public int Concurrency => _lanes.Count;

    internal CudaContext Context => _context;

    public string? Unsupported(IQuantizer quantizer) => DeviceCodec.Unsupported(quantizer);

    public LoftQResult Run(Matrix weight, IQuantizer quantizer, int rank, int iterations, int seed, bool lowRankFirst)
    {
        ArgumentNullException.ThrowIfNull(quantizer);
        string? unsupported = Unsupported(quantizer);
        if (unsupported is not null)
        {
            throw new ArgumentException(unsupported, nameof(quantizer));
        }

        using Lease lease = Take();
        DeviceCodec codec = lease.Lane.Codec((BlockwiseQuantizer)quantizer);
        return new DeviceLoftQ(lease.Ops) { SmallStep = SmallStep }.Run(weight, codec, rank, iterations, seed, lowRankFirst);
    }

    /// <summary>
    /// A free lane for the calling thread (waits for one), with the context made current; dispose to give it back.
    /// Benchmarks and device checks use lanes directly.
    /// </summary>
    internal Lease Take()
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        _available.Wait();
        if (!_free.TryTake(out CudaLane? lane))
        {
            _available.Release();
            throw new InvalidOperationException("No free lane although the semaphore granted one.");
        }

        try
        {
            _context.MakeCurrent();
        }
        catch
        {
            Return(lane);
            throw;
        }

        return new Lease(this, lane);
    }

    private void Return(CudaLane lane)
    {
        _free.Add(lane);
        _available.Release();
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        // Wait until every lane is back, so no run is cut off mid-flight.
        for (int i = 0; i < _lanes.Count; i++)
        {
            _available.Wait();
        }

        _context.MakeCurrent();
        DisposeLanes();
        _context.Dispose();
        _available.Dispose();
    }

    private void DisposeLanes()
    {
        foreach (CudaLane lane in _lanes)
        {
            lane.Dispose();
        }
    }

    /// <summary>A lane held by one thread.</summary>
    internal readonly struct Lease(CudaAccelerator owner, CudaLane lane) : IDisposable
    {
        public CudaLane Lane => lane;

        public CudaOps Ops => lane.Ops;

        public void Dispose() => owner.Return(lane);
    }
}
