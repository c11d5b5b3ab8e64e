using LoftQNet.Cuda.Device;
using LoftQNet.Cuda.Native;
using LoftQNet.Quantization;

namespace LoftQNet.Cuda;

/// <summary>
/// One independent line of work on the GPU: a non-blocking stream with its own cuBLAS, cuSOLVER and cuRAND handles,
/// device primitives (<see cref="CudaOps"/>, with their buffer pool and workspaces) and uploaded code books. A lane is
/// used by one thread at a time; several lanes let several layers overlap, so that one layer's host work (the small
/// SVD, a read-back) and latency-bound calls hide behind another's.
/// </summary>
internal sealed class CudaLane : IDisposable
{
    private readonly Dictionary<BlockwiseQuantizer, DeviceCodec> _codecs = new(ReferenceEqualityComparer.Instance);

    public CudaLane(CudaContext context)
    {
        context.MakeCurrent();
        nint ctx = context.Context;
        Status.Driver(CudaDriver.cuStreamCreate(out nint stream, CudaDriver.CU_STREAM_NON_BLOCKING));
        Stream = context.Own(new StreamHandle(ctx, stream));
        Status.Blas(Cublas.cublasCreate(out nint blas));
        Blas = context.Own(new CublasHandle(ctx, blas));
        Status.Blas(Cublas.cublasSetStream(blas, stream));
        Status.Solver(Cusolver.cusolverDnCreate(out nint solver));
        Solver = context.Own(new CusolverHandle(ctx, solver));
        Status.Solver(Cusolver.cusolverDnSetStream(solver, stream));
        Status.Rand(Curand.curandCreateGenerator(out nint random, Curand.CURAND_RNG_PSEUDO_PHILOX4_32_10));
        Random = context.Own(new CurandHandle(ctx, random));
        Status.Rand(Curand.curandSetStream(random, stream));
        Ops = new CudaOps(context, this);
    }

    public StreamHandle Stream { get; }

    public CublasHandle Blas { get; }

    public CusolverHandle Solver { get; }

    public CurandHandle Random { get; }

    public CudaOps Ops { get; }

    /// <summary>Waits for everything queued on this lane's stream.</summary>
    public void Synchronize() => Status.Driver(CudaDriver.cuStreamSynchronize(Stream.DangerousGetHandle()));

    /// <summary>The device form of <paramref name="quantizer"/> (uploaded once per lane).</summary>
    public DeviceCodec Codec(BlockwiseQuantizer quantizer)
    {
        if (!_codecs.TryGetValue(quantizer, out DeviceCodec? codec))
        {
            codec = DeviceCodec.Create(Ops, quantizer);
            _codecs[quantizer] = codec;
        }

        return codec;
    }

    /// <summary>Frees the lane's memory (the handles belong to the context and go with it).</summary>
    public void Dispose()
    {
        foreach (DeviceCodec codec in _codecs.Values)
        {
            codec.Dispose();
        }

        _codecs.Clear();
        Ops.Dispose();
    }
}
