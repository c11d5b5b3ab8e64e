using LoftQNet.IO;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>CalibrationStatistics: what is collected, the cache file, and the activation objectives end to end.</summary>
public sealed class CalibrationTests
{
    private static readonly Lazy<byte[]> s_train = new(() => File.ReadAllBytes(Path.Combine(TestData.Root, "fortunes-train.txt")));

    private static CalibrationStatistics Small(bool diagonal = false, int sensitivity = 0) =>
        CalibrationStatistics.Collect(TestData.Model, s_train.Value, windows: 2, windowLength: 64, diagonalOnly: diagonal, sensitivityWindows: sensitivity);

    [Fact]
    public void TheFirstLayersAttentionInputMatchesAnIndependentComputation()
    {
        CalibrationStatistics stats = Small();
        Assert.Equal(2, stats.Windows);
        Assert.Equal(128, stats.Tokens);
        Assert.Equal(56, stats.Modules.Count);

        // Layer 0's attention input is RMSNorm(embedding) ⊙ input_layernorm: computed here from the checkpoint alone.
        using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(TestData.Model);
        float[] embed = checkpoint.ReadAsSingle("model.embed_tokens.weight");
        float[] norm = checkpoint.ReadAsSingle("model.layers.0.input_layernorm.weight");
        const int h = 384;
        var expected = new double[h * h];
        for (int t = 0; t < 128; t++)
        {
            int token = s_train.Value[t];
            double ss = 0;
            for (int j = 0; j < h; j++)
            {
                ss += (double)embed[(token * h) + j] * embed[(token * h) + j];
            }

            double inv = 1 / Math.Sqrt((ss / h) + 1e-5);
            var x = new double[h];
            for (int j = 0; j < h; j++)
            {
                x[j] = embed[(token * h) + j] * inv * norm[j];
            }

            for (int i = 0; i < h; i++)
            {
                for (int j = 0; j < h; j++)
                {
                    expected[(i * h) + j] += x[i] * x[j] / 128;
                }
            }
        }

        float[] got = stats.SecondMoments("model.layers.0.self_attn.q_proj");
        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(got[i] - expected[i]) <= 1e-4 * scale, $"entry {i}: {got[i]} vs {expected[i]}");
        }

        // q, k and v read the same input; down_proj's is intermediate-sized.
        Assert.Equal(got, stats.SecondMoments("model.layers.0.self_attn.v_proj"));
        Assert.Equal(1024, stats.FeaturesOf("model.layers.3.mlp.down_proj"));
        Assert.Equal(384, stats.FeaturesOf("model.layers.3.self_attn.o_proj"));
        Assert.False(stats.Contains("model.layers.8.self_attn.q_proj"));
        KeyNotFoundException missing = Assert.Throws<KeyNotFoundException>(() => stats.SecondMoments("lm_head"));
        Assert.Contains("'lm_head'", missing.Message, StringComparison.Ordinal);

        // The diagonal-only collection holds exactly the diagonals.
        CalibrationStatistics diagonal = Small(diagonal: true);
        float[] d = diagonal.SecondMoments("model.layers.5.mlp.down_proj");
        float[] full = stats.SecondMoments("model.layers.5.mlp.down_proj");
        for (int i = 0; i < 1024; i++)
        {
            Assert.Equal(full[(i * 1024) + i], d[i], Math.Abs(d[i]) * 1e-4f);
        }
    }

    [Fact]
    public void TheCacheFileRoundTripsAndKnowsWhatItWasCollectedFrom()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("calibration.safetensors");
        CalibrationStatistics stats = Small(diagonal: true, sensitivity: 1);
        Assert.True(stats.HasSensitivities);
        stats.Save(path);
        CalibrationStatistics loaded = CalibrationStatistics.Load(path);
        Assert.Equal(stats.Modules.Order(), loaded.Modules.Order());
        foreach (string module in stats.Modules)
        {
            Assert.Equal(stats.SecondMoments(module), loaded.SecondMoments(module));
            Assert.Equal(stats.Sensitivity(module), loaded.Sensitivity(module));
            Assert.True(stats.Sensitivity(module) > 0 && double.IsFinite(stats.Sensitivity(module)), module);
        }

        Assert.True(loaded.IsDiagonal);
        Assert.Equal(stats.TextFingerprint, loaded.TextFingerprint);
        Assert.True(loaded.Matches(TestData.Model, s_train.Value, 2, diagonalOnly: true, windowLength: 64));
        Assert.False(loaded.Matches(TestData.Model, s_train.Value, 3, diagonalOnly: true, windowLength: 64));
        Assert.False(loaded.Matches(TestData.Model, s_train.Value[1..], 2, diagonalOnly: true, windowLength: 64));
        Assert.False(loaded.Matches(TestData.Model, s_train.Value, 2, diagonalOnly: false, windowLength: 64));

        // A safetensors file that is not a calibration file is refused by name.
        string other = dir.Combine("other.safetensors");
        SafeTensorsWriter.Write(other, [SafeTensorEntry.FromSingle("x", [2], [1f, 2f])]);
        InvalidDataException e = Assert.Throws<InvalidDataException>(() => CalibrationStatistics.Load(other));
        Assert.Contains("not a LoftQ calibration file", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TheActivationObjectiveRunsEndToEndAndIsRecorded()
    {
        using var dir = new TempDirectory();
        CalibrationStatistics stats = Small();
        var options = new LoftQOptions
        {
            Bits = 2, Rank = 4, Iterations = 2, Targets = ["k_proj", "down_proj"], Objective = LoftQObjective.Activation, Calibration = stats,
        };
        LoftQReport report = LoftQ.Initialize(TestData.Model, dir.Combine("a"), options);
        Assert.Equal("activation", report.Settings.Objective);
        Assert.Contains("2 windows x 64 bytes", report.Settings.Calibration, StringComparison.Ordinal);
        Assert.All(report.Layers, l =>
        {
            Assert.NotNull(l.WeightedError);
            Assert.True(l.WeightedError < l.QLoRAWeightedError, l.Name);
        });

        // The weight objective leaves the weighted fields empty; the activation objective lowers the weighted error.
        LoftQReport plain = LoftQ.Initialize(TestData.Model, dir.Combine("w"), options with { Objective = LoftQObjective.Weight, Calibration = null });
        Assert.Equal("weight", plain.Settings.Objective);
        Assert.All(plain.Layers, l => Assert.Null(l.WeightedError));
        Assert.Null(plain.Settings.Calibration);
    }

    [Fact]
    public void MissingOrForeignStatisticsAreRefusedBeforeAnythingIsWritten()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        ArgumentException none = Assert.ThrowsAny<ArgumentException>(() =>
            LoftQ.Initialize(TestData.Model, output, new LoftQOptions { Objective = LoftQObjective.ActivationDiagonal }));
        Assert.Contains("needs LoftQOptions.Calibration", none.Message, StringComparison.Ordinal);

        CalibrationStatistics diagonal = Small(diagonal: true);
        ArgumentException full = Assert.ThrowsAny<ArgumentException>(() =>
            LoftQ.Initialize(TestData.Model, output, new LoftQOptions { Objective = LoftQObjective.Activation, Calibration = diagonal }));
        Assert.Contains("only their diagonals", full.Message, StringComparison.Ordinal);

        ArgumentException budget = Assert.ThrowsAny<ArgumentException>(() =>
            LoftQ.Initialize(TestData.Model, output, new LoftQOptions { Objective = LoftQObjective.ActivationDiagonal, Calibration = diagonal, BitBudget = 2.5 }));
        Assert.Contains("sensitivityWindows", budget.Message, StringComparison.Ordinal);

        string synthetic = SyntheticLlama.Write(dir.Combine("M"));
        ArgumentException foreign = Assert.ThrowsAny<ArgumentException>(() =>
            LoftQ.Initialize(synthetic, output, SyntheticLlama.QuickOptions with { Objective = LoftQObjective.ActivationDiagonal, Calibration = diagonal }));
        Assert.Contains("collected from another model", foreign.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(output));

        Assert.Throws<ArgumentException>(() => CalibrationStatistics.Collect(TestData.Model, new byte[100], windows: 1, windowLength: 256));
        Assert.Throws<ArgumentException>(() => diagonal.Weighting("model.layers.0.self_attn.q_proj", LoftQObjective.Activation));
    }
}
