using BenchmarkDotNet.Attributes;
using LoftQNet.Numerics;

namespace LoftQNet.Benchmarks;

/// <summary>
/// Row orthonormalisation at the sizes of the randomized SVD's range finder (r + oversampling rows): Gaussian rows
/// (well conditioned) and graded rank-64 rows (weights 0.8^j: most rows cancel or are replaced).
/// </summary>
[MemoryDiagnoser]
public class QrBenchmarks
{
    private float[] _source = [];
    private float[] _work = [];

    [Params(72, 256)]
    public int Rows { get; set; }

    [Params(4096, 16384)]
    public int Columns { get; set; }

    [Params("gaussian", "graded-rank-64")]
    public string Input { get; set; } = "gaussian";

    [GlobalSetup]
    public void Setup()
    {
        _source = new float[Rows * Columns];
        _work = new float[Rows * Columns];
        if (Input == "gaussian")
        {
            Gaussian.Fill(_source, 7);
            return;
        }

        const int rank = 64;
        float[] c = new float[Rows * rank], b = new float[rank * Columns];
        Gaussian.Fill(c, 8);
        Gaussian.Fill(b, 9);
        for (int i = 0; i < Rows; i++)
        {
            for (int j = 0; j < rank; j++)
            {
                c[(i * rank) + j] *= MathF.Pow(0.8f, j);
            }
        }

        Gemm.Multiply(Transpose.No, Transpose.No, Rows, Columns, rank, 1f, c, rank, b, Columns, 0f, _source, Columns);
    }

    [IterationSetup]
    public void Reset() => _source.CopyTo(_work, 0);

    [Benchmark]
    public void OrthonormalizeRows() => Qr.OrthonormalizeRows(_work, Rows, Columns);
}
