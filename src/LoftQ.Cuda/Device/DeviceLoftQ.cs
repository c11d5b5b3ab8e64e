using System.Diagnostics;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.Cuda.Device;

/// <summary>
/// LoftQ's alternating loop with W, Q, A and B on the device between passes: the same passes, warm starts, error
/// trace and choice of the best pass as <see cref="AlternatingOptimizer"/> with a <c>RandomizedSvdSolver</c> under
/// the weight objective. Only W goes up, and only the best pass's packed codes, scales, A and B come back.
/// </summary>
internal sealed class DeviceLoftQ(IDeviceOps ops)
{
    /// <summary>How the randomized solver splits its small problem (<see cref="SmallStepKind.Svd"/>, as the CPU path, by default).</summary>
    public SmallStepKind SmallStep { get; init; } = SmallStepKind.Svd;

    /// <summary>When set, each run adds the seconds it spent uploading, computing and downloading (benchmarks).</summary>
    public DeviceRunTimings? Timings { get; init; }

    /// <summary>Runs LoftQ on <paramref name="weight"/> (finite, out×in) with <paramref name="codec"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The rank or the number of passes is out of range.</exception>
    /// <exception cref="ArgumentException">The weight holds a NaN or infinity, or a residual cannot be quantized.</exception>
    public LoftQResult Run(Matrix weight, DeviceCodec codec, int rank, int iterations, int seed, bool lowRankFirst)
    {
        ArgumentNullException.ThrowIfNull(weight);
        int m = weight.Rows, n = weight.Columns;
        int maxRank = Math.Min(m, n);
        if (rank < 1 || rank > maxRank)
        {
            throw new ArgumentOutOfRangeException(nameof(rank), rank, $"Rank must be between 1 and min(out, in) = {maxRank} for a {m}x{n} weight, got {rank}.");
        }

        if (iterations < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(iterations), iterations, "Iterations must be 0 (QLoRA baseline) or more.");
        }

        int bad = FloatConversions.IndexOfNonFinite(weight.Span);
        if (bad >= 0)
        {
            throw new ArgumentException(
                $"Weight element ({bad / n}, {bad % n}) (flat index {bad}) is {weight.Span[bad]}; LoftQ needs finite weights.", nameof(weight));
        }

        var clock = Stopwatch.StartNew();
        long count = (long)m * n;
        long blocks = (count + codec.BlockSize - 1) / codec.BlockSize;
        var shape = new TensorShape(m, n);

        using DeviceBuffer<float> w = ops.Allocate<float>(count);
        using DeviceBuffer<float> work = ops.Allocate<float>(count);     // W − B·A, the next quantizer input
        using DeviceBuffer<float> residual = ops.Allocate<float>(count); // W − Q, the solver's input, then W − Q − B·A
        using DeviceBuffer<byte> codes = ops.Allocate<byte>(count);
        using DeviceBuffer<float> scales = ops.Allocate<float>(blocks);
        using DeviceBuffer<float>? offsets = codec.Asymmetric ? ops.Allocate<float>(blocks) : null;
        long started = Stopwatch.GetTimestamp();
        ops.Upload<float>(weight.Span, w.All);
        ops.Synchronize();
        long uploaded = Stopwatch.GetTimestamp();
        double weightNorm = Math.Sqrt(ops.SumOfSquares(w.All));

        if (iterations == 0)
        {
            Quantize(codec, w.All, w.All, residual.All, codes, scales, offsets);
            double error = Relative(Math.Sqrt(ops.SumOfSquares(residual.All)), weightNorm);
            QuantizedTensor q0 = DownloadQuantized(codec, shape, codes, scales, offsets);
            Matrix a0 = AlternatingOptimizer.KaimingUniformA(rank, n, seed);
            Matrix b0 = Matrix.Zeros(m, rank);
            return new LoftQResult(q0, a0, b0, [error], 0, error, error, clock.Elapsed) { WeightedError = error, QLoRAWeightedError = error };
        }

        using DeviceBuffer<byte> bestCodes = ops.Allocate<byte>(count);
        using DeviceBuffer<float> bestScales = ops.Allocate<float>(blocks);
        using DeviceBuffer<float>? bestOffsets = codec.Asymmetric ? ops.Allocate<float>(blocks) : null;
        var solver = new DeviceRandomizedSvd(ops, seed: seed) { SmallStep = SmallStep };
        var trace = new List<double>(iterations);
        DeviceFactors? previous = null, best = null;
        double bestError = double.PositiveInfinity, qloraError = double.NaN;
        int bestPass = 0;
        try
        {
            if (lowRankFirst)
            {
                Quantize(codec, w.All, w.All, residual.All, codes, scales, offsets);
                qloraError = Relative(Math.Sqrt(ops.SumOfSquares(residual.All)), weightNorm);
                previous = solver.Decompose(w.All, m, n, rank, null);
                ops.Copy(w.All, work.All);
                ops.Gemm(Transpose.No, Transpose.No, m, n, rank, -1f, previous.B.All, rank, previous.A.All, n, 1f, work.All, n);
            }
            else
            {
                ops.Copy(w.All, work.All);
            }

            for (int t = 1; t <= iterations; t++)
            {
                Quantize(codec, work.All, w.All, residual.All, codes, scales, offsets);
                if (t == 1 && !lowRankFirst)
                {
                    qloraError = Relative(Math.Sqrt(ops.SumOfSquares(residual.All)), weightNorm);
                }

                DeviceFactors factors = solver.Decompose(residual.All, m, n, rank, previous);

                // residual ← W − Q − B·A (its norm is the error); work ← W − B·A (the next pass's input).
                ops.Gemm(Transpose.No, Transpose.No, m, n, rank, -1f, factors.B.All, rank, factors.A.All, n, 1f, residual.All, n);
                double error = Relative(Math.Sqrt(ops.SumOfSquares(residual.All)), weightNorm);
                trace.Add(error);
                if (t < iterations)
                {
                    ops.Copy(w.All, work.All);
                    ops.Gemm(Transpose.No, Transpose.No, m, n, rank, -1f, factors.B.All, rank, factors.A.All, n, 1f, work.All, n);
                }

                if (error < bestError)
                {
                    if (best is not null && !ReferenceEquals(best, previous))
                    {
                        best.Dispose();
                    }

                    best = factors;
                    bestError = error;
                    bestPass = t;
                    ops.Copy(codes.All, bestCodes.All);
                    ops.Copy(scales.All, bestScales.All);
                    if (offsets is not null)
                    {
                        ops.Copy(offsets.All, bestOffsets!.All);
                    }
                }

                if (previous is not null && !ReferenceEquals(previous, best))
                {
                    previous.Dispose();
                }

                previous = factors;
            }

            ops.Synchronize();
            long computed = Stopwatch.GetTimestamp();
            QuantizedTensor q = DownloadQuantized(codec, shape, bestCodes, bestScales, bestOffsets);
            var a = Matrix.Uninitialized(rank, n);
            var b = Matrix.Uninitialized(m, rank);
            ops.Download(best!.A.All, a.Span);
            ops.Download(best.B.All, b.Span);
            Timings?.Add(Stopwatch.GetElapsedTime(started, uploaded), Stopwatch.GetElapsedTime(uploaded, computed), Stopwatch.GetElapsedTime(computed));
            return new LoftQResult(q, a, b, trace, bestPass, bestError, qloraError, clock.Elapsed)
            {
                WeightedError = bestError,
                QLoRAWeightedError = qloraError,
            };
        }
        finally
        {
            if (previous is not null && !ReferenceEquals(previous, best))
            {
                previous.Dispose();
            }

            best?.Dispose();
        }
    }

    /// <summary>
    /// Quantizes <paramref name="x"/>, writing <paramref name="w"/> − Q into <paramref name="output"/>. When a value
    /// cannot be quantized, the values come back and the CPU quantizer raises its own error for them (same message).
    /// </summary>
    private void Quantize(
        DeviceCodec codec, DeviceSpan<float> x, DeviceSpan<float> w, DeviceSpan<float> output, DeviceBuffer<byte> codes,
        DeviceBuffer<float> scales, DeviceBuffer<float>? offsets)
    {
        long failed = ops.Quantize(codec, x, w, output, codes.All, scales.All, offsets?.All);
        if (failed < 0)
        {
            return;
        }

        var values = new float[x.Length];
        ops.Download(x, values);
        _ = codec.Quantizer.Quantize(values, new TensorShape(values.Length));
        throw new InvalidOperationException(
            $"The GPU quantizer reported flat index {failed} as not quantizable, but the CPU quantizer accepts the values; this is a bug in LoftQ.Cuda.");
    }

    private QuantizedTensor DownloadQuantized(DeviceCodec codec, TensorShape shape, DeviceBuffer<byte> codes, DeviceBuffer<float> scales, DeviceBuffer<float>? offsets)
    {
        long count = shape.ElementCount;
        long packedLength = ((count * codec.Bits) + 7) / 8;
        using DeviceBuffer<byte> packedDevice = ops.Allocate<byte>(packedLength);
        ops.Pack(codes.Slice(0, count), codec.Bits, packedDevice.All);
        var packed = new byte[packedLength];
        var s = new float[scales.Length];
        float[]? o = offsets is null ? null : new float[offsets.Length];
        ops.Download(packedDevice.All, packed);
        ops.Download(scales.All, s);
        if (o is not null)
        {
            ops.Download(offsets!.All, o);
        }

        return new QuantizedTensor(shape, codec.Bits, codec.BlockSize, packed, s, codec.Quantizer.Codec.Levels.ToArray(), codec.Quantizer.Codec.Name, o);
    }

    private static double Relative(double error, double weightNorm) => weightNorm > 0 ? error / weightNorm : error;
}

/// <summary>Accumulated wall-clock seconds of <see cref="DeviceLoftQ"/> runs, by phase (thread-safe).</summary>
internal sealed class DeviceRunTimings
{
    private readonly Lock _gate = new();

    public int Runs { get; private set; }

    public double UploadSeconds { get; private set; }

    /// <summary>From the end of the upload to the end of the last pass (the small host SVDs included).</summary>
    public double ComputeSeconds { get; private set; }

    public double DownloadSeconds { get; private set; }

    public void Add(TimeSpan upload, TimeSpan compute, TimeSpan download)
    {
        lock (_gate)
        {
            Runs++;
            UploadSeconds += upload.TotalSeconds;
            ComputeSeconds += compute.TotalSeconds;
            DownloadSeconds += download.TotalSeconds;
        }
    }
}
