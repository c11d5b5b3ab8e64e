using System.Text;
using System.Text.Json.Nodes;
using LoftQNet.Cli;
using LoftQNet.IO;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>Issue 8, item 9: eval on NaN or overflowing weights, and targets that are not matrices.</summary>
public sealed class SmallerDefectsTests
{
    private static readonly byte[] s_text = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("The quick brown fox jumps over the lazy dog. ", 4)));

    [Fact]
    public void Eval_of_a_model_with_a_NaN_weight_is_an_error_naming_the_tensor()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"), value: (name, i) =>
            name == "model.layers.1.mlp.down_proj.weight" && i == 7 ? float.NaN : name.EndsWith("norm.weight", StringComparison.Ordinal) ? 1f : ((i % 5) - 2) * 0.02f);
        ArgumentException e = Assert.Throws<ArgumentException>(() => Evaluation.BitsPerByte(model, s_text, windows: 2, windowLength: 16));
        Assert.Contains("model.layers.1.mlp.down_proj.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("NaN", e.Message, StringComparison.Ordinal);

        string text = dir.Combine("text.txt");
        File.WriteAllBytes(text, s_text);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.Equal(ExitCodes.BadInput, CliApp.Run(["eval", model, "--text", text, "--windows", "2", "--window", "16"], stdout, stderr, interactive: false));
        Assert.DoesNotContain("bits per byte", stdout.ToString(), StringComparison.Ordinal);
        Assert.Contains("down_proj", stderr.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Eval_whose_forward_pass_overflows_is_an_error_not_NaN_bits_per_byte()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"), value: (name, i) =>
            name == "lm_head.weight" ? 3e38f : name.EndsWith("norm.weight", StringComparison.Ordinal) ? 1f : ((i % 5) - 2) * 0.02f);
        NotFiniteNumberException e = Assert.Throws<NotFiniteNumberException>(() => Evaluation.BitsPerByte(model, s_text, windows: 2, windowLength: 16));
        Assert.Contains("overflowed", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Tensors_that_match_the_targets_but_are_not_2d_are_reported_and_copied()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"), extra: [("model.experts.q_proj.weight", [2, 8, 8]), ("model.gate.q_proj.weight", [8])]);
        var notices = new List<string>();
        string output = dir.Combine("out");
        LoftQReport report = LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions, new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.Notice)
            {
                lock (notices)
                {
                    notices.Add(p.Message!);
                }
            }
        }));

        Assert.Equal(2, report.Layers.Count);
        Assert.Equal(2, report.Warnings.Count);
        Assert.Contains(report.Warnings, w => w.Contains("'model.experts.q_proj.weight'", StringComparison.Ordinal) && w.Contains("[2, 8, 8] (3-D)", StringComparison.Ordinal));
        Assert.Contains(report.Warnings, w => w.Contains("'model.gate.q_proj.weight'", StringComparison.Ordinal) && w.Contains("(1-D)", StringComparison.Ordinal));
        Assert.Equal(report.Warnings, notices);
        var written = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(output, "loftq_report.json")))!;
        Assert.Equal(2, written["warnings"]!.AsArray().Count);

        using SafeTensorsFile before = SafeTensorsFile.Open(Path.Combine(model, HuggingFaceCheckpoint.SingleFileName));
        using SafeTensorsFile after = SafeTensorsFile.Open(Path.Combine(output, HuggingFaceCheckpoint.SingleFileName));
        Assert.True(before.GetBytes("model.experts.q_proj.weight").SequenceEqual(after.GetBytes("model.experts.q_proj.weight")));

        // The CLI prints them.
        var stderr = new StringWriter();
        Assert.Equal(0, CliApp.Run(["quantize", model, "--out", dir.Combine("cli"), "--bits", "2", "--rank", "4", "--iters", "1", "--targets", "q_proj"], new StringWriter(), stderr, interactive: false));
        Assert.Contains("note: Tensor 'model.experts.q_proj.weight'", stderr.ToString(), StringComparison.Ordinal);
    }
}
