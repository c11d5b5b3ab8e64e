using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace LoftQNet.TorchSharp.Tests;

// Builds models from torch's global generator: must not run beside another class that draws from it.
[Collection(LoftQNet.TorchSharp.Tests.Models.TorchCollection.Name)]
public class InitializeTests : TorchTestBase
{
    /// <summary>A two-layer model with Hugging Face names, its projections held in fields typed Module&lt;Tensor, Tensor&gt;.</summary>
    internal sealed class Block : Module<Tensor, Tensor>
    {
        private Module<Tensor, Tensor> q_proj;
        private Module<Tensor, Tensor> down_proj;

        public Block(int width, int seed)
            : base(nameof(Block))
        {
            q_proj = Init(Linear(width, width, hasBias: true), seed);
            down_proj = Init(Linear(width, width, hasBias: false), seed + 1);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => down_proj.forward(functional.relu(q_proj.forward(x)));
    }

    [Fact]
    public void ScaleSearchRunsOnTheManagedEngineAndTheTorchEngineRefusesIt()
    {
        var options = new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1, ScaleSearch = BlockScaleSearch.Default };
        using var refused = new TinyModel();
        ArgumentException e = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(refused, options, modelOptions: new LoftQModelOptions { Engine = LoftQEngine.Torch }));
        Assert.Contains("LoftQOptions.ScaleSearch", e.Message, StringComparison.Ordinal);
        Assert.Empty(LoraAdapters.Find(refused)); // nothing was replaced

        using var plain = new TinyModel();
        using var searched = new TinyModel();
        LoftQReport p = LoftQ.Initialize(plain, options with { ScaleSearch = null });
        LoftQReport s = LoftQ.Initialize(searched, options); // Auto on the CPU: the managed engine
        using var defaults = new TinyModel();
        LoftQReport d = LoftQ.Initialize(defaults, new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1 }); // searched scales are the default
        Assert.Equal(s.Settings.ScaleSearch, d.Settings.ScaleSearch);
        Assert.Equal("clip grid 1..0.5 in 20 steps", s.Settings.ScaleSearch);
        Assert.True(s.Layers.Average(l => l.RelativeError) < p.Layers.Average(l => l.RelativeError));
    }

    [Fact]
    public void InitializeLeavesNoManagedArrayPinnedAndNoPooledBuffersBehind()
    {
        // torch.tensor(array) keeps the array pinned while the tensor lives: packed weights built that way pinned three
        // arrays per layer, and the garbage collector could not return the large-object heap around them.
        static int Pinned()
        {
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
            return (int)GC.GetGCMemoryInfo().PinnedObjectsCount;
        }

        using var model = new TinyModel(width: 128);
        int before = Pinned();
        LoftQ.Initialize(model, new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1 });
        int after = Pinned();
        int layers = LoraAdapters.Find(model).Count;
        Assert.Equal(4, layers); // q_proj and down_proj of both blocks
        Assert.True(after - before < layers, $"{after - before} more pinned objects after initialising {layers} layers");
    }

    internal sealed class TinyModel : Module<Tensor, Tensor>
    {
        private readonly ModuleList<Module<Tensor, Tensor>> layers;
        private readonly Linear lm_head;

        public TinyModel(int width = 64, int seed = 0)
            : base(nameof(TinyModel))
        {
            layers = new ModuleList<Module<Tensor, Tensor>>(new Block(width, seed), new Block(width, seed + 10));
            lm_head = Init(Linear(width, 8), seed + 20);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            foreach (Module<Tensor, Tensor> layer in layers)
            {
                x = layer.forward(x);
            }

            return lm_head.forward(x);
        }
    }

    internal static Linear Init(Linear linear, int seed)
    {
        using var noGrad = torch.no_grad();
        linear.weight!.copy_(torch.randn(linear.weight.shape, generator: new Generator((ulong)seed + 1)).mul(0.2));
        linear.bias?.copy_(torch.randn(linear.bias.shape, generator: new Generator((ulong)seed + 1000)).mul(0.1));
        return linear;
    }

    [Fact]
    public void SwapsTargetsFreezesTheRestAndReproducesTheOptimizer()
    {
        using var scope = NewDisposeScope();
        using var model = new TinyModel();
        Tensor x = torch.randn([5, 64], generator: new Generator(3));
        float[] before = Values(model.forward(x));
        float[] q0 = Values(model.named_parameters().Single(p => p.name == "layers.0.q_proj.weight").parameter);

        var progress = new List<LoftQProgress>();
        LoftQReport report = LoftQ.Initialize(model, new LoftQOptions { Bits = 4, Rank = 8, Iterations = 3, Targets = ["q_proj", "down_proj"] }, new SyncProgress(progress));

        Assert.Equal(
            new[] { "layers.0.down_proj", "layers.0.q_proj", "layers.1.down_proj", "layers.1.q_proj" },
            model.named_modules().Where(m => m.module is LoraLinear).Select(m => m.name).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal(4, report.Layers.Count);
        Assert.Equal("layers.0.q_proj.weight", report.Layers[0].Name);
        Assert.Equal(LoftQProgressKind.Completed, progress[^1].Kind);
        Assert.Equal(4, progress.Count(p => p.Kind == LoftQProgressKind.LayerCompleted));
        Assert.True(report.MeanLoftQError < report.MeanQLoRAError);

        string[] trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(8, trainable.Length);
        Assert.All(trainable, n => Assert.Matches(@"\.lora_[AB]\.weight$", n));

        // Each new layer is the optimizer's result for that weight: W ≈ deq(Q) + B·A with the reported error.
        var lora = (LoraLinear)model.named_modules().Single(m => m.name == "layers.0.q_proj").module;
        float[] merged = Values(lora.Merge());
        double num = 0, den = 0;
        for (int i = 0; i < q0.Length; i++)
        {
            num += (q0[i] - merged[i]) * (double)(q0[i] - merged[i]);
            den += q0[i] * (double)q0[i];
        }

        Assert.Equal(report.Layers[0].RelativeError, Math.Sqrt(num / den), 1e-5);
        Assert.NotNull(lora.Bias);

        // The initialised model computes nearly what the original did: four layers each off by a relative ~0.06
        // (NF4, r = 8 on 64x64 Gaussian weights) move the output by a few percent of its largest value.
        float[] after = Values(model.forward(x));
        double diff = after.Zip(before, (p, q) => Math.Abs(p - q)).Max(), scale = before.Max(v => Math.Abs(v));
        Assert.True(diff < 0.2 * scale, $"max output change {diff} vs scale {scale}");

        // A second call finds nothing left to replace.
        var again = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(model, new LoftQOptions { Targets = ["q_proj"] }));
        Assert.Contains("already has LoraLinear layers", again.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(4.0, "nf")]
    [InlineData(2.0, "nf")]
    [InlineData(3.0, "uniform-asym")]
    public void TheTorchEngineOnTheWeightsDeviceMatchesTheManagedEngine(double bits, string quantizer)
    {
        // What runs on a CUDA device, run on the CPU device: same quantizer, same seeds, a torch randomized SVD.
        using var scope = NewDisposeScope();
        var options = new LoftQOptions
        {
            Bits = bits,
            Rank = 8,
            Iterations = 3,
            Targets = ["q_proj", "down_proj"],
            Quantizer = quantizer == "nf" ? QuantizerKind.NormalFloat : QuantizerKind.UniformAsymmetric,
            ScaleSearch = null, // the torch engine has no scale search yet
        };
        using var managedModel = new TinyModel(width: 256);
        using var torchModel = new TinyModel(width: 256);
        LoftQReport managed = LoftQ.Initialize(managedModel, options, modelOptions: new LoftQModelOptions { Engine = LoftQEngine.Managed });
        LoftQReport onDevice = LoftQ.Initialize(torchModel, options, modelOptions: new LoftQModelOptions { Engine = LoftQEngine.Torch });
        for (int i = 0; i < managed.Layers.Count; i++)
        {
            Assert.Equal(managed.Layers[i].Name, onDevice.Layers[i].Name);
            Assert.Equal(managed.Layers[i].QLoRAError, onDevice.Layers[i].QLoRAError, 1e-5);
            Assert.True(Math.Abs(onDevice.Layers[i].RelativeError / managed.Layers[i].RelativeError - 1) < 0.005, $"{managed.Layers[i].Name}: torch {onDevice.Layers[i].RelativeError} vs managed {managed.Layers[i].RelativeError}");
        }

        // The torch engine's layer reproduces its own report: W ≈ deq(Q) + B·A.
        var lora = (LoraLinear)torchModel.named_modules().Single(m => m.name == "layers.1.down_proj").module;
        Assert.Equal(ScalarType.Float32, lora.A.dtype);
        Tensor x = torch.randn([4, 256], generator: new Generator(1));
        Assert.Equal(new long[] { 4, 8 }, torchModel.forward(x).shape);
        Assert.Equal(8, torchModel.named_parameters().Count(p => p.parameter.requires_grad));
    }

    [Fact]
    public void ALinearTypedFieldGetsAClearErrorAndTheModelIsUntouched()
    {
        using var scope = NewDisposeScope();
        using var model = new TinyModel();
        var e = Assert.Throws<InvalidOperationException>(() => LoftQ.Initialize(model, new LoftQOptions { Rank = 4, Targets = ["q_proj", "lm_head"] }));
        Assert.Contains("'lm_head'", e.Message, StringComparison.Ordinal);
        Assert.Contains("TinyModel.lm_head", e.Message, StringComparison.Ordinal);
        Assert.Contains("Module<Tensor, Tensor>", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(model.modules(), m => m is LoraLinear);
        Assert.All(model.parameters(), p => Assert.True(p.requires_grad));
    }

    [Fact]
    public void AFailingLayerLeavesTheModelUntouched()
    {
        using var scope = NewDisposeScope();
        using var model = new TinyModel();
        using (torch.no_grad())
        {
            model.named_parameters().Single(p => p.name == "layers.1.down_proj.weight").parameter[3, 5] = float.NaN;
        }

        var e = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(model, new LoftQOptions { Rank = 4, Targets = ["q_proj", "down_proj"] }));
        Assert.Contains("layers.1.down_proj", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(model.modules(), m => m is LoraLinear);
    }

    [Fact]
    public void BadOptionsAreRejectedWithTheOptionName()
    {
        using var model = new TinyModel();
        Assert.Contains("Rank", Assert.Throws<ArgumentException>(() => LoftQ.Initialize(model, new LoftQOptions { Rank = 65, Targets = ["q_proj"] })).Message, StringComparison.Ordinal);
        Assert.Contains("Format", Assert.Throws<ArgumentException>(() => LoftQ.Initialize(model, new LoftQOptions { Format = OutputFormat.BitsAndBytesNf4 })).Message, StringComparison.Ordinal);
        Assert.Contains("No Linear module", Assert.Throws<ArgumentException>(() => LoftQ.Initialize(model, new LoftQOptions { Targets = ["nothing_here"] })).Message, StringComparison.Ordinal);
        using var noLlamaNames = new ContainerModel("field");
        Assert.Contains("No Linear module", Assert.Throws<ArgumentException>(() => LoftQ.Initialize(noLlamaNames)).Message, StringComparison.Ordinal);
    }

    public static TheoryData<string> Containers => new() { "field", "modulelist", "moduledict", "sequential" };

    [Theory]
    [MemberData(nameof(Containers))]
    public void EachContainerKindIsSwappedAndForwardUsesTheNewLayer(string kind)
    {
        using var scope = NewDisposeScope();
        using var model = new ContainerModel(kind);
        Tensor x = torch.randn([3, 32], generator: new Generator(2));
        float[] before = Values(model.forward(x));
        LoftQ.Initialize(model, new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1, Targets = ["re:.*proj(\\.0)?"] });
        var loras = model.named_modules().Where(m => m.module is LoraLinear).Select(m => m.name).ToList();
        Assert.Single(loras);
        Assert.Matches(@"proj(\.0)?$", loras[0]);

        // Forward runs through the LoraLinear: zeroing B leaves exactly the quantized base (differs from before at 2 bits).
        var lora = (LoraLinear)model.named_modules().Single(m => m.module is LoraLinear).module;
        using (torch.no_grad())
        {
            lora.B.zero_();
        }

        float[] baseOnly = Values(model.forward(x));
        Assert.NotEqual(before, baseOnly);
        using Tensor deq = lora.Dequantize();
        float[] expected = Values(torch.nn.functional.linear(x, deq));
        Assert.Equal(expected, baseOnly);
        Assert.Contains(model.state_dict().Keys, k => k.EndsWith(".lora_A.weight", StringComparison.Ordinal));
    }

    internal sealed class ContainerModel : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor> inner;

        public ContainerModel(string kind)
            : base(nameof(ContainerModel))
        {
            Linear l = Init(Linear(32, 32, hasBias: false), 5);
            inner = kind switch
            {
                "field" => new FieldHolder(l),
                "modulelist" => new ListHolder(l),
                "moduledict" => new DictHolder(l),
                _ => Sequential(("proj", (Module<Tensor, Tensor>)l)),
            };
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => inner.forward(x);
    }

    private sealed class FieldHolder : Module<Tensor, Tensor>
    {
        private readonly Module<Tensor, Tensor> proj;

        public FieldHolder(Module<Tensor, Tensor> p)
            : base(nameof(FieldHolder))
        {
            proj = p;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => proj.forward(x);
    }

    private sealed class ListHolder : Module<Tensor, Tensor>
    {
        private readonly ModuleList<Module<Tensor, Tensor>> proj;

        public ListHolder(Module<Tensor, Tensor> p)
            : base(nameof(ListHolder))
        {
            proj = new ModuleList<Module<Tensor, Tensor>>(p);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => proj[0].forward(x);
    }

    private sealed class DictHolder : Module<Tensor, Tensor>
    {
        private readonly ModuleDict<Module<Tensor, Tensor>> blocks;

        public DictHolder(Module<Tensor, Tensor> p)
            : base(nameof(DictHolder))
        {
            blocks = new ModuleDict<Module<Tensor, Tensor>>();
            blocks.Add(("proj", p));
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => blocks["proj"].forward(x);
    }

    private sealed class SyncProgress(List<LoftQProgress> sink) : IProgress<LoftQProgress>
    {
        public void Report(LoftQProgress value)
        {
            lock (sink)
            {
                sink.Add(value);
            }
        }
    }
}
