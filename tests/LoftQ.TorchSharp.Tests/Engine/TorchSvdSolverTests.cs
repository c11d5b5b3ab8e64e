using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Tests.Engine;

[Collection(TorchEngineCollection.Name)]
public class TorchSvdSolverTests
{
    public TorchSvdSolverTests() => TorchEngineCollection.Setup();

    [Fact]
    public void RandomizedLandsWithinOnePercentOfTheExactTruncation()
    {
        using var scope = NewDisposeScope();
        // A quantization-residual-like matrix: Gaussian noise plus a decaying low-rank part.
        Tensor m = TestMatrix(384, 640, seed: 1);
        var randomized = new TorchRandomizedSvdSolver(seed: 7);
        var exact = new TorchExactSvdSolver();
        foreach (int rank in new[] { 8, 16 })
        {
            using TorchLowRankFactors r = randomized.Decompose(m, rank);
            using TorchLowRankFactors e = exact.Decompose(m, rank);
            Assert.Equal(new long[] { 384, rank }, r.B.shape);
            Assert.Equal(new long[] { rank, 640 }, r.A.shape);
            double errR = (m - r.B.mm(r.A)).norm().item<float>(), errE = (m - e.B.mm(e.A)).norm().item<float>();
            Assert.True(errR <= errE * 1.01, $"rank {rank}: randomized {errR}, exact {errE}");
            Assert.True(errR >= errE * (1 - 1e-4), $"rank {rank}: randomized {errR} beats the optimum {errE}");
            float[] sr = r.SingularValues.data<float>().ToArray(), se = e.SingularValues.data<float>().ToArray();
            for (int i = 0; i < rank / 2; i++)
            {
                // The leading values; the tail of a noisy spectrum is underestimated by a few percent (the error above is what counts).
                Assert.Equal(se[i], sr[i], se[i] * 0.01);
            }

            // √S split: B's column norms equal A's row norms.
            float[] bCols = r.B.norm(0).data<float>().ToArray(), aRows = r.A.norm(1).data<float>().ToArray();
            for (int i = 0; i < rank; i++)
            {
                Assert.Equal(aRows[i], bCols[i], aRows[i] * 1e-3);
            }
        }
    }

    [Fact]
    public void WarmStartIsAsAccurateAndSeedsAreDeterministic()
    {
        using var scope = NewDisposeScope();
        Tensor m = TestMatrix(256, 320, seed: 2);
        Tensor m2 = m + (0.01 * randn([256, 320], generator: new Generator(3)));
        var solver = new TorchRandomizedSvdSolver(seed: 1);
        using TorchLowRankFactors first = solver.Decompose(m, 12);
        using TorchLowRankFactors again = solver.Decompose(m, 12);
        Assert.Equal(first.A.data<float>().ToArray(), again.A.data<float>().ToArray());
        using TorchLowRankFactors warm = solver.Decompose(m2, 12, first);
        using TorchLowRankFactors exact = new TorchExactSvdSolver().Decompose(m2, 12);
        double errW = (m2 - warm.B.mm(warm.A)).norm().item<float>(), errE = (m2 - exact.B.mm(exact.A)).norm().item<float>();
        Assert.True(errW <= errE * 1.01, $"warm {errW}, exact {errE}");
    }

    [Fact]
    public void ImplementsTheCoreSolverContract()
    {
        using Matrix m = Matrix.RandomNormal(96, 64, seed: 4);
        ILowRankSolver solver = new TorchRandomizedSvdSolver();
        using LowRankFactors f = solver.Decompose(m, 8);
        Assert.Equal((8, 64), (f.A.Rows, f.A.Columns));
        Assert.Equal((96, 8), (f.B.Rows, f.B.Columns));
        using LowRankFactors g = ((IWarmStartLowRankSolver)solver).Decompose(m, 8, f);
        using LowRankFactors e = new ExactSvdSolver().Decompose(m, 8);
        using LowRankFactors t = ((ILowRankSolver)new TorchExactSvdSolver()).Decompose(m, 8);
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(e.SingularValues[i], t.SingularValues[i], e.SingularValues[i] * 1e-4);
            Assert.Equal(e.SingularValues[i], g.SingularValues[i], e.SingularValues[i] * 0.05);
        }
    }

    [Fact]
    public void BadInputsGiveClearErrors()
    {
        using var scope = NewDisposeScope();
        var solvers = new ITorchLowRankSolver[] { new TorchRandomizedSvdSolver(), new TorchExactSvdSolver() };
        foreach (ITorchLowRankSolver s in solvers)
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => s.Decompose(zeros(10, 20), 11));
            Assert.Contains("min(out, in) = 10", e.Message, StringComparison.Ordinal);
            Assert.Throws<ArgumentOutOfRangeException>(() => s.Decompose(zeros(10, 20), 0));
            var d = Assert.Throws<ArgumentException>(() => s.Decompose(zeros(2, 10, 20), 4));
            Assert.Contains("two-dimensional", d.Message, StringComparison.Ordinal);
            Assert.Throws<ArgumentException>(() => s.Decompose(zeros([10, 20], ScalarType.Int32), 4));
        }

        Assert.Throws<ArgumentOutOfRangeException>(() => new TorchRandomizedSvdSolver(oversampling: -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new TorchRandomizedSvdSolver(powerIterations: 65));
    }

    [Fact]
    public void Bfloat16ResidualsAreDecomposedInFloat32()
    {
        using var scope = NewDisposeScope();
        Tensor m = TestMatrix(64, 80, seed: 5).to(ScalarType.BFloat16);
        using TorchLowRankFactors f = new TorchExactSvdSolver().Decompose(m, 4);
        using TorchLowRankFactors g = new TorchRandomizedSvdSolver().Decompose(m, 4);
        Assert.Equal(ScalarType.Float32, f.A.dtype);
        Assert.Equal(ScalarType.Float32, g.B.dtype);
    }

    internal static Tensor TestMatrix(int m, int n, int seed)
    {
        using var g = new Generator((ulong)seed);
        Tensor noise = randn([m, n], generator: g);
        Tensor u = randn([m, 24], generator: g), v = randn([24, n], generator: g);
        Tensor decay = exp(arange(24, ScalarType.Float32) * -0.2f).mul(0.5f);
        return (noise + u.mul(decay).mm(v)).contiguous();
    }
}
