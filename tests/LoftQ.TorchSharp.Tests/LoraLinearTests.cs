using LoftQNet.Numerics;
using LoftQNet.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Tests;

// Builds models from torch's global generator: must not run beside another class that draws from it.
[Collection(LoftQNet.TorchSharp.Tests.Models.TorchCollection.Name)]
public class LoraLinearTests : TorchTestBase
{
    public static TheoryData<string, int, int, int> Quantizers => new()
    {
        { "nf", 2, 64, 0 }, { "nf", 3, 64, 0 }, { "nf", 4, 64, 0 }, { "nf", 8, 64, 0 },
        { "uniform", 5, 32, 0 }, { "uniform-asym", 3, 64, 0 }, { "nf", 4, 16, 1 }, { "nf", 3, 64, 1 },
    };

    private static IQuantizer Make(string kind, int bits, int block) => kind switch
    {
        "nf" => new NormalFloatQuantizer(bits, block),
        "uniform" => new UniformQuantizer(bits, block),
        _ => new UniformQuantizer(bits, block, asymmetric: true),
    };

    [Theory]
    [MemberData(nameof(Quantizers))]
    public void TorchDequantizationEqualsTheCoreBitForBit(string kind, int bits, int block, int oddShape)
    {
        // oddShape: 7x13 = 91 values, a partial last block and a partial last 8-code group.
        (int rows, int cols) = oddShape == 1 ? (7, 13) : (48, 80);
        using Matrix w = Matrix.RandomNormal(rows, cols, seed: bits * 31 + block);
        QuantizedTensor q = Make(kind, bits, block).Quantize(w.Span, w.Shape);
        var expected = new float[rows * cols];
        q.Dequantize(expected);

        using var layer = new QuantizedLinear(q);
        using Tensor dense = layer.Dequantize();
        Assert.Equal(expected, Values(dense));
        QuantizedTensor back = layer.ToQuantizedTensor();
        Assert.True(back.PackedCodes.SequenceEqual(q.PackedCodes));
        Assert.True(back.Scales.SequenceEqual(q.Scales));
        Assert.Equal(q.QuantizerName, back.QuantizerName);
    }

    [Theory]
    [MemberData(nameof(Quantizers))]
    public void TheCpuKernelAndTheTorchOpsPathDequantizeBitForBit(string kind, int bits, int block, int oddShape)
    {
        // On the CPU the managed kernel serves every call, so the torch-ops path (the GPU's) is checked here directly.
        (int rows, int cols) = oddShape == 1 ? (7, 13) : (48, 80);
        using Matrix w = Matrix.RandomNormal(rows, cols, seed: bits * 17 + block);
        QuantizedTensor q = Make(kind, bits, block).Quantize(w.Span, w.Shape);
        var expected = new float[rows * cols];
        q.Dequantize(expected);
        using var layer = new QuantizedLinear(q);
        using Tensor kernel = TorchCodec.Dequantize(layer.Weight, ScalarType.Float32);
        using Tensor ops = TorchCodec.DequantizeWithTorchOps(layer.Weight, ScalarType.Float32);
        using Tensor transient = TorchCodec.DequantizeTransient(layer.Weight);
        Assert.Equal(expected, Values(kernel));
        Assert.Equal(expected, Values(ops));
        Assert.Equal(expected, Values(transient));
        using Tensor bf16 = TorchCodec.Dequantize(layer.Weight, ScalarType.BFloat16);
        using Tensor bf16Ops = TorchCodec.DequantizeWithTorchOps(layer.Weight, ScalarType.BFloat16);
        Assert.Equal(Values(bf16Ops), Values(bf16));
    }

    [Fact]
    public void StackedPackedLayersGiveTheDenseGradientsAndHoldNoGradientUntilTheScopeEnds()
    {
        // Three packed layers of different sizes share this thread's scratch buffer in forward and backward; the same
        // stack over dense Linear layers holding deq(W) is the reference (float32, the CPU kernel's path).
        int[] sizes = [48, 80, 32, 16];
        var packed = new List<LoraLinear>();
        var dense = new List<LoraLinear>();
        try
        {
            for (int i = 0; i < 3; i++)
            {
                (LoraLinear layer, _, Matrix a, Matrix b) = MakeLayer(outF: sizes[i + 1], inF: sizes[i], rank: 4, alpha: 8, seed: 40 + i);
                packed.Add(layer);
                var linear = torch.nn.Linear(sizes[i], sizes[i + 1], hasBias: false);
                using (torch.no_grad())
                using (Tensor deq = layer.Dequantize())
                {
                    linear.weight!.copy_(deq);
                }

                dense.Add(new LoraLinear(linear, TorchEngineCopy(a), TorchEngineCopy(b), 8));
                a.Dispose();
                b.Dispose();
            }

            TorchCodec.ReleaseScratch();
            (double[] X, double[][] A, long Live) Run(List<LoraLinear> stack)
            {
                using var outer = NewDisposeScope();
                Tensor x = torch.randn([5, 7, 48], generator: new Generator(9)).requires_grad_(true);
                Tensor h = x;
                foreach (LoraLinear layer in stack)
                {
                    h = torch.nn.functional.silu(layer.forward(h));
                }

                long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
                h.pow(2).sum().backward();
                long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount - before;
                double[][] grads = stack.Select(l => Doubles(l.A.grad!)).ToArray();
                foreach (LoraLinear l in stack)
                {
                    l.A.grad!.zero_();
                    l.B.grad!.zero_();
                }

                return (Doubles(x.grad!), grads, live);
            }

            var p = Run(packed);
            var d = Run(dense);
            Assert.Equal(80L * 48, TorchCodec.ScratchElements); // the largest layer's weight, allocated once
            for (int i = 0; i < d.X.Length; i++)
            {
                Assert.Equal(d.X[i], p.X[i], 1e-5 + (1e-5 * Math.Abs(d.X[i])));
            }

            for (int k = 0; k < 3; k++)
            {
                for (int i = 0; i < d.A[k].Length; i++)
                {
                    Assert.Equal(d.A[k][i], p.A[k][i], 1e-4 + (1e-5 * Math.Abs(d.A[k][i])));
                }
            }

            // The backward pass leaves no more live tensors over the packed stack than over the dense one: each layer's
            // gradient wrappers are released as the pass goes, not kept until the caller's scope ends.
            Assert.True(p.Live <= d.Live + 1, $"backward left {p.Live} live tensors over the packed stack, {d.Live} over the dense one");
        }
        finally
        {
            packed.ForEach(l => l.Dispose());
            dense.ForEach(l => l.Dispose());
        }

        static Tensor TorchEngineCopy(Matrix m) => torch.tensor(m.Span.ToArray(), [m.Rows, m.Columns]);
    }

    [Fact]
    public void ForwardIsDequantizedBaseTimesXPlusScaledLowRankExactly()
    {
        using var scope = NewDisposeScope();
        (LoraLinear layer, QuantizedTensor q, Matrix a, Matrix b) = MakeLayer(outF: 40, inF: 72, rank: 4, alpha: 8, seed: 1);
        using (layer)
        {
            Tensor x = torch.randn([3, 5, 72], generator: new Generator(7));
            Tensor y = layer.forward(x);
            Assert.Equal(new long[] { 3, 5, 40 }, y.shape);

            // The same ops by hand: deq(Q)·x + (alpha/r)·B(A(x)).
            var wq = new float[40 * 72];
            q.Dequantize(wq);
            Tensor w = torch.tensor(wq, [40, 72]);
            Tensor ta = torch.tensor(a.Span.ToArray(), [4, 72]), tb = torch.tensor(b.Span.ToArray(), [40, 4]);
            Tensor manual = torch.nn.functional.linear(x, w).add(torch.nn.functional.linear(torch.nn.functional.linear(x, ta), tb).mul(2.0));
            Assert.Equal(Values(manual), Values(y));

            // And against a double-precision reference computed without torch.
            double[] xs = Doubles(x), ys = Doubles(y);
            for (int row = 0; row < 15; row++)
            {
                for (int o = 0; o < 40; o++)
                {
                    double acc = 0, low = 0;
                    for (int k = 0; k < 4; k++)
                    {
                        double ax = 0;
                        for (int i = 0; i < 72; i++)
                        {
                            ax += a[k, i] * xs[(row * 72) + i];
                        }

                        low += b[o, k] * ax;
                    }

                    for (int i = 0; i < 72; i++)
                    {
                        acc += wq[(o * 72) + i] * xs[(row * 72) + i];
                    }

                    Assert.Equal(acc + (2.0 * low), ys[(row * 40) + o], 1e-4);
                }
            }
        }

        a.Dispose();
        b.Dispose();
    }

    [Fact]
    public void GradientsReachOnlyTheLoraFactorsAndEqualFiniteDifferences()
    {
        using var scope = NewDisposeScope();
        (LoraLinear layer, _, Matrix a, Matrix b) = MakeLayer(outF: 12, inF: 16, rank: 3, alpha: 6, seed: 2, bias: true);
        a.Dispose();
        b.Dispose();
        using (layer)
        {
            layer.to(ScalarType.Float64);
            Assert.Equal(ScalarType.Float64, layer.A.dtype);
            Assert.Equal(ScalarType.Float32, layer.QuantizedBase!.Weight.Scales.dtype);
            using (torch.no_grad())
            {
                layer.B.copy_(torch.randn([12, 3], dtype: ScalarType.Float64, generator: new Generator(3)));
            }

            Tensor x = torch.randn([4, 16], dtype: ScalarType.Float64, generator: new Generator(4)).requires_grad_(true);
            Tensor target = torch.randn([4, 12], dtype: ScalarType.Float64, generator: new Generator(5));
            double Loss() { using var s = NewDisposeScope(); using var ng = torch.no_grad(); return layer.forward(x).sub(target).pow(2).sum().item<double>(); }

            Tensor loss = layer.forward(x).sub(target).pow(2).sum();
            loss.backward();
            string[] trainable = layer.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).Order().ToArray();
            Assert.Equal(new[] { "lora_A.weight", "lora_B.weight" }, trainable);
            Assert.Null(layer.Bias!.grad);

            foreach ((Tensor param, Tensor grad) in new[] { (layer.A, layer.A.grad!), (layer.B, layer.B.grad!), (x, x.grad!) })
            {
                double[] analytic = Doubles(grad);
                for (int i = 0; i < analytic.Length; i += 5)
                {
                    double fd = FiniteDifference(param, i, Loss);
                    Assert.Equal(fd, analytic[i], Math.Max(1e-6, 1e-6 * Math.Abs(fd)));
                }
            }
        }
    }

    [Fact]
    public void MergeIsTheDequantizedBasePlusScaledProduct()
    {
        using var scope = NewDisposeScope();
        (LoraLinear layer, QuantizedTensor q, Matrix a, Matrix b) = MakeLayer(outF: 24, inF: 64, rank: 5, alpha: 10, seed: 6);
        using (layer)
        {
            float[] merged = Values(layer.Merge());
            var wq = new float[24 * 64];
            q.Dequantize(wq);
            for (int o = 0; o < 24; o++)
            {
                for (int i = 0; i < 64; i++)
                {
                    double expected = wq[(o * 64) + i];
                    for (int k = 0; k < 5; k++)
                    {
                        expected += 2.0 * b[o, k] * a[k, i];
                    }

                    Assert.Equal(expected, merged[(o * 64) + i], 1e-5);
                }
            }

            // A merged dense Linear computes what the LoRA layer computes.
            using Linear dense = layer.ToMergedLinear();
            Tensor x = torch.randn([6, 64], generator: new Generator(8));
            float[] viaLora = Values(layer.forward(x)), viaDense = Values(dense.forward(x));
            for (int i = 0; i < viaLora.Length; i++)
            {
                Assert.Equal(viaLora[i], viaDense[i], 1e-4);
            }
        }

        a.Dispose();
        b.Dispose();
    }

    [Fact]
    public void StateDictHasPeftNamesAndRoundTrips()
    {
        using var scope = NewDisposeScope();
        (LoraLinear layer, QuantizedTensor q, Matrix a, Matrix b) = MakeLayer(outF: 16, inF: 32, rank: 2, alpha: 2, seed: 9, bias: true, asymmetric: true);
        using (layer)
        {
            Dictionary<string, Tensor> state = layer.state_dict();
            Assert.Equal(
                new[] { "base_layer.bias", "base_layer.code_book", "base_layer.codes", "base_layer.offsets", "base_layer.scales", "lora_A.weight", "lora_B.weight" },
                state.Keys.Order(StringComparer.Ordinal).ToArray());
            Assert.Equal(ScalarType.Byte, state["base_layer.codes"].dtype);

            // A second layer with other factors and another quantized weight takes the first one's state.
            (LoraLinear other, _, Matrix a2, Matrix b2) = MakeLayer(outF: 16, inF: 32, rank: 2, alpha: 2, seed: 10, bias: true, asymmetric: true);
            using (other)
            {
                Tensor x = torch.randn([3, 32], generator: new Generator(11));
                Assert.NotEqual(Values(layer.forward(x)), Values(other.forward(x)));
                other.load_state_dict(state);
                Assert.Equal(Values(layer.forward(x)), Values(other.forward(x)));
            }

            a2.Dispose();
            b2.Dispose();
        }

        a.Dispose();
        b.Dispose();
    }

    [Fact]
    public void ToBFloat16ConvertsTheFactorsAndKeepsThePackedBase()
    {
        using var scope = NewDisposeScope();
        (LoraLinear layer, _, Matrix a, Matrix b) = MakeLayer(outF: 64, inF: 128, rank: 8, alpha: 8, seed: 12);
        a.Dispose();
        b.Dispose();
        using (layer)
        {
            Tensor x = torch.randn([4, 128], generator: new Generator(13));
            float[] fp32 = Values(layer.forward(x));
            layer.to(ScalarType.BFloat16);
            Assert.Equal(ScalarType.BFloat16, layer.A.dtype);
            Assert.Equal(ScalarType.BFloat16, layer.B.dtype);
            Assert.Equal(ScalarType.Byte, layer.QuantizedBase!.Weight.Codes.dtype);
            Assert.Equal(ScalarType.Float32, layer.QuantizedBase!.Weight.Scales.dtype);
            Tensor y = layer.forward(x.to(ScalarType.BFloat16));
            Assert.Equal(ScalarType.BFloat16, y.dtype);
            float[] bf16 = Values(y);
            double scale = fp32.Max(v => Math.Abs(v));
            for (int i = 0; i < fp32.Length; i++)
            {
                // bf16 keeps 8 significant bits: inputs, weights and the 128-term sums each round at ~2^-9 relative.
                Assert.True(Math.Abs(fp32[i] - bf16[i]) <= 0.03 * scale, $"element {i}: {fp32[i]} vs {bf16[i]}");
            }
        }
    }

    [Fact]
    public void BadShapesAndArgumentsAreRejected()
    {
        using Matrix w = Matrix.RandomNormal(8, 16, seed: 1);
        QuantizedTensor q = new NormalFloatQuantizer(4).Quantize(w.Span, w.Shape);
        Assert.Throws<ArgumentException>(() => LoraLinear.Create(q, new float[2 * 15], new float[8 * 2], 2, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => LoraLinear.Create(q, new float[2 * 16], new float[8 * 2], 2, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => LoraLinear.Create(q, new float[2 * 16], new float[8 * 2], 2, 2, dropout: 1.0));
        using var layer = LoraLinear.Create(q, new float[2 * 16], new float[8 * 2], 2, 2);
        var e = Assert.Throws<ArgumentException>(() => layer.forward(torch.zeros(3, 15)));
        Assert.Contains("in_features = 16", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DropoutActsOnlyInTraining()
    {
        using var scope = NewDisposeScope();
        using Matrix w = Matrix.RandomNormal(8, 16, seed: 1);
        QuantizedTensor q = new NormalFloatQuantizer(4).Quantize(w.Span, w.Shape);
        using Matrix a = Matrix.RandomNormal(2, 16, seed: 2), b = Matrix.RandomNormal(8, 2, seed: 3);
        using var layer = LoraLinear.Create(q, a.Span, b.Span, 2, 4, dropout: 0.5);
        Tensor x = torch.randn([64, 16], generator: new Generator(1));
        layer.eval();
        float[] e1 = Values(layer.forward(x)), e2 = Values(layer.forward(x));
        Assert.Equal(e1, e2);
        layer.train();
        Assert.NotEqual(e1, Values(layer.forward(x)));
    }

    public static TheoryData<bool, double, bool, bool> FusedCases => new()
    {
        // packed base?, scaling, separate dropout input?, input requires grad?
        { true, 1.0, false, true }, { false, 1.0, false, true }, { true, 2.5, false, true }, { false, 2.5, false, true },
        { true, 1.0, true, true }, { false, 0.5, true, true }, { true, 2.0, false, false }, { false, 2.0, true, false },
    };

    [Theory]
    [MemberData(nameof(FusedCases))]
    public void TheFusedNodeGivesTheComposedOperationsResultsAndGradients(bool packedBase, double scaling, bool separate, bool inputGrad)
    {
        // The fused LoRA node against the same layer built from torch's own differentiable operations. At scaling 1 the
        // two agree bit for bit (the fine-tuning protocol's alpha = r); otherwise the scaling is applied to a different
        // product (s·(g·B) against (s·g)·B), so within float32 rounding.
        using var scope = NewDisposeScope();
        (LoraLinear layer, _, Matrix ma, Matrix mb) = MakeLayer(outF: 24, inF: 40, rank: 4, alpha: 4, seed: 21, bias: true);
        using (layer)
        {
            Tensor dense = layer.Dequantize();
            Tensor bias = layer.Bias!;
            Lora.LoraBase baseWeight = packedBase ? new Lora.LoraBase(layer.QuantizedBase!.Weight, null, bias) : new Lora.LoraBase(null, dense, bias);
            Tensor mask = torch.rand([3, 5, 40], generator: new Generator(5)).ge(0.3).to(ScalarType.Float32).div(0.7);
            Tensor xSource = torch.randn([3, 5, 40], generator: new Generator(6));
            Tensor upstream = torch.randn([3, 5, 24], generator: new Generator(7));

            (float[] Y, float[]? X, float[] A, float[] B) Run(bool fused)
            {
                using var inner = NewDisposeScope();
                Tensor a = AsTensor(ma).requires_grad_(true), b = AsTensor(mb).requires_grad_(true);
                Tensor x = xSource.clone().requires_grad_(inputGrad);
                Tensor? dropped = separate ? x.mul(mask) : null;
                Tensor y = fused ? Lora.Forward(x, dropped, baseWeight, a, b, scaling) : Lora.Composed(x, dropped ?? x, baseWeight, a, b, scaling);
                y.mul(upstream).sum().backward();
                return (Values(y), inputGrad ? Values(x.grad!) : null, Values(a.grad!), Values(b.grad!));
            }

            long released = FunctionMemory.ReleasedOnThisThread;
            var f = Run(fused: true);
            Assert.Equal(released + 1, FunctionMemory.ReleasedOnThisThread); // the node's empty_like output was disposed
            var c = Run(fused: false);
            AssertClose(c.Y, f.Y, scaling == 1.0 ? 0 : 1e-6);
            AssertClose(c.A, f.A, scaling == 1.0 ? 0 : 1e-5);
            AssertClose(c.B, f.B, scaling == 1.0 ? 0 : 1e-5);
            if (inputGrad)
            {
                AssertClose(c.X!, f.X!, 1e-5);
            }

            // Without gradients the same fused arithmetic runs with no node at all.
            using (torch.no_grad())
            {
                Tensor x = xSource.clone();
                Assert.Equal(f.Y, Values(Lora.Forward(x, separate ? x.mul(mask) : null, baseWeight, AsTensor(ma), AsTensor(mb), scaling)));
            }
        }

        ma.Dispose();
        mb.Dispose();

        static Tensor AsTensor(Matrix m) => torch.tensor(m.Span.ToArray(), [m.Rows, m.Columns]);

        static void AssertClose(float[] expected, float[] actual, double relative)
        {
            Assert.Equal(expected.Length, actual.Length);
            double scale = expected.Max(v => Math.Abs(v));
            for (int i = 0; i < expected.Length; i++)
            {
                Assert.True(Math.Abs(expected[i] - actual[i]) <= relative * scale, $"element {i}: {expected[i]} vs {actual[i]}");
            }
        }
    }

    [Fact]
    public void TheFusedNodeStepsAsideWhereItCannotApply()
    {
        // bf16 input over float32 factors, and a dense base whose weight was made trainable: both take the composed
        // operations (the second so that the base weight still gets its gradient).
        using var scope = NewDisposeScope();
        (LoraLinear layer, _, Matrix ma, Matrix mb) = MakeLayer(outF: 16, inF: 32, rank: 2, alpha: 2, seed: 22);
        ma.Dispose();
        mb.Dispose();
        using (layer)
        {
            var linear = torch.nn.Linear(32, 16, hasBias: false);
            using (torch.no_grad())
            {
                linear.weight!.copy_(layer.Dequantize());
            }

            using var denseLayer = new LoraLinear(linear, layer.A.detach(), layer.B.detach(), 2);
            linear.weight!.requires_grad = true;
            long released = FunctionMemory.ReleasedOnThisThread;
            Tensor x = torch.randn([4, 32], generator: new Generator(3));
            denseLayer.forward(x).sum().backward();
            Assert.NotNull(linear.weight!.grad);
            Tensor y = layer.forward(x.to(ScalarType.BFloat16));
            Assert.Equal(ScalarType.BFloat16, y.dtype);
            Assert.Equal(released, FunctionMemory.ReleasedOnThisThread); // no fused node was built
        }
    }

    [Fact]
    public void TorchSharpsCustomFunctionInternalsAreWhereTheMemoryReleaseLooks()
    {
        // FunctionMemory reaches into TorchSharp 0.107's autograd node by reflection; an upgrade that moves those fields
        // must fail here rather than silently keep an output-sized tensor per layer per step.
        Assert.True(FunctionMemory.CanReleaseOutputCache);
    }

    internal static (LoraLinear Layer, QuantizedTensor Q, Matrix A, Matrix B) MakeLayer(int outF, int inF, int rank, double alpha, int seed, bool bias = false, bool asymmetric = false)
    {
        using Matrix w = Matrix.RandomNormal(outF, inF, seed: seed);
        IQuantizer quantizer = asymmetric ? new UniformQuantizer(4, 32, asymmetric: true) : new NormalFloatQuantizer(4);
        QuantizedTensor q = quantizer.Quantize(w.Span, w.Shape);
        Matrix a = Matrix.RandomNormal(rank, inF, seed: seed + 100, scale: 0.1f);
        Matrix b = Matrix.RandomNormal(outF, rank, seed: seed + 200, scale: 0.1f);
        using Tensor? tbias = bias ? torch.linspace(-1, 1, outF) : null;
        LoraLinear layer = LoraLinear.Create(q, a.Span, b.Span, rank, alpha, tbias);
        return (layer, q, a, b);
    }

    private static double FiniteDifference(Tensor param, int index, Func<double> loss)
    {
        const double H = 1e-6;
        using var noGrad = torch.no_grad();
        Tensor flat = param.view(-1);
        double original = flat[index].item<double>();
        flat[index] = original + H;
        double plus = loss();
        flat[index] = original - H;
        double minus = loss();
        flat[index] = original;
        return (plus - minus) / (2 * H);
    }
}
