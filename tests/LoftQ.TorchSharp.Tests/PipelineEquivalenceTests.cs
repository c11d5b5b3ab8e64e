using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;
using LoftQNet.TorchSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Tests;

/// <summary>LoftQ.Initialize(model) on the bundled model against `loftq quantize` (the checkpoint pipeline) on its files.</summary>
public class PipelineEquivalenceTests : TorchTestBase
{
    public static TheoryData<double, int, string> Settings => new()
    {
        { 2.0, 5, "nf" },
        { 2.5, 2, "nf" },       // LoftQ's mixed precision: layers 0-1 NF4, the rest NF2
        { 3.0, 1, "uniform" },
    };

    [Theory]
    [MemberData(nameof(Settings))]
    public void SameQAndFactorsBitForBitAsTheCheckpointPipeline(double bits, int iterations, string quantizer)
    {
        var options = new LoftQOptions
        {
            Bits = bits,
            Rank = 16,
            Iterations = iterations,
            Quantizer = quantizer == "nf" ? QuantizerKind.NormalFloat : QuantizerKind.Uniform,
            Seed = 3,
        };
        using var output = new TempDir();
        string outDir = Path.Combine(output.Path, "out");
        LoftQReport fileReport = LoftQ.Initialize(TestFiles.FixtureModel, outDir, options);

        using var scope = NewDisposeScope();
        using var model = LlamaForCausalLM.FromPretrained(TestFiles.FixtureModel, ScalarType.Float32);
        LoftQReport modelReport = LoftQ.Initialize(model, options);

        Assert.Equal(fileReport.Layers.Select(l => l.Name).Order(StringComparer.Ordinal), modelReport.Layers.Select(l => l.Name).Order(StringComparer.Ordinal));
        var byName = modelReport.Layers.ToDictionary(l => l.Name);
        foreach (LayerReport expected in fileReport.Layers)
        {
            LayerReport actual = byName[expected.Name];
            Assert.Equal(expected.Quantizer, actual.Quantizer);
            Assert.Equal(expected.ErrorTrace, actual.ErrorTrace);
            Assert.Equal(expected.BestPass, actual.BestPass);
        }

        Assert.Equal(fileReport.Settings with { Threads = 0 }, modelReport.Settings with { Threads = 0 });

        // The adapter the pipeline wrote and the factors in the model: the same floats.
        using PeftAdapter adapter = PeftAdapterReader.Read(Path.Combine(outDir, "loftq_init"));
        var layers = LoraAdapters.Find(model).ToDictionary(l => l.Path, l => l.Layer);
        Assert.Equal(56, layers.Count);
        using HuggingFaceCheckpoint backbone = HuggingFaceCheckpoint.Open(outDir);
        foreach (LoraTensors t in adapter.Layers)
        {
            LoraLinear layer = layers[t.ModulePath];
            Assert.True(t.A.Span.SequenceEqual(Values(layer.A)), $"lora_A of {t.ModulePath} differs");
            Assert.True(t.B.Span.SequenceEqual(Values(layer.B)), $"lora_B of {t.ModulePath} differs");

            // The backbone holds deq(Q) in the checkpoint's dtype (bf16): the packed base rounds to the same values.
            SafeTensorInfo info = backbone.GetInfo(t.ModulePath + ".weight");
            Assert.Equal(SafeTensorDType.BF16, info.DType);
            float[] written = backbone.ReadAsSingle(t.ModulePath + ".weight");
            float[] ours = Values(layer.Dequantize(ScalarType.BFloat16));
            Assert.True(written.AsSpan().SequenceEqual(ours), $"the quantized base of {t.ModulePath} differs");
        }
    }

    [Fact]
    public void TheActivationObjectiveAndQPiSSAOrderGiveTheSameResultsAsThePipeline()
    {
        byte[] train = File.ReadAllBytes(Path.Combine(TestFiles.Data, "fortunes-train.txt"));
        CalibrationStatistics calibration = CalibrationStatistics.Collect(TestFiles.FixtureModel, train, windows: 2, windowLength: 64);
        var options = new LoftQOptions
        {
            Bits = 2, Rank = 8, Iterations = 2, Targets = ["k_proj", "down_proj"], Objective = LoftQObjective.Activation,
            Calibration = calibration, LowRankFirst = true, ScaleSearch = Quantization.BlockScaleSearch.Default,
        };
        using var output = new TempDir();
        LoftQReport fileReport = LoftQ.Initialize(TestFiles.FixtureModel, Path.Combine(output.Path, "out"), options);

        using var scope = NewDisposeScope();
        using var model = LlamaForCausalLM.FromPretrained(TestFiles.FixtureModel, ScalarType.Float32);
        ArgumentException refused = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(model, options, modelOptions: new LoftQModelOptions { Engine = LoftQEngine.Torch }));
        Assert.Contains("LoftQEngine.Managed or Auto", refused.Message, StringComparison.Ordinal);
        Assert.Throws<NotSupportedException>(() => LoftQ.Initialize(model, options with { BitBudget = 2.5, Objective = LoftQObjective.Weight, Calibration = null }));

        LoftQReport modelReport = LoftQ.Initialize(model, options);
        var byName = modelReport.Layers.ToDictionary(l => l.Name);
        Assert.Equal(16, fileReport.Layers.Count);
        foreach (LayerReport expected in fileReport.Layers)
        {
            LayerReport actual = byName[expected.Name];
            Assert.Equal(expected.ErrorTrace, actual.ErrorTrace);
            Assert.NotNull(actual.WeightedError);
            Assert.Equal(expected.WeightedError, actual.WeightedError);
        }

        Assert.Equal(fileReport.Settings with { Threads = 0 }, modelReport.Settings with { Threads = 0 });
        Assert.Equal("activation", modelReport.Settings.Objective);
        Assert.True(modelReport.Settings.LowRankFirst);
    }

    [Fact]
    public void SavedAdapterEqualsThePipelinesLoftQInitFile()
    {
        var options = new LoftQOptions { Bits = 2, Rank = 16, Iterations = 2, Alpha = 32 };
        using var output = new TempDir();
        string outDir = Path.Combine(output.Path, "out");
        LoftQ.Initialize(TestFiles.FixtureModel, outDir, options);

        using var scope = NewDisposeScope();
        using var model = LlamaForCausalLM.FromPretrained(TestFiles.FixtureModel);
        LoftQ.Initialize(model, options);
        string saved = Path.Combine(output.Path, "saved");
        LoraAdapters.Save(model, saved, Path.GetFullPath(TestFiles.FixtureModel));

        using SafeTensorsFile expected = SafeTensorsFile.Open(Path.Combine(outDir, "loftq_init", "adapter_model.safetensors"));
        using SafeTensorsFile actual = SafeTensorsFile.Open(Path.Combine(saved, "adapter_model.safetensors"));
        Assert.Equal(expected.Tensors.Select(t => t.Name), actual.Tensors.Select(t => t.Name));
        Assert.StartsWith("base_model.model.model.layers.0.", expected.Tensors[0].Name, StringComparison.Ordinal);
        foreach (SafeTensorInfo t in expected.Tensors)
        {
            Assert.True(expected.GetBytes(t.Name).SequenceEqual(actual.GetBytes(t.Name)), $"{t.Name} differs");
        }

        Assert.Equal(File.ReadAllText(Path.Combine(outDir, "loftq_init", "adapter_config.json")), File.ReadAllText(Path.Combine(saved, "adapter_config.json")));
    }
}
