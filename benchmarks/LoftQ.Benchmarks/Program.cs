using BenchmarkDotNet.Running;

namespace LoftQNet.Benchmarks;

/// <summary>
/// Entry point: <c>dotnet run -c Release --project benchmarks/LoftQ.Benchmarks -- --filter '*'</c> runs the
/// BenchmarkDotNet suites; <c>-- compare plan.json</c> is the LoftQ.NET side of benchmarks/compare/run.sh;
/// <c>-- torch-layers [repeats] [model]</c> measures LoraLinear against a dense Linear and LoftQ.Initialize(model).
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

        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
