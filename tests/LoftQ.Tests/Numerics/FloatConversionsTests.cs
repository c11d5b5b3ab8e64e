using LoftQNet.Numerics;

namespace LoftQNet.Tests.Numerics;

public class FloatConversionsTests
{
    public static TheoryData<int> Widths => new() { 512, 256, 128, 0 };

    /// <summary>Independent RNE reference: pick the nearer of the two bf16 neighbours in double arithmetic, ties to even.</summary>
    private static ushort ReferenceBFloat16(float x)
    {
        if (float.IsNaN(x))
        {
            return 0; // NaN handled separately
        }

        uint bits = BitConverter.SingleToUInt32Bits(x);
        uint lowBits = bits & 0xFFFF0000u;
        if ((bits & 0xFFFF) == 0)
        {
            return (ushort)(lowBits >> 16);
        }

        double lo = BitConverter.UInt32BitsToSingle(lowBits);
        // The next bf16 away from zero; beyond the largest finite value this is infinity.
        double hi = (lowBits & 0x7FFFFFFF) == 0x7F7F0000u ? (x > 0 ? 1 : -1) * Math.Pow(2, 128) : BitConverter.UInt32BitsToSingle(lowBits + 0x10000u);
        double dLo = Math.Abs(x - lo), dHi = Math.Abs(hi - x);
        uint chosen = dLo < dHi ? lowBits : dHi < dLo ? lowBits + 0x10000u : ((lowBits >> 16) & 1) == 0 ? lowBits : lowBits + 0x10000u;
        return (ushort)(chosen >> 16);
    }

    [Theory]
    [MemberData(nameof(Widths))]
    public void BFloat16_AllPatterns_WidenExactly_AndRoundTrip(int width)
    {
        var patterns = new ushort[65536];
        for (int i = 0; i < patterns.Length; i++)
        {
            patterns[i] = (ushort)i;
        }

        var floats = new float[65536];
        FloatConversions.BFloat16ToSingleCore(patterns, floats, width);
        var back = new ushort[65536];
        FloatConversions.SingleToBFloat16Core(floats, back, width);
        for (int i = 0; i < patterns.Length; i++)
        {
            Assert.Equal((uint)i << 16, BitConverter.SingleToUInt32Bits(floats[i]));
            bool isNaN = (i & 0x7FFF) > 0x7F80;
            if (isNaN)
            {
                Assert.Equal(i | 0x0040, back[i]); // quiet NaN, same sign and payload
            }
            else
            {
                Assert.Equal((ushort)i, back[i]);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Widths))]
    public void SingleToBFloat16_MatchesReference_OnRandomBitPatterns(int width)
    {
        var rng = new Random(12345);
        const int N = 1 << 18;
        var floats = new float[N + 7]; // odd tail for the scalar remainder
        for (int i = 0; i < floats.Length; i++)
        {
            floats[i] = BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32));
        }

        var result = new ushort[floats.Length];
        FloatConversions.SingleToBFloat16Core(floats, result, width);
        for (int i = 0; i < floats.Length; i++)
        {
            if (float.IsNaN(floats[i]))
            {
                float back = FloatConversions.BFloat16ToSingle(result[i]);
                Assert.True(float.IsNaN(back));
                Assert.True((result[i] & 0x0040) != 0, "quiet bit set");
                Assert.Equal(BitConverter.SingleToUInt32Bits(floats[i]) >> 31, (uint)result[i] >> 15);
            }
            else
            {
                Assert.Equal(ReferenceBFloat16(floats[i]), result[i]);
            }
        }
    }

    [Theory]
    [InlineData(0x3F808000u, 0x3F80)] // tie, lower is even: stay
    [InlineData(0x3F818000u, 0x3F82)] // tie, lower is odd: up to even
    [InlineData(0x3F808001u, 0x3F81)] // just above the tie
    [InlineData(0x3F807FFFu, 0x3F80)] // just below the tie
    [InlineData(0xBF818000u, 0xBF82)] // negative tie to even
    [InlineData(0x7F7F8000u, 0x7F80)] // tie at the top of the range rounds (to even) into infinity
    [InlineData(0x7F7FFFFFu, 0x7F80)] // float.MaxValue overflows to +inf
    [InlineData(0x7F7F7FFFu, 0x7F7F)] // below the tie stays finite
    [InlineData(0x7F800000u, 0x7F80)] // +inf
    [InlineData(0xFF800000u, 0xFF80)] // -inf
    [InlineData(0x00008000u, 0x0000)] // subnormal tie to even (zero)
    [InlineData(0x00018000u, 0x0002)] // subnormal tie to even (up)
    [InlineData(0x7F800001u, 0x7FC0)] // signalling NaN with a low payload becomes quiet NaN
    [InlineData(0xFFC00000u, 0xFFC0)] // negative quiet NaN
    public void SingleToBFloat16_TiesAndSpecials(uint input, int expected)
    {
        float x = BitConverter.UInt32BitsToSingle(input);
        foreach (int width in new[] { 512, 256, 128, 0 })
        {
            var src = Enumerable.Repeat(x, 67).ToArray();
            var dst = new ushort[67];
            FloatConversions.SingleToBFloat16Core(src, dst, width);
            Assert.All(dst, d => Assert.Equal((ushort)expected, d));
        }

        Assert.Equal((ushort)expected, FloatConversions.SingleToBFloat16(x));
    }

    [Fact]
    public void Half_AllPatterns_WidenExactly_AndRoundTrip()
    {
        var halves = new Half[65536];
        for (int i = 0; i < halves.Length; i++)
        {
            halves[i] = BitConverter.UInt16BitsToHalf((ushort)i);
        }

        var floats = new float[65536];
        FloatConversions.HalfToSingle(halves, floats);
        var back = new Half[65536];
        FloatConversions.SingleToHalf(floats, back);
        for (int i = 0; i < halves.Length; i++)
        {
            if (Half.IsNaN(halves[i]))
            {
                Assert.True(float.IsNaN(floats[i]));
                Assert.True(Half.IsNaN(back[i]));
                continue;
            }

            Assert.Equal(ReferenceHalfToDouble((ushort)i), (double)floats[i]);
            Assert.Equal((ushort)i, BitConverter.HalfToUInt16Bits(back[i]));
        }
    }

    [Fact]
    public void SingleToHalf_RoundsToNearestEven_AgainstEnumeratedReference()
    {
        // All non-negative finite halves in ascending order (bit patterns 0..0x7BFF are monotone).
        var levels = new double[0x7C00];
        for (int i = 0; i < levels.Length; i++)
        {
            levels[i] = ReferenceHalfToDouble((ushort)i);
        }

        var rng = new Random(7);
        var inputs = new List<float>();
        for (int i = 0; i < 200_000; i++)
        {
            inputs.Add((float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-26, 17))));
        }

        for (int i = 0; i + 1 < levels.Length; i += 97)
        {
            inputs.Add((float)((levels[i] + levels[i + 1]) / 2)); // exact ties (representable in float)
            inputs.Add(-(float)((levels[i] + levels[i + 1]) / 2));
        }

        inputs.Add(65520f); // halfway between max half and the next step: ties to even = infinity
        inputs.Add(65519.99f);
        var src = inputs.ToArray();
        var dst = new Half[src.Length];
        FloatConversions.SingleToHalf(src, dst);
        for (int i = 0; i < src.Length; i++)
        {
            ushort expected = ReferenceSingleToHalf(src[i], levels);
            Assert.True(expected == BitConverter.HalfToUInt16Bits(dst[i]), $"input {src[i]:R}: expected 0x{expected:X4}, got 0x{BitConverter.HalfToUInt16Bits(dst[i]):X4}");
        }
    }

    [Fact]
    public void LengthMismatch_Throws()
    {
        Assert.Throws<ArgumentException>(() => FloatConversions.SingleToBFloat16(new float[3], new ushort[2]));
        Assert.Throws<ArgumentException>(() => FloatConversions.BFloat16ToSingle(new ushort[3], new float[4]));
        Assert.Throws<ArgumentException>(() => FloatConversions.HalfToSingle(new Half[3], new float[4]));
        Assert.Throws<ArgumentException>(() => FloatConversions.SingleToHalf(new float[3], new Half[4]));
    }

    private static double ReferenceHalfToDouble(ushort bits)
    {
        int sign = (bits >> 15) != 0 ? -1 : 1;
        int exponent = (bits >> 10) & 0x1F;
        int mantissa = bits & 0x3FF;
        return exponent switch
        {
            0 => sign * mantissa * Math.Pow(2, -24),
            31 => mantissa == 0 ? sign * double.PositiveInfinity : double.NaN,
            _ => sign * (1 + (mantissa / 1024.0)) * Math.Pow(2, exponent - 15),
        };
    }

    private static ushort ReferenceSingleToHalf(float x, double[] levels)
    {
        ushort sign = (ushort)(BitConverter.SingleToUInt32Bits(x) >> 31 << 15);
        double a = Math.Abs((double)x);
        const double Overflow = 65520.0; // max half + half an ulp: at or above rounds to infinity
        if (a >= Overflow)
        {
            return (ushort)(sign | 0x7C00);
        }

        int idx = Array.BinarySearch(levels, a);
        if (idx >= 0)
        {
            return (ushort)(sign | idx);
        }

        int upper = ~idx;
        if (upper == levels.Length)
        {
            return (ushort)(sign | (levels.Length - 1));
        }

        int lower = upper - 1;
        double dl = a - levels[lower], du = levels[upper] - a;
        int chosen = dl < du ? lower : du < dl ? upper : (lower & 1) == 0 ? lower : upper;
        return (ushort)(sign | chosen);
    }
}
