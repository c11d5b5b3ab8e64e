using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using LoftQNet.Numerics;
using LoftQNet.Quantization;
using static LoftQNet.Tests.Quantization.QuantizationTestHelpers;

namespace LoftQNet.Tests.Quantization;

/// <summary>The fast paths (thresholds, SIMD, fused, parallel) against the scalar distance-based reference.</summary>
public class KernelEquivalenceTests
{
    public static TheoryData<string> CodeBooks() => new() { "nf2", "nf3", "nf4", "nf8", "uniform2", "uniform3", "uniform4", "uniform8", "uniform4-asym", "uniform7-asym" };

    private static float[] Levels(string name) => name switch
    {
        "nf2" => NormalFloatQuantizer.CreateCodeBook(2),
        "nf3" => NormalFloatQuantizer.CreateCodeBook(3),
        "nf4" => NormalFloatQuantizer.CreateCodeBook(4),
        "nf8" => NormalFloatQuantizer.CreateCodeBook(8),
        _ when name.EndsWith("-asym", StringComparison.Ordinal) => UniformQuantizer.CreateLevels(int.Parse(name[7..^5]), true),
        _ => UniformQuantizer.CreateLevels(int.Parse(name[7..]), false),
    };

    [Theory]
    [MemberData(nameof(CodeBooks))]
    public void ThresholdCountEqualsNearestLevelOnRandomValuesAndExactMidpoints(string name)
    {
        float[] levels = Levels(name);
        float[] thresholds = QuantizationKernels.ComputeThresholds(levels);
        int count = levels.Length <= 16 ? 2_000_000 : 100_000;
        var rng = new Random(name.Length * 31);
        for (int i = 0; i < count; i++)
        {
            float r = (float)((rng.NextDouble() * 2.2) - 1.1);
            Check(r);
        }

        for (int k = 0; k + 1 < levels.Length; k++)
        {
            float mid = (levels[k] + levels[k + 1]) / 2;
            double exact = ((double)levels[k] + levels[k + 1]) / 2;
            foreach (float c in new[] { mid, (float)exact, thresholds[k], levels[k], levels[k + 1] })
            {
                float v = c;
                for (int s = 0; s < 6; s++)
                {
                    v = MathF.BitDecrement(v);
                }

                for (int s = 0; s < 13; s++, v = MathF.BitIncrement(v))
                {
                    Check(v);
                }
            }
        }

        foreach (float v in new[] { 0f, -0f, 1f, -1f, 1.0000001f, -1.0000001f, float.Epsilon, -float.Epsilon })
        {
            Check(v);
        }

        void Check(float r)
        {
            int expected = QuantizationKernels.NearestScalar(levels, r);
            int actual = QuantizationKernels.CodeOf(ref thresholds[0], levels.Length, r);
            if (expected != actual)
            {
                Assert.Fail($"{name}: ratio {r:R} → nearest {expected}, threshold count {actual}");
            }
        }
    }

    [Fact]
    public void ExactMidpointGoesToTheLowerLevel()
    {
        // Levels 0 and 0.5 (uniform 1-bit asym is not a quantizer, but the rule is general): 0.25 is a tie.
        float[] levels = [0f, 0.5f];
        float[] t = QuantizationKernels.ComputeThresholds(levels);
        Assert.Equal(MathF.BitIncrement(0.25f), t[0]);
        Assert.Equal(0, QuantizationKernels.CodeOf(ref t[0], 2, 0.25f));
        Assert.Equal(1, QuantizationKernels.CodeOf(ref t[0], 2, MathF.BitIncrement(0.25f)));
    }

    [Theory]
    [MemberData(nameof(CodeBooks))]
    public void SimdCodeKernelsMatchScalar(string name)
    {
        float[] levels = Levels(name);
        float[] thresholds = QuantizationKernels.ComputeThresholds(levels);
        float[] x = AwkwardValues(4096 + 37, seed: 5);
        var expected = new byte[x.Length];
        var actual = new byte[x.Length];
        foreach ((float offset, float inverse) in new[] { (0f, 1f / 3.5f), (-2.5f, 1f / 6f), (0f, 0f), (0.1f, 0.37f) })
        {
            QuantizationKernels.CodesScalar(x, offset, inverse, thresholds, expected);
            if (levels.Length <= QuantizationKernels.SmallCodeBook)
            {
                if (Vector256.IsHardwareAccelerated)
                {
                    QuantizationKernels.CodesVector256(x, offset, inverse, thresholds, actual);
                    AssertBytesEqual(expected, actual, $"{name} Vector256");
                }

                if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
                {
                    QuantizationKernels.CodesVector512(x, offset, inverse, thresholds, actual);
                    AssertBytesEqual(expected, actual, $"{name} Vector512");
                }
            }

            QuantizationKernels.Codes(x, offset, 1f / inverse, inverse, thresholds, actual);
            AssertBytesEqual(expected, actual, $"{name} dispatch");
            for (int i = 0; i < x.Length; i += 97)
            {
                Assert.Equal(QuantizationKernels.NearestScalar(levels, (x[i] - offset) * inverse), expected[i]);
            }
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    [InlineData(8)]
    public void SimdLookupKernelsMatchScalar(int bits)
    {
        float[] levels = NormalFloatQuantizer.CreateCodeBook(bits);
        var rng = new Random(bits);
        var codes = new byte[1000 + bits];
        for (int i = 0; i < codes.Length; i++)
        {
            codes[i] = (byte)rng.Next(levels.Length);
        }

        var expected = new float[codes.Length];
        var actual = new float[codes.Length];
        foreach ((float scale, float offset, bool add) in new[] { (1.7f, 0f, false), (0.3f, -0.25f, true), (0f, 0f, false), (2f, 0f, true) })
        {
            QuantizationKernels.LookupScalar(codes, levels, scale, offset, add, expected);
            if (Avx2.IsSupported)
            {
                if (levels.Length <= 16)
                {
                    QuantizationKernels.LookupAvx2(codes, levels, scale, offset, add, actual);
                    AssertBitsEqual(expected, actual, $"AVX2 {bits}");
                }

                QuantizationKernels.LookupGatherAvx2(codes, levels, scale, offset, add, actual);
                AssertBitsEqual(expected, actual, $"gather {bits}");
            }

            if (levels.Length <= 16 && Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
            {
                QuantizationKernels.LookupVector512(codes, levels, scale, offset, add, actual);
                AssertBitsEqual(expected, actual, $"Vector512 {bits}");
            }

            QuantizationKernels.Lookup(codes, levels, scale, offset, add, actual);
            AssertBitsEqual(expected, actual, $"dispatch {bits}");
        }
    }

    [Theory]
    [InlineData(64)]
    [InlineData(48)]
    [InlineData(37)]
    [InlineData(16)]
    [InlineData(4096)]
    public void QuantizersMatchTheScalarReferenceBitForBit(int blockSize)
    {
        float[] x = AwkwardValues(40_000 + 13, seed: blockSize);
        var shape = new TensorShape(x.Length);
        foreach (IQuantizer q in AllBuiltIn(blockSize))
        {
            QuantizedTensor reference = CodecOf(q).QuantizeReference(x, shape);
            QuantizedTensor fast = q.Quantize(x, shape);
            AssertIdentical(reference, fast);

            var expected = new float[x.Length];
            reference.DequantizeReference(expected);
            var actual = new float[x.Length];
            q.Dequantize(fast, actual);
            AssertBitsEqual(expected, actual, $"{q.Name} dequantize");
        }
    }

    [Fact]
    public void ValuesExactlyAtAndAroundThresholdsMatchTheReferenceThroughTheWholeQuantizer()
    {
        // Each block starts with 1 (absmax 1, so the ratio is the value itself; asymmetric blocks also hold 0 so
        // min 0 and max 1); the rest are thresholds, exact float midpoints and their neighbours.
        foreach (IQuantizer q in AllBuiltIn())
        {
            BlockwiseCodec codec = CodecOf(q);
            var candidates = new List<float>();
            for (int k = 0; k < codec.Thresholds.Length; k++)
            {
                float mid = (codec.Levels[k] + codec.Levels[k + 1]) / 2;
                foreach (float c in new[] { codec.Thresholds[k], mid })
                {
                    candidates.Add(c);
                    candidates.Add(MathF.BitDecrement(c));
                    candidates.Add(MathF.BitIncrement(c));
                }
            }

            var values = new List<float>();
            for (int i = 0; i < candidates.Count; i++)
            {
                if (values.Count % 64 == 0)
                {
                    values.Add(1f);
                    values.Add(0f);
                }

                values.Add(codec.Asymmetric ? Math.Clamp(candidates[i], 0f, 1f) : Math.Clamp(candidates[i], -1f, 1f));
            }

            while (values.Count % 64 != 0)
            {
                values.Add(0.5f);
            }

            float[] x = values.ToArray();
            var shape = new TensorShape(x.Length);
            AssertIdentical(codec.QuantizeReference(x, shape), q.Quantize(x, shape));
        }
    }

    [Fact]
    public void SmallCodeBooksUseTheBucketedSearch()
    {
        foreach (IQuantizer q in AllBuiltIn())
        {
            Assert.Equal(q.Bits <= 4, CodecOf(q).HasBuckets);
        }
    }

    [Fact]
    public void PortablePathsWithoutAvx512MatchTheReference()
    {
        float[] x = AwkwardValues(20_000 + 5, seed: 77);
        var shape = new TensorShape(x.Length);
        bool saved = QuantizationKernels.AvoidVector512;
        try
        {
            QuantizationKernels.AvoidVector512 = true;
            Assert.False(QuantizationKernels.UseVector512);
            foreach (int blockSize in new[] { 64, 37 })
            {
                foreach (IQuantizer q in AllBuiltIn(blockSize))
                {
                    QuantizedTensor reference = CodecOf(q).QuantizeReference(x, shape);
                    var deq = new float[x.Length];
                    AssertIdentical(reference, q.QuantizeDequantize(x, shape, deq));
                    var expected = new float[x.Length];
                    reference.DequantizeReference(expected);
                    AssertBitsEqual(expected, deq, $"{q.Name} portable fused");
                    q.Dequantize(reference, deq);
                    AssertBitsEqual(expected, deq, $"{q.Name} portable dequantize");
                }
            }
        }
        finally
        {
            QuantizationKernels.AvoidVector512 = saved;
        }
    }

    [Theory]
    [Trait("Category", "Slow")]
    [InlineData(4)]
    [InlineData(2)]
    public void MillionsOfGaussianValuesMatchTheReference(int bits)
    {
        using Matrix w = Matrix.RandomNormal(2048, 1024, seed: 100 + bits);
        var q = new NormalFloatQuantizer(bits);
        AssertIdentical(q.Codec.QuantizeReference(w.Span, w.Shape), q.Quantize(w.Span, w.Shape));
    }

    [Theory]
    [InlineData(64)]
    [InlineData(37)]
    public void FusedPathEqualsQuantizeThenDequantize(int blockSize)
    {
        using Matrix w = Matrix.RandomNormal(300, 333, seed: 9);
        foreach (IQuantizer q in AllBuiltIn(blockSize))
        {
            QuantizedTensor unfused = q.Quantize(w.Span, w.Shape);
            var expected = new float[w.Length];
            q.Dequantize(unfused, expected);
            var fused = new float[w.Length];
            QuantizedTensor t = q.QuantizeDequantize(w.Span, w.Shape, fused);
            AssertIdentical(unfused, t);
            AssertBitsEqual(expected, fused, $"{q.Name} fused");
        }
    }

    [Fact]
    public void QuantizingTheDequantizedTensorReproducesCodesAndScales()
    {
        using Matrix w = Matrix.RandomNormal(128, 512, seed: 21);
        foreach (IQuantizer q in AllBuiltIn())
        {
            var deq = new float[w.Length];
            QuantizedTensor first = q.QuantizeDequantize(w.Span, w.Shape, deq);
            QuantizedTensor second = q.Quantize(deq, w.Shape);
            AssertBytesEqual(first.PackedCodes, second.PackedCodes, $"{q.Name} codes");
            if (!first.HasOffsets)
            {
                AssertBitsEqual(first.Scales, second.Scales, $"{q.Name} scales");
            }
            else
            {
                // max − min of the dequantized block is (scale + min) − min: equal up to one rounding.
                AssertBitsEqual(first.Offsets, second.Offsets, $"{q.Name} offsets");
                for (int b = 0; b < first.BlockCount; b++)
                {
                    Assert.True(Math.Abs(first.Scales[b] - second.Scales[b]) <= 2e-7f * Math.Abs(first.Offsets[b]) + 1e-7f * first.Scales[b], $"{q.Name} scale {b}");
                }
            }
        }
    }

    [Fact]
    public void ResultsDoNotDependOnTheThreadCount()
    {
        using Matrix w = Matrix.RandomNormal(700, 1000, seed: 13);
        // Per-call thread counts (ComputeSettings.UseThreads): the process-wide setting is never changed.
        ComputeSettings.ThreadScope threadScope = default;
        try
        {
            foreach (IQuantizer q in new IQuantizer[] { new NormalFloatQuantizer(4), new NormalFloatQuantizer(3), new UniformQuantizer(5, 37, true) })
            {
                threadScope.Dispose();
                threadScope = ComputeSettings.UseThreads(1);
                var d1 = new float[w.Length];
                QuantizedTensor t1 = q.QuantizeDequantize(w.Span, w.Shape, d1);
                var g1 = new float[w.Length];
                t1.Dequantize(g1);
                foreach (int threads in new[] { 2, 3, 8 })
                {
                    threadScope.Dispose();
                    threadScope = ComputeSettings.UseThreads(threads);
                    var dn = new float[w.Length];
                    AssertIdentical(t1, q.QuantizeDequantize(w.Span, w.Shape, dn));
                    AssertBitsEqual(d1, dn, $"{q.Name} {threads} threads");
                    var gn = new float[w.Length];
                    t1.Dequantize(gn);
                    AssertBitsEqual(g1, gn, $"{q.Name} dequantize {threads} threads");
                }
            }
        }
        finally
        {
            threadScope.Dispose();
        }
    }

    [Fact]
    public void OneQuantizerIsSafeToShareBetweenThreads()
    {
        var q = new NormalFloatQuantizer(4);
        var inputs = Enumerable.Range(0, 6).Select(i => AwkwardValues(50_000 + (i * 64), seed: 40 + i)).ToArray();
        QuantizedTensor[] expected = inputs.Select(x => q.Codec.QuantizeReference(x, new TensorShape(x.Length))).ToArray();
        var actual = new QuantizedTensor[inputs.Length];
        Parallel.For(0, inputs.Length * 4, new ParallelOptions { MaxDegreeOfParallelism = 6 }, j =>
        {
            int i = j % inputs.Length;
            var deq = new float[inputs[i].Length];
            actual[i] = q.QuantizeDequantize(inputs[i], new TensorShape(inputs[i].Length), deq);
        });
        for (int i = 0; i < inputs.Length; i++)
        {
            AssertIdentical(expected[i], actual[i]);
        }
    }

    [Fact]
    public void GenericDequantizeHandlesEveryWidthAndOddBlockSizes()
    {
        var rng = new Random(3);
        foreach (int bits in new[] { 1, 2, 3, 4, 5, 6, 7, 8 })
        {
            foreach (int blockSize in new[] { 1, 7, 64, 100 })
            {
                int n = 1234;
                var codes = new byte[n];
                for (int i = 0; i < n; i++)
                {
                    codes[i] = (byte)rng.Next(1 << bits);
                }

                var packed = new byte[BitPacking.PackedLength(n, bits)];
                BitPacking.Pack(codes, bits, packed);
                int blocks = (n + blockSize - 1) / blockSize;
                float[] scales = Enumerable.Range(0, blocks).Select(b => (float)rng.NextDouble()).ToArray();
                float[]? offsets = bits % 2 == 0 ? Enumerable.Range(0, blocks).Select(b => (float)rng.NextDouble() - 0.5f).ToArray() : null;
                float[] book = Enumerable.Range(0, 1 << bits).Select(i => (float)Math.Sin(i)).ToArray(); // unsorted on purpose
                var t = new QuantizedTensor(new TensorShape(n), bits, blockSize, packed, scales, book, "custom", offsets);
                var expected = new float[n];
                t.DequantizeReference(expected);
                var actual = new float[n];
                t.Dequantize(actual);
                AssertBitsEqual(expected, actual, $"{bits} bits, block {blockSize}");
                var unpacked = new byte[n];
                t.UnpackCodes(unpacked);
                AssertBytesEqual(codes, unpacked, "codes");
            }
        }
    }

    [Theory]
    [MemberData(nameof(CodeBooks))]
    public void TheFusedSquaredErrorEqualsCodingThenLookingUp(string name)
    {
        float[] levels = Levels(name);
        float[] thresholds = QuantizationKernels.ComputeThresholds(levels);
        bool asymmetric = name.EndsWith("-asym", StringComparison.Ordinal);
        var rng = new Random(name.Length * 17);
        foreach (int length in new[] { 64, 61, 7 })
        {
            var x = new float[length];
            var weights = new float[length];
            for (int i = 0; i < length; i++)
            {
                x[i] = (float)((rng.NextDouble() * 2) - 1) * 0.05f;
                weights[i] = (float)rng.NextDouble() * 3;
            }

            float scale = 0.8f * (asymmetric ? x.Max() - x.Min() : x.Max(MathF.Abs)), offset = asymmetric ? x.Min() + 0.01f : 0f;
            var codes = new byte[length];
            var y = new float[length];
            QuantizationKernels.CodesScalar(x, offset, 1f / scale, thresholds, codes);
            QuantizationKernels.LookupScalar(codes, levels, scale, offset, asymmetric, y);
            double plain = 0, weighted = 0;
            for (int i = 0; i < length; i++)
            {
                double e = x[i] - y[i];
                plain += e * e;
                weighted += weights[i] * e * e;
            }

            var tables = QuantizationKernels.SquaredErrorTables(thresholds, levels);
            Assert.Equal(levels.Length <= 16 && Vector256.IsHardwareAccelerated, tables is not null);
            if (tables is { } t)
            {
                Assert.True(QuantizationKernels.TrySquaredError(x, offset, scale, 1f / scale, t.Thresholds, t.Levels, asymmetric, default, out double got));
                Assert.Equal(plain, got, plain * 1e-5);
                Assert.True(QuantizationKernels.TrySquaredError(x, offset, scale, 1f / scale, t.Thresholds, t.Levels, asymmetric, weights, out double gotWeighted));
                Assert.Equal(weighted, gotWeighted, weighted * 1e-5);
            }
        }
    }
}
