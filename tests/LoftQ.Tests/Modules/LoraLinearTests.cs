using LoftQNet.Modules;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Modules;

public class LoraLinearTests
{
    private const int Batch = 3, In = 100, Out = 37, R = 4;

    private static (QuantizedTensor Q, float[] Dense) Quantized(int bits, int outF = Out, int inF = In, int blockSize = 64)
    {
        using Matrix w = Matrix.RandomNormal(outF, inF, 10 + bits, 0.1f);
        QuantizedTensor q = new NormalFloatQuantizer(bits, blockSize).Quantize(w.Span, w.Shape);
        var dense = new float[outF * inF];
        q.Dequantize(dense);
        return (q, dense);
    }

    private static LoraLinear Layer(int bits = 4, float alpha = 8f, bool bias = true)
    {
        (QuantizedTensor q, _) = Quantized(bits);
        Matrix? b = bias ? Matrix.RandomNormal(1, Out, 99, 0.5f) : null;
        return new LoraLinear(q, Matrix.RandomNormal(R, In, 1, 0.3f), Matrix.RandomNormal(Out, R, 2, 0.3f), alpha, b);
    }

    /// <summary>y = x·(W + s·B·A)ᵀ + bias in double, with W the dense dequantized weight.</summary>
    private static double[] ReferenceForward(double[] x, float[] w, double[] a, double[] b, double s, Matrix? bias)
    {
        var y = new double[Batch * Out];
        for (int i = 0; i < Batch; i++)
        {
            for (int o = 0; o < Out; o++)
            {
                double sum = bias is null ? 0 : bias[0, o];
                for (int k = 0; k < In; k++)
                {
                    double ba = 0;
                    for (int j = 0; j < R; j++)
                    {
                        ba += b[(o * R) + j] * a[(j * In) + k];
                    }

                    sum += x[(i * In) + k] * (w[(o * In) + k] + (s * ba));
                }

                y[(i * Out) + o] = sum;
            }
        }

        return y;
    }

    private static double[] ToDouble(Matrix m) => m.Span.ToArray().Select(v => (double)v).ToArray();

    private static float[] Dense(QuantizedTensor q)
    {
        var d = new float[q.ElementCount];
        q.Dequantize(d);
        return d;
    }

    [Theory]
    [InlineData(4)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(8)]
    public void ForwardWithoutDenseBaseEqualsDensePath(int bits)
    {
        using LoraLinear layer = Layer(bits);
        using Matrix x = Matrix.RandomNormal(Batch, In, 5);
        using Matrix y = layer.Forward(x);
        double[] expected = ReferenceForward(ToDouble(x), Dense(layer.Base), ToDouble(layer.A), ToDouble(layer.B), layer.Scaling, layer.Bias);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.Equal(expected[i], y.Span[i], 1e-4 * (1 + Math.Abs(expected[i])));
        }
    }

    [Fact]
    public void ForwardSpansSeveralRowBlocks()
    {
        // 700 rows of 200 columns: more than one 64 Ki-float row block, blocks of 64 straddling rows.
        (QuantizedTensor q, float[] dense) = Quantized(4, outF: 700, inF: 200);
        using Matrix a = Matrix.RandomNormal(2, 200, 3, 0.1f);
        using Matrix b = Matrix.RandomNormal(700, 2, 4, 0.1f);
        using Matrix x = Matrix.RandomNormal(2, 200, 6);
        Assert.True(QuantizedRows.RowsPerBlock(200, 700) < 700);
        using Matrix y = Lora.Forward(x, q, a, b, 0.5f);
        using Matrix w = Matrix.FromSpan(700, 200, dense);
        using Matrix ba = Matrix.Multiply(b, a);
        for (int i = 0; i < 2; i++)
        {
            for (int o = 0; o < 700; o++)
            {
                double sum = 0;
                for (int k = 0; k < 200; k++)
                {
                    sum += (double)x[i, k] * (w[o, k] + (0.5 * ba[o, k]));
                }

                Assert.Equal(sum, y[i, o], 1e-4 * (1 + Math.Abs(sum)));
            }
        }
    }

    [Fact]
    public void MergeEqualsForward()
    {
        using LoraLinear layer = Layer(bias: false);
        using Matrix x = Matrix.RandomNormal(Batch, In, 8);
        using Matrix merged = layer.Merge();
        using Matrix viaMerge = Matrix.Multiply(x, merged, transposeB: true);
        using Matrix y = layer.Forward(x);
        for (int i = 0; i < y.Length; i++)
        {
            Assert.Equal(viaMerge.Span[i], y.Span[i], 1e-4f * (1 + Math.Abs(y.Span[i])));
        }

        // Merge is deq(Q) + s·B·A element-wise.
        float[] dense = Dense(layer.Base);
        using Matrix ba = Matrix.Multiply(layer.B, layer.A);
        for (int i = 0; i < merged.Length; i++)
        {
            Assert.Equal(dense[i] + (layer.Scaling * ba.Span[i]), merged.Span[i], 1e-5f);
        }
    }

    [Fact]
    public void BackwardMatchesCentralFiniteDifferences()
    {
        using LoraLinear layer = Layer(alpha: 6f);
        using Matrix x = Matrix.RandomNormal(Batch, In, 12);
        using Matrix g = Matrix.RandomNormal(Batch, Out, 13); // L = Σ g ⊙ y
        using LoraGradients grads = layer.Backward(x, g);

        float[] w = Dense(layer.Base);
        double[] xd = ToDouble(x), ad = ToDouble(layer.A), bd = ToDouble(layer.B), gd = ToDouble(g);
        double s = layer.Scaling;
        double Loss() => ReferenceForward(xd, w, ad, bd, s, layer.Bias).Zip(gd, (yv, gv) => yv * gv).Sum();

        CheckGradient(ad, grads.DA, Loss);
        CheckGradient(bd, grads.DB, Loss);
        CheckGradient(xd, grads.DX, Loss);

        static void CheckGradient(double[] parameter, Matrix analytic, Func<double> loss)
        {
            Assert.Equal(parameter.Length, analytic.Length);
            const double H = 1e-3;
            for (int i = 0; i < parameter.Length; i++)
            {
                double saved = parameter[i];
                parameter[i] = saved + H;
                double plus = loss();
                parameter[i] = saved - H;
                double minus = loss();
                parameter[i] = saved;
                double numeric = (plus - minus) / (2 * H);
                Assert.Equal(numeric, analytic.Span[i], 2e-4 * (1 + Math.Abs(numeric)));
            }
        }
    }

    [Fact]
    public void RegistersNamedParametersAndScaling()
    {
        using LoraLinear layer = Layer(alpha: 8f);
        Assert.Equal(["lora_A", "lora_B", "bias"], layer.NamedParameters().Select(p => p.Key));
        Assert.Same(layer.A, layer.NamedParameters().First().Value);
        Assert.Equal(2f, layer.Scaling);
        Assert.Equal((Out, In, R), (layer.OutFeatures, layer.InFeatures, layer.Rank));
    }

    [Fact]
    public void RejectsMismatchedShapesAndBadAlpha()
    {
        (QuantizedTensor q, _) = Quantized(4);
        Assert.Equal("a", Assert.Throws<ArgumentException>(() => new LoraLinear(q, Matrix.Zeros(R, In + 1), Matrix.Zeros(Out, R), 1f)).ParamName);
        Assert.Equal("b", Assert.Throws<ArgumentException>(() => new LoraLinear(q, Matrix.Zeros(R, In), Matrix.Zeros(Out, R + 1), 1f)).ParamName);
        Assert.Equal("alpha", Assert.Throws<ArgumentOutOfRangeException>(() => new LoraLinear(q, Matrix.Zeros(R, In), Matrix.Zeros(Out, R), 0f)).ParamName);
        Assert.Equal("bias", Assert.Throws<ArgumentException>(() => new LoraLinear(q, Matrix.Zeros(R, In), Matrix.Zeros(Out, R), 1f, Matrix.Zeros(1, Out - 1))).ParamName);
        using LoraLinear layer = Layer();
        Assert.Equal("x", Assert.Throws<ArgumentException>(() => layer.Forward(Matrix.Zeros(2, In - 1))).ParamName);
        Assert.Equal("gradOutput", Assert.Throws<ArgumentException>(() => layer.Backward(Matrix.Zeros(2, In), Matrix.Zeros(3, Out))).ParamName);
    }

    [Theory]
    [InlineData(2, 64)]
    [InlineData(3, 64)]
    [InlineData(4, 32)]
    [InlineData(8, 50)]
    public void PartialDequantizationMatchesWholeTensor(int bits, int blockSize)
    {
        (QuantizedTensor q, float[] dense) = Quantized(bits, blockSize: blockSize);
        foreach ((int start, int length) in new[] { (0, dense.Length), (1, 7), (63, 130), (dense.Length - 5, 5), (333, 0) })
        {
            var part = new float[length];
            QuantizedRows.Dequantize(q, start, part);
            Assert.Equal(dense.AsSpan(start, length).ToArray(), part);
        }

        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedRows.Dequantize(q, dense.Length - 2, new float[3]));
    }

    [Fact]
    public void PartialDequantizationHonoursOffsets()
    {
        // A hand-built asymmetric 2-bit tensor: value = book[code]·scale + offset.
        byte[] codes = [0, 1, 2, 3, 3, 2, 1, 0, 1, 1];
        var packed = new byte[BitPacking.PackedLength(codes.Length, 2)];
        BitPacking.Pack(codes, 2, packed);
        var q = new QuantizedTensor(new TensorShape(2, 5), 2, 4, packed, [1f, 2f, 3f], [0f, 1f, 2f, 3f], "asym", [10f, 20f, 30f]);
        var part = new float[6];
        QuantizedRows.Dequantize(q, 3, part);
        Assert.Equal(new[] { 13f, 26f, 24f, 22f, 20f, 33f }, part);
    }
}
