using BenchmarkDotNet.Attributes;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.Benchmarks;

/// <summary>One LoftQ layer (NF4, r = 64, T = 5, randomized SVD) at the sizes of a 7B model's attention and MLP weights.</summary>
[MemoryDiagnoser]
public class LoftQLayerBenchmarks
{
    private Matrix _weight = null!;
    private readonly AlternatingOptimizer _optimizer = new(new NormalFloatQuantizer(4), new RandomizedSvdSolver());

    [Params("4096x4096", "11008x4096")]
    public string Shape { get; set; } = "4096x4096";

    [GlobalSetup]
    public void Setup()
    {
        string[] parts = Shape.Split('x');
        _weight = Matrix.RandomNormal(int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture), 7, 0.02f);
    }

    [GlobalCleanup]
    public void Cleanup() => _weight.Dispose();

    [Benchmark]
    public double LoftQNf4Rank64Iter5()
    {
        using LoftQResult result = _optimizer.Run(_weight, 64, 5);
        return result.RelativeError;
    }
}
