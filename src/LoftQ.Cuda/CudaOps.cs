using System.Runtime.CompilerServices;
using LoftQNet.Cuda.Device;
using LoftQNet.Cuda.Kernels;
using LoftQNet.Cuda.Native;
using LoftQNet.Numerics;

namespace LoftQNet.Cuda;

/// <summary>
/// <see cref="IDeviceOps"/> on one GPU: row-major BLAS calls mapped onto column-major cuBLAS (C = A·B row-major is
/// Cᵀ = Bᵀ·Aᵀ column-major, so the operands swap), row orthonormalisation as cuSOLVER QR of the column-major
/// transpose, cuRAND Philox for Gaussian directions, and the NVRTC kernels. Freed buffers go back to a pool keyed by
/// size, so a model's many same-shaped layers allocate once. One per <see cref="CudaLane"/>; not thread-safe.
/// </summary>
internal sealed unsafe class CudaOps(CudaContext context, CudaLane lane) : IDeviceOps, IDisposable
{
    private readonly Dictionary<long, Stack<DeviceMemoryHandle>> _pool = [];
    private DeviceMemoryHandle? _solverWork;
    private DeviceMemoryHandle? _scalars; // tau, info, failure, sum (grown as needed)
    private DeviceMemoryHandle? _gaussian;

    private nint Stream => lane.Stream.DangerousGetHandle();

    public DeviceBuffer<T> Allocate<T>(long length)
        where T : unmanaged
    {
        long bytes = Math.Max(1, length) * sizeof(T);
        bytes = (bytes + 255) & ~255L; // keep every buffer 256-byte aligned and sizes poolable
        return new CudaBuffer<T>(this, Rent(bytes), length);
    }

    public void Upload<T>(ReadOnlySpan<T> source, DeviceSpan<T> destination)
        where T : unmanaged
    {
        Check(source.Length, destination.Length);
        if (source.IsEmpty)
        {
            return;
        }

        fixed (T* p = source)
        {
            Status.Driver(CudaDriver.cuMemcpyHtoDAsync(Address(destination), (nint)p, (nuint)((long)source.Length * sizeof(T)), Stream));
        }

        // A pageable source has been staged by the time the call returns; a short wait keeps pinned sources safe too.
        lane.Synchronize();
    }

    public void Download<T>(DeviceSpan<T> source, Span<T> destination)
        where T : unmanaged
    {
        Check(destination.Length, source.Length);
        if (destination.IsEmpty)
        {
            return;
        }

        fixed (T* p = destination)
        {
            Status.Driver(CudaDriver.cuMemcpyDtoHAsync((nint)p, Address(source), (nuint)((long)destination.Length * sizeof(T)), Stream));
            lane.Synchronize();
        }
    }

    public void Copy<T>(DeviceSpan<T> source, DeviceSpan<T> destination)
        where T : unmanaged
    {
        Check(source.Length, destination.Length);
        if (source.Length > 0)
        {
            Status.Driver(CudaDriver.cuMemcpyDtoDAsync(Address(destination), Address(source), (nuint)(source.Length * sizeof(T)), Stream));
        }
    }

    public void Clear<T>(DeviceSpan<T> destination)
        where T : unmanaged
    {
        if (destination.Length > 0)
        {
            Status.Driver(CudaDriver.cuMemsetD8Async(Address(destination), 0, (nuint)(destination.Length * sizeof(T)), Stream));
        }
    }

    public void Gemm(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha, DeviceSpan<float> a, int lda,
        DeviceSpan<float> b, int ldb, float beta, DeviceSpan<float> c, int ldc)
    {
        int opA = transA == Transpose.Yes ? Cublas.CUBLAS_OP_T : Cublas.CUBLAS_OP_N;
        int opB = transB == Transpose.Yes ? Cublas.CUBLAS_OP_T : Cublas.CUBLAS_OP_N;
        Status.Blas(Cublas.cublasSgemm(
            lane.Blas.DangerousGetHandle(), opB, opA, n, m, k, &alpha, Address(b), ldb, Address(a), lda, &beta, Address(c), ldc));
    }

    public void OrthonormalizeRows(DeviceSpan<float> x, int rows, int columns)
    {
        if (rows > columns)
        {
            throw new ArgumentException($"Cannot orthonormalize {rows} rows of length {columns}.", nameof(rows));
        }

        // Row-major rows×columns is the column-major columns×rows matrix whose columns are our rows.
        nint solver = lane.Solver.DangerousGetHandle();
        ulong a = Address(x);
        Status.Solver(Cusolver.cusolverDnSgeqrf_bufferSize(solver, columns, rows, a, columns, out int geqrfWork));
        ulong tau = Scalars(((long)rows * sizeof(float)) + 64);
        ulong info = tau + (ulong)(((long)rows * sizeof(float) + 15) & ~15L);
        Status.Solver(Cusolver.cusolverDnSorgqr_bufferSize(solver, columns, rows, rows, a, columns, tau, out int orgqrWork));
        int workLength = Math.Max(geqrfWork, orgqrWork);
        ulong work = SolverWork((long)workLength * sizeof(float));
        Status.Solver(Cusolver.cusolverDnSgeqrf(solver, columns, rows, a, columns, tau, work, workLength, info));
        Status.Solver(Cusolver.cusolverDnSorgqr(solver, columns, rows, rows, a, columns, tau, work, workLength, info));
    }

    public void FillGaussian(DeviceSpan<float> destination, long seed, long stream)
    {
        if (destination.Length == 0)
        {
            return;
        }

        // cuRAND makes normals in pairs: generate an even count into scratch, then copy the range.
        long even = (destination.Length + 1) & ~1L;
        ulong scratch = Gaussian(even * sizeof(float));
        nint generator = lane.Random.DangerousGetHandle();
        Status.Rand(Curand.curandSetPseudoRandomGeneratorSeed(generator, unchecked((ulong)seed)));
        Status.Rand(Curand.curandSetGeneratorOffset(generator, unchecked((ulong)stream)));
        Status.Rand(Curand.curandGenerateNormal(generator, scratch, (nuint)even, 0f, 1f));
        Status.Driver(CudaDriver.cuMemcpyDtoDAsync(Address(destination), scratch, (nuint)(destination.Length * sizeof(float)), Stream));
    }

    public long Quantize(
        DeviceCodec codec, DeviceSpan<float> x, DeviceSpan<float> w, DeviceSpan<float> output, DeviceSpan<byte> codes,
        DeviceSpan<float> scales, DeviceSpan<float>? offsets)
    {
        ulong failure = LaunchQuantize(codec, x, w, output, codes, scales, offsets);
        ulong first;
        Status.Driver(CudaDriver.cuMemcpyDtoHAsync((nint)(&first), failure, sizeof(ulong), Stream));
        lane.Synchronize();
        return first == ulong.MaxValue ? -1 : (long)first;
    }

    public void Pack(DeviceSpan<byte> codes, int bits, DeviceSpan<byte> packed)
    {
        long n = codes.Length, packedLength = packed.Length;
        ulong pc = Address(codes), pp = Address(packed);
        void** args = stackalloc void*[5];
        args[0] = &pc;
        args[1] = &n;
        args[2] = &bits;
        args[3] = &pp;
        args[4] = &packedLength;
        Launch(context.PackKernel, KernelLaunch.Pack(packedLength), args);
    }

    public double SumOfSquares(DeviceSpan<float> x)
    {
        ulong result = Scalars(16);
        Status.Driver(CudaDriver.cuMemsetD32Async(result, 0, 2, Stream));
        ulong pa = Address(x), pb = 0;
        long n = x.Length;
        void** args = stackalloc void*[4];
        args[0] = &pa;
        args[1] = &pb;
        args[2] = &n;
        args[3] = &result;
        if (n > 0)
        {
            Launch(context.SumSquaresKernel, KernelLaunch.SumSquares(n), args);
        }

        double sum;
        Status.Driver(CudaDriver.cuMemcpyDtoHAsync((nint)(&sum), result, sizeof(double), Stream));
        lane.Synchronize();
        return sum;
    }

    public void Synchronize() => lane.Synchronize();

    /// <summary>
    /// Device milliseconds per call of <paramref name="body"/> (which only queues work on the stream), measured with
    /// CUDA events around <paramref name="repetitions"/> calls after one warm-up call.
    /// </summary>
    internal float TimeMilliseconds(Action body, int repetitions)
    {
        body();
        Status.Driver(CudaDriver.cuEventCreate(out nint start, CudaDriver.CU_EVENT_DEFAULT));
        using var startHandle = new EventHandle(context.Context, start);
        Status.Driver(CudaDriver.cuEventCreate(out nint end, CudaDriver.CU_EVENT_DEFAULT));
        using var endHandle = new EventHandle(context.Context, end);
        Status.Driver(CudaDriver.cuEventRecord(start, Stream));
        for (int i = 0; i < repetitions; i++)
        {
            body();
        }

        Status.Driver(CudaDriver.cuEventRecord(end, Stream));
        Status.Driver(CudaDriver.cuEventSynchronize(end));
        Status.Driver(CudaDriver.cuEventElapsedTime(out float milliseconds, start, end));
        return milliseconds / repetitions;
    }

    /// <summary>
    /// Queues the quantize kernel without reading back the failure flag (benchmarks; see <see cref="Quantize"/>); a null
    /// <paramref name="output"/> writes codes and scales only, a null <paramref name="w"/> writes the dequantized values.
    /// </summary>
    internal void QueueQuantize(
        DeviceCodec codec, DeviceSpan<float> x, DeviceSpan<float>? w, DeviceSpan<float>? output, DeviceSpan<byte> codes,
        DeviceSpan<float> scales, DeviceSpan<float>? offsets) => LaunchQuantize(codec, x, w, output, codes, scales, offsets);

    /// <inheritdoc/>
    public void Dispose()
    {
        _solverWork?.Dispose();
        _scalars?.Dispose();
        _gaussian?.Dispose();
        foreach (Stack<DeviceMemoryHandle> stack in _pool.Values)
        {
            while (stack.TryPop(out DeviceMemoryHandle? h))
            {
                h.Dispose();
            }
        }

        _pool.Clear();
    }

    /// <summary>Returns a buffer's memory to the pool.</summary>
    internal void Return(DeviceMemoryHandle memory)
    {
        if (!_pool.TryGetValue(memory.Bytes, out Stack<DeviceMemoryHandle>? stack))
        {
            _pool[memory.Bytes] = stack = new Stack<DeviceMemoryHandle>();
        }

        stack.Push(memory);
    }

    private ulong LaunchQuantize(
        DeviceCodec codec, DeviceSpan<float> x, DeviceSpan<float>? w, DeviceSpan<float>? output, DeviceSpan<byte> codes,
        DeviceSpan<float> scales, DeviceSpan<float>? offsets)
    {
        long n = x.Length;
        Check(n, w?.Length ?? n);
        Check(n, output?.Length ?? n);
        Check(n, codes.Length);
        ulong failure = Scalars(16);
        Status.Driver(CudaDriver.cuMemsetD32Async(failure, 0xFFFFFFFFu, 2, Stream));
        ulong px = Address(x), pc = Address(codes), ps = Address(scales);
        ulong pw = w is { } ws ? Address(ws) : 0UL, po = output is { } os ? Address(os) : 0UL;
        ulong poff = offsets is { } off ? Address(off) : 0UL;
        ulong levels = Address(codec.Levels.All), thresholds = Address(codec.Thresholds.All);
        long count = n;
        int blockSize = codec.BlockSize, levelCount = codec.LevelCount, asymmetric = codec.Asymmetric ? 1 : 0, steps = codec.SearchSteps;
        float minRatio = codec.SearchMinRatio;
        void** args = stackalloc void*[16];
        args[0] = &px;
        args[1] = &pw;
        args[2] = &po;
        args[3] = &pc;
        args[4] = &ps;
        args[5] = &poff;
        args[6] = &count;
        args[7] = &blockSize;
        args[8] = &levels;
        args[9] = &thresholds;
        args[10] = &levelCount;
        args[11] = &asymmetric;
        args[12] = &steps;
        args[13] = &minRatio;
        args[14] = &failure;
        args[15] = null;
        Launch(context.QuantizeKernel, KernelLaunch.Quantize(n, blockSize, levelCount, steps), args);
        return failure;
    }

    private void Launch(nint function, LaunchGeometry geometry, void** args) =>
        Status.Driver(CudaDriver.cuLaunchKernel(function, geometry.GridX, 1, 1, geometry.BlockX, 1, 1, geometry.SharedBytes, Stream, args, null));

    private DeviceMemoryHandle Rent(long bytes)
    {
        if (_pool.TryGetValue(bytes, out Stack<DeviceMemoryHandle>? stack) && stack.TryPop(out DeviceMemoryHandle? pooled))
        {
            return pooled;
        }

        int status = CudaDriver.cuMemAlloc(out ulong address, (nuint)bytes);
        if (status == 2 /* CUDA_ERROR_OUT_OF_MEMORY */ && _pool.Count > 0)
        {
            // Free the pooled buffers of other sizes and try once more.
            lane.Synchronize();
            foreach (Stack<DeviceMemoryHandle> s in _pool.Values)
            {
                while (s.TryPop(out DeviceMemoryHandle? h))
                {
                    h.Dispose();
                }
            }

            status = CudaDriver.cuMemAlloc(out address, (nuint)bytes);
        }

        Status.Driver(status, $"cuMemAlloc({bytes} bytes)");
        return new DeviceMemoryHandle(context.Context, (nint)address, bytes);
    }

    private ulong SolverWork(long bytes) => Grow(ref _solverWork, bytes);

    private ulong Scalars(long bytes) => Grow(ref _scalars, Math.Max(bytes, 4096));

    private ulong Gaussian(long bytes) => Grow(ref _gaussian, bytes);

    private ulong Grow(ref DeviceMemoryHandle? memory, long bytes)
    {
        if (memory is null || memory.Bytes < bytes)
        {
            lane.Synchronize(); // queued work may still use the old buffer
            memory?.Dispose();
            memory = null;
            Status.Driver(CudaDriver.cuMemAlloc(out ulong address, (nuint)Math.Max(bytes, 256)), $"cuMemAlloc({bytes} bytes)");
            memory = new DeviceMemoryHandle(context.Context, (nint)address, Math.Max(bytes, 256));
        }

        return memory.Address;
    }

    private static ulong Address<T>(DeviceSpan<T> span)
        where T : unmanaged => ((CudaBuffer<T>)span.Buffer).Memory.Address + (ulong)(span.Offset * sizeof(T));

    private static void Check(long expected, long actual, [CallerArgumentExpression(nameof(actual))] string what = "")
    {
        if (expected != actual)
        {
            throw new ArgumentException($"Expected {expected} elements in {what}, got {actual}.");
        }
    }

    /// <summary>A pooled device buffer.</summary>
    private sealed class CudaBuffer<T>(CudaOps owner, DeviceMemoryHandle memory, long length) : DeviceBuffer<T>(length)
        where T : unmanaged
    {
        private DeviceMemoryHandle? _memory = memory;

        public DeviceMemoryHandle Memory => _memory ?? throw new ObjectDisposedException(nameof(CudaBuffer<T>));

        public override void Dispose()
        {
            if (_memory is { } m)
            {
                _memory = null;
                owner.Return(m);
            }
        }
    }
}
