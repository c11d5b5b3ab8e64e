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
        (string qlora, _) = runs.Get("qlora-nf2", new LoftQOptions { Bits = 2, Rank = 16, Iterations = 0 });
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
    public void A_text_shorter_than_one_window_is_rejected()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => Evaluation.BitsPerByte(TestData.Model, new byte[100], windowLength: 256));
        Assert.Contains("257", e.Message, StringComparison.Ordinal);
    }
}
