using LoftQNet.Pipeline;
using LoftQNet.TorchSharp.Models;
using LoftQNet.TorchSharp.Training;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Tests;

/// <summary>The fine-tuning protocol of docs/finetuning.md on the bundled model, shortened.</summary>
// Builds models from torch's global generator: must not run beside another class that draws from it.
[Collection(LoftQNet.TorchSharp.Tests.Models.TorchCollection.Name)]
public sealed class FineTuneProtocolTests : TorchTestBase
{
    private static string FortunesTrain => Path.Combine(TestFiles.Data, "fortunes-train.txt");

    [Fact]
    public void LoftqEvalOnBackbonePlusFineTunedAdapterMatchesTheTrainersOwnNumber()
    {
        using var dir = new TempDir();
        var options = new LoftQOptions { Bits = 2, Rank = 16, Alpha = 16, Iterations = 1, ScaleSearch = null };
        string backbone = Path.Combine(dir.Path, "backbone"), adapter = Path.Combine(dir.Path, "adapter");
        LoftQ.Initialize(TestFiles.FixtureModel, backbone, options);       // what `loftq quantize` writes
        using LlamaForCausalLM model = LlamaForCausalLM.FromPretrained(TestFiles.FixtureModel, ScalarType.Float32);
        LoftQ.Initialize(model, options);                                    // the same Q, A and B in memory
        var val = ByteWindowDataset.FromFile(TestFiles.FortunesVal, 256);
        var trainer = new LoraTrainer(model, new LoraTrainingOptions { Steps = 2, AdapterDirectory = adapter, BaseModelNameOrPath = backbone, EvaluationWindows = 16 });
        TrainingResult result = trainer.Train(ByteWindowDataset.FromFile(FortunesTrain, 128), val);

        EvaluationResult eval = Evaluation.BitsPerByte(backbone, File.ReadAllBytes(TestFiles.FortunesVal), adapter, windows: 16);
        Assert.True(eval.AdapterApplied);
        Assert.NotEqual(result.Evaluations[0].BitsPerToken, result.Evaluations[^1].BitsPerToken, 3); // the adapter changed the model
        // The backbone file holds Q rounded to the checkpoint's bfloat16 (relative error ≤ 2^-9 per weight) while the
        // trainer's packed base dequantizes in float32; that rounding moves the score by about 1e-4 here.
        Assert.Equal(result.Evaluations[^1].BitsPerToken, eval.BitsPerByte, 2e-3);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void TwoBitLoftQFineTunesBetterThanTwoBitQLoRA()
    {
        var train = ByteWindowDataset.FromFile(FortunesTrain, 128);
        var val = ByteWindowDataset.FromFile(TestFiles.FortunesVal, 256);

        (double Initial, double Final, IReadOnlyList<double> Losses) Run(int iterations)
        {
            using LlamaForCausalLM model = LlamaForCausalLM.FromPretrained(TestFiles.FixtureModel, ScalarType.Float32);
            LoftQ.Initialize(model, new LoftQOptions { Bits = 2, Rank = 16, Alpha = 16, Iterations = iterations, ScaleSearch = null });
            TrainingResult r = new LoraTrainer(model, new LoraTrainingOptions { Steps = 20, EvaluationWindows = 32 }).Train(train, val);
            return (r.Evaluations[0].BitsPerToken, r.Evaluations[^1].BitsPerToken, r.Losses);
        }

        var loftq = Run(5);
        var qlora = Run(0);
        foreach (var run in new[] { loftq, qlora })
        {
            Assert.True(run.Final < run.Initial - 0.1, $"fine-tuning did not help: {run.Initial:F3} -> {run.Final:F3}");
            Assert.True(run.Losses.TakeLast(5).Average() < run.Losses.Take(5).Average(), "the training loss did not drop");
        }

        Assert.True(loftq.Initial < qlora.Initial - 2, $"at init LoftQ NF2 {loftq.Initial:F3} vs QLoRA NF2 {qlora.Initial:F3}");
        Assert.True(loftq.Final < qlora.Final - 0.2, $"after 20 steps LoftQ NF2 {loftq.Final:F3} vs QLoRA NF2 {qlora.Final:F3}");
    }
}
