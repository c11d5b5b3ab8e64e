using BenchmarkDotNet.Running;

namespace LoftQNet.Benchmarks;

/// <summary>
/// Entry point: <c>dotnet run -c Release --project benchmarks/LoftQ.Benchmarks -- --filter '*'</c> runs the
/// BenchmarkDotNet suites; <c>-- compare plan.json</c> is the LoftQ.NET side of benchmarks/compare/run.sh.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args is ["compare", string plan])
        {
            return CompareRunner.Run(plan);
        }

        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
