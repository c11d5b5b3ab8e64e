using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Tests.Engine;

[Collection(TorchEngineCollection.Name)]
public class TorchLoftQTests
{
    public TorchLoftQTests() => TorchEngineCollection.Setup();

    [Theory]
    [InlineData(4, 0.0920)]
    [InlineData(2, 0.5623)]
    public void MatchesTheManagedOptimizerWithinHalfAPercent(int bits, double qloraNear)
    {
        using Matrix w = Matrix.RandomNormal(512, 1024, seed: 21);
        using LoftQResult managed = new AlternatingOptimizer(new NormalFloatQuantizer(bits), new RandomizedSvdSolver()).Run(w, 16, 5);
        using TorchBlockwiseQuantizer q = TorchBlockwiseQuantizer.NormalFloat(bits);
        using var scope = NewDisposeScope();
        Tensor weight = tensor(w.Span.ToArray(), [512, 1024]);
        using TorchLoftQResult mine = TorchLoftQ.Run(weight, q, new TorchRandomizedSvdSolver(), 16, 5);

        Assert.Equal(5, mine.ErrorTrace.Count);
        Assert.Equal(managed.QLoRAError, mine.QLoRAError, managed.QLoRAError * 1e-4);
        Assert.Equal(qloraNear, mine.QLoRAError, 0.003);
        Assert.True(Math.Abs(mine.RelativeError - managed.RelativeError) <= 0.005 * managed.RelativeError, $"torch {mine.RelativeError}, managed {managed.RelativeError}");
        for (int t = 0; t < 5; t++)
        {
            Assert.True(Math.Abs(mine.ErrorTrace[t] - managed.ErrorTrace[t]) <= 0.005 * managed.ErrorTrace[t], $"pass {t + 1}: torch {mine.ErrorTrace[t]}, managed {managed.ErrorTrace[t]}");
        }

        Assert.Equal(mine.ErrorTrace.Min(), mine.RelativeError);
        Assert.Equal(mine.ErrorTrace.ToList().IndexOf(mine.RelativeError) + 1, mine.BestPass);
        Assert.True(mine.RelativeError < mine.QLoRAError);

        // The reported error is the error of what the result holds.
        Tensor deq = mine.Dequantize();
        double check = (weight - deq - mine.B.mm(mine.A)).norm().item<float>() / weight.norm().item<float>();
        Assert.Equal(mine.RelativeError, check, 1e-5);
        QuantizedTensor onCpu = mine.ToQuantizedTensor();
        var managedDeq = new float[512 * 1024];
        onCpu.Dequantize(managedDeq);
        Assert.Equal(managedDeq, deq.data<float>().ToArray());
    }

    [Fact]
    public void ZeroIterationsIsTheQLoRABaselineOfTheCore()
    {
        using Matrix w = Matrix.RandomNormal(64, 128, seed: 3);
        using LoftQResult managed = new AlternatingOptimizer(new NormalFloatQuantizer(4), new RandomizedSvdSolver()) { Seed = 9 }.Run(w, 8, 0);
        using TorchBlockwiseQuantizer q = TorchBlockwiseQuantizer.NormalFloat(4);
        using var scope = NewDisposeScope();
        using TorchLoftQResult mine = TorchLoftQ.Run(tensor(w.Span.ToArray(), [64, 128]), q, new TorchRandomizedSvdSolver(), 8, 0, seed: 9);
        Assert.Equal(0, mine.BestPass);
        Assert.Single(mine.ErrorTrace);
        Assert.Equal(managed.QLoRAError, mine.QLoRAError, 1e-6);
        Assert.Equal(mine.QLoRAError, mine.RelativeError);
        Assert.Equal(managed.A.Span.ToArray(), mine.A.data<float>().ToArray());
        Assert.All(mine.B.data<float>().ToArray(), v => Assert.Equal(0f, v));
        Assert.Equal(managed.Quantized.PackedCodes.ToArray(), mine.PackedCodes.data<byte>().ToArray());
    }

    [Fact]
    public void ExactSolverVariantAndAsymmetricQuantizerRun()
    {
        using Matrix w = Matrix.RandomNormal(96, 160, seed: 8);
        using LoftQResult managed = new AlternatingOptimizer(new UniformQuantizer(3, asymmetric: true), new ExactSvdSolver()).Run(w, 8, 3);
        using TorchBlockwiseQuantizer q = TorchBlockwiseQuantizer.Uniform(3, asymmetric: true);
        using var scope = NewDisposeScope();
        using TorchLoftQResult mine = TorchLoftQ.Run(tensor(w.Span.ToArray(), [96, 160]), q, new TorchExactSvdSolver(), 8, 3);
        Assert.NotNull(mine.Offsets);
        Assert.Equal(managed.RelativeError, mine.RelativeError, managed.RelativeError * 0.005);
        Assert.Equal(managed.QLoRAError, mine.QLoRAError, managed.QLoRAError * 1e-4);
    }

    [Fact]
    public void NothingLeaksAndResultsFollowTheCallersScope()
    {
        using TorchBlockwiseQuantizer q = TorchBlockwiseQuantizer.NormalFloat(2);
        using Tensor weight = TorchSvdSolverTests.TestMatrix(128, 192, seed: 6);
        var solver = new TorchRandomizedSvdSolver();
        TorchLoftQ.Run(weight, q, solver, 8, 3).Dispose(); // warm the code-book cache
        long before = Tensor.TotalCount;
        for (int i = 0; i < 3; i++)
        {
            using TorchLoftQResult r = TorchLoftQ.Run(weight, q, solver, 8, 4);
            Assert.Equal(before + 4, Tensor.TotalCount); // packed codes, scales, A and B; nothing else
        }

        Assert.Equal(before, Tensor.TotalCount);
        using (var scope = NewDisposeScope())
        {
            TorchLoftQResult r = TorchLoftQ.Run(weight, q, solver, 8, 0);
            Assert.Equal(4, scope.DisposablesCount);
            _ = r.Dequantize();
            (Tensor codes, Tensor scales, _) = q.Quantize(weight);
            _ = TorchBlockwiseQuantizer.Pack(codes, 2);
            _ = solver.Decompose(weight, 4);
        }

        Assert.Equal(before, Tensor.TotalCount);
    }

    [Fact]
    public void BadInputsGiveClearErrors()
    {
        using TorchBlockwiseQuantizer q = TorchBlockwiseQuantizer.NormalFloat(4);
        var solver = new TorchRandomizedSvdSolver();
        using var scope = NewDisposeScope();
        var data = new float[20 * 30];
        data[(7 * 30) + 4] = float.NaN;
        var e = Assert.Throws<ArgumentException>(() => TorchLoftQ.Run(tensor(data, [20, 30]), q, solver, 4, 2));
        Assert.Contains("(7, 4)", e.Message, StringComparison.Ordinal);
        Assert.Contains("flat index 214", e.Message, StringComparison.Ordinal);
        var r = Assert.Throws<ArgumentOutOfRangeException>(() => TorchLoftQ.Run(zeros(20, 30), q, solver, 21, 2));
        Assert.Contains("min(out, in) = 20", r.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => TorchLoftQ.Run(zeros(20, 30), q, solver, 4, -1));
        var d = Assert.Throws<ArgumentException>(() => TorchLoftQ.Run(zeros(600), q, solver, 4, 1));
        Assert.Contains("two-dimensional", d.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentNullException>(() => TorchLoftQ.Run(zeros(20, 30), null!, solver, 4, 1));
    }
}
