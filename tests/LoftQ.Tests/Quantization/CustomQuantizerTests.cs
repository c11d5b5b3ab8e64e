using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Quantization;

public class CustomQuantizerTests
{
    /// <summary>A 1-bit sign quantizer with a per-block mean-absolute-value scale, written the way a user would.</summary>
    private sealed class SignQuantizer(int blockSize) : IQuantizer
    {
        public string Name => "sign";

        public int Bits => 1;

        public int BlockSize => blockSize;

        public QuantizedTensor Quantize(ReadOnlySpan<float> values, TensorShape shape)
        {
            int n = values.Length;
            int blocks = (n + blockSize - 1) / blockSize;
            var scales = new float[blocks];
            var codes = new byte[n];
            for (int b = 0; b < blocks; b++)
            {
                int end = Math.Min(n, (b + 1) * blockSize);
                double sum = 0;
                for (int i = b * blockSize; i < end; i++)
                {
                    sum += Math.Abs(values[i]);
                    codes[i] = values[i] >= 0 ? (byte)1 : (byte)0;
                }

                scales[b] = (float)(sum / (end - (b * blockSize)));
            }

            var packed = new byte[(n + 7) / 8];
            BitPacking.Pack(codes, 1, packed);
            return new QuantizedTensor(shape, 1, blockSize, packed, scales, [-1f, 1f], Name);
        }

        public void Dequantize(QuantizedTensor quantized, Span<float> destination) => quantized.Dequantize(destination);
    }

    [Fact]
    public void CustomQuantizerWorksThroughTheDefaultFusedMethod()
    {
        IQuantizer q = new SignQuantizer(4);
        float[] x = [1f, -3f, 2f, -2f, 0.5f, 0.5f, -0.5f, 0.5f, -7f];
        var deq = new float[x.Length];
        QuantizedTensor t = q.QuantizeDequantize(x, new TensorShape(3, 3), deq);
        Assert.Equal(new[] { 2f, -2f, 2f, -2f, 0.5f, 0.5f, -0.5f, 0.5f, -7f }, deq);
        Assert.Equal("sign", t.QuantizerName);
        Assert.Equal(2 + (3 * 4), t.StorageBytes);
        Assert.Equal(new byte[] { 0b1010_1101, 0b0000_0000 }, t.PackedCodes.ToArray());
    }

    [Fact]
    public void CustomQuantizerCanBeSelectedByAPolicy()
    {
        var custom = new SignQuantizer(64);
        IQuantizationPolicy policy = QuantizationPolicies.FromPatterns([("lm_head", custom)], new NormalFloatQuantizer(4));
        IQuantizer chosen = policy.Select("lm_head.weight");
        using Matrix w = Matrix.RandomNormal(64, 64, seed: 2);
        var deq = new float[w.Length];
        chosen.QuantizeDequantize(w.Span, w.Shape, deq);
        for (int i = 0; i < w.Length; i++)
        {
            Assert.Equal(Math.Sign(w.Span[i] >= 0 ? 1 : -1), Math.Sign(deq[i]));
        }
    }
}
