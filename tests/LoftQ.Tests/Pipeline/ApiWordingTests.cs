using System.Text.Json;
using System.Text.Json.Nodes;
using LoftQNet.Cli;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Pipeline;

/// <summary>
/// Issue 8, "API and packaging": library exceptions name the C# option (the CLI translates them to its flags), CLI
/// messages carry no "(Parameter 'x')" suffix, help says loftq, and loftq_report.json's settings are typed and do not
/// contradict a custom policy.
/// </summary>
public sealed class ApiWordingTests
{
    public static TheoryData<LoftQOptions, string> InvalidOptions => new()
    {
        { new LoftQOptions { Rank = 0 }, "LoftQOptions.Rank" },
        { new LoftQOptions { Iterations = -1 }, "LoftQOptions.Iterations" },
        { new LoftQOptions { BlockSize = 1 }, "LoftQOptions.BlockSize" },
        { new LoftQOptions { Alpha = 0 }, "LoftQOptions.Alpha" },
        { new LoftQOptions { Threads = 0 }, "LoftQOptions.Threads" },
        { new LoftQOptions { Bits = 7 }, "LoftQOptions.Bits = 7" },
        { new LoftQOptions { Bits = 4.5 }, "LoftQOptions.Bits = 4.5" },
        { new LoftQOptions { BitsPatterns = [("down_proj", 7)] }, "LoftQOptions.BitsPatterns entry ('down_proj', 7)" },
        { new LoftQOptions { DoubleQuant = true }, "LoftQOptions.DoubleQuant applies only to LoftQOptions.Format = OutputFormat.BitsAndBytesNf4" },
    };

    [Theory]
    [MemberData(nameof(InvalidOptions))]
    public void Invalid_options_are_named_as_csharp_options(LoftQOptions options, string expected)
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => new LoftQPlan(options, 4));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("--", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Checkpoint_errors_name_csharp_options()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        var quick = new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1, Targets = ["k_proj"] };

        ArgumentException rank = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(TestData.Model, output, quick with { Rank = 100000 }));
        Assert.Contains("LoftQOptions.Rank = 100000", rank.Message, StringComparison.Ordinal);

        ArgumentException bnb = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(TestData.Model, output, quick with { Format = OutputFormat.BitsAndBytesNf4 }));
        Assert.Contains("LoftQOptions.Format = OutputFormat.BitsAndBytesNf4", bnb.Message, StringComparison.Ordinal);

        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "x");
        ArgumentException exists = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(TestData.Model, output, quick));
        Assert.Contains("LoftQOptions.Overwrite", exists.Message, StringComparison.Ordinal);

        foreach (ArgumentException e in new[] { rank, bnb, exists })
        {
            Assert.DoesNotContain("--", e.Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("LoftQOptions.Rank must be at least 1, got 0.", "--rank must be at least 1, got 0.")]
    [InlineData("LoftQOptions.Bits = 7 is not supported", "--bits 7 is not supported")]
    [InlineData("LoftQOptions.BitsPatterns entry ('layers\\.0\\.', 7): 7 bits", "--bits-pattern 'layers\\.0\\.=7': 7 bits")]
    [InlineData("LoftQOptions.DoubleQuant applies only to LoftQOptions.Format = OutputFormat.BitsAndBytesNf4.", "--double-quant applies only to --format bnb-nf4.")]
    [InlineData("use LoftQOptions.Format = OutputFormat.Peft.", "use --format peft.")]
    [InlineData("With LoftQOptions.Iterations = 1 (Q = q(W)) it cannot", "With --iters 1 (Q = q(W)) it cannot")]
    [InlineData("LoftQOptions.BlockSize, LoftQOptions.Alpha, LoftQOptions.Threads", "--block-size, --alpha, --threads")]
    [InlineData("The output directory '/o' exists and is not empty; choose another or set LoftQOptions.Overwrite.", "The output directory (--out) '/o' exists and is not empty; choose another or pass --overwrite.")]
    public void The_cli_translates_csharp_option_names_to_its_flags(string library, string cli) =>
        Assert.Equal(cli, CliMessages.Translate(library));

    [Fact]
    public void The_cli_drops_the_parameter_suffix()
    {
        var e = new ArgumentException("The output directory is empty.", "outputDirectory");
        Assert.Contains("(Parameter", e.Message, StringComparison.Ordinal);
        Assert.Equal("The output directory (--out) is empty.", CliMessages.Describe(e));
    }

    [Fact]
    public void Cli_errors_speak_flags_without_parameter_suffix()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "x");
        var stderr = new StringWriter();
        int code = CliApp.Run(["quantize", TestData.Model, "--out", output, "--rank", "4", "--iters", "1", "--targets", "k_proj"], new StringWriter(), stderr, interactive: false);
        Assert.Equal(ExitCodes.BadInput, code);
        string text = stderr.ToString();
        Assert.Contains("(--out)", text, StringComparison.Ordinal);
        Assert.Contains("pass --overwrite", text, StringComparison.Ordinal);
        Assert.DoesNotContain("(Parameter", text, StringComparison.Ordinal);
        Assert.DoesNotContain("LoftQOptions", text, StringComparison.Ordinal);

        stderr = new StringWriter();
        code = CliApp.Run(["quantize", TestData.Model, "--out", dir.Combine("other"), "--bits-pattern", "k_proj=7"], new StringWriter(), stderr, interactive: false);
        Assert.Equal(ExitCodes.BadInput, code);
        Assert.Contains("--bits-pattern 'k_proj=7': 7 bits", stderr.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--help", "loftq [command] [options]")]
    [InlineData("quantize --help", "loftq quantize <model-dir> [options]")]
    public void Help_names_the_tool_loftq(string args, string usage)
    {
        var stdout = new StringWriter();
        Assert.Equal(0, CliApp.Run(args.Split(' '), stdout, new StringWriter(), interactive: false));
        Assert.Contains(usage, stdout.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("LoftQ.Cli", stdout.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("testhost", stdout.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Report_settings_are_typed_json()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        LoftQ.Initialize(TestData.Model, output, new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1, Alpha = 8, Targets = ["k_proj"] });
        string json = File.ReadAllText(Path.Combine(output, "loftq_report.json"));
        JsonObject settings = JsonNode.Parse(json)!["settings"]!.AsObject();
        Assert.Equal(JsonValueKind.Number, settings["bits"]!.GetValueKind());
        Assert.Equal(2, settings["bits"]!.GetValue<double>());
        Assert.Equal("nf", settings["quantizer"]!.GetValue<string>());
        Assert.Equal(4, settings["rank"]!.GetValue<int>());
        Assert.Equal(1, settings["iters"]!.GetValue<int>());
        Assert.Equal(64, settings["block_size"]!.GetValue<int>());
        Assert.Equal(8, settings["alpha"]!.GetValue<int>());
        Assert.Equal(JsonValueKind.Number, settings["seed"]!.GetValueKind());
        Assert.Equal(JsonValueKind.Number, settings["threads"]!.GetValueKind());
        Assert.Equal(JsonValueKind.False, settings["double_quant"]!.GetValueKind());
        Assert.Equal("peft", settings["format"]!.GetValue<string>());
        Assert.Equal("randomized", settings["solver"]!.GetValue<string>());
        Assert.Equal("weight", settings["objective"]!.GetValue<string>());
        Assert.True(settings.ContainsKey("calibration") && settings["calibration"] is null);
        Assert.Equal(JsonValueKind.False, settings["low_rank_first"]!.GetValueKind());
        Assert.Equal("cpu", settings["device"]!.GetValue<string>());
        Assert.Equal(
            ["alpha", "bit_budget", "bits", "block_size", "calibration", "device", "double_quant", "format", "iters", "low_rank_first", "objective", "policy", "quantizer", "rank", "scale_search", "seed", "solver", "threads"],
            settings.Select(kv => kv.Key).Order(StringComparer.Ordinal));

        LoftQReport back = LoftQReport.FromJson(json);
        Assert.Equal(new LoftQSettings
        {
            Bits = 2, Quantizer = "nf", Policy = "all tensors: nf2", Rank = 4, Iterations = 1, BlockSize = 64, Solver = "randomized",
            Alpha = 8, Seed = 0, Format = "peft", DoubleQuant = false, Threads = back.Settings.Threads, ScaleSearch = "clip grid 1..0.5 in 20 steps",
        }, back.Settings);
    }

    [Fact]
    public void A_custom_policy_is_not_contradicted_by_bits_and_quantizer()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        var options = new LoftQOptions { Rank = 4, Iterations = 1, Targets = ["k_proj"], Policy = QuantizationPolicies.Uniform(new UniformQuantizer(3, 64)) };
        LoftQReport report = LoftQ.Initialize(TestData.Model, output, options);
        Assert.Null(report.Settings.Bits);
        Assert.Null(report.Settings.Quantizer);
        Assert.Contains("uniform", report.Settings.Policy, StringComparison.OrdinalIgnoreCase);
        Assert.All(report.Layers, l => Assert.Equal(3, l.Bits));

        string json = File.ReadAllText(Path.Combine(output, "loftq_report.json"));
        JsonObject settings = JsonNode.Parse(json)!["settings"]!.AsObject();
        Assert.Null(settings["bits"]);
        Assert.Null(settings["quantizer"]);
        Assert.Equal(report.Settings, LoftQReport.FromJson(json).Settings);
    }

    [Fact]
    public void Mixed_precision_bits_are_a_fractional_number()
    {
        var plan = new LoftQPlan(new LoftQOptions { Bits = 2.5 }, 8);
        Assert.Equal(2.5, plan.DescribeSettings().Bits);
        var report = new LoftQReport { Model = "m", Output = "o", Settings = plan.DescribeSettings(), Layers = [], Seconds = 0 };
        Assert.Equal(2.5, JsonNode.Parse(report.ToJson())!["settings"]!["bits"]!.GetValue<double>());
        Assert.Equal(report.Settings, LoftQReport.FromJson(report.ToJson()).Settings);
    }
}
