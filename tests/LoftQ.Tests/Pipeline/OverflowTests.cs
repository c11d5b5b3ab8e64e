using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>Issue 8, items 5 and 9: no value is silently written as ±∞ or NaN, and overflow is explained.</summary>
public sealed class OverflowTests
{
    [Theory]
    [InlineData(SafeTensorDType.F16, 70000f, "65504")]
    [InlineData(SafeTensorDType.F16, -65520f, "65504")]          // rounds to -∞ in binary16
    [InlineData(SafeTensorDType.BF16, float.MaxValue, "3.3895")] // rounds to +∞ in bfloat16
    public void A_finite_value_too_large_for_the_dtype_is_an_error_naming_tensor_element_and_value(SafeTensorDType dtype, float value, string largest)
    {
        float[] values = [1f, 2f, 3f, value, 5f, 6f];
        OverflowException e = Assert.Throws<OverflowException>(() => SafeTensorEntry.FromSingle("w", [2, 3], values, dtype));
        Assert.Contains("'w'", e.Message, StringComparison.Ordinal);
        Assert.Contains("element 3 [1, 0]", e.Message, StringComparison.Ordinal);
        Assert.Contains(value.ToString("R", System.Globalization.CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
        Assert.Contains(largest, e.Message, StringComparison.Ordinal);

        // The largest representable value itself is fine.
        SafeTensorEntry.FromSingle("w", [1], [dtype == SafeTensorDType.F16 ? 65504f : FloatConversions.BFloat16ToSingle(0x7F7F)], dtype);
    }

    [Theory]
    [InlineData(SafeTensorDType.F32, float.NaN)]
    [InlineData(SafeTensorDType.F32, float.PositiveInfinity)]
    [InlineData(SafeTensorDType.F16, float.NaN)]
    [InlineData(SafeTensorDType.BF16, float.NegativeInfinity)]
    public void NaN_and_infinity_are_never_written(SafeTensorDType dtype, float value)
    {
        NotFiniteNumberException e = Assert.Throws<NotFiniteNumberException>(() => SafeTensorEntry.FromSingle("w", [4], [0f, value, 0f, 0f], dtype));
        Assert.Contains("element 1", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_streaming_writer_reports_the_index_within_the_whole_tensor()
    {
        using var dir = new TempDirectory();
        var values = new float[200_000];
        values[150_001] = 1e6f;
        using SafeTensorsWriter writer = SafeTensorsWriter.Create(dir.Combine("a.safetensors"), [new SafeTensorInfo("big", SafeTensorDType.F16, [values.Length])]);
        OverflowException e = Assert.Throws<OverflowException>(() => writer.WriteSingle("big", values));
        Assert.Contains("element 150001", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_adapter_with_a_non_finite_value_is_refused()
    {
        using var dir = new TempDirectory();
        using Matrix a = Matrix.Zeros(2, 3), b = Matrix.Zeros(3, 2);
        b.Span[4] = float.NaN;
        NotFiniteNumberException e = Assert.Throws<NotFiniteNumberException>(() =>
            PeftAdapterWriter.Write(dir.Combine("adapter"), new PeftAdapterConfig(2, 2, ["q_proj"], null), [new LoraTensors("m.q_proj", a, b)]));
        Assert.Contains("m.q_proj.lora_B.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("element 4 [2, 0]", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_F16_model_near_65504_fails_naming_the_tensor_instead_of_writing_infinity()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"), dtype: SafeTensorDType.F16, value: (name, i) =>
            name.Contains("q_proj", StringComparison.Ordinal) ? 65504f * Spread(i) : 0.01f);
        string output = dir.Combine("out");
        OverflowException e = Assert.Throws<OverflowException>(() =>
            LoftQ.Initialize(model, output, new LoftQOptions { Bits = 4, Rank = 16, Iterations = 5, Targets = ["q_proj"], ScaleSearch = null }));
        Assert.Contains("q_proj.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("does not fit F16", e.Message, StringComparison.Ordinal);
        Assert.Contains("LoftQOptions.Iterations = 1", e.Message, StringComparison.Ordinal);
        Assert.Equal(["M"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName));

        // With one pass Q = q(W), whose values never exceed the weight's own absmax: the same model then works.
        LoftQReport report = LoftQ.Initialize(model, output, new LoftQOptions { Bits = 4, Rank = 16, Iterations = 1, Targets = ["q_proj"], ScaleSearch = null });
        using HuggingFaceCheckpoint written = HuggingFaceCheckpoint.Open(output);
        foreach (LayerReport layer in report.Layers)
        {
            Assert.All(written.ReadAsSingle(layer.Name), v => Assert.True(float.IsFinite(v)));
        }
    }

    [Fact]
    public void A_bnb_nf4_absmax_beyond_float16_is_refused()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"), dtype: SafeTensorDType.F16, value: (name, i) =>
            name.Contains("q_proj", StringComparison.Ordinal) ? 65504f * Spread(i) : 0.01f);
        OverflowException e = Assert.Throws<OverflowException>(() => LoftQ.Initialize(model, dir.Combine("out"),
            new LoftQOptions { Bits = 4, Rank = 16, Iterations = 5, Targets = ["q_proj"], Format = OutputFormat.BitsAndBytesNf4, ScaleSearch = null }));
        Assert.Contains("q_proj.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("float16", e.Message, StringComparison.Ordinal);
        Assert.Equal(["M"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    [Fact]
    public void A_finite_weight_near_float_max_is_explained_as_overflow_in_that_tensor()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"), value: (name, i) =>
            name == "model.layers.1.self_attn.q_proj.weight" ? 3e38f * Spread(i) : name.EndsWith("norm.weight", StringComparison.Ordinal) ? 1f : ((i % 7) - 3) * 0.01f);
        Exception e = Assert.ThrowsAny<Exception>(() => LoftQ.Initialize(model, dir.Combine("out"), SyntheticLlama.QuickOptions with { Iterations = 3 }));
        Assert.True(e is ArgumentException or ArithmeticException, e.ToString());
        Assert.Contains("model.layers.1.self_attn.q_proj.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("E+38", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("Row 0", e.Message.Split("Details:")[0], StringComparison.Ordinal);
        Assert.Contains("overflowed", e.Message, StringComparison.Ordinal);
        Assert.Equal(["M"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    /// <summary>Deterministic values spread evenly over (-1, 1).</summary>
    private static float Spread(long i) => (float)((2 * ((i * 0.6180339887498949) % 1.0)) - 1);
}
