using BenchmarkDotNet.Attributes;
using LoftQNet.Numerics;

namespace LoftQNet.Benchmarks;

/// <summary>Row orthonormalisation at the sizes of the randomized SVD's range finder (r + oversampling rows).</summary>
[MemoryDiagnoser]
public class QrBenchmarks
{
    private float[] _source = [];
    private float[] _work = [];

    [Params(72, 256)]
    public int Rows { get; set; }

    [Params(4096, 16384)]
    public int Columns { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _source = new float[Rows * Columns];
        _work = new float[Rows * Columns];
        Gaussian.Fill(_source, 7);
    }

    [IterationSetup]
    public void Reset() => _source.CopyTo(_work, 0);

    [Benchmark]
    public void OrthonormalizeRows() => Qr.OrthonormalizeRows(_work, Rows, Columns);
}
