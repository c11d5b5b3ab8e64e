using System.Diagnostics;
using System.Globalization;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;
using LoftQNet.TorchSharp;
using LoftQNet.TorchSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace LoftQNet.Benchmarks;

/// <summary>
/// <c>dotnet run -c Release --project benchmarks/LoftQ.Benchmarks -- torch-layers [repeats]</c>: measures, in one process,
/// (1) one training step (forward + backward) of <see cref="LoraLinear"/> over an NF4 base against a dense TorchSharp
/// <c>Linear</c> at 4096², batch 8×128, time (median and range over repeats) and the resident memory the autograd graph
/// holds between forward and backward; (2) <c>LoftQ.Initialize(model)</c> on the bundled model and on one 4096² layer
/// with the managed engine and with the torch engine on the CPU.
/// </summary>
internal static class TorchLayerRunner
{
    public static int Run(int repeats, string modelDirectory)
    {
        TorchRuntime.EnsureLoaded();
        torch.set_num_threads(ComputeSettings.MaxThreads);
        Console.WriteLine($"# {TorchRuntime.Describe()}; managed threads {ComputeSettings.MaxThreads}; repeats {repeats}");
        Layers(repeats);
        Initialize(repeats, modelDirectory);
        return 0;
    }

    private static void Layers(int repeats)
    {
        const int N = 4096;
        using Matrix w = Matrix.RandomNormal(N, N, seed: 1, scale: 0.02f);
        QuantizedTensor q = new NormalFloatQuantizer(4).Quantize(w.Span, w.Shape);
        using Matrix a = Matrix.RandomNormal(64, N, seed: 2, scale: 0.01f), b = Matrix.RandomNormal(N, 64, seed: 3, scale: 0.01f);
        using LoraLinear lora = LoraLinear.Create(q, a.Span, b.Span, 64, 64);
        using Linear dense = torch.nn.Linear(N, N, hasBias: false);
        using (torch.no_grad())
        {
            dense.weight!.copy_(torch.tensor(w.Span.ToArray(), [N, N]));
        }

        dense.weight!.requires_grad = false;
        Tensor x = torch.randn([8, 128, N], generator: new Generator(4)).DetachFromDisposeScope();
        foreach ((string name, Module<Tensor, Tensor> layer) in new (string, Module<Tensor, Tensor>)[] { ("dense Linear (frozen fp32 weight)", dense), ("LoraLinear (NF4 base, r = 64)", lora) })
        {
            var times = new List<double>();
            long held = 0, peakRise = 0;
            for (int i = 0; i <= repeats; i++)
            {
                using var scope = NewDisposeScope();
                Tensor input = x.detach().requires_grad_(true);
                long before = ResidentBytes();
                ResetPeak();
                var clock = Stopwatch.StartNew();
                Tensor y = layer.forward(input);
                long afterForward = ResidentBytes();
                y.sum().backward();
                clock.Stop();
                long peak = Status("VmHWM:");
                if (i > 0)
                {
                    times.Add(clock.Elapsed.TotalSeconds);
                    held = Math.Max(held, afterForward - before);
                    peakRise = Math.Max(peakRise, peak - before);
                }
            }

            times.Sort();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"layer | {name} | forward+backward median {times[times.Count / 2] * 1000:F1} ms (range {times[0] * 1000:F1}-{times[^1] * 1000:F1}) | resident rise after forward {held / 1048576.0:F0} MiB, peak rise during the step {peakRise / 1048576.0:F0} MiB"));
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"layer | storage | dense fp32 weight {4.0 * N * N / 1048576:F0} MiB | packed NF4 base {lora.QuantizedBase!.StorageBytes / 1048576.0:F1} MiB"));
        x.Dispose();
    }

    private static void Initialize(int repeats, string modelDirectory)
    {
        foreach (LoftQEngine engine in new[] { LoftQEngine.Managed, LoftQEngine.Torch })
        {
            var model = new List<double>();
            var layer = new List<double>();
            double modelError = 0, layerError = 0;
            for (int i = 0; i <= repeats; i++)
            {
                using var scope = NewDisposeScope();
                using (var llama = LlamaForCausalLM.FromPretrained(modelDirectory, ScalarType.Float32))
                {
                    var clock = Stopwatch.StartNew();
                    LoftQReport report = LoftQ.Initialize(llama, new LoftQOptions { Bits = 2, Rank = 16, Iterations = 5, ScaleSearch = null }, modelOptions: new LoftQModelOptions { Engine = engine });
                    if (i > 0)
                    {
                        model.Add(clock.Elapsed.TotalSeconds);
                    }

                    modelError = report.MeanLoftQError;
                }

                using var one = new OneLayer(4096);
                var c2 = Stopwatch.StartNew();
                LoftQReport r2 = LoftQ.Initialize(one, new LoftQOptions { Bits = 4, Rank = 64, Iterations = 5, Targets = ["proj"], ScaleSearch = null }, modelOptions: new LoftQModelOptions { Engine = engine });
                if (i > 0)
                {
                    layer.Add(c2.Elapsed.TotalSeconds);
                }

                layerError = r2.MeanLoftQError;
            }

            model.Sort();
            layer.Sort();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"initialize | {engine} | bundled model NF2 r16 T5: median {model[model.Count / 2]:F3} s (range {model[0]:F3}-{model[^1]:F3}), mean error {modelError:F4} | 4096² NF4 r64 T5: median {layer[layer.Count / 2]:F3} s (range {layer[0]:F3}-{layer[^1]:F3}), error {layerError:F4}"));
        }
    }

    private sealed class OneLayer : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor> proj;

        public OneLayer(int n)
            : base(nameof(OneLayer))
        {
            var linear = torch.nn.Linear(n, n, hasBias: false);
            using (torch.no_grad())
            {
                linear.weight!.copy_(torch.randn([n, n], generator: new Generator(7)).mul(0.02));
            }

            proj = linear;
            RegisterComponents();
        }

        public override Tensor forward(Tensor input) => proj.forward(input);
    }

    private static long ResidentBytes()
    {
        GC.Collect();
        return Status("VmRSS:");
    }

    /// <summary>Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux: write 5 to clear_refs).</summary>
    private static void ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private static long Status(string key)
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith(key, StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
            }
        }

        return 0;
    }
}
