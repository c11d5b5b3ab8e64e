using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Tests;

public class AdapterAndMemoryTests : TorchTestBase
{
    [Fact]
    public void AdapterSavesInPeftLayoutAndLoadsBackExactly()
    {
        using var scope = NewDisposeScope();
        string dir = Directory.CreateTempSubdirectory("loftq-adapter-").FullName;
        try
        {
            using var model = new InitializeTests.TinyModel();
            LoftQ.Initialize(model, new LoftQOptions { Bits = 2, Rank = 4, Alpha = 8, Iterations = 2, Targets = ["q_proj", "down_proj"] });
            LoraAdapters.Save(model, dir, "tiny");

            PeftAdapterConfig config = PeftAdapterReader.ReadConfig(Path.Combine(dir, "adapter_config.json"));
            Assert.Equal((4, 8, "tiny"), (config.R, config.LoraAlpha, config.BaseModelNameOrPath));
            Assert.Equal(new[] { "down_proj", "q_proj" }, config.TargetModules); // leaves in the order of the sorted module paths, as the pipeline writes them
            using (SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(dir, "adapter_model.safetensors")))
            {
                Assert.Equal("pt", file.Metadata["format"]);
                Assert.Contains(file.Tensors, t => t.Name == "base_model.model.layers.1.down_proj.lora_B.weight" && t.DType == SafeTensorDType.F32 && t.Shape == new TensorShape(64, 4));
                var lora = (LoraLinear)model.named_modules().Single(m => m.name == "layers.1.down_proj").module;
                Assert.Equal(Values(lora.A), file.ReadAsSingle("base_model.model.layers.1.down_proj.lora_A.weight"));
                Assert.Equal(Values(lora.B), file.ReadAsSingle("base_model.model.layers.1.down_proj.lora_B.weight"));
            }

            // Train-like change, then load the saved adapter back: the outputs return to the saved state.
            Tensor x = torch.randn([3, 64], generator: new Generator(1));
            float[] saved = Values(model.forward(x));
            foreach ((_, LoraLinear layer) in LoraAdapters.Find(model))
            {
                using var noGrad = torch.no_grad();
                layer.B.add_(0.5);
                layer.SetAlpha(1);
            }

            Assert.NotEqual(saved, Values(model.forward(x)));
            Assert.Equal(4, LoraAdapters.Load(model, dir));
            Assert.Equal(saved, Values(model.forward(x)));
            Assert.All(LoraAdapters.Find(model), l => Assert.Equal(8.0, l.Layer.Alpha));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void LoadingAMismatchedAdapterFailsWithTheModuleName()
    {
        using var scope = NewDisposeScope();
        string dir = Directory.CreateTempSubdirectory("loftq-adapter-").FullName;
        try
        {
            using var small = new InitializeTests.TinyModel();
            LoftQ.Initialize(small, new LoftQOptions { Rank = 4, Iterations = 1, Targets = ["q_proj"] });
            LoraAdapters.Save(small, dir);

            using var other = new InitializeTests.TinyModel();
            LoftQ.Initialize(other, new LoftQOptions { Rank = 4, Iterations = 1, Targets = ["q_proj", "down_proj"] });
            var e = Assert.Throws<InvalidDataException>(() => LoraAdapters.Load(other, dir));
            Assert.Contains("layers.0.down_proj", e.Message, StringComparison.Ordinal);

            using var wrongRank = new InitializeTests.TinyModel();
            LoftQ.Initialize(wrongRank, new LoftQOptions { Rank = 8, Iterations = 1, Targets = ["q_proj"] });
            Assert.Contains("r = 8", Assert.Throws<InvalidDataException>(() => LoraAdapters.Load(wrongRank, dir)).Message, StringComparison.Ordinal);

            using var plain = new InitializeTests.TinyModel();
            Assert.Throws<InvalidOperationException>(() => LoraAdapters.Save(plain, dir));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void HundredTrainingStepsLeaveTheLiveTensorCountFlat()
    {
        using var model = new InitializeTests.TinyModel();
        LoftQ.Initialize(model, new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1, Targets = ["q_proj", "down_proj"] });
        using var optimizer = torch.optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-3);
        Tensor x = torch.randn([8, 64], generator: new Generator(1)).DetachFromDisposeScope();
        Tensor target = torch.randn([8, 8], generator: new Generator(2)).DetachFromDisposeScope();
        void Step()
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            Tensor loss = torch.nn.functional.mse_loss(model.forward(x), target);
            loss.backward();
            optimizer.step();
        }

        for (int i = 0; i < 5; i++)
        {
            Step(); // AdamW creates its state on the first steps
        }

        // Tensors created and disposed on this thread (Tensor.TotalCount is process-wide and other tests run in parallel).
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 100; i++)
        {
            Step();
        }

        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        x.Dispose();
        target.Dispose();
    }

}

/// <summary>Resident-memory measurements: in the non-parallel collection, so no other test allocates meanwhile.</summary>
[Collection(LoftQNet.TorchSharp.Tests.Models.TorchCollection.Name)]
public class BackwardMemoryTests : TorchTestBase
{
    [Fact]
    public void BackwardDoesNotKeepTheDenseBaseAlive()
    {
        // One 4096x4096 layer: its dense float32 weight is 64 MiB. Between forward and backward the autograd graph must
        // hold only activations (a 8x4096 input: 128 KiB) and the packed base, not a dequantized copy.
        const int N = 4096;
        using Matrix w = Matrix.RandomNormal(N, N, seed: 3);
        QuantizedTensor q = new NormalFloatQuantizer(4).Quantize(w.Span, w.Shape);
        using Matrix a = Matrix.RandomNormal(8, N, seed: 4, scale: 0.01f), b = Matrix.RandomNormal(N, 8, seed: 5, scale: 0.01f);
        using var layer = LoraLinear.Create(q, a.Span, b.Span, 8, 8);
        using var scope = NewDisposeScope();
        Tensor x = torch.randn([8, N], generator: new Generator(6)).requires_grad_(true);
        layer.forward(x).sum().backward(); // warm-up: allocator pools, lazy initialisation
        x.grad!.zero_();

        long before = ResidentBytes();
        Tensor y = layer.forward(x);
        long held = ResidentBytes() - before;
        Tensor loss = y.sum();
        loss.backward();
        Assert.True(held < 32L << 20, $"forward left {held >> 20} MiB resident until backward; a dense weight is 64 MiB");
        Assert.Equal(new long[] { 8, N }, x.grad!.shape);
    }

    private static long ResidentBytes()
    {
        GC.Collect();
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
            }
        }

        throw new InvalidOperationException("/proc/self/status has no VmRSS.");
    }
}
