using BenchmarkDotNet.Running;

namespace LoftQNet.Benchmarks;

/// <summary>
/// Entry point: <c>dotnet run -c Release --project benchmarks/LoftQ.Benchmarks -- --filter '*'</c> runs the
/// BenchmarkDotNet suites; <c>-- compare plan.json</c> is the LoftQ.NET side of benchmarks/compare/run.sh;
/// <c>-- torch-layers [repeats] [model]</c> measures LoraLinear against a dense Linear and LoftQ.Initialize(model);
/// <c>-- finetune-speed &lt;lora|nf4|nf2&gt; [steps] [threads] [model] [train.txt] [trim] [no-collect]</c> is the LoftQ.NET side of benchmarks/finetune/run.sh.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args is ["compare", string plan])
        {
            return CompareRunner.Run(plan);
        }

        if (args is ["torch-layers", ..])
        {
            int repeats = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 5;
            string model = args.Length > 2 ? args[2] : Path.Combine("tests", "data", "byte-llama-14m");
            return TorchLayerRunner.Run(repeats, model);
        }

        if (args is ["finetune-speed", string config, ..])
        {
            var inv = System.Globalization.CultureInfo.InvariantCulture;
            int steps = args.Length > 2 ? int.Parse(args[2], inv) : 20;
            int threads = args.Length > 3 ? int.Parse(args[3], inv) : Environment.ProcessorCount;
            string model = args.Length > 4 ? args[4] : Path.Combine("tests", "data", "byte-llama-14m");
            string train = args.Length > 5 ? args[5] : Path.Combine("tests", "data", "fortunes-train.txt");
            string[] flags = args.Length > 6 ? args[6..] : [];
            return FineTuneSpeedRunner.Run(config, steps, threads, model, train, trim: flags.Contains("trim"), collect: !flags.Contains("no-collect"));
        }

        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
