using System.Diagnostics;
using System.Runtime.InteropServices;
using LoftQNet.Cuda;
using LoftQNet.Cuda.Device;
using LoftQNet.Cuda.Native;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;

namespace LoftQNet.GpuCheck;

/// <summary>The outcome of one device check: passed or not, and the numbers behind it.</summary>
public sealed record CheckResult(string Name, bool Passed, string Detail, double Seconds);

/// <summary>
/// Agreement checks of the CUDA backend against the CPU path, run on a real GPU: every binding resolves, the kernels
/// give the CPU quantizers' results bit for bit, the BLAS/QR/RNG mappings are right, and the device LoftQ loop and the
/// checkpoint pipeline land within 0.5% of the CPU's errors. Used by this runner and by LoftQ.Cuda.Tests' [GpuFact]s.
/// </summary>
internal static class DeviceChecks
{
    /// <summary>Every exported function the bindings use, by logical library.</summary>
    internal static readonly (string Library, string Symbol)[] Exports =
    [
        (CudaLibraries.Driver, "cuInit"), (CudaLibraries.Driver, "cuDriverGetVersion"), (CudaLibraries.Driver, "cuDeviceGetCount"),
        (CudaLibraries.Driver, "cuDeviceGet"), (CudaLibraries.Driver, "cuDeviceGetName"), (CudaLibraries.Driver, "cuDeviceTotalMem_v2"),
        (CudaLibraries.Driver, "cuDeviceGetAttribute"), (CudaLibraries.Driver, "cuDevicePrimaryCtxRetain"),
        (CudaLibraries.Driver, "cuDevicePrimaryCtxRelease_v2"), (CudaLibraries.Driver, "cuCtxSetCurrent"), (CudaLibraries.Driver, "cuStreamCreate"), (CudaLibraries.Driver, "cuStreamDestroy_v2"),
        (CudaLibraries.Driver, "cuStreamSynchronize"), (CudaLibraries.Driver, "cuEventCreate"), (CudaLibraries.Driver, "cuEventDestroy_v2"),
        (CudaLibraries.Driver, "cuEventRecord"), (CudaLibraries.Driver, "cuEventSynchronize"), (CudaLibraries.Driver, "cuEventElapsedTime"),
        (CudaLibraries.Driver, "cuMemAlloc_v2"), (CudaLibraries.Driver, "cuMemFree_v2"),
        (CudaLibraries.Driver, "cuMemcpyHtoDAsync_v2"),
        (CudaLibraries.Driver, "cuMemcpyDtoHAsync_v2"), (CudaLibraries.Driver, "cuMemcpyDtoDAsync_v2"), (CudaLibraries.Driver, "cuMemsetD8Async"),
        (CudaLibraries.Driver, "cuMemsetD32Async"), (CudaLibraries.Driver, "cuModuleLoadData"), (CudaLibraries.Driver, "cuModuleUnload"),
        (CudaLibraries.Driver, "cuModuleGetFunction"), (CudaLibraries.Driver, "cuLaunchKernel"), (CudaLibraries.Driver, "cuGetErrorName"),
        (CudaLibraries.Driver, "cuGetErrorString"),
        (CudaLibraries.Cublas, "cublasCreate_v2"), (CudaLibraries.Cublas, "cublasDestroy_v2"), (CudaLibraries.Cublas, "cublasSetStream_v2"),
        (CudaLibraries.Cublas, "cublasSgemm_v2"),
        (CudaLibraries.Cusolver, "cusolverDnCreate"), (CudaLibraries.Cusolver, "cusolverDnDestroy"), (CudaLibraries.Cusolver, "cusolverDnSetStream"),
        (CudaLibraries.Cusolver, "cusolverGetVersion"), (CudaLibraries.Cusolver, "cusolverDnSgeqrf_bufferSize"), (CudaLibraries.Cusolver, "cusolverDnSgeqrf"),
        (CudaLibraries.Cusolver, "cusolverDnSorgqr_bufferSize"), (CudaLibraries.Cusolver, "cusolverDnSorgqr"),
        (CudaLibraries.Curand, "curandCreateGenerator"), (CudaLibraries.Curand, "curandDestroyGenerator"), (CudaLibraries.Curand, "curandSetStream"),
        (CudaLibraries.Curand, "curandSetPseudoRandomGeneratorSeed"), (CudaLibraries.Curand, "curandSetGeneratorOffset"),
        (CudaLibraries.Curand, "curandGenerateNormal"), (CudaLibraries.Curand, "curandGetVersion"),
        (CudaLibraries.Nvrtc, "nvrtcVersion"), (CudaLibraries.Nvrtc, "nvrtcCreateProgram"), (CudaLibraries.Nvrtc, "nvrtcCompileProgram"),
        (CudaLibraries.Nvrtc, "nvrtcGetProgramLogSize"), (CudaLibraries.Nvrtc, "nvrtcGetProgramLog"), (CudaLibraries.Nvrtc, "nvrtcGetCUBINSize"),
        (CudaLibraries.Nvrtc, "nvrtcGetCUBIN"), (CudaLibraries.Nvrtc, "nvrtcDestroyProgram"), (CudaLibraries.Nvrtc, "nvrtcGetErrorString"),
    ];

    /// <summary>Checks that need only the libraries (run before a context exists).</summary>
    public static CheckResult ExportsResolve() => Timed("exports", () =>
    {
        CudaLibraries.EnsureResolver();
        var missing = new List<string>();
        foreach (IGrouping<string, (string Library, string Symbol)> library in Exports.GroupBy(e => e.Library))
        {
            CudaLibraries.LoadResult loaded = CudaLibraries.Load(library.Key);
            if (!loaded.Loaded)
            {
                missing.Add($"{CudaProbe.LibraryTitle(library.Key)} (not loaded: {loaded.Describe()})");
                continue;
            }

            missing.AddRange(library.Where(e => !NativeLibrary.TryGetExport(loaded.Handle, e.Symbol, out _)).Select(e => $"{CudaProbe.LibraryTitle(library.Key)}:{e.Symbol}"));
        }

        return (missing.Count == 0, missing.Count == 0 ? $"{Exports.Length} entry points" : "missing " + string.Join(", ", missing));
    });

    /// <summary>
    /// Smaller problems for a run on an emulated device (the fake CUDA stack of LoftQ.Cuda.Tests), where every kernel
    /// thread is a fiber on one CPU core.
    /// </summary>
    public static bool Small { get; set; }

    /// <summary>The checks that run on an accelerator, by name.</summary>
    public static IReadOnlyList<(string Name, Func<CudaAccelerator, CheckResult> Run)> OnDevice { get; } =
    [
        ("quantize-bitwise", QuantizeMatchesCpuBitForBit),
        ("gemm", GemmMatchesCpu),
        ("orthonormalize", OrthonormalizeRows),
        ("gaussian", GaussianFill),
        ("sum-squares", SumOfSquares),
        ("loftq-agreement", LoftQAgreesWithCpu),
        ("gram-agreement", GramAgreesWithCpu),
        ("lanes-agree", LanesAgree),
    ];

    /// <summary>Creates the accelerator on GPU 0 regardless of the verified flag (this is what verifies it).</summary>
    public static CudaAccelerator Open()
    {
        CudaProbe probe = CudaProbe.Current;
        if (!probe.Available)
        {
            throw new InvalidOperationException("No usable GPU: " + probe.Failure);
        }

        return new CudaAccelerator(probe.Devices[0]);
    }

    internal static IEnumerable<(string Name, BlockwiseQuantizer Quantizer)> Quantizers()
    {
        var grid = new BlockScaleSearch(3, 0.7f);
        foreach (BlockScaleSearch? search in new[] { null, BlockScaleSearch.Default, grid })
        {
            string s = search is null ? "absmax" : search == grid ? "grid3" : "search";
            foreach (int bits in new[] { 2, 3, 4, 8 })
            {
                yield return ($"nf{bits}/64/{s}", new NormalFloatQuantizer(bits, 64, search));
            }

            yield return ($"nf4/128/{s}", new NormalFloatQuantizer(4, 128, search));
            yield return ($"nf4/32/{s}", new NormalFloatQuantizer(4, 32, search));
            yield return ($"nf2/48/{s}", new NormalFloatQuantizer(2, 48, search));
            foreach (int bits in new[] { 2, 4, 8 })
            {
                yield return ($"uniform{bits}/64/{s}", new UniformQuantizer(bits, 64, scaleSearch: search));
                yield return ($"uniform-asym{bits}/64/{s}", new UniformQuantizer(bits, 64, asymmetric: true, scaleSearch: search));
            }
        }
    }

    /// <summary>Values with the hard cases: a partial last block, an all-zero block, a subnormal block, threshold-exact values.</summary>
    internal static float[] HardValues(BlockwiseQuantizer quantizer, int blocks, int seed)
    {
        int b = quantizer.BlockSize;
        var x = new float[(blocks * b) + (b / 2) + 3];
        Gaussian.Fill(x, seed, 0.02f);
        Array.Clear(x, 3 * b, b);
        for (int i = 0; i < b; i++)
        {
            x[(5 * b) + i] = (i % 7 - 3) * 1e-41f;
        }

        // Block 7: values on the decision thresholds of a block whose absmax is 1 (x = t·1 exactly).
        ReadOnlySpan<float> t = quantizer.Codec.Thresholds;
        x[7 * b] = 1f;
        for (int i = 1; i < b; i++)
        {
            x[(7 * b) + i] = t[i % t.Length];
        }

        return x;
    }

    public static CheckResult QuantizeMatchesCpuBitForBit(CudaAccelerator gpu) => Timed("quantize-bitwise", () =>
    {
        var failures = new List<string>();
        int cases = 0;
        using (CudaAccelerator.Lease lane = gpu.Take())
        {
            CudaOps ops = lane.Ops;
            foreach ((string name, BlockwiseQuantizer quantizer) in Quantizers())
            {
                cases++;
                float[] x = HardValues(quantizer, Small ? 24 : 200, cases);
                var w = new float[x.Length];
                Gaussian.Fill(w, 1000 + cases, 0.02f);
                var shape = new TensorShape(x.Length);
                var deq = new float[x.Length];
                QuantizedTensor q = quantizer.Codec.Run(x, shape, deq, fused: true);
                var codes = new byte[x.Length];
                BitPacking.Unpack(q.PackedCodes, q.Bits, codes);

                using DeviceCodec codec = DeviceCodec.Create(ops, quantizer);
                using DeviceBuffer<float> dx = ops.Allocate<float>(x.Length), dw = ops.Allocate<float>(x.Length), dout = ops.Allocate<float>(x.Length);
                using DeviceBuffer<byte> dcodes = ops.Allocate<byte>(x.Length), dpacked = ops.Allocate<byte>(q.PackedCodes.Length);
                using DeviceBuffer<float> dscales = ops.Allocate<float>(q.Scales.Length), doffsets = ops.Allocate<float>(q.Scales.Length);
                ops.Upload<float>(x, dx.All);
                ops.Upload<float>(w, dw.All);
                long failed = ops.Quantize(codec, dx.All, dw.All, dout.All, dcodes.All, dscales.All, quantizer.Codec.Asymmetric ? doffsets.All : null);
                ops.Pack(dcodes.All, quantizer.Bits, dpacked.All);
                var gotCodes = new byte[x.Length];
                var gotScales = new float[q.Scales.Length];
                var gotOffsets = new float[q.Scales.Length];
                var gotOut = new float[x.Length];
                var gotPacked = new byte[q.PackedCodes.Length];
                ops.Download(dcodes.All, gotCodes);
                ops.Download(dscales.All, gotScales);
                ops.Download(dout.All, gotOut);
                ops.Download(dpacked.All, gotPacked);
                if (quantizer.Codec.Asymmetric)
                {
                    ops.Download(doffsets.All, gotOffsets);
                }

                int codeDiff = Differences(codes, gotCodes);
                int scaleDiff = Differences(q.Scales, gotScales);
                int offsetDiff = quantizer.Codec.Asymmetric ? Differences(q.Offsets, gotOffsets) : 0;
                var expectedOut = new float[x.Length];
                for (int i = 0; i < x.Length; i++)
                {
                    expectedOut[i] = w[i] - deq[i];
                }

                int outDiff = Differences(expectedOut, gotOut);
                int packDiff = Differences(q.PackedCodes, gotPacked);
                if (failed >= 0 || codeDiff + scaleDiff + offsetDiff + outDiff + packDiff > 0)
                {
                    failures.Add($"{name}: failure index {failed}, codes {codeDiff}, scales {scaleDiff}, offsets {offsetDiff}, w-deq {outDiff}, packed {packDiff} differ");
                }
            }

            // A NaN is reported at its index.
            var quant = new NormalFloatQuantizer(4);
            var bad = new float[640];
            bad[333] = float.NaN;
            using DeviceCodec nf4 = DeviceCodec.Create(ops, quant);
            using DeviceBuffer<float> db = ops.Allocate<float>(bad.Length), dout2 = ops.Allocate<float>(bad.Length);
            using DeviceBuffer<byte> dc = ops.Allocate<byte>(bad.Length);
            using DeviceBuffer<float> ds = ops.Allocate<float>(10);
            ops.Upload<float>(bad, db.All);
            long at = ops.Quantize(nf4, db.All, db.All, dout2.All, dc.All, ds.All, null);
            if (at != 333)
            {
                failures.Add($"NaN at 333 reported at {at}");
            }
        }

        return (failures.Count == 0, failures.Count == 0 ? $"{cases} quantizers bit-identical (codes, scales, offsets, W-Q, packing); NaN index reported" : string.Join("; ", failures));
    });

    public static CheckResult GemmMatchesCpu(CudaAccelerator gpu) => Timed("gemm", () =>
    {
        const int M = 37, N = 53, K = 29;
        double worst = 0;
        using (CudaAccelerator.Lease lane = gpu.Take())
        {
            CudaOps ops = lane.Ops;
            foreach (Transpose ta in new[] { Transpose.No, Transpose.Yes })
            {
                foreach (Transpose tb in new[] { Transpose.No, Transpose.Yes })
                {
                    int lda = ta == Transpose.No ? K : M, ldb = tb == Transpose.No ? N : K;
                    var a = new float[M * K];
                    var b = new float[K * N];
                    var c = new float[M * N];
                    Gaussian.Fill(a, 1);
                    Gaussian.Fill(b, 2);
                    Gaussian.Fill(c, 3);
                    var expected = (float[])c.Clone();
                    Gemm.Multiply(ta, tb, M, N, K, 0.75f, a, lda, b, ldb, -0.5f, expected, N);
                    using DeviceBuffer<float> da = ops.Allocate<float>(a.Length), db = ops.Allocate<float>(b.Length), dc = ops.Allocate<float>(c.Length);
                    ops.Upload<float>(a, da.All);
                    ops.Upload<float>(b, db.All);
                    ops.Upload<float>(c, dc.All);
                    ops.Gemm(ta, tb, M, N, K, 0.75f, da.All, lda, db.All, ldb, -0.5f, dc.All, N);
                    ops.Download(dc.All, c);
                    for (int i = 0; i < c.Length; i++)
                    {
                        worst = Math.Max(worst, Math.Abs(c[i] - expected[i]));
                    }
                }
            }
        }

        return (worst < 1e-4, $"max |GPU - CPU| over 4 transpose pairs {worst:E2} (C values ~N(0, 5))");
    });

    public static CheckResult OrthonormalizeRows(CudaAccelerator gpu) => Timed("orthonormalize", () =>
    {
        const int L = 24, N = 300;
        var x = new float[L * N];
        Gaussian.Fill(x, 9);
        var q = new float[x.Length];
        using (CudaAccelerator.Lease lane = gpu.Take())
        {
            CudaOps ops = lane.Ops;
            using DeviceBuffer<float> dx = ops.Allocate<float>(x.Length);
            ops.Upload<float>(x, dx.All);
            ops.OrthonormalizeRows(dx.All, L, N);
            ops.Download(dx.All, q);
        }

        double orth = 0, span = 0, norm = 0;
        for (int i = 0; i < L; i++)
        {
            for (int j = 0; j < L; j++)
            {
                double dot = 0;
                for (int k = 0; k < N; k++)
                {
                    dot += (double)q[(i * N) + k] * q[(j * N) + k];
                }

                orth = Math.Max(orth, Math.Abs(dot - (i == j ? 1 : 0)));
            }

            // The row of X projected onto the span of Q's rows gives X's row back.
            var coefficients = new double[L];
            for (int j = 0; j < L; j++)
            {
                for (int k = 0; k < N; k++)
                {
                    coefficients[j] += (double)x[(i * N) + k] * q[(j * N) + k];
                }
            }

            for (int k = 0; k < N; k++)
            {
                double r = x[(i * N) + k];
                for (int j = 0; j < L; j++)
                {
                    r -= coefficients[j] * q[(j * N) + k];
                }

                span += r * r;
                norm += (double)x[(i * N) + k] * x[(i * N) + k];
            }
        }

        double spanError = Math.Sqrt(span / norm);
        return (orth < 1e-5 && spanError < 1e-5, $"max |QQᵀ - I| {orth:E2}, span residual {spanError:E2}");
    });

    public static CheckResult GaussianFill(CudaAccelerator gpu) => Timed("gaussian", () =>
    {
        const int Count = 1_000_001;
        var first = new float[Count];
        var again = new float[Count];
        var shifted = new float[Count];
        var partial = new float[1000];
        using (CudaAccelerator.Lease lane = gpu.Take())
        {
            CudaOps ops = lane.Ops;
            using DeviceBuffer<float> d = ops.Allocate<float>(Count);
            ops.FillGaussian(d.All, 5, 0);
            ops.Download(d.All, first);
            ops.FillGaussian(d.All, 5, 0);
            ops.Download(d.All, again);
            ops.FillGaussian(d.All, 5, 12345);
            ops.Download(d.All, shifted);
            using DeviceBuffer<float> p = ops.Allocate<float>(partial.Length);
            ops.Clear(p.All);
            ops.FillGaussian(p.Slice(101, 99), 5, 0);
            ops.Download(p.All, partial);
        }

        double mean = first.Average(v => (double)v);
        double variance = first.Average(v => ((double)v - mean) * ((double)v - mean));
        bool same = first.AsSpan().SequenceEqual(again);
        bool differs = !first.AsSpan(0, 1000).SequenceEqual(shifted.AsSpan(0, 1000));
        bool outsideUntouched = partial.AsSpan(0, 101).IndexOfAnyExcept(0f) < 0 && partial.AsSpan(200).IndexOfAnyExcept(0f) < 0 && partial.AsSpan(101, 99).IndexOfAnyExcept(0f) >= 0;
        bool passed = Math.Abs(mean) < 0.005 && Math.Abs(variance - 1) < 0.01 && same && differs && outsideUntouched;
        return (passed, $"mean {mean:F4}, variance {variance:F4}, repeatable {same}, offset changes stream {differs}, slice fill stays in range {outsideUntouched}");
    });

    public static CheckResult SumOfSquares(CudaAccelerator gpu) => Timed("sum-squares", () =>
    {
        int count = Small ? 100_003 : 10_000_019;
        var x = new float[count];
        Gaussian.Fill(x, 21, 0.5f);
        double expected = 0;
        foreach (float v in x)
        {
            expected += (double)v * v;
        }

        double got;
        using (CudaAccelerator.Lease lane = gpu.Take())
        {
            CudaOps ops = lane.Ops;
            using DeviceBuffer<float> d = ops.Allocate<float>(count);
            ops.Upload<float>(x, d.All);
            got = ops.SumOfSquares(d.All);
        }

        double relative = Math.Abs(got - expected) / expected;
        return (relative < 1e-9, $"relative difference from a double host sum {relative:E2}");
    });

    public static CheckResult LoftQAgreesWithCpu(CudaAccelerator gpu) => Timed("loftq-agreement", () => Agreement(gpu));

    /// <summary>As <see cref="LoftQAgreesWithCpu"/> with the Gram small step (<see cref="SmallStepKind.Gram"/>).</summary>
    public static CheckResult GramAgreesWithCpu(CudaAccelerator gpu) => Timed("gram-agreement", () =>
    {
        SmallStepKind before = gpu.SmallStep;
        gpu.SmallStep = SmallStepKind.Gram;
        try
        {
            return Agreement(gpu);
        }
        finally
        {
            gpu.SmallStep = before;
        }
    });

    private static (bool Passed, string Detail) Agreement(CudaAccelerator gpu)
    {
        var lines = new List<string>();
        bool passed = true;
        (int rows, int columns, int rank) = Small ? (256, 192, 16) : (1024, 768, 32);
        using var w = Matrix.Uninitialized(rows, columns);
        Gaussian.Fill(w.Span, 77, 0.02f);
        foreach ((int bits, BlockScaleSearch? search) in new[] { (4, (BlockScaleSearch?)null), (2, null), (4, BlockScaleSearch.Default), (2, BlockScaleSearch.Default) })
        {
            var quantizer = new NormalFloatQuantizer(bits, 64, search);
            using LoftQResult device = gpu.Run(w, quantizer, rank, 5, seed: 3, lowRankFirst: false);
            using LoftQResult cpu = new AlternatingOptimizer(quantizer, new RandomizedSvdSolver(seed: 3)) { Seed = 3 }.Run(w, rank, 5);
            double worst = cpu.ErrorTrace.Zip(device.ErrorTrace, (c, d) => Math.Abs(c - d) / c).Max();
            double qlora = Math.Abs(cpu.QLoRAError - device.QLoRAError) / cpu.QLoRAError;
            // Within 0.5% at every pass (the issue's bar). The small emulated case allows 1%: at rank 16 on 256×192 a
            // different Gaussian test matrix alone moves the randomized solver's errors by up to about 0.5%.
            bool ok = worst <= (Small ? 0.01 : 0.005) && qlora <= 1e-6 && device.A.Rows == rank && device.B.Columns == rank;
            passed &= ok;
            lines.Add($"NF{bits} {(search is null ? "absmax" : "search")}: cpu {cpu.RelativeError:F4} gpu {device.RelativeError:F4} (worst pass {worst:P2}, QLoRA {qlora:E1})");
        }

        return (passed, string.Join("; ", lines));
    }

    /// <summary>
    /// The same matrix on every lane at once gives the same result as alone: nothing (scratch, workspaces, code
    /// books, random streams) leaks between concurrent runs.
    /// </summary>
    public static CheckResult LanesAgree(CudaAccelerator gpu) => Timed("lanes-agree", () =>
    {
        (int rows, int columns, int rank) = Small ? (192, 128, 8) : (1024, 1024, 32);
        using var w = Matrix.Uninitialized(rows, columns);
        Gaussian.Fill(w.Span, 5150, 0.02f);
        var quantizer = new NormalFloatQuantizer(2, 64, BlockScaleSearch.Default);
        using LoftQResult alone = gpu.Run(w, quantizer, rank, 3, seed: 1, lowRankFirst: false);
        int runs = gpu.Concurrency * 2;
        var results = new LoftQResult[runs];
        try
        {
            Parallel.For(0, runs, new ParallelOptions { MaxDegreeOfParallelism = gpu.Concurrency }, i => results[i] = gpu.Run(w, quantizer, rank, 3, seed: 1, lowRankFirst: false));
            int differing = results.Count(r => !r.Quantized.PackedCodes.SequenceEqual(alone.Quantized.PackedCodes)
                || !r.A.Span.SequenceEqual(alone.A.Span) || !r.B.Span.SequenceEqual(alone.B.Span) || r.RelativeError != alone.RelativeError);
            return (differing == 0, $"{runs} concurrent runs on {gpu.Concurrency} lanes: {differing} differ from the run alone (error {alone.RelativeError:F4})");
        }
        finally
        {
            foreach (LoftQResult? r in results)
            {
                r?.Dispose();
            }
        }
    });

    /// <summary>The checkpoint pipeline on <paramref name="model"/> with Device = Cuda against Cpu.</summary>
    public static CheckResult PipelineAgreesWithCpu(string model) => Timed("pipeline", () =>
    {
        string root = Directory.CreateTempSubdirectory("loftq-gpucheck").FullName;
        try
        {
            var options = new LoftQOptions { Bits = 2, Rank = 16, Iterations = 5 };
            LoftQReport gpu = LoftQ.Initialize(model, Path.Combine(root, "gpu"), options with { Device = ComputeDevice.Cuda });
            LoftQReport cpu = LoftQ.Initialize(model, Path.Combine(root, "cpu"), options);
            double worst = cpu.Layers.Zip(gpu.Layers, (c, g) => Math.Abs(c.RelativeError - g.RelativeError) / c.RelativeError).Max();
            double mean = Math.Abs(cpu.MeanLoftQError - gpu.MeanLoftQError) / cpu.MeanLoftQError;
            bool passed = gpu.Settings.Device.StartsWith("cuda:", StringComparison.Ordinal) && mean <= 0.005 && worst <= 0.02;
            return (passed, $"{gpu.Layers.Count} targets on {gpu.Settings.Device}: mean error cpu {cpu.MeanLoftQError:F4} gpu {gpu.MeanLoftQError:F4} ({mean:P2}), worst layer {worst:P2}; {gpu.Seconds:F1} s vs {cpu.Seconds:F1} s");
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    });

    private static CheckResult Timed(string name, Func<(bool Passed, string Detail)> check)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            (bool passed, string detail) = check();
            return new CheckResult(name, passed, detail, clock.Elapsed.TotalSeconds);
        }
        catch (Exception e)
        {
            return new CheckResult(name, false, $"{e.GetType().Name}: {e.Message}", clock.Elapsed.TotalSeconds);
        }
    }

    private static int Differences<T>(ReadOnlySpan<T> expected, ReadOnlySpan<T> actual)
        where T : unmanaged
    {
        ReadOnlySpan<byte> a = MemoryMarshal.AsBytes(expected), b = MemoryMarshal.AsBytes(actual);
        if (a.Length != b.Length)
        {
            return int.MaxValue;
        }

        int size = a.Length / Math.Max(1, expected.Length), count = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (!a.Slice(i * size, size).SequenceEqual(b.Slice(i * size, size)))
            {
                count++;
            }
        }

        return count;
    }
}
