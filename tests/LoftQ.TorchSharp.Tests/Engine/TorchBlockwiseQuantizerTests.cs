using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Tests.Engine;

[Collection(TorchEngineCollection.Name)]
public class TorchBlockwiseQuantizerTests
{
    private readonly ITestOutputHelper _output;

    public TorchBlockwiseQuantizerTests(ITestOutputHelper output)
    {
        TorchEngineCollection.Setup();
        _output = output;
    }

    public static TheoryData<string> Quantizers()
    {
        var data = new TheoryData<string>();
        foreach (int b in new[] { 2, 3, 4, 8 })
        {
            data.Add($"nf{b}");
        }

        for (int b = 2; b <= 8; b++)
        {
            data.Add($"uniform{b}");
            data.Add($"uniform{b}-asym");
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Quantizers))]
    public void CodesScalesAndPackedBytesMatchTheCoreQuantizer(string name)
    {
        BlockwiseQuantizer core = Core(name);
        using TorchBlockwiseQuantizer torchQ = TorchBlockwiseQuantizer.From(core);
        float[] values = TestValues(core, rows: 37, cols: 111, seed: 5); // 4107 values: 64 full blocks and a partial one
        var shape = new TensorShape(37, 111);
        QuantizedTensor expected = core.Quantize(values, shape);
        var expectedCodes = new byte[values.Length];
        expected.UnpackCodes(expectedCodes);

        using var scope = NewDisposeScope();
        (Tensor codes, Tensor scales, Tensor? offsets) = torchQ.Quantize(tensor(values, [37, 111]));
        Assert.Equal(new long[] { 37, 111 }, codes.shape);
        Assert.Equal(ScalarType.Byte, codes.dtype);
        Assert.Equal(expected.Scales.ToArray(), scales.data<float>().ToArray());
        if (expected.HasOffsets)
        {
            Assert.NotNull(offsets);
            Assert.Equal(expected.Offsets.ToArray(), offsets!.data<float>().ToArray());
        }
        else
        {
            Assert.Null(offsets);
        }

        // The thresholds are the core's own decision rule, so codes agree except where float rounding of the ratio
        // differs at a near-tie; require (almost) none, and that each is a near-tie.
        byte[] actual = codes.data<byte>().ToArray();
        ReadOnlySpan<float> thresholds = torchQ.DecisionThresholds;
        int mismatches = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            if (actual[i] == expectedCodes[i])
            {
                continue;
            }

            mismatches++;
            int block = i / core.BlockSize;
            float scale = expected.Scales[block], offset = expected.HasOffsets ? expected.Offsets[block] : 0f;
            float ratio = (values[i] - offset) * (1f / scale);
            Assert.True(Math.Abs(actual[i] - expectedCodes[i]) == 1, $"element {i}: torch code {actual[i]}, core code {expectedCodes[i]}");
            float t = thresholds[Math.Min(actual[i], expectedCodes[i])];
            Assert.True(Math.Abs(ratio - t) <= 1e-6f * Math.Max(1f, Math.Abs(t)), $"element {i}: ratio {ratio} is not near threshold {t}");
        }

        _output.WriteLine($"{name}: {mismatches} of {actual.Length} codes differ from the core's");
        Assert.True(mismatches <= actual.Length / 10000, $"{mismatches} of {actual.Length} codes differ");
        if (mismatches == 0)
        {
            QuantizedTensor mine = torchQ.ToQuantizedTensor(codes, scales, offsets);
            Assert.Equal(expected.PackedCodes.ToArray(), mine.PackedCodes.ToArray());
            Assert.Equal(expected.CodeBook.ToArray(), mine.CodeBook.ToArray());
            Assert.Equal(expected.QuantizerName, mine.QuantizerName);
        }

        // Dequantization: the core's arithmetic (level · scale, then + offset), bit for bit for the same codes.
        var coreDeq = new float[values.Length];
        expected.Dequantize(coreDeq);
        float[] torchDeq = torchQ.Dequantize(tensor(expectedCodes, [37, 111]), scales, offsets).data<float>().ToArray();
        Assert.Equal(coreDeq, torchDeq);
        (_, _, _, Tensor fused) = torchQ.QuantizeDequantize(tensor(values, [37, 111]));
        Assert.Equal(torchQ.Dequantize(codes, scales, offsets).data<float>().ToArray(), fused.data<float>().ToArray());
    }

    [Theory]
    [InlineData("nf4")]
    [InlineData("nf2")]
    [InlineData("uniform3")]
    [InlineData("uniform2-asym")]
    public void ExactTiesGoToTheLowerLevelAsInTheCore(string name)
    {
        BlockwiseQuantizer core = Core(name);
        using TorchBlockwiseQuantizer torchQ = TorchBlockwiseQuantizer.From(core);
        ReadOnlySpan<float> levels = core.CodeBook;
        ReadOnlySpan<float> thresholds = torchQ.DecisionThresholds;

        // One block whose scale is exactly 1 (and offset 0): ratios are the values themselves. Put the exact float
        // midpoints, the thresholds and their float neighbours in it.
        var ties = new List<float>();
        for (int k = 0; k + 1 < levels.Length; k++)
        {
            ties.Add((levels[k] + levels[k + 1]) / 2f);
            ties.Add(thresholds[k]);
            ties.Add(MathF.BitDecrement(thresholds[k]));
            ties.Add(MathF.BitIncrement(thresholds[k]));
        }

        // Every block starts with the two extreme levels, so its scale is exactly 1 and its offset 0.
        int perBlock = core.BlockSize - 2;
        var data = new List<float>();
        for (int i = 0; i < ties.Count; i += perBlock)
        {
            data.Add(levels[0]);
            data.Add(levels[^1]);
            data.AddRange(ties.Skip(i).Take(perBlock));
        }

        var shape = new TensorShape(data.Count);
        QuantizedTensor expected = core.Quantize(data.ToArray(), shape);
        var expectedCodes = new byte[data.Count];
        expected.UnpackCodes(expectedCodes);
        using var scope = NewDisposeScope();
        (Tensor codes, Tensor scales, Tensor? offsets) = torchQ.Quantize(tensor(data.ToArray()));
        float unitScale = levels[^1] - (name.EndsWith("-asym", StringComparison.Ordinal) ? levels[0] : 0f);
        Assert.All(scales.data<float>().ToArray(), s => Assert.Equal(unitScale, s));
        Assert.Equal(expectedCodes, codes.data<byte>().ToArray());
        for (int k = 0; k + 1 < levels.Length; k++)
        {
            float mid = (levels[k] + levels[k + 1]) / 2f;
            bool lowerWins = Math.Abs(mid - levels[k]) <= Math.Abs(mid - levels[k + 1]);
            using Tensor c = torchQ.Quantize(tensor(new[] { levels[0], levels[^1], mid, mid })).Codes;
            Assert.Equal(lowerWins ? k : k + 1, c.data<byte>()[2]);
        }
    }

    [Fact]
    public void AnAllZeroBlockHasScaleZeroAndDequantizesToZeros()
    {
        using TorchBlockwiseQuantizer nf4 = TorchBlockwiseQuantizer.NormalFloat(4);
        using TorchBlockwiseQuantizer asym = TorchBlockwiseQuantizer.Uniform(3, asymmetric: true);
        using var scope = NewDisposeScope();
        var data = new float[64 * 3 + 5];
        for (int i = 0; i < 64; i++)
        {
            data[i] = (i % 7) - 3f;
            data[128 + i] = 2.5f; // constant block: asymmetric scale 0
        }

        foreach (TorchBlockwiseQuantizer q in new[] { nf4, asym })
        {
            (Tensor codes, Tensor scales, Tensor? offsets, Tensor deq) = q.QuantizeDequantize(tensor(data));
            float[] s = scales.data<float>().ToArray();
            Assert.Equal(0f, s[1]);
            float[] d = deq.data<float>().ToArray();
            Assert.All(d, v => Assert.True(float.IsFinite(v)));
            Assert.All(d.AsSpan(64, 64).ToArray(), v => Assert.Equal(0f, v));
            Assert.All(d.AsSpan(192).ToArray(), v => Assert.Equal(0f, v));
            QuantizedTensor coreView = q.ToQuantizedTensor(codes, scales, offsets);
            var managed = new float[data.Length];
            coreView.Dequantize(managed);
            Assert.Equal(managed, d);
        }

        (_, Tensor asymScales, Tensor? asymOffsets, Tensor asymDeq) = asym.QuantizeDequantize(tensor(data));
        Assert.Equal(0f, asymScales.data<float>()[2]);
        Assert.Equal(2.5f, asymOffsets!.data<float>()[2]);
        Assert.All(asymDeq.data<float>().ToArray().AsSpan(128, 64).ToArray(), v => Assert.Equal(2.5f, v));
    }

    [Fact]
    public void PackMatchesTheCoreBitStreamForEveryWidthAndUnpackInvertsIt()
    {
        var random = new Random(3);
        using var scope = NewDisposeScope();
        for (int bits = 1; bits <= 8; bits++)
        {
            foreach (int n in new[] { 1, 7, 8, 9, 64, 1001 })
            {
                var codes = new byte[n];
                for (int i = 0; i < n; i++)
                {
                    codes[i] = (byte)random.Next(1 << bits);
                }

                var levels = new float[1 << bits];
                for (int i = 0; i < levels.Length; i++)
                {
                    levels[i] = i;
                }

                byte[] packed = TorchBlockwiseQuantizer.Pack(tensor(codes), bits).data<byte>().ToArray();
                Assert.Equal(((n * bits) + 7) / 8, packed.Length);
                var reference = new QuantizedTensor(new TensorShape(n), bits, 64, packed, new float[(n + 63) / 64], levels, "test");
                var unpacked = new byte[n];
                reference.UnpackCodes(unpacked);
                Assert.Equal(codes, unpacked);
                for (int i = 0; i < n; i++)
                {
                    Assert.Equal(codes[i], ReferenceBit(packed, i, bits));
                }

                Assert.Equal(codes, TorchBlockwiseQuantizer.Unpack(tensor(packed), bits, n).data<byte>().ToArray());
            }
        }

        // bitsandbytes' 4-bit order: the first element in the high nibble.
        Assert.Equal(new byte[] { 0x1F, 0xA0 }, TorchBlockwiseQuantizer.Pack(tensor(new byte[] { 1, 15, 10 }), 4).data<byte>().ToArray());
    }

    [Fact]
    public void NonFiniteValuesAreRejectedWithTheirFlatIndex()
    {
        using TorchBlockwiseQuantizer nf4 = TorchBlockwiseQuantizer.NormalFloat(4);
        using var scope = NewDisposeScope();
        var data = new float[300];
        data[131] = float.NaN;
        var e = Assert.Throws<ArgumentException>(() => nf4.Quantize(tensor(data)));
        Assert.Contains("flat index 131", e.Message, StringComparison.Ordinal);
        data[131] = 0f;
        data[299] = float.NegativeInfinity;
        e = Assert.Throws<ArgumentException>(() => nf4.Quantize(tensor(data, [3, 100])));
        Assert.Contains("flat index 299", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => nf4.Quantize(tensor(new[] { 1, 2, 3 })));
        using TorchBlockwiseQuantizer asym = TorchBlockwiseQuantizer.Uniform(4, asymmetric: true);
        e = Assert.Throws<ArgumentException>(() => asym.Quantize(tensor(new[] { float.MaxValue, -float.MaxValue, 0f, 1f })));
        Assert.Contains("overflows", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void PlugsIntoTheCoreOptimizerAsAnIQuantizer()
    {
        using Matrix w = Matrix.RandomNormal(64, 96, seed: 11);
        using TorchBlockwiseQuantizer torchNf4 = TorchBlockwiseQuantizer.NormalFloat(4);
        IQuantizer plugged = torchNf4;
        QuantizedTensor viaInterface = plugged.Quantize(w.Span, w.Shape);
        QuantizedTensor core = new NormalFloatQuantizer(4).Quantize(w.Span, w.Shape);
        Assert.Equal(core.PackedCodes.ToArray(), viaInterface.PackedCodes.ToArray());
        Assert.Equal(core.Scales.ToArray(), viaInterface.Scales.ToArray());

        using LoftQResult mine = new AlternatingOptimizer(torchNf4, new RandomizedSvdSolver()).Run(w, 4, 3);
        using LoftQResult theirs = new AlternatingOptimizer(new NormalFloatQuantizer(4), new RandomizedSvdSolver()).Run(w, 4, 3);
        Assert.Equal(theirs.ErrorTrace.Count, mine.ErrorTrace.Count);
        Assert.Equal(theirs.RelativeError, mine.RelativeError, 1e-6);
    }

    private static int ReferenceBit(byte[] packed, long index, int bits)
    {
        int code = 0;
        for (int k = 0; k < bits; k++)
        {
            long bit = (index * bits) + k;
            code = (code << 1) | ((packed[bit / 8] >> (7 - (int)(bit % 8))) & 1);
        }

        return code;
    }

    internal static BlockwiseQuantizer Core(string name) => name switch
    {
        _ when name.StartsWith("nf", StringComparison.Ordinal) => new NormalFloatQuantizer(int.Parse(name[2..], System.Globalization.CultureInfo.InvariantCulture)),
        _ when name.EndsWith("-asym", StringComparison.Ordinal) => new UniformQuantizer(int.Parse(name["uniform".Length..^"-asym".Length], System.Globalization.CultureInfo.InvariantCulture), asymmetric: true),
        _ => new UniformQuantizer(int.Parse(name["uniform".Length..], System.Globalization.CultureInfo.InvariantCulture)),
    };

    /// <summary>Gaussian values with an all-zero block, a constant block, and a block holding the scaled exact midpoints.</summary>
    private static float[] TestValues(BlockwiseQuantizer core, int rows, int cols, int seed)
    {
        using Matrix m = Matrix.RandomNormal(rows, cols, seed);
        float[] values = m.Span.ToArray();
        int b = core.BlockSize;
        Array.Clear(values, 2 * b, b);
        Array.Fill(values, 0.75f, 5 * b, b);
        ReadOnlySpan<float> levels = core.CodeBook;
        bool asym = core is UniformQuantizer { IsAsymmetric: true };
        int start = 7 * b;
        values[start] = asym ? 0f : -2f;
        values[start + 1] = 2f;
        for (int k = 0; k + 1 < levels.Length && k + 2 < b; k++)
        {
            float mid = (levels[k] + levels[k + 1]) / 2f;
            values[start + 2 + k] = mid * 2f;
        }

        return values;
    }
}
