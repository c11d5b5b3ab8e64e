using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.Pipeline;

public sealed class CheckpointPipelineTests(FixtureRuns runs) : IClassFixture<FixtureRuns>
{
    // DESIGN.md §4: mean over the 56 target matrices of byte-llama-14m, r = 16, T = 5, exact SVD.
    private const double QLoRANf4 = 0.0924, LoftQNf4 = 0.0774, QLoRANf2 = 0.5622, LoftQNf2 = 0.4756;

    [Theory]
    [InlineData(4, QLoRANf4, LoftQNf4)]
    [InlineData(2, QLoRANf2, LoftQNf2)]
    public void Randomized_solver_is_within_one_percent_of_the_reference_numbers(int bits, double qlora, double loftq)
    {
        LoftQReport report = bits == 4 ? runs.Nf4.Report : runs.Nf2.Report;
        Assert.Equal(56, report.Layers.Count);
        Assert.InRange(report.MeanQLoRAError, qlora * 0.99, qlora * 1.01);
        Assert.InRange(report.MeanLoftQError, loftq * 0.99, loftq * 1.01);
        Assert.All(report.Layers, l => Assert.True(l.RelativeError <= l.ErrorTrace[0] + 1e-12, $"{l.Name}: best pass worse than pass 1"));
    }

    [Theory]
    [Trait("Category", "Slow")]
    [InlineData(4, QLoRANf4, LoftQNf4)]
    [InlineData(2, QLoRANf2, LoftQNf2)]
    public void Exact_solver_is_within_half_a_percent_of_the_reference_numbers(int bits, double qlora, double loftq)
    {
        LoftQReport report = runs.Get($"exact{bits}", new LoftQOptions { Bits = bits, Rank = 16, Iterations = 5, Solver = SolverKind.Exact, ScaleSearch = null }).Report;
        Assert.InRange(report.MeanQLoRAError, qlora * 0.995, qlora * 1.005);
        Assert.InRange(report.MeanLoftQError, loftq * 0.995, loftq * 1.005);
    }

    [Fact]
    public void Output_has_the_input_layout_with_copied_files_index_adapter_and_report()
    {
        string output = runs.Nf2.Output;
        foreach (string file in Directory.EnumerateFiles(TestData.Model))
        {
            Assert.True(File.Exists(Path.Combine(output, Path.GetFileName(file))), $"missing {Path.GetFileName(file)}");
        }

        Assert.Equal(File.ReadAllBytes(Path.Combine(TestData.Model, "config.json")), File.ReadAllBytes(Path.Combine(output, "config.json")));
        var index = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(output, "model.safetensors.index.json")))!;
        var inputIndex = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(TestData.Model, "model.safetensors.index.json")))!;
        Assert.True(JsonNode.DeepEquals(inputIndex["weight_map"], index["weight_map"]));
        long total = Directory.EnumerateFiles(output, "*.safetensors").Sum(f =>
        {
            using SafeTensorsFile s = SafeTensorsFile.Open(f);
            return s.Tensors.Sum(t => t.ByteLength);
        });
        Assert.Equal(total, index["metadata"]!["total_size"]!.GetValue<long>());
        Assert.True(File.Exists(Path.Combine(output, "loftq_init", "adapter_config.json")));
        Assert.True(File.Exists(Path.Combine(output, "loftq_init", "adapter_model.safetensors")));
        LoftQReport report = LoftQReport.FromJson(File.ReadAllText(Path.Combine(output, "loftq_report.json")));
        Assert.Equal(56, report.Layers.Count);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.GetDirectoryName(output)!, ".*partial*"));
    }

    [Fact]
    public void Non_target_tensors_are_copied_bit_for_bit_and_targets_keep_name_dtype_and_shape()
    {
        using HuggingFaceCheckpoint input = HuggingFaceCheckpoint.Open(TestData.Model);
        using HuggingFaceCheckpoint output = HuggingFaceCheckpoint.Open(runs.Nf2.Output);
        var targets = new HashSet<string>(runs.Nf2.Report.Layers.Select(l => l.Name));
        int copied = 0;
        foreach (string shard in input.ShardFiles)
        {
            SafeTensorsFile a = input.OpenShard(shard), b = output.OpenShard(shard);
            Assert.Equal(a.Tensors.Select(t => t.Name), b.Tensors.Select(t => t.Name));
            foreach (SafeTensorInfo t in a.Tensors)
            {
                SafeTensorInfo u = b.GetInfo(t.Name);
                Assert.Equal(t.DType, u.DType);
                Assert.Equal(t.Shape, u.Shape);
                if (!targets.Contains(t.Name))
                {
                    Assert.True(a.GetBytes(t.Name).SequenceEqual(b.GetBytes(t.Name)), $"{t.Name} changed");
                    copied++;
                }
                else
                {
                    Assert.False(a.GetBytes(t.Name).SequenceEqual(b.GetBytes(t.Name)), $"{t.Name} was not replaced");
                }
            }
        }

        Assert.Equal(75 - 56, copied);
    }

    [Fact]
    public void Backbone_plus_adapter_reproduces_the_reported_error_of_every_layer()
    {
        (string output, LoftQReport report) = runs.Nf2;
        using HuggingFaceCheckpoint original = HuggingFaceCheckpoint.Open(TestData.Model);
        using HuggingFaceCheckpoint backbone = HuggingFaceCheckpoint.Open(output);
        using SafeTensorsFile adapter = SafeTensorsFile.Open(Path.Combine(output, "loftq_init", "adapter_model.safetensors"));
        foreach (LayerReport layer in report.Layers)
        {
            string module = layer.Name[..^".weight".Length];
            float[] w = original.ReadAsSingle(layer.Name);
            float[] q = backbone.ReadAsSingle(layer.Name);
            float[] a = adapter.ReadAsSingle($"base_model.model.{module}.lora_A.weight");
            float[] b = adapter.ReadAsSingle($"base_model.model.{module}.lora_B.weight");
            int rows = layer.Shape[0], cols = layer.Shape[1], r = a.Length / cols;
            Assert.Equal(16, r);
            double err = ResidualNorm(w, q, b, a, rows, cols, r, scale: 1f) / Norm(w);

            // The backbone stores Q rounded to bfloat16 (the input dtype): that moves the error by well under 1%.
            Assert.InRange(err, layer.RelativeError * 0.99, layer.RelativeError * 1.01);
        }
    }

    [Fact]
    public void Alpha_other_than_rank_divides_B_so_the_effective_weight_is_unchanged()
    {
        var options = new LoftQOptions { Bits = 2, Rank = 16, Iterations = 2, Alpha = 32, Targets = ["q_proj"] };
        (string output, LoftQReport report) = runs.Get("alpha32", options);
        (string baseOutput, _) = runs.Get("alpha16", options with { Alpha = null });
        var config = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(output, "loftq_init", "adapter_config.json")))!;
        Assert.Equal(32, config["lora_alpha"]!.GetValue<double>());
        Assert.Equal(16, config["r"]!.GetValue<int>());
        using SafeTensorsFile scaled = SafeTensorsFile.Open(Path.Combine(output, "loftq_init", "adapter_model.safetensors"));
        using SafeTensorsFile plain = SafeTensorsFile.Open(Path.Combine(baseOutput, "loftq_init", "adapter_model.safetensors"));
        Assert.Equal(8, report.Layers.Count);
        foreach (SafeTensorInfo t in plain.Tensors)
        {
            float[] x = plain.ReadAsSingle(t.Name), y = scaled.ReadAsSingle(t.Name);
            float factor = t.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal) ? 0.5f : 1f;
            for (int i = 0; i < x.Length; i++)
            {
                Assert.Equal(x[i] * factor, y[i]);
            }
        }
    }

    [Fact]
    public void Same_seed_gives_identical_bytes_whatever_the_thread_count()
    {
        var options = new LoftQOptions { Bits = 2, Rank = 8, Iterations = 3, Targets = ["k_proj", "down_proj"] };
        (string one, _) = runs.Get("det-1", options with { Threads = 1 });
        (string two, _) = runs.Get("det-2", options with { Threads = 2 });
        var files = Directory.EnumerateFiles(one, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(one, f))
            .Where(f => f != "loftq_report.json")
            .OrderBy(f => f, StringComparer.Ordinal)
            .ToList();
        Assert.Equal(files.Count + 1, Directory.EnumerateFiles(two, "*", SearchOption.AllDirectories).Count());
        foreach (string f in files)
        {
            Assert.True(File.ReadAllBytes(Path.Combine(one, f)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(two, f))), $"{f} differs");
        }
    }

    [Fact]
    public void Mixed_precision_2_5_bits_gives_the_first_two_of_eight_layers_nf4()
    {
        (_, LoftQReport report) = runs.Get("mixed", new LoftQOptions { Bits = 2.5, Rank = 8, Iterations = 1 });
        foreach (LayerReport l in report.Layers)
        {
            int layer = int.Parse(l.Name.Split('.')[2], System.Globalization.CultureInfo.InvariantCulture);
            Assert.Equal(layer < 2 ? "nf4" : "nf2", l.Quantizer);
        }

        Assert.InRange(report.AverageBits, 2.49, 2.51);
    }

    [Fact]
    public void Bits_patterns_override_the_default_for_matching_tensors()
    {
        (_, LoftQReport report) = runs.Get("patterns", new LoftQOptions { Bits = 2, Rank = 8, Iterations = 1, BitsPatterns = [(@"mlp\.down_proj", 4)] });
        Assert.All(report.Layers, l => Assert.Equal(l.Name.Contains("down_proj", StringComparison.Ordinal) ? 4 : 2, l.Bits));
    }

    [Fact]
    public void Qlora_baseline_writes_a_zero_B_and_the_plain_quantization()
    {
        (string output, LoftQReport report) = runs.Get("qlora", new LoftQOptions { Bits = 4, Rank = 8, Iterations = 0, Targets = ["v_proj"] });
        Assert.All(report.Layers, l => Assert.Equal(l.QLoRAError, l.RelativeError));
        using SafeTensorsFile adapter = SafeTensorsFile.Open(Path.Combine(output, "loftq_init", "adapter_model.safetensors"));
        foreach (SafeTensorInfo t in adapter.Tensors.Where(t => t.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
        {
            Assert.All(adapter.ReadAsSingle(t.Name), v => Assert.Equal(0f, v));
        }
    }

    [Fact]
    public void Bnb_nf4_codes_dequantize_to_exactly_the_peft_backbone()
    {
        (string bnb, _) = runs.Get("bnb", new LoftQOptions { Bits = 4, Rank = 8, Iterations = 2, Format = OutputFormat.BitsAndBytesNf4, Targets = ["q_proj", "gate_proj"] });
        (string peft, LoftQReport report) = runs.Get("bnb-peft", new LoftQOptions { Bits = 4, Rank = 8, Iterations = 2, Targets = ["q_proj", "gate_proj"] });
        using HuggingFaceCheckpoint peftCkpt = HuggingFaceCheckpoint.Open(peft);
        var bnbIndex = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(bnb, "model.safetensors.index.json")))!;
        var config = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(bnb, "config.json")))!;
        Assert.Equal("bitsandbytes", config["quantization_config"]!["quant_method"]!.GetValue<string>());
        foreach (LayerReport layer in report.Layers)
        {
            string shard = bnbIndex["weight_map"]![layer.Name]!.GetValue<string>();
            using SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(bnb, shard));
            Assert.Equal(SafeTensorDType.U8, file.GetInfo(layer.Name).DType);
            QuantizedTensor q = BitsAndBytesNf4.ReadNf4(file, layer.Name);
            var dequantized = new float[q.ElementCount];
            q.Dequantize(dequantized);
            var asBf16 = new ushort[dequantized.Length];
            FloatConversions.SingleToBFloat16(dequantized, asBf16);
            var roundTrip = new float[dequantized.Length];
            FloatConversions.BFloat16ToSingle(asBf16, roundTrip);
            Assert.Equal(peftCkpt.ReadAsSingle(layer.Name), roundTrip);
            Assert.Equal(layer.Name[..^7] + ".weight.absmax", file.Tensors.First(t => t.Name.StartsWith(layer.Name[..^7] + ".weight.absmax", StringComparison.Ordinal)).Name);
        }
    }

    [Fact]
    public void Cancellation_leaves_no_output_and_no_partial_directory()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        using var cts = new CancellationTokenSource();
        var progress = new CallbackProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.LayerCompleted)
            {
                cts.Cancel();
            }
        });
        Assert.ThrowsAny<OperationCanceledException>(() =>
            LoftQ.Initialize(TestData.Model, output, new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1 }, progress, cts.Token));
        Assert.False(Directory.Exists(output));
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Existing_output_is_refused_unless_overwrite_and_then_replaced()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "x");
        var options = new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1, Targets = ["q_proj"] };
        ArgumentException e = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(TestData.Model, output, options));
        Assert.Contains("LoftQOptions.Overwrite", e.Message, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(output, "keep.txt")));
        LoftQ.Initialize(TestData.Model, output, options with { Overwrite = true });
        Assert.False(File.Exists(Path.Combine(output, "keep.txt")));
        Assert.True(File.Exists(Path.Combine(output, "loftq_report.json")));
        Assert.Single(Directory.EnumerateFileSystemEntries(dir.Path));
    }

    [Theory]
    [InlineData(0, 4, 5, "LoftQOptions.Rank")]
    [InlineData(400, 4, 5, "LoftQOptions.Rank = 400 is larger than min(out, in) = 384")]
    [InlineData(8, 5, 5, "LoftQOptions.Bits = 5")]
    [InlineData(8, 1.5, 5, "LoftQOptions.Bits = 1.5")]
    [InlineData(8, 4, -1, "LoftQOptions.Iterations")]
    public void Bad_options_are_rejected_before_anything_is_written(int rank, double bits, int iters, string expected)
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        ArgumentException e = Assert.Throws<ArgumentException>(() =>
            LoftQ.Initialize(TestData.Model, output, new LoftQOptions { Rank = rank, Bits = bits, Iterations = iters }));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path));
    }

    [Fact]
    public void Bnb_format_requires_nf4()
    {
        using var dir = new TempDirectory();
        ArgumentException e = Assert.Throws<ArgumentException>(() =>
            LoftQ.Initialize(TestData.Model, dir.Combine("out"), new LoftQOptions { Bits = 2, Format = OutputFormat.BitsAndBytesNf4 }));
        Assert.Contains("OutputFormat.BitsAndBytesNf4", e.Message, StringComparison.Ordinal);
        Assert.Contains("nf2", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_model_directory_is_a_clear_error()
    {
        using var dir = new TempDirectory();
        DirectoryNotFoundException e = Assert.Throws<DirectoryNotFoundException>(() => LoftQ.Initialize(dir.Combine("nope"), dir.Combine("out")));
        Assert.Contains("nope", e.Message, StringComparison.Ordinal);
    }

    internal static double Norm(float[] w) => Math.Sqrt(w.Sum(v => (double)v * v));

    /// <summary>‖W − Q − scale·B·A‖ computed in double by a plain loop (independent of the library's GEMM).</summary>
    internal static double ResidualNorm(float[] w, float[] q, float[] b, float[] a, int rows, int cols, int r, float scale)
    {
        double sum = 0;
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < cols; j++)
            {
                double ba = 0;
                for (int k = 0; k < r; k++)
                {
                    ba += (double)b[(i * r) + k] * a[(k * cols) + j];
                }

                double d = w[(i * cols) + j] - q[(i * cols) + j] - (scale * ba);
                sum += d * d;
            }
        }

        return Math.Sqrt(sum);
    }

    private sealed class CallbackProgress(Action<LoftQProgress> action) : IProgress<LoftQProgress>
    {
        public void Report(LoftQProgress value) => action(value);
    }
}
