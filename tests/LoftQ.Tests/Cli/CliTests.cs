using System.Text.Json.Nodes;
using LoftQNet.Cli;

namespace LoftQNet.Tests.Cli;

public sealed class CliTests
{
    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CliApp.Run(args, stdout, stderr, interactive: false);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void Quantize_writes_the_output_prints_per_layer_lines_and_a_summary()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        (int code, string stdout, string stderr) = Run("quantize", TestData.Model, "--out", output, "--bits", "2", "--rank", "8", "--iters", "2", "--targets", "q_proj", "v_proj");
        Assert.True(code == 0, stderr);
        Assert.Contains("[16/16]", stdout, StringComparison.Ordinal);
        Assert.Contains("model.layers.7.self_attn.v_proj.weight", stdout, StringComparison.Ordinal);
        Assert.Contains("QLoRA", stdout, StringComparison.Ordinal);
        Assert.Contains(output, stdout, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(output, "loftq_init", "adapter_model.safetensors")));
        Assert.DoesNotContain("\u001b[", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void ScaleSearch_is_the_default_lowers_the_error_and_is_recorded_in_the_report()
    {
        using var dir = new TempDirectory();
        string[] common = ["--bits", "2", "--rank", "4", "--iters", "1", "--targets", "k_proj", "--json"];
        (int code0, string plain, string err0) = Run(["quantize", TestData.Model, "--out", dir.Combine("a"), "--scale-search", "false", .. common]);
        (int code1, string searched, string err1) = Run(["quantize", TestData.Model, "--out", dir.Combine("b"), .. common]);
        (int code2, string flagged, string err2) = Run(["quantize", TestData.Model, "--out", dir.Combine("c"), "--scale-search", .. common]);
        Assert.True(code0 == 0, err0);
        Assert.True(code1 == 0, err1);
        Assert.True(code2 == 0, err2);
        JsonNode a = JsonNode.Parse(plain)!, b = JsonNode.Parse(searched)!, c = JsonNode.Parse(flagged)!;
        Assert.Null(a["settings"]!["scale_search"]);
        Assert.Equal("clip grid 1..0.5 in 20 steps", b["settings"]!["scale_search"]!.GetValue<string>());
        Assert.True(b["mean_loftq_error"]!.GetValue<double>() < 0.9 * a["mean_loftq_error"]!.GetValue<double>());
        Assert.Equal(b["mean_loftq_error"]!.GetValue<double>(), c["mean_loftq_error"]!.GetValue<double>());
    }

    [Fact]
    public void Quantize_json_prints_only_the_report_on_stdout()
    {
        using var dir = new TempDirectory();
        (int code, string stdout, string stderr) = Run("quantize", TestData.Model, "--out", dir.Combine("out"), "--bits", "4", "--rank", "4", "--iters", "1", "--targets", "k_proj", "--json");
        Assert.True(code == 0, stderr);
        var report = (JsonObject)JsonNode.Parse(stdout)!;
        Assert.Equal(8, report["layers"]!.AsArray().Count);
        Assert.Equal(4, report["settings"]!["rank"]!.GetValue<int>());
        JsonObject layer = report["layers"]![0]!.AsObject();
        Assert.Equal(
            ["best_pass", "bits", "error_trace", "name", "qlora_error", "quantizer", "relative_error", "seconds", "shape"],
            layer.Select(kv => kv.Key).Order(StringComparer.Ordinal));
        double meanLoftQ = report["layers"]!.AsArray().Average(l => l!["relative_error"]!.GetValue<double>());
        Assert.Equal(meanLoftQ, report["mean_loftq_error"]!.GetValue<double>(), 12);
        Assert.True(report["mean_qlora_error"]!.GetValue<double>() > meanLoftQ);
        Assert.Contains("[8/8]", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void The_exact_solver_warns_that_it_is_slow()
    {
        using var dir = new TempDirectory();
        (int code, _, string stderr) = Run("quantize", TestData.Model, "--out", dir.Combine("out"), "--bits", "4", "--rank", "4", "--iters", "1", "--targets", "k_proj", "--solver", "exact", "--json");
        Assert.True(code == 0, stderr);
        Assert.Contains("note: --solver exact computes a full SVD of every target", stderr, StringComparison.Ordinal);
        (code, _, stderr) = Run("quantize", TestData.Model, "--out", dir.Combine("out2"), "--bits", "4", "--rank", "4", "--iters", "1", "--targets", "k_proj", "--json");
        Assert.True(code == 0, stderr);
        Assert.DoesNotContain("--solver exact", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--rank", "0", "--rank")]
    [InlineData("--bits", "5", "--bits 5")]
    [InlineData("--rank", "1000", "--rank 1000")]
    [InlineData("--double-quant", null, "--double-quant")]
    public void Bad_options_exit_with_2_and_name_the_option(string option, string? value, string expected)
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        string[] args = value is null
            ? ["quantize", TestData.Model, "--out", output, option]
            : ["quantize", TestData.Model, "--out", output, option, value];
        (int code, _, string stderr) = Run(args);
        Assert.Equal(2, code);
        Assert.Contains(expected, stderr, StringComparison.Ordinal);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void Parse_errors_exit_with_2()
    {
        (int code, _, string stderr) = Run("quantize", TestData.Model, "--out", "x", "--solver", "magic");
        Assert.Equal(2, code);
        Assert.Contains("magic", stderr, StringComparison.Ordinal);
        Assert.Equal(2, Run("quantize", TestData.Model).Code);
        Assert.Equal(2, Run("frobnicate").Code);
    }

    [Fact]
    public void Missing_model_exits_with_2_naming_the_directory()
    {
        using var dir = new TempDirectory();
        (int code, _, string stderr) = Run("quantize", dir.Combine("no-model"), "--out", dir.Combine("out"));
        Assert.Equal(2, code);
        Assert.Contains("no-model", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Inspect_lists_every_tensor_of_the_sharded_model_and_validates_it()
    {
        (int code, string stdout, string stderr) = Run("inspect", TestData.Model, "--json");
        Assert.True(code == 0, stderr);
        var o = (JsonObject)JsonNode.Parse(stdout)!;
        Assert.Equal(75, o["tensors"]!.GetValue<int>());
        Assert.Equal(14_358_912, o["elements"]!.GetValue<long>());
        Assert.Equal(2 * 14_358_912, o["bytes"]!.GetValue<long>());
        Assert.Equal(56, o["default_targets"]!.GetValue<int>());
        Assert.True(o["valid"]!.GetValue<bool>());

        (code, stdout, _) = Run("inspect", Path.Combine(TestData.Model, "model-00003-of-00003.safetensors"));
        Assert.Equal(0, code);
        Assert.Contains("lm_head.weight", stdout, StringComparison.Ordinal);
        Assert.Contains("valid", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Inspect_of_a_corrupt_file_exits_with_2_and_names_the_file()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("bad.safetensors");
        byte[] good = File.ReadAllBytes(Path.Combine(TestData.Model, "model-00003-of-00003.safetensors"));
        File.WriteAllBytes(path, good.AsSpan(0, 4000).ToArray());
        (int code, _, string stderr) = Run("inspect", path);
        Assert.Equal(2, code);
        Assert.Contains("bad.safetensors", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Device_cuda_without_a_gpu_is_a_clear_error_and_auto_runs_on_the_cpu_with_one_note()
    {
        if (Environment.GetEnvironmentVariable("LOFTQ_CUDA_UNVERIFIED") == "1")
        {
            return; // possibly a GPU machine: the device tests cover the GPU path
        }

        using var dir = new TempDirectory();
        string[] common = ["--bits", "2", "--rank", "4", "--iters", "1", "--targets", "k_proj"];
        (int code, _, string stderr) = Run(["quantize", TestData.Model, "--out", dir.Combine("a"), "--device", "cuda", .. common]);
        Assert.Equal(2, code);
        Assert.StartsWith("error: Device cuda (--device cuda", stderr, StringComparison.Ordinal);
        Assert.Contains("no usable GPU was found", stderr, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dir.Combine("a")));

        (int autoCode, string stdout, string autoErr) = Run(["quantize", TestData.Model, "--out", dir.Combine("b"), "--device", "auto", "--json", .. common]);
        Assert.True(autoCode == 0, autoErr);
        Assert.Single(autoErr.Split('\n'), l => l.StartsWith("note: Running on the CPU: no usable GPU (", StringComparison.Ordinal));
        Assert.Equal("cpu", JsonNode.Parse(stdout)!["settings"]!["device"]!.GetValue<string>());

        (int bad, _, string badErr) = Run(["quantize", TestData.Model, "--out", dir.Combine("c"), "--device", "gpu", .. common]);
        Assert.Equal(2, bad);
        Assert.Contains("gpu", badErr, StringComparison.Ordinal);
    }

    [Fact]
    public void Describe_names_the_backend_simd_and_threads()
    {
        (int code, string stdout, _) = Run("describe");
        Assert.Equal(0, code);
        Assert.Contains("Vector256=", stdout, StringComparison.Ordinal);
        Assert.Contains("GEMM kernel:", stdout, StringComparison.Ordinal);
        Assert.Contains($"threads: {LoftQNet.Numerics.ComputeSettings.MaxThreads}", stdout, StringComparison.Ordinal);
        Assert.Contains("CUDA: ", stdout, StringComparison.Ordinal); // the GPU found, or why none (the tool ships LoftQ.Cuda)
        Assert.Contains("cuBLAS: ", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void ActivationObjective_collects_caches_and_reuses_calibration_and_records_it()
    {
        using var dir = new TempDirectory();
        string train = Path.Combine(TestData.Root, "fortunes-train.txt");
        string cache = dir.Combine("cal.safetensors");
        string[] common = ["--bits", "2", "--rank", "4", "--iters", "1", "--targets", "k_proj", "--json", "--objective", "activation-diag",
            "--calibration", train, "--calibration-windows", "2", "--calibration-cache", cache];
        (int code0, string first, string err0) = Run(["quantize", TestData.Model, "--out", dir.Combine("a"), .. common]);
        Assert.True(code0 == 0, err0);
        Assert.Contains("calibration: 2 windows", err0, StringComparison.Ordinal);
        Assert.True(File.Exists(cache));
        (int code1, string second, string err1) = Run(["quantize", TestData.Model, "--out", dir.Combine("b"), .. common]);
        Assert.True(code1 == 0, err1);
        Assert.Contains("calibration: reusing", err1, StringComparison.Ordinal);
        JsonNode a = JsonNode.Parse(first)!, b = JsonNode.Parse(second)!;
        Assert.Equal("activation-diag", (string?)a["settings"]!["objective"]);
        Assert.Equal(a["mean_loftq_error"]!.GetValue<double>(), b["mean_loftq_error"]!.GetValue<double>());
        Assert.NotNull(a["layers"]![0]!["weighted_error"]);
    }

    [Theory]
    [InlineData("needs --calibration FILE", "--objective", "activation")]
    [InlineData("used only by --objective activation", "--calibration", "README.md")]
    [InlineData("does not exist", "--objective", "activation-diag", "--calibration", "no-such-file.txt")]
    [InlineData("--calibration-windows must be at least 1", "--objective", "activation-diag", "--calibration", "tests/data/fortunes-val.txt", "--calibration-windows", "0")]
    [InlineData("LoftQOptions.BitBudget", "--bit-budget", "4.5")]
    public void ActivationAndBudgetOptions_are_checked_with_clear_messages(string expected, params string[] extra)
    {
        using var dir = new TempDirectory();
        string[] args = [.. extra.Select(a => a.StartsWith("tests/", StringComparison.Ordinal) ? Path.Combine(TestData.Root, "..", "..", a) : a)];
        (int code, _, string stderr) = Run(["quantize", TestData.Model, "--out", dir.Combine("o"), .. args]);
        Assert.Equal(2, code);
        Assert.Contains(expected, stderr, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dir.Combine("o")));
    }

    [Fact]
    public void Calibration_of_a_missing_model_names_the_model_directory()
    {
        using var dir = new TempDirectory();
        string missing = dir.Combine("no-such-model");
        (int code, _, string stderr) = Run("quantize", missing, "--out", dir.Combine("o"), "--objective", "activation-diag", "--calibration", TestData.FortunesVal);
        Assert.Equal(2, code);
        Assert.Contains("no-such-model", stderr, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dir.Combine("o")));
    }

    [Fact]
    public void BitBudget_spends_the_budget_and_prints_the_allocation()
    {
        using var dir = new TempDirectory();
        (int code, string stdout, string stderr) = Run("quantize", TestData.Model, "--out", dir.Combine("o"), "--bit-budget", "3", "--rank", "4", "--iters", "1", "--targets", "q_proj", "o_proj", "--json");
        Assert.True(code == 0, stderr);
        Assert.Contains("bit budget 3: budget 3 bits (exact knapsack, average 3.0000)", stderr, StringComparison.Ordinal);
        JsonNode report = JsonNode.Parse(stdout)!;
        Assert.Equal(3.0, report["average_bits"]!.GetValue<double>(), 12);
        Assert.Equal(3.0, report["settings"]!["bit_budget"]!.GetValue<double>());
    }
}
