using BenchmarkDotNet.Attributes;
using LoftQNet.LowRank;
using LoftQNet.Numerics;

namespace LoftQNet.Benchmarks;

/// <summary>Rank-64 decompositions: randomized SVD cold and warm-started, and the exact solver on a small matrix.</summary>
[MemoryDiagnoser]
public class LowRankBenchmarks
{
    private Matrix _large = null!;
    private Matrix _small = null!;
    private LowRankFactors _previous = null!;
    private readonly RandomizedSvdSolver _randomized = new();

    [Params(1024, 4096)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _large = Matrix.RandomNormal(Size, Size, 1, 0.02f);
        _small = Matrix.RandomNormal(256, 256, 2, 0.02f);

        // The previous factors come from a slightly different matrix, as between two LoftQ passes.
        using Matrix noise = Matrix.RandomNormal(Size, Size, 3, 0.001f);
        using Matrix earlier = _large.Subtract(noise);
        _previous = _randomized.Decompose(earlier, 64);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _large.Dispose();
        _small.Dispose();
        _previous.Dispose();
    }

    [Benchmark(Baseline = true)]
    public float RandomizedCold()
    {
        using LowRankFactors f = _randomized.Decompose(_large, 64);
        return f.SingularValues[0];
    }

    [Benchmark]
    public float RandomizedWarm()
    {
        using LowRankFactors f = _randomized.Decompose(_large, 64, _previous);
        return f.SingularValues[0];
    }

    [Benchmark]
    public float ExactSmall256()
    {
        using LowRankFactors f = new ExactSvdSolver().Decompose(_small, 64);
        return f.SingularValues[0];
    }
}
