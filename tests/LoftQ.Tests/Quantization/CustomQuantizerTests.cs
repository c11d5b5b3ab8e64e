using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Quantization;

public class CustomQuantizerTests
{
    [Fact]
    public void A_code_book_quantizer_with_nf4s_levels_is_nf4_bit_for_bit()
    {
        var nf4 = new NormalFloatQuantizer(4);
        var mine = new CodeBookQuantizer("mine", nf4.CodeBook);
        using Matrix w = Matrix.RandomNormal(96, 200, seed: 3);
        var d1 = new float[w.Length];
        var d2 = new float[w.Length];
        QuantizedTensor a = nf4.QuantizeDequantize(w.Span, w.Shape, d1);
        QuantizedTensor b = mine.QuantizeDequantize(w.Span, w.Shape, d2);
        Assert.Equal(a.PackedCodes.ToArray(), b.PackedCodes.ToArray());
        Assert.Equal(a.Scales.ToArray(), b.Scales.ToArray());
        Assert.Equal(d1, d2);
        Assert.Equal("mine", b.QuantizerName);
        Assert.Equal(4, mine.Bits);
    }

    [Fact]
    public void An_asymmetric_code_book_reproduces_constant_blocks_and_uses_offsets()
    {
        var q = new CodeBookQuantizer("asym3", [0f, 0.1f, 0.2f, 0.35f, 0.5f, 0.7f, 0.85f, 1f], blockSize: 8, asymmetric: true);
        float[] values = [.. Enumerable.Repeat(2.5f, 8), .. Enumerable.Range(0, 8).Select(i => i * 0.25f)];
        var d = new float[values.Length];
        QuantizedTensor t = q.QuantizeDequantize(values, new TensorShape(2, 8), d);
        Assert.True(t.HasOffsets);
        Assert.All(d.Take(8), v => Assert.Equal(2.5f, v));
        Assert.Equal(0f, d[8]);
        Assert.Equal(1.75f, d[15], 6);
    }

    [Fact]
    public void Bad_code_books_get_clear_errors()
    {
        Assert.Contains("2, 4, …, 256", Assert.Throws<ArgumentException>(() => new CodeBookQuantizer("x", [-1f, 0f, 1f])).Message);
        Assert.Contains("strictly ascending; level 2", Assert.Throws<ArgumentException>(() => new CodeBookQuantizer("x", [-1f, 0f, 0f, 1f])).Message);
        Assert.Contains("Level 3 of the code book is 1.5", Assert.Throws<ArgumentException>(() => new CodeBookQuantizer("x", [-1f, 0f, 0.5f, 1.5f])).Message);
        Assert.Contains("Level 0 of the code book is -0.5", Assert.Throws<ArgumentException>(() => new CodeBookQuantizer("x", [-0.5f, 1f], asymmetric: true)).Message);
        Assert.Contains("NaN", Assert.Throws<ArgumentException>(() => new CodeBookQuantizer("x", [-1f, float.NaN])).Message);
        Assert.Throws<ArgumentException>(() => new CodeBookQuantizer(" ", [-1f, 1f]));
        Assert.Throws<ArgumentOutOfRangeException>(() => new CodeBookQuantizer("x", [-1f, 1f], blockSize: 1));
    }

    [Fact]
    public void FromCodes_packs_what_UnpackCodes_returns_and_rejects_codes_that_do_not_fit()
    {
        byte[] codes = Enumerable.Range(0, 37).Select(i => (byte)(i % 8)).ToArray();
        float[] book = [-1f, -0.5f, -0.25f, 0f, 0.1f, 0.25f, 0.5f, 1f];
        QuantizedTensor t = QuantizedTensor.FromCodes(new TensorShape(37), 3, 16, codes, [2f, 4f, 8f], book, "mine");
        var back = new byte[37];
        t.UnpackCodes(back);
        Assert.Equal(codes, back);
        var values = new float[37];
        t.Dequantize(values);
        Assert.Equal(book[codes[20]] * 4f, values[20]);
        Assert.Equal(book[codes[36]] * 8f, values[36]);
        codes[5] = 8;
        Assert.Contains("Code 8 at index 5 does not fit in 3 bits", Assert.Throws<ArgumentException>(() => QuantizedTensor.FromCodes(new TensorShape(37), 3, 16, codes, [2f, 4f, 8f], book, "mine")).Message);
        Assert.Throws<ArgumentException>(() => QuantizedTensor.FromCodes(new TensorShape(36), 3, 16, codes, [2f, 4f, 8f], book, "mine"));
    }

    [Fact]
    public void A_code_book_quantizer_drives_the_loftq_loop()
    {
        var q = new CodeBookQuantizer("my3bit", [-1f, -0.55f, -0.28f, -0.09f, 0.09f, 0.28f, 0.55f, 1f]);
        using Matrix w = Matrix.RandomNormal(128, 256, seed: 8);
        using var qlora = LoftQ.Initialize(w, q, rank: 8, iterations: 0);
        using var loftq = LoftQ.Initialize(w, q, rank: 8, iterations: 3);
        Assert.True(loftq.RelativeError < qlora.RelativeError - 0.005, $"{loftq.RelativeError} vs {qlora.RelativeError}");
        Assert.Equal("my3bit", loftq.Quantized.QuantizerName);
    }
}
