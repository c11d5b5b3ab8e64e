using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

public sealed class EvaluationTests(FixtureRuns runs) : IClassFixture<FixtureRuns>
{
    [Fact]
    [Trait("Category", "Slow")]
    public void At_2_bits_loftq_keeps_the_model_usable_where_qlora_does_not()
    {
        byte[] text = File.ReadAllBytes(TestData.FortunesVal);
        (string loftq, _) = runs.Nf2;
        (string qlora, _) = runs.Get("qlora-nf2", new LoftQOptions { Bits = 2, Rank = 16, Iterations = 0, ScaleSearch = null });
        EvaluationResult full = Evaluation.BitsPerByte(TestData.Model, text, windows: 16);
        EvaluationResult withLoftQ = Evaluation.BitsPerByte(loftq, text, windows: 16);
        EvaluationResult withQLoRA = Evaluation.BitsPerByte(qlora, text, windows: 16);
        Assert.True(withLoftQ.AdapterApplied);
        Assert.True(withQLoRA.AdapterApplied);

        // QLoRA's B = 0 adapter is a no-op, so its model is the bare NF2 backbone.
        Assert.True(withQLoRA.BitsPerByte > full.BitsPerByte + 1.0, $"QLoRA NF2 {withQLoRA.BitsPerByte:F3} vs full {full.BitsPerByte:F3}");
        Assert.True(withLoftQ.BitsPerByte < withQLoRA.BitsPerByte - 0.5, $"LoftQ NF2 {withLoftQ.BitsPerByte:F3} vs QLoRA NF2 {withQLoRA.BitsPerByte:F3}");
    }

    [Fact]
    public void Bitsandbytes_nf4_outputs_are_scored_like_the_safetensors_backbone()
    {
        // Before: eval on a --format bnb-nf4 output failed (its U8 weights do not have the config's shapes).
        byte[] text = File.ReadAllBytes(TestData.FortunesVal);
        using var dir = new LoftQNet.Tests.IO.TempDir();
        var options = new LoftQOptions { Bits = 4, Rank = 8, Iterations = 1 };
        LoftQ.Initialize(TestData.Model, dir.File("peft"), options);
        LoftQ.Initialize(TestData.Model, dir.File("bnb"), options with { Format = OutputFormat.BitsAndBytesNf4 });
        LoftQ.Initialize(TestData.Model, dir.File("bnb-dq"), options with { Format = OutputFormat.BitsAndBytesNf4, DoubleQuant = true });
        EvaluationResult peft = Evaluation.BitsPerByte(dir.File("peft"), text, windows: 4);
        EvaluationResult bnb = Evaluation.BitsPerByte(dir.File("bnb"), text, windows: 4);
        EvaluationResult doubleQuant = Evaluation.BitsPerByte(dir.File("bnb-dq"), text, windows: 4);
        Assert.True(bnb.AdapterApplied && doubleQuant.AdapterApplied);

        // Same Q and adapter; the safetensors backbone holds Q rounded to bfloat16 (≤ 2^-9 relative per weight), the
        // bnb one exact NF4 values; double quantization also moves each block's absmax by up to ~1%.
        Assert.Equal(peft.BitsPerByte, bnb.BitsPerByte, 2e-3);
        Assert.Equal(peft.BitsPerByte, doubleQuant.BitsPerByte, 1e-2);
        Assert.NotEqual(bnb.BitsPerByte, doubleQuant.BitsPerByte);
    }

    [Fact]
    public void A_text_shorter_than_one_window_is_rejected()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => Evaluation.BitsPerByte(TestData.Model, new byte[100], windowLength: 256));
        Assert.Contains("257", e.Message, StringComparison.Ordinal);
    }
}
