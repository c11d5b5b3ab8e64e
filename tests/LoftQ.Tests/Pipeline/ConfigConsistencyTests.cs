using System.Text.Json.Nodes;
using LoftQNet.Cli;
using LoftQNet.IO;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>Issue 8, items 7 and 9: config.json is checked against the tensors before anything is planned.</summary>
public sealed class ConfigConsistencyTests
{
    [Fact]
    public void A_config_declaring_40_layers_for_a_2_layer_checkpoint_is_an_error_naming_config_json()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"), editConfig: c => c["num_hidden_layers"] = 40);
        CheckpointFormatException e = Assert.Throws<CheckpointFormatException>(() =>
            LoftQ.Initialize(model, dir.Combine("out"), SyntheticLlama.QuickOptions with { Bits = 2.5, Targets = null }));
        Assert.Contains(Path.Combine(model, "config.json"), e.Message, StringComparison.Ordinal);
        Assert.Contains("num_hidden_layers is 40", e.Message, StringComparison.Ordinal);
        Assert.Contains("2 layers ('model.layers.0.…' to 'model.layers.1.…')", e.Message, StringComparison.Ordinal);
        Assert.Equal(["M"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName));

        // The evaluator and inspect check the same.
        Assert.Throws<CheckpointFormatException>(() => Evaluation.Load(model));
        var stderr = new StringWriter();
        Assert.Equal(2, CliApp.Run(["inspect", model], new StringWriter(), stderr, interactive: false));
        Assert.Contains("num_hidden_layers is 40", stderr.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("hidden_size", 128, "model.embed_tokens.weight", "hidden_size is 128")]
    [InlineData("num_attention_heads", 8, "k_proj.weight", "head_dim 8")] // 64 / 8 heads: the 4 kv heads no longer fill k_proj
    [InlineData("num_key_value_heads", 2, "k_proj.weight", "num_key_value_heads 2")]
    [InlineData("head_dim", 32, "q_proj.weight", "num_attention_heads 4 × head_dim 32")]
    public void Width_and_head_counts_are_checked_against_the_tensors(string key, int value, string tensor, string fragment)
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"), editConfig: c => c[key] = value);
        CheckpointFormatException e = Assert.Throws<CheckpointFormatException>(() => LoftQ.Initialize(model, dir.Combine("out"), SyntheticLlama.QuickOptions));
        Assert.Contains("config.json", e.Message, StringComparison.Ordinal);
        Assert.Contains(tensor, e.Message, StringComparison.Ordinal);
        Assert.Contains(fragment, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Zero_layers_with_mixed_precision_names_num_hidden_layers()
    {
        using var dir = new TempDirectory();

        // Layers named in a way no layer pattern recognises, so only the mixed-precision check can object.
        string model = SyntheticLlama.Write(dir.Combine("M"), layers: 0, editConfig: c => c["num_hidden_layers"] = 0,
            extra: [("model.decoder_stack_0.self_attn.q_proj.weight", [64, 64])]);
        ArgumentException e = Assert.Throws<ArgumentException>(() =>
            LoftQ.Initialize(model, dir.Combine("out"), SyntheticLlama.QuickOptions with { Bits = 2.5 }));
        Assert.Contains("num_hidden_layers is 0", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("layerCount", e.Message, StringComparison.Ordinal);

        // And a checkpoint with real layers but a config saying 0 is the layer mismatch.
        string other = SyntheticLlama.Write(dir.Combine("N"), editConfig: c => c["num_hidden_layers"] = 0);
        CheckpointFormatException mismatch = Assert.Throws<CheckpointFormatException>(() =>
            LoftQ.Initialize(other, dir.Combine("out"), SyntheticLlama.QuickOptions with { Bits = 2.5 }));
        Assert.Contains("num_hidden_layers is 0", mismatch.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_bundled_model_and_a_consistent_synthetic_one_pass()
    {
        using HuggingFaceCheckpoint fixture = HuggingFaceCheckpoint.Open(TestData.Model);
        ConfigConsistency.Validate(fixture);
        using var dir = new TempDirectory();
        using HuggingFaceCheckpoint synthetic = HuggingFaceCheckpoint.Open(SyntheticLlama.Write(dir.Combine("M"), layers: 3));
        ConfigConsistency.Validate(synthetic);
    }
}
