using LoftQNet.Numerics;
using LoftQNet.Quantization;
using static LoftQNet.Tests.Quantization.QuantizationTestHelpers;

namespace LoftQNet.Tests.Quantization;

public class BitPackingTests
{
    [Fact]
    public void FourBitCodesUseBitsandbytesNibbleOrder()
    {
        var packed = new byte[2];
        BitPacking.Pack([1, 2, 3, 4], 4, packed);
        Assert.Equal(new byte[] { 0x12, 0x34 }, packed);

        packed = new byte[3];
        BitPacking.Pack([0xA, 0xB, 0xC, 0xD, 0xE], 4, packed);
        Assert.Equal(new byte[] { 0xAB, 0xCD, 0xE0 }, packed);
    }

    [Fact]
    public void TwoBitCodesPackMostSignificantFirst()
    {
        var packed = new byte[2];
        BitPacking.Pack([3, 0, 1, 2, 2, 1], 2, packed);
        Assert.Equal(new byte[] { 0b11_00_01_10, 0b10_01_00_00 }, packed);
    }

    [Fact]
    public void ThreeBitCodesFormABigEndianBitStream()
    {
        // 1=001 2=010 3=011 4=100 5=101 6=110 7=111 0=000 → 00101001 11001011 10111000; then 5=101 → 10100000.
        var packed = new byte[4];
        BitPacking.Pack([1, 2, 3, 4, 5, 6, 7, 0, 5], 3, packed);
        Assert.Equal(new byte[] { 0b0010_1001, 0b1100_1011, 0b1011_1000, 0b1010_0000 }, packed);
    }

    [Fact]
    public void QuantizerOutputUsesTheSameOrder()
    {
        // NF4 codes for [-1, 1, 0, 1] × absmax 1 are [0, 15, 7, 15] → bytes 0x0F, 0x7F.
        QuantizedTensor t = new NormalFloatQuantizer(4, 4).Quantize([-1f, 1f, 0f, 1f], new TensorShape(2, 2));
        Assert.Equal(new byte[] { 0x0F, 0x7F }, t.PackedCodes.ToArray());
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(7)]
    [InlineData(8)]
    public void FastPackAndUnpackMatchTheBitByBitReference(int bits)
    {
        var rng = new Random(bits);
        foreach (int n in new[] { 0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 1000, 4099 })
        {
            var codes = new byte[n];
            for (int i = 0; i < n; i++)
            {
                codes[i] = (byte)rng.Next(1 << bits);
            }

            int length = (int)BitPacking.PackedLength(n, bits);
            var expected = new byte[length];
            BitPacking.PackScalar(codes, bits, expected);
            var actual = new byte[length];
            actual.AsSpan().Fill(0xFF); // the packer must overwrite every byte
            BitPacking.Pack(codes, bits, actual);
            AssertBytesEqual(expected, actual, $"{bits} bits, n = {n}");

            var back = new byte[n];
            BitPacking.Unpack(actual, bits, back);
            AssertBytesEqual(codes, back, $"unpack {bits} bits, n = {n}");
            for (int i = 0; i < n; i += 1 + (n / 17))
            {
                Assert.Equal(codes[i], BitPacking.Get(actual, i, bits));
            }
        }
    }

    [Fact]
    public void PackRejectsCodesThatDoNotFitAndWrongLengths()
    {
        var e = Assert.Throws<ArgumentException>(() => BitPacking.Pack([1, 2, 4, 1], 2, new byte[1]));
        Assert.Contains("Code 4 at index 2", e.Message);
        Assert.Throws<ArgumentException>(() => BitPacking.Pack([1, 2], 4, new byte[2]));
        Assert.Throws<ArgumentException>(() => BitPacking.Unpack(new byte[1], 4, new byte[3]));
        Assert.Throws<ArgumentOutOfRangeException>(() => BitPacking.Pack([1], 9, new byte[2]));
    }

    [Theory]
    [InlineData(4, 64)]
    [InlineData(2, 64)]
    [InlineData(3, 64)]
    [InlineData(8, 128)]
    [InlineData(4, 100)]
    public void StorageBytesAreBitsOverEightPerWeightPlusFourPerBlock(int bits, int blockSize)
    {
        var q = new NormalFloatQuantizer(bits, blockSize);
        using Matrix w = Matrix.RandomNormal(64, 100, seed: 1);
        QuantizedTensor t = q.Quantize(w.Span, w.Shape);
        long blocks = (6400 + blockSize - 1) / blockSize;
        Assert.Equal((6400L * bits / 8) + (4 * blocks), t.StorageBytes);

        var u = new UniformQuantizer(bits, blockSize, asymmetric: true);
        Assert.Equal((6400L * bits / 8) + (8 * blocks), u.Quantize(w.Span, w.Shape).StorageBytes);
    }
}
