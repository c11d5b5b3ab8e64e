using BenchmarkDotNet.Attributes;
using LoftQNet.Numerics;

namespace LoftQNet.Benchmarks;

/// <summary>
/// SGEMM on the shapes the LoftQ solver runs (m×n×k): W·Ω, Wᵀ·Y, Qᵀ·W, the residual W − B·A and square ones.
/// GFLOP/s = 2·m·n·k / time. Compare with OpenBLAS at the same thread count (LOFTQ_NUM_THREADS / OPENBLAS_NUM_THREADS).
/// </summary>
[MemoryDiagnoser]
public class GemmBenchmarks
{
    private float[] _a = [];
    private float[] _b = [];
    private float[] _c = [];

    /// <summary>
    /// "m x n x k" and which operands are transposed: 4096x72x4096 NN is W·Ω, TN is Wᵀ·Y, 72x4096x4096 TN is Qᵀ·W,
    /// 4096x4096x72 NN+ is the residual update W − B·A (alpha = −1, beta = 1), then square shapes.
    /// </summary>
    [Params("4096x72x4096 NN", "4096x72x4096 TN", "72x4096x4096 TN", "4096x4096x72 NN+", "1024x1024x1024 NN", "1024x1024x1024 NT")]
    public string Shape { get; set; } = "";

    [Params(1, 2)]
    public int Threads { get; set; }

    private int M { get; set; }

    private int N { get; set; }

    private int K { get; set; }

    private Transpose TransA { get; set; }

    private Transpose TransB { get; set; }

    private float Beta { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        string[] parts = Shape.Split(' ');
        int[] dims = parts[0].Split('x').Select(int.Parse).ToArray();
        (M, N, K) = (dims[0], dims[1], dims[2]);
        TransA = parts[1][0] == 'T' ? Transpose.Yes : Transpose.No;
        TransB = parts[1][1] == 'T' ? Transpose.Yes : Transpose.No;
        Beta = Shape.EndsWith('+') ? 1f : 0f;
        _a = new float[M * K];
        _b = new float[K * N];
        _c = new float[M * N];
        Gaussian.Fill(_a, 1);
        Gaussian.Fill(_b, 2);
        Gaussian.Fill(_c, 3);
        ComputeSettings.MaxThreads = Threads;
    }

    [Benchmark]
    public void Multiply()
    {
        int lda = TransA == Transpose.No ? K : M;
        int ldb = TransB == Transpose.No ? N : K;
        float alpha = Beta == 0f ? 1f : -1f;
        Gemm.Multiply(TransA, TransB, M, N, K, alpha, _a, lda, _b, ldb, Beta, _c, N);
    }
}
