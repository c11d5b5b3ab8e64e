using System.Diagnostics;
using LoftQNet.Cuda;
using LoftQNet.Cuda.Device;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.GpuCheck;

/// <summary>One measured figure: what, the value, its unit, and how it was measured.</summary>
public sealed record Measurement(string Name, double Value, string Unit, string Note);

/// <summary>The GPU goals, measured: the fused quantizer's bandwidth, SGEMM, and the LoftQ loop on a Llama-7B-shaped model.</summary>
internal static class DeviceBenchmarks
{
    /// <summary>One Llama-7B decoder block's target shapes (out, in): q, k, v, o, gate, up, down.</summary>
    internal static readonly (int Rows, int Columns)[] Llama7BBlock =
        [(S(4096), S(4096)), (S(4096), S(4096)), (S(4096), S(4096)), (S(4096), S(4096)), (S(11008), S(4096)), (S(11008), S(4096)), (S(4096), S(11008))];

    /// <summary>A dimension, divided by 16 for a smoke run on an emulated device (<see cref="DeviceChecks.Small"/>).</summary>
    internal static int S(int dimension) => DeviceChecks.Small ? dimension / 16 : dimension;

    public static IEnumerable<Measurement> Quantizer(CudaAccelerator gpu)
    {
        int rows = S(4096), columns = S(11008);
        long n = (long)rows * columns;
        var host = new float[n];
        Gaussian.Fill(host, 1, 0.02f);
        var results = new List<Measurement>();
        using (CudaAccelerator.Lease lane = gpu.Take())
        {
            CudaOps ops = lane.Ops;
            using DeviceBuffer<float> x = ops.Allocate<float>(n), output = ops.Allocate<float>(n);
            using DeviceBuffer<byte> codes = ops.Allocate<byte>(n);
            using DeviceBuffer<float> scales = ops.Allocate<float>(n / 64);
            ops.Upload<float>(host, x.All);
            // The loop's call (reads x and W, writes W - Q and codes), torch's quantize+dequantize (reads x, writes Q and
            // codes) and the codes alone (reads x, writes codes and scales).
            foreach ((string name, BlockScaleSearch? search, bool loop, bool dequantize, double bytesPerValue) in new[]
            {
                ("absmax, W-Q out", (BlockScaleSearch?)null, true, true, 13.0),
                ("absmax, Q out", null, false, true, 9.0),
                ("absmax, codes only", null, false, false, 5.0),
                ("scale search, W-Q out", BlockScaleSearch.Default, true, true, 13.0),
            })
            {
                using DeviceCodec codec = DeviceCodec.Create(ops, new NormalFloatQuantizer(4, 64, search));
                float ms = ops.TimeMilliseconds(() => ops.QueueQuantize(codec, x.All, loop ? x.All : null, dequantize ? output.All : null, codes.All, scales.All, null), 20);
                double seconds = ms / 1000.0;
                results.Add(new Measurement($"NF4 quantize {rows}x{columns} ({name})", ms, "ms", "CUDA events, mean of 20 after a warm-up"));
                results.Add(new Measurement($"  effective bandwidth ({name})", n * 4.0 / seconds / 1e9, "GB/s", "fp32 input bytes / time (as torch's anchor)"));
                results.Add(new Measurement($"  memory traffic ({name})", n * bytesPerValue / seconds / 1e9, "GB/s", $"{bytesPerValue} bytes moved per value"));
            }
        }

        return results;
    }

    public static IEnumerable<Measurement> Sgemm(CudaAccelerator gpu)
    {
        // U (ℓ×m) · M (m×n): one subspace pass over an 11008×4096 weight.
        int l = 72, m = S(11008), n = S(4096);
        using (CudaAccelerator.Lease lane = gpu.Take())
        {
            CudaOps ops = lane.Ops;
            using DeviceBuffer<float> u = ops.Allocate<float>((long)l * m), w = ops.Allocate<float>((long)m * n), c = ops.Allocate<float>((long)l * n);
            ops.FillGaussian(u.All, 1, 0);
            ops.FillGaussian(w.All, 2, 0);
            float ms = ops.TimeMilliseconds(() => ops.Gemm(Transpose.No, Transpose.No, l, n, m, 1f, u.All, m, w.All, n, 0f, c.All, n), 20);
            return [new Measurement($"SGEMM {l}x{m} · {m}x{n}", 2.0 * l * m * n / (ms / 1000.0) / 1e12, "TFLOP/s", $"{ms:F3} ms per product")];
        }
    }

    /// <summary>
    /// Where one layer's time goes (NF4 with the default scale search, r = 64, T = 5): every device call waited for
    /// and timed by category (<see cref="ProfilingOps"/>); "host" is the rest (the small SVDs, bookkeeping).
    /// </summary>
    public static IEnumerable<Measurement> Profile(CudaAccelerator gpu)
    {
        var results = new List<Measurement>();
        foreach ((int rows, int columns) in new[] { (S(4096), S(4096)), (S(11008), S(4096)) })
        {
            using var w = Matrix.Uninitialized(rows, columns);
            Gaussian.Fill(w.Span, 99, 0.02f);
            using CudaAccelerator.Lease lane = gpu.Take();
            var ops = new ProfilingOps(lane.Ops);
            DeviceCodec codec = lane.Lane.Codec(new NormalFloatQuantizer(4, 64, BlockScaleSearch.Default));
            new DeviceLoftQ(lane.Ops).Run(w, codec, 64, 5, 0, false).Dispose(); // warm-up, unprofiled
            var clock = Stopwatch.StartNew();
            new DeviceLoftQ(ops).Run(w, codec, 64, 5, 0, false).Dispose();
            double total = clock.Elapsed.TotalSeconds;
            double devices = ops.Categories.Values.Sum(c => c.Seconds);
            results.Add(new Measurement($"profile {rows}x{columns} NF4 search r64 T5: total (serialised)", total * 1000, "ms", "every call waited for"));
            foreach ((string name, (int calls, double seconds)) in ops.Categories)
            {
                results.Add(new Measurement($"  {name}", seconds * 1000, "ms", $"{calls} calls"));
            }

            results.Add(new Measurement("  host (small SVDs, bookkeeping)", (total - devices) * 1000, "ms", string.Empty));
        }

        return results;
    }

    /// <summary>LoftQ (NF4 or NF2, r = 64, T = 5) on one 4096² matrix, GPU and CPU, for the error comparison.</summary>
    public static IEnumerable<Measurement> Agreement4096(CudaAccelerator gpu)
    {
        using var w = Matrix.Uninitialized(S(4096), S(4096));
        Gaussian.Fill(w.Span, 4096, 0.02f);
        var results = new List<Measurement>();
        foreach (int bits in new[] { 4, 2 })
        {
            var quantizer = new NormalFloatQuantizer(bits, 64);
            var clock = Stopwatch.StartNew();
            using LoftQResult device = gpu.Run(w, quantizer, 64, 5, seed: 0, lowRankFirst: false);
            double gpuSeconds = clock.Elapsed.TotalSeconds;
            clock.Restart();
            using LoftQResult cpu = new AlternatingOptimizer(quantizer, new RandomizedSvdSolver(seed: 0)).Run(w, 64, 5);
            double cpuSeconds = clock.Elapsed.TotalSeconds;
            double gap = (device.RelativeError - cpu.RelativeError) / cpu.RelativeError;
            results.Add(new Measurement($"{w.Rows}x{w.Columns} NF{bits} r64 T5 error, GPU", device.RelativeError, string.Empty, $"CPU {cpu.RelativeError:F4} ({gap:+0.00%;-0.00%}); GPU {gpuSeconds:F2} s, CPU {cpuSeconds:F2} s wall"));
        }

        return results;
    }

    /// <summary>
    /// The same model through <see cref="CudaAccelerator.Run"/> from <see cref="CudaAccelerator.Concurrency"/> threads at
    /// once (as the checkpoint pipeline calls it): the wall time of all matrices, with one layer's host work and
    /// latency-bound calls overlapping another's.
    /// </summary>
    public static IEnumerable<Measurement> Llama7BConcurrent(CudaAccelerator gpu, int blocks, BlockScaleSearch? search)
    {
        using var weights = new ModelWeights();
        var quantizer = new NormalFloatQuantizer(4, 64, search);
        int count = blocks * Llama7BBlock.Length;
        var errors = new double[count];
        gpu.Run(weights[Llama7BBlock[0]], quantizer, 64, 1, 0, false).Dispose(); // warm-up: every lane's first use is outside the timing
        var clock = Stopwatch.StartNew();
        Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = gpu.Concurrency }, i =>
        {
            (int rows, int columns) = Llama7BBlock[i % Llama7BBlock.Length];
            using LoftQResult r = gpu.Run(weights[(rows, columns)], quantizer, 64, 5, seed: i / Llama7BBlock.Length, lowRankFirst: false);
            errors[i] = r.RelativeError;
        });
        double wall = clock.Elapsed.TotalSeconds;
        string label = search is null ? "absmax" : "scale search";
        return
        [
            new($"Llama-7B-shaped, {count} matrices, NF4 r64 T5 ({label}), {gpu.Concurrency} lanes, {gpu.SmallStep.ToString().ToLowerInvariant()} step: wall", wall, "s", "uploads, compute and downloads of all matrices, overlapped across lanes"),
            new("  mean relative error", errors.Average(), string.Empty, $"min {errors.Min():F4} max {errors.Max():F4}"),
        ];
    }

    /// <summary>
    /// The Llama-7B-shaped synthetic model: 32 blocks of the seven target shapes, Gaussian × 0.02 (one matrix per
    /// shape, reused by every block), NF4, r = 64, T = 5; compute is the device time from the end of each upload to the
    /// end of its last pass.
    /// </summary>
    public static IEnumerable<Measurement> Llama7B(CudaAccelerator gpu, int blocks, BlockScaleSearch? search)
    {
        using var weights = new ModelWeights();
        var quantizer = new NormalFloatQuantizer(4, 64, search);
        var timings = new DeviceRunTimings();
        var perShape = new Dictionary<(int, int), List<double>>();
        var errors = new List<double>();
        var clock = Stopwatch.StartNew();
        using (CudaAccelerator.Lease lane = gpu.Take())
        {
            var loop = new DeviceLoftQ(lane.Ops) { Timings = timings };
            DeviceCodec codec = lane.Lane.Codec(quantizer);
            for (int b = 0; b < blocks; b++)
            {
                foreach ((int rows, int columns) in Llama7BBlock)
                {
                    double before = timings.ComputeSeconds;
                    using LoftQResult r = loop.Run(weights[(rows, columns)], codec, 64, 5, seed: b, lowRankFirst: false);
                    errors.Add(r.RelativeError);
                    (perShape.TryGetValue((rows, columns), out List<double>? list) ? list : perShape[(rows, columns)] = []).Add(timings.ComputeSeconds - before);
                }
            }
        }

        double wall = clock.Elapsed.TotalSeconds;
        string label = search is null ? "absmax" : "scale search";
        var results = new List<Measurement>
        {
            new($"Llama-7B-shaped, {blocks * 7} matrices, NF4 r64 T5 ({label}): compute", timings.ComputeSeconds, "s", "device time after each upload to the end of its last pass"),
            new("  upload (pageable host → device)", timings.UploadSeconds, "s", "all weights"),
            new("  download (packed Q, scales, A, B)", timings.DownloadSeconds, "s", "all results"),
            new("  wall, including host work", wall, "s", string.Empty),
            new("  mean relative error", errors.Average(), string.Empty, $"min {errors.Min():F4} max {errors.Max():F4}"),
        };
        foreach (((int rows, int columns), List<double> seconds) in perShape)
        {
            seconds.Sort();
            results.Add(new Measurement($"  {rows}x{columns} compute, median", seconds[seconds.Count / 2] * 1000, "ms", $"{seconds.Count} runs"));
        }

        return results;
    }

    /// <summary>One Gaussian × 0.02 matrix per shape of <see cref="Llama7BBlock"/>, reused by every block of the model.</summary>
    private sealed class ModelWeights : IDisposable
    {
        private readonly Dictionary<(int, int), Matrix> _weights = [];

        public ModelWeights()
        {
            foreach ((int rows, int columns) in Llama7BBlock.Distinct())
            {
                var m = Matrix.Uninitialized(rows, columns);
                Gaussian.Fill(m.Span, (rows * 31) + columns, 0.02f);
                _weights[(rows, columns)] = m;
            }
        }

        public Matrix this[(int Rows, int Columns) shape] => _weights[shape];

        public void Dispose()
        {
            foreach (Matrix m in _weights.Values)
            {
                m.Dispose();
            }
        }
    }
}
