using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;
using LoftQNet.TorchSharp;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;

namespace LoftQNet.Benchmarks;

/// <summary>
/// LoftQ.NET's side of benchmarks/compare/run.sh: runs every case of the shared plan on the same input files
/// as the PyTorch reference and prints one JSON line per case (time, relative error, throughput, peak memory).
/// Beside LoftQ.NET it runs the anchor a .NET user has without us: LoftQ.TorchSharp's torch engine
/// (<see cref="TorchLoftQ"/> with the threshold quantizer and the qr-based randomized SVD, and the full-SVD variant
/// where the plan has the case's "full" variant) on the same CPU with the plan's thread count.
/// </summary>
internal static class CompareRunner
{
    public static int Run(string planPath)
    {
        JsonObject plan = JsonNode.Parse(File.ReadAllText(planPath))!.AsObject();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        JsonArray cases = plan["cases"]!.AsArray();
        var fullVariant = cases.Select(n => n!.AsObject())
            .Where(c => c["variant"]?.GetValue<string>() == "full")
            .Select(c => c["name"]!.GetValue<string>())
            .ToHashSet(StringComparer.Ordinal);
        int threads = plan["threads"]?.GetValue<int>() ?? Environment.ProcessorCount;
        TorchRuntime.EnsureLoaded();
        torch.set_num_threads(threads);
        Warmup();
        foreach (JsonNode? node in cases)
        {
            JsonObject c = node!.AsObject();
            string name = c["name"]!.GetValue<string>();
            if (!seen.Add(name))
            {
                continue; // torch runs a case once per variant; ours once.
            }

            if (c["kind"]!.GetValue<string>() == "layer")
            {
                // The first call in a process includes JIT compilation and first-touch page faults: report it
                // separately from the steady state (median of three further runs).
                Emit(Layer(c), name, "loftq.net-first-call");
                Emit(Median(3, () => Layer(c)), name, "loftq.net");
                Emit(Median(3, () => TorchLayer(c, exact: false)), name, "torchsharp-randomized");
                if (fullVariant.Contains(name))
                {
                    Emit(TorchLayer(c, exact: true), name, "torchsharp-full"); // minutes: once
                }

                continue;
            }

            if (c["kind"]!.GetValue<string>() == "model")
            {
                Emit(Median(3, () => Model(c)), name, "loftq.net");
                Emit(Median(3, () => TorchModel(c)), name, "torchsharp-randomized");
                continue;
            }

            JsonObject result = c["kind"]!.GetValue<string>() switch
            {
                "gemm" => GemmCase(c),
                "quantize" => Quantize(c),
                string other => throw new InvalidDataException($"Unknown case kind '{other}' in {planPath}."),
            };
            Emit(result, name, "loftq.net");
            if (c["kind"]!.GetValue<string>() == "quantize")
            {
                Emit(TorchQuantize(c), name, "torchsharp-quantize");
            }
        }

        return 0;
    }

    /// <summary>Runs <paramref name="run"/> <paramref name="repeat"/> times; the median run's result with the range of times.</summary>
    private static JsonObject Median(int repeat, Func<JsonObject> run)
    {
        var results = Enumerable.Range(0, repeat).Select(_ => run()).OrderBy(r => r["seconds"]!.GetValue<double>()).ToList();
        JsonObject median = results[repeat / 2];
        median["min"] = results[0]["seconds"]!.GetValue<double>();
        median["max"] = results[^1]["seconds"]!.GetValue<double>();
        median["repeats"] = repeat;
        return median;
    }

    private static JsonObject TorchLayer(JsonObject c, bool exact)
    {
        using var scope = torch.NewDisposeScope();
        torch.Tensor w = ReadTensor(c["file"]!.GetValue<string>(), c["tensor"]!.GetValue<string>());
        using TorchBlockwiseQuantizer quantizer = TorchBlockwiseQuantizer.NormalFloat(c["bits"]!.GetValue<int>());
        ITorchLowRankSolver solver = exact ? new TorchExactSvdSolver() : new TorchRandomizedSvdSolver();
        var clock = Stopwatch.StartNew();
        using TorchLoftQResult result = TorchLoftQ.Run(w, quantizer, solver, c["rank"]!.GetValue<int>(), c["iters"]!.GetValue<int>());
        return new JsonObject { ["seconds"] = clock.Elapsed.TotalSeconds, ["error"] = result.RelativeError };
    }

    private static JsonObject TorchModel(JsonObject c)
    {
        var names = c["tensors"]!.AsArray().Select(n => n!.GetValue<string>()).ToHashSet(StringComparer.Ordinal);
        using var scope = torch.NewDisposeScope();
        var weights = new List<torch.Tensor>();
        foreach (JsonNode? f in c["files"]!.AsArray())
        {
            using SafeTensorsFile file = SafeTensorsFile.Open(f!.GetValue<string>());
            foreach (SafeTensorInfo t in file.Tensors.Where(t => names.Contains(t.Name)))
            {
                weights.Add(torch.tensor(file.ReadAsSingle(t.Name), [t.Shape[0], t.Shape[1]]));
            }
        }

        int bits = c["bits"]!.GetValue<int>(), rank = c["rank"]!.GetValue<int>(), iters = c["iters"]!.GetValue<int>();
        using TorchBlockwiseQuantizer quantizer = TorchBlockwiseQuantizer.NormalFloat(bits);
        var errors = new double[weights.Count];
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < weights.Count; i++)
        {
            // One matrix at a time: libtorch already uses the plan's threads inside each operation.
            using TorchLoftQResult r = TorchLoftQ.Run(weights[i], quantizer, new TorchRandomizedSvdSolver(seed: i), rank, iters, seed: i);
            errors[i] = r.RelativeError;
        }

        return new JsonObject { ["seconds"] = clock.Elapsed.TotalSeconds, ["error"] = errors.Average() };
    }

    private static JsonObject TorchQuantize(JsonObject c)
    {
        int rows = c["rows"]!.GetValue<int>(), cols = c["cols"]!.GetValue<int>();
        using Matrix m = Matrix.RandomNormal(rows, cols, seed: 3);
        using var scope = torch.NewDisposeScope();
        torch.Tensor w = torch.tensor(m.Span.ToArray(), [rows, cols]);
        using TorchBlockwiseQuantizer q = TorchBlockwiseQuantizer.NormalFloat(c["bits"]!.GetValue<int>());
        double best = Best(5, () =>
        {
            using var inner = torch.NewDisposeScope();
            _ = q.QuantizeDequantize(w);
        });
        return new JsonObject { ["seconds"] = best, ["gbps"] = 4.0 * rows * cols / best / 1e9 };
    }

    private static torch.Tensor ReadTensor(string path, string name)
    {
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        SafeTensorInfo info = file.GetInfo(name);
        return torch.tensor(file.ReadAsSingle(info.Name), [info.Shape[0], info.Shape[1]]);
    }

    private static void Emit(JsonObject result, string name, string impl)
    {
        result["case"] = name;
        result["impl"] = impl;
        result["peak_rss_mb"] = Process.GetCurrentProcess().PeakWorkingSet64 / 1048576.0;
        Console.WriteLine(result.ToJsonString());
    }

    private static void Warmup()
    {
        using Matrix w = Matrix.RandomNormal(256, 256, seed: 1);
        using LoftQResult r = new AlternatingOptimizer(new NormalFloatQuantizer(4), new RandomizedSvdSolver()).Run(w, 8, 2);
        using var scope = torch.NewDisposeScope();
        using TorchBlockwiseQuantizer q = TorchBlockwiseQuantizer.NormalFloat(4);
        using TorchLoftQResult t = TorchLoftQ.Run(torch.tensor(w.Span.ToArray(), [256, 256]), q, new TorchRandomizedSvdSolver(), 8, 2);
    }

    private static JsonObject Layer(JsonObject c)
    {
        using SafeTensorsFile file = SafeTensorsFile.Open(c["file"]!.GetValue<string>());
        SafeTensorInfo info = file.GetInfo(c["tensor"]!.GetValue<string>());
        using Matrix w = Matrix.FromSpan((int)info.Shape[0], (int)info.Shape[1], file.ReadAsSingle(info.Name));
        var optimizer = new AlternatingOptimizer(new NormalFloatQuantizer(c["bits"]!.GetValue<int>()), new RandomizedSvdSolver());
        var clock = Stopwatch.StartNew();
        using LoftQResult result = optimizer.Run(w, c["rank"]!.GetValue<int>(), c["iters"]!.GetValue<int>());
        return new JsonObject { ["seconds"] = clock.Elapsed.TotalSeconds, ["error"] = result.RelativeError };
    }

    private static JsonObject Model(JsonObject c)
    {
        var names = c["tensors"]!.AsArray().Select(n => n!.GetValue<string>()).ToHashSet(StringComparer.Ordinal);
        var weights = new List<Matrix>();
        foreach (JsonNode? f in c["files"]!.AsArray())
        {
            using SafeTensorsFile file = SafeTensorsFile.Open(f!.GetValue<string>());
            foreach (SafeTensorInfo t in file.Tensors.Where(t => names.Contains(t.Name)))
            {
                weights.Add(Matrix.FromSpan((int)t.Shape[0], (int)t.Shape[1], file.ReadAsSingle(t.Name)));
            }
        }

        int bits = c["bits"]!.GetValue<int>(), rank = c["rank"]!.GetValue<int>(), iters = c["iters"]!.GetValue<int>();
        var errors = new double[weights.Count];
        var clock = Stopwatch.StartNew();
        ComputeSettings.ParallelFor(weights.Count, ComputeSettings.MaxThreads, i =>
        {
            var optimizer = new AlternatingOptimizer(new NormalFloatQuantizer(bits), new RandomizedSvdSolver(seed: i)) { Seed = i };
            using LoftQResult r = optimizer.Run(weights[i], rank, iters);
            errors[i] = r.RelativeError;
        });
        double seconds = clock.Elapsed.TotalSeconds;
        weights.ForEach(w => w.Dispose());
        return new JsonObject { ["seconds"] = seconds, ["error"] = errors.Average() };
    }

    private static JsonObject GemmCase(JsonObject c)
    {
        int m = c["m"]!.GetValue<int>(), n = c["n"]!.GetValue<int>(), k = c["k"]!.GetValue<int>();
        using Matrix a = Matrix.RandomNormal(m, k, seed: 1), b = Matrix.RandomNormal(k, n, seed: 2);
        using Matrix r = Matrix.Uninitialized(m, n);
        double best = Best(5, () => Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, a.Span, k, b.Span, n, 0f, r.Span, n));
        return new JsonObject { ["seconds"] = best, ["gflops"] = 2.0 * m * n * k / best / 1e9 };
    }

    private static JsonObject Quantize(JsonObject c)
    {
        int rows = c["rows"]!.GetValue<int>(), cols = c["cols"]!.GetValue<int>();
        using Matrix w = Matrix.RandomNormal(rows, cols, seed: 3);
        using Matrix d = Matrix.Uninitialized(rows, cols);
        IQuantizer q = new NormalFloatQuantizer(c["bits"]!.GetValue<int>());
        double best = Best(5, () => q.QuantizeDequantize(w.Span, w.Shape, d.Span));
        return new JsonObject { ["seconds"] = best, ["gbps"] = 4.0 * rows * cols / best / 1e9 };
    }

    private static double Best(int repeat, Action action)
    {
        for (int i = 0; i < 10; i++)
        {
            action(); // warm-up: let the JIT reach optimised code before timing
        }

        double best = double.MaxValue;
        for (int i = 0; i < repeat; i++)
        {
            var clock = Stopwatch.StartNew();
            action();
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }

        return best;
    }
}
