using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

public sealed class LlamaModelTests
{
    [Fact]
    public void Forward_matches_the_transformers_reference_logits()
    {
        using SafeTensorsFile reference = SafeTensorsFile.Open(Path.Combine(TestData.ReferenceOutputs, "byte-llama-14m-logits.safetensors"));
        int[] ids = ReadInt32(reference, "input_ids");
        float[] expected = reference.ReadAsSingle("logits");
        byte[] text = File.ReadAllBytes(TestData.FortunesVal);
        Assert.Equal(text.Take(128).Select(b => (int)b), ids);

        var model = Evaluation.Load(TestData.Model);
        using Matrix logits = model.Forward(ids);
        Assert.Equal(expected.Length, logits.Length);
        float maxAbs = expected.Max(Math.Abs);
        float maxDiff = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs(expected[i] - logits.Span[i]));
        }

        // float32 on both sides; the remaining difference is summation order (GPU vs CPU).
        Assert.True(maxDiff < 2e-4f * maxAbs, $"max |diff| {maxDiff} vs max |logit| {maxAbs}");
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Bits_per_byte_on_fortunes_val_matches_the_reference_measurement()
    {
        // reference-outputs/README.json: fortunes_val_bpb = 2.7003552375845126 (64 windows of 256 predictions).
        EvaluationResult r = Evaluation.BitsPerByte(TestData.Model, File.ReadAllBytes(TestData.FortunesVal));
        Assert.Equal(64, r.Windows);
        Assert.Equal(64 * 256, r.Predictions);
        Assert.InRange(r.BitsPerByte, 2.7003552 - 1e-3, 2.7003552 + 1e-3);
    }

    [Fact]
    public void Forward_rejects_tokens_outside_the_vocabulary_and_empty_input()
    {
        var model = Evaluation.Load(TestData.Model);
        ArgumentException e = Assert.Throws<ArgumentException>(() => model.Forward([1, 2, 300]));
        Assert.Contains("300", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => model.Forward([]));
    }

    [Fact]
    public void Forward_is_causal_a_later_token_does_not_change_earlier_logits()
    {
        var model = Evaluation.Load(TestData.Model);
        using Matrix a = model.Forward([72, 101, 108, 108, 111]);
        using Matrix b = model.Forward([72, 101, 108, 108, 33]);
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(a.Row(i).ToArray(), b.Row(i).ToArray());
        }

        Assert.NotEqual(a.Row(4).ToArray(), b.Row(4).ToArray());
    }

    private static int[] ReadInt32(SafeTensorsFile file, string name)
    {
        ReadOnlySpan<byte> bytes = file.GetBytes(name);
        var result = new int[bytes.Length / 4];
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = BitConverter.ToInt32(bytes.Slice(i * 4, 4));
        }

        return result;
    }
}
