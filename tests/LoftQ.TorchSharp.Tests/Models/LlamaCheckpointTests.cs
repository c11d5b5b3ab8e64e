using System.Globalization;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.TorchSharp.Models;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using CoreLlama = LoftQNet.Pipeline.LlamaModel;
using CoreLlamaConfig = LoftQNet.Pipeline.LlamaConfig;

namespace LoftQNet.TorchSharp.Tests.Models;

/// <summary>Small synthetic checkpoints: loading, grouped-query attention, tied and untied heads, and bad input.</summary>
[Collection(TorchCollection.Name)]
public sealed class LlamaCheckpointTests(ITestOutputHelper output)
{
    // Grouped-query attention (4 query heads share 2 key/value heads), untied head, non-default theta and eps.
    private static readonly LlamaModelConfig s_gqa = new(32, 48, 2, 4, 2, 8, 40, RmsNormEps: 1e-5, RopeTheta: 500.0, TieWordEmbeddings: false);

    [Fact]
    public void GroupedQueryAttentionWithUntiedHeadMatchesTheCoreForward()
    {
        using var dir = new TempDir();
        Dictionary<string, (long[] Shape, float[] Values)> weights = WriteCheckpoint(dir.Path, s_gqa, SafeTensorDType.F32, seed: 1);
        using LlamaForCausalLM model = LlamaForCausalLM.FromPretrained(dir.Path);
        Assert.All(model.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        Assert.False(SharesStorage(model.Model.EmbedTokens.weight!, model.LmHead.weight!));
        AssertMatchesCore(model, name => weights[name].Values);
    }

    [Fact]
    public void TiedEmbeddingsShareOneParameterAndSurviveDtypeConversion()
    {
        LlamaModelConfig tied = s_gqa with { TieWordEmbeddings = true, NumKeyValueHeads = 1 };
        using var dir = new TempDir();
        // Stored as BF16 and loaded into float32: the staging path (stored dtype, then copy_) instead of the byte copy.
        WriteCheckpoint(dir.Path, tied, SafeTensorDType.BF16, seed: 2);
        using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(dir.Path);
        using LlamaForCausalLM model = LlamaForCausalLM.FromPretrained(dir.Path, ScalarType.Float32);
        Assert.True(SharesStorage(model.Model.EmbedTokens.weight!, model.LmHead.weight!));

        // Hugging Face's state_dict() of a tied model lists lm_head.weight too (the same tensor under two names);
        // save_pretrained drops it, so the checkpoint has every key but that one.
        var keys = model.state_dict().Keys.Order(StringComparer.Ordinal).ToList();
        Assert.Equal(checkpoint.TensorNames.Append("lm_head.weight").Order(StringComparer.Ordinal), keys);
        Assert.DoesNotContain("lm_head.weight", checkpoint.TensorNames);

        AssertMatchesCore(model, name => checkpoint.ReadAsSingle(name == "lm_head.weight" ? "model.embed_tokens.weight" : name));

        model.to(ScalarType.BFloat16);
        Assert.True(SharesStorage(model.Model.EmbedTokens.weight!, model.LmHead.weight!));
        Assert.Equal(ScalarType.BFloat16, model.LmHead.weight!.dtype);
        using var scope = torch.NewDisposeScope();
        using (torch.no_grad())
        {
            Tensor logits = model.forward(torch.tensor(new long[] { 3, 1, 4, 1, 5 }, [1, 5]));
            Assert.Equal(ScalarType.BFloat16, logits.dtype);
        }
    }

    [Theory]
    [InlineData(SafeTensorDType.F32)]
    [InlineData(SafeTensorDType.BF16)]
    public void LargeTensorsStagedInChunksOfRowsLoadTheSameValues(SafeTensorDType stored)
    {
        using var dir = new TempDir();
        WriteCheckpoint(dir.Path, s_gqa, stored, seed: 7);
        using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(dir.Path);
        using var whole = new LlamaForCausalLM(s_gqa);
        whole.Load(checkpoint);
        using var chunked = new LlamaForCausalLM(s_gqa);
        // 100 bytes: 25 float32 values, so every matrix goes through several chunks (row widths are 32 or 48).
        chunked.Load(checkpoint, maxChunkBytes: 100);
        Dictionary<string, Tensor> a = whole.state_dict(), b = chunked.state_dict();
        Assert.Equal(checkpoint.TensorNames.Count, a.Count);
        foreach ((string name, Tensor t) in a)
        {
            float[] expected = checkpoint.ReadAsSingle(name);
            Assert.Equal(expected, t.data<float>().ToArray());
            Assert.Equal(expected, b[name].data<float>().ToArray());
        }
    }

    [Fact]
    public void AMissingTensorIsNamed()
    {
        using var dir = new TempDir();
        WriteCheckpoint(dir.Path, s_gqa, SafeTensorDType.F32, seed: 3, skip: "model.layers.1.mlp.up_proj.weight");
        var e = Assert.Throws<CheckpointFormatException>(() => LlamaForCausalLM.FromPretrained(dir.Path));
        output.WriteLine(e.Message);
        Assert.Contains("'model.layers.1.mlp.up_proj.weight'", e.Message, StringComparison.Ordinal);
        Assert.Contains("missing", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AWrongShapeIsNamedWithItsFile()
    {
        using var dir = new TempDir();
        WriteCheckpoint(dir.Path, s_gqa, SafeTensorDType.F32, seed: 4, reshape: ("model.layers.0.self_attn.k_proj.weight", [32, 32]));
        var e = Assert.Throws<CheckpointFormatException>(() => LlamaForCausalLM.FromPretrained(dir.Path));
        output.WriteLine(e.Message);
        Assert.Contains("'model.layers.0.self_attn.k_proj.weight'", e.Message, StringComparison.Ordinal);
        Assert.Contains("model.safetensors", e.Message, StringComparison.Ordinal);
        Assert.Contains("[32, 32]", e.Message, StringComparison.Ordinal);
        Assert.Contains("[16, 32]", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AnUnexpectedTensorIsNamedWithItsFile()
    {
        using var dir = new TempDir();
        WriteCheckpoint(dir.Path, s_gqa, SafeTensorDType.F32, seed: 5, extra: "model.layers.0.self_attn.q_proj.bias");
        var e = Assert.Throws<CheckpointFormatException>(() => LlamaForCausalLM.FromPretrained(dir.Path));
        output.WriteLine(e.Message);
        Assert.Contains("'model.layers.0.self_attn.q_proj.bias'", e.Message, StringComparison.Ordinal);
        Assert.Contains("model.safetensors", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AnUnsupportedComputeTypeIsRejected()
    {
        using var dir = new TempDir();
        WriteCheckpoint(dir.Path, s_gqa, SafeTensorDType.F32, seed: 6);
        Assert.Throws<ArgumentException>(() => LlamaForCausalLM.FromPretrained(dir.Path, ScalarType.Int32));
    }

    [Fact]
    public void AModelBuiltInsideADisposeScopeOutlivesIt()
    {
        TorchSetup.Ensure();
        LlamaForCausalLM model;
        using (torch.NewDisposeScope())
        {
            model = new LlamaForCausalLM(s_gqa);
        }

        using (model)
        using (torch.NewDisposeScope())
        using (torch.no_grad())
        {
            Assert.All(model.parameters(), p => Assert.False(p.IsInvalid));
            Tensor logits = model.forward(torch.tensor(new long[] { 1, 2, 3 }, [1, 3]));
            Assert.Equal([1L, 3, 40], logits.shape);
        }
    }

    /// <summary>Whether writing the first element of <paramref name="a"/> shows in <paramref name="b"/> (TorchSharp hands out new wrapper objects, so references say nothing).</summary>
    private static bool SharesStorage(Tensor a, Tensor b)
    {
        using var scope = torch.NewDisposeScope();
        using (torch.no_grad())
        {
            Tensor first = a.view(-1).narrow(0, 0, 1);
            Tensor saved = first.clone();
            Tensor other = b.view(-1).narrow(0, 0, 1);
            first.fill_(-96); // exact in bf16 and fp16
            bool shared = other.to(ScalarType.Float32).item<float>() == -96f;
            first.copy_(saved);
            return shared;
        }
    }

    private void AssertMatchesCore(LlamaForCausalLM model, Func<string, float[]> weight)
    {
        LlamaModelConfig c = model.Config;
        var core = new CoreLlama(new CoreLlamaConfig(c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.VocabSize, c.RmsNormEps, c.RopeTheta), weight);
        int[] tokens = [.. Enumerable.Range(0, 19).Select(i => (i * 7 + 3) % c.VocabSize)];
        using Numerics.Matrix expected = core.Forward(tokens);
        using var scope = torch.NewDisposeScope();
        using (torch.no_grad())
        {
            // Two identical rows in a batch also check that batching does not mix sequences.
            Tensor input = torch.tensor(tokens.Concat(tokens).Select(t => (long)t).ToArray(), [2, tokens.Length]);
            Tensor logits = model.forward(input).to(ScalarType.Float32);
            float[] actual = logits.data<float>().ToArray();
            double maxDiff = 0, maxRef = 0;
            for (int b = 0; b < 2; b++)
            {
                for (int i = 0; i < expected.Length; i++)
                {
                    maxDiff = Math.Max(maxDiff, Math.Abs(actual[(b * expected.Length) + i] - expected.Span[i]));
                    maxRef = Math.Max(maxRef, Math.Abs(expected.Span[i]));
                }
            }

            output.WriteLine($"max |torch - core| = {maxDiff:E3}, max |core| = {maxRef:F4}");
            Assert.True(maxDiff <= 1e-4 * maxRef, $"max |diff| {maxDiff} exceeds 1e-4 x {maxRef}");
        }
    }

    /// <summary>Writes config.json and model.safetensors with random weights for <paramref name="c"/>; returns the values as stored.</summary>
    private static Dictionary<string, (long[] Shape, float[] Values)> WriteCheckpoint(
        string dir, LlamaModelConfig c, SafeTensorDType dtype, int seed, string? skip = null, (string Name, long[] Shape)? reshape = null, string? extra = null)
    {
        var random = new Random(seed);
        long h = c.HiddenSize, q = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim, m = c.IntermediateSize;
        var shapes = new List<(string Name, long[] Shape, bool Norm)>
        {
            ("model.embed_tokens.weight", [c.VocabSize, h], false),
            ("model.norm.weight", [h], true),
        };
        if (!c.TieWordEmbeddings)
        {
            shapes.Add(("lm_head.weight", [c.VocabSize, h], false));
        }

        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            shapes.Add((p + "input_layernorm.weight", [h], true));
            shapes.Add((p + "post_attention_layernorm.weight", [h], true));
            shapes.Add((p + "self_attn.q_proj.weight", [q, h], false));
            shapes.Add((p + "self_attn.k_proj.weight", [kv, h], false));
            shapes.Add((p + "self_attn.v_proj.weight", [kv, h], false));
            shapes.Add((p + "self_attn.o_proj.weight", [h, q], false));
            shapes.Add((p + "mlp.gate_proj.weight", [m, h], false));
            shapes.Add((p + "mlp.up_proj.weight", [m, h], false));
            shapes.Add((p + "mlp.down_proj.weight", [h, m], false));
        }

        if (extra is not null)
        {
            shapes.Add((extra, [q], false));
        }

        var result = new Dictionary<string, (long[], float[])>(StringComparer.Ordinal);
        var entries = new List<SafeTensorEntry>();
        foreach ((string name, long[] declared, bool norm) in shapes)
        {
            if (name == skip)
            {
                continue;
            }

            long[] shape = reshape is { } r && r.Name == name ? r.Shape : declared;
            var values = new float[shape.Aggregate(1L, (a, b) => a * b)];
            for (int i = 0; i < values.Length; i++)
            {
                double gaussian = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
                values[i] = norm ? (float)(1 + (0.1 * gaussian)) : (float)(0.3 * gaussian);
            }

            result[name] = (shape, values);
            entries.Add(SafeTensorEntry.FromSingle(name, TensorShape.FromInt64(shape), values, dtype));
        }

        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), entries, new Dictionary<string, string> { ["format"] = "pt" });
        string dtypeName = dtype.ToTorchName();
        File.WriteAllText(Path.Combine(dir, "config.json"), string.Create(CultureInfo.InvariantCulture, $$"""
            {
              "architectures": ["LlamaForCausalLM"],
              "model_type": "llama",
              "hidden_act": "silu",
              "hidden_size": {{c.HiddenSize}},
              "intermediate_size": {{c.IntermediateSize}},
              "num_hidden_layers": {{c.NumHiddenLayers}},
              "num_attention_heads": {{c.NumAttentionHeads}},
              "num_key_value_heads": {{c.NumKeyValueHeads}},
              "head_dim": {{c.HeadDim}},
              "vocab_size": {{c.VocabSize}},
              "rms_norm_eps": {{c.RmsNormEps}},
              "rope_theta": {{c.RopeTheta}},
              "tie_word_embeddings": {{(c.TieWordEmbeddings ? "true" : "false")}},
              "torch_dtype": "{{dtypeName}}"
            }
            """));
        return result;
    }
}
