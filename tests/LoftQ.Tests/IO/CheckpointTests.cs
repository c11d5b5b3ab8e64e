using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;

namespace LoftQNet.Tests.IO;

public class CheckpointTests
{
    [Fact]
    public void Fixture_OpensSharded_WithThreeShards_AndConsistentIndex()
    {
        using HuggingFaceCheckpoint ckpt = HuggingFaceCheckpoint.Open(TestFiles.FixtureModel);
        Assert.True(ckpt.IsSharded);
        Assert.Equal(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"], ckpt.ShardFiles);
        Assert.Equal("28717824", ckpt.IndexMetadata!["total_size"]);
        long parameters = ckpt.TensorNames.Sum(n => ckpt.GetInfo(n).ElementCount);
        Assert.Equal(14_358_912, parameters);
        Assert.Equal(ckpt.TensorNames.Count, ckpt.ShardFiles.Sum(s => ckpt.TensorsInShard(s).Count));
        Assert.Equal("model-00003-of-00003.safetensors", ckpt.ShardOf("lm_head.weight"));
        Assert.Same(ckpt.OpenShard(ckpt.ShardFiles[0]), ckpt.OpenShard(ckpt.ShardFiles[0]));
        Assert.All(ckpt.TensorNames, n => Assert.Equal(SafeTensorDType.BF16, ckpt.GetInfo(n).DType));
        var ex = Assert.Throws<KeyNotFoundException>(() => ckpt.GetInfo("model.nope.weight"));
        Assert.Contains("model.nope.weight", ex.Message);
    }

    [Fact]
    public void Fixture_ConfigParses()
    {
        using HuggingFaceCheckpoint ckpt = HuggingFaceCheckpoint.Open(TestFiles.FixtureModel);
        ModelConfig c = ckpt.Config;
        Assert.Equal("llama", c.ModelType);
        Assert.Equal(384, c.HiddenSize);
        Assert.Equal(1024, c.IntermediateSize);
        Assert.Equal(8, c.NumHiddenLayers);
        Assert.Equal(6, c.NumAttentionHeads);
        Assert.Equal(6, c.NumKeyValueHeads);
        Assert.Equal(64, c.HeadDim);
        Assert.Equal(256, c.VocabSize);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.Equal(10000.0, c.RopeTheta); // from rope_parameters
        Assert.False(c.TieWordEmbeddings);
        Assert.False(c.FanInFanOut);
        Assert.Equal("bfloat16", c.TorchDType);
        Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], c.DefaultTargetModules);
    }

    [Fact]
    public void Config_TopLevelRopeTheta_Gpt2Aliases_AndRoundTrip()
    {
        ModelConfig m = ModelConfig.Parse("""{"model_type":"mistral","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rope_theta":1000000.0,"rms_norm_eps":1e-6}""");
        Assert.Equal(1_000_000.0, m.RopeTheta);
        Assert.Equal(2, m.NumKeyValueHeads);
        Assert.Equal(16, m.HeadDim);
        ModelConfig g = ModelConfig.Parse("""{"model_type":"gpt2","n_embd":768,"n_layer":12,"n_head":12,"n_inner":null,"vocab_size":50257,"layer_norm_epsilon":1e-5}""");
        Assert.True(g.FanInFanOut);
        Assert.Equal(3072, g.IntermediateSize);
        Assert.Equal(["c_attn", "c_proj", "c_fc"], g.DefaultTargetModules);
        Assert.Null(g.RopeTheta);

        JsonNode round = JsonNode.Parse(m.ToJson(BitsAndBytesNf4.QuantizationConfig(false)))!;
        Assert.Equal(1_000_000.0, round["rope_theta"]!.GetValue<double>());
        Assert.Equal("bitsandbytes", round["quantization_config"]!["quant_method"]!.GetValue<string>());
        Assert.Null(m.Raw["quantization_config"]); // Raw untouched
    }

    [Theory]
    [InlineData("""{"hidden_size":1}""", "'model_type'")]
    [InlineData("""{"model_type":"llama","hidden_size":"64","intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":1}""", "'hidden_size'")]
    [InlineData("""{"model_type":"llama","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":1}""", "'intermediate_size'")]
    [InlineData("""{"model_type":"llama","hidden_size":64,"intermediate_size":1,"num_hidden_layers":-1,"num_attention_heads":1,"vocab_size":1}""", "'num_hidden_layers'")]
    [InlineData("""{"model_type":"llama","hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":1,"rope_parameters":{"rope_theta":"x"}}""", "rope_parameters.rope_theta")]
    [InlineData("""[1]""", "object")]
    [InlineData("""{bad""", "JSON")]
    public void Config_Errors_NameFileAndKey(string json, string fragment)
    {
        var ex = Assert.Throws<CheckpointFormatException>(() => ModelConfig.Parse(json, "some/config.json"));
        Assert.Contains("some/config.json", ex.Message);
        Assert.Contains(fragment, ex.Message);
    }

    [Fact]
    public void Fixture_ReadAsSingle_EqualsManualBf16Conversion()
    {
        using HuggingFaceCheckpoint ckpt = HuggingFaceCheckpoint.Open(TestFiles.FixtureModel);
        const string Name = "model.layers.3.mlp.down_proj.weight";
        float[] values = ckpt.ReadAsSingle(Name);
        Assert.Equal<TensorShape>([384, 1024], ckpt.GetInfo(Name).Shape);
        ReadOnlySpan<byte> raw = ckpt.OpenShard(ckpt.ShardOf(Name)).GetBytes(Name);
        Assert.Equal(values.Length * 2, raw.Length);
        double sumSquares = 0;
        for (int i = 0; i < values.Length; i++)
        {
            uint bits = (uint)(raw[2 * i] | (raw[(2 * i) + 1] << 8)) << 16;
            Assert.Equal(BitConverter.UInt32BitsToSingle(bits), values[i]);
            sumSquares += values[i] * values[i];
        }

        Assert.True(sumSquares > 0 && double.IsFinite(sumSquares));
    }

    [Fact]
    public void Fixture_DefaultTargets_Select56Matrices()
    {
        using HuggingFaceCheckpoint ckpt = HuggingFaceCheckpoint.Open(TestFiles.FixtureModel);
        IReadOnlyList<string> targets = TargetSelector.Select(ckpt, null);
        Assert.Equal(56, targets.Count);
        Assert.Equal(56, targets.Distinct().Count());
        string[] kinds = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
        var expected = Enumerable.Range(0, 8).SelectMany(l => kinds.Select(k => $"model.layers.{l}.{k}.weight")).Order(StringComparer.Ordinal);
        Assert.Equal(expected, targets.Order(StringComparer.Ordinal));
        Assert.DoesNotContain("lm_head.weight", targets);
    }

    [Fact]
    public void TargetSelector_SuffixesRegexesAndErrors()
    {
        using HuggingFaceCheckpoint ckpt = HuggingFaceCheckpoint.Open(TestFiles.FixtureModel);
        Assert.Equal(8, TargetSelector.Select(ckpt, ["self_attn.q_proj"]).Count);
        Assert.Equal(16, TargetSelector.Select(ckpt, ["q_proj", "mlp.up_proj"]).Count);
        Assert.Equal(["model.layers.0.self_attn.q_proj.weight"], TargetSelector.Select(ckpt, ["model.layers.0.self_attn.q_proj"]));
        Assert.Equal(7, TargetSelector.Select(ckpt, [@"re:model\.layers\.0\..*_proj"]).Count);
        Assert.Equal(6, TargetSelector.Select(ckpt, [@"model\.layers\.[0-2]\.mlp\.(up|down)_proj"]).Count); // non-identifier => regex
        Assert.Equal(["lm_head.weight"], TargetSelector.Select(ckpt, ["lm_head"]));
        Assert.Empty(TargetSelector.Select(["a.xq_proj"], ["q_proj"])); // suffix must start at a dot
        var ex = Assert.Throws<ArgumentException>(() => TargetSelector.Select(ckpt, ["c_attn", "c_fc"]));
        Assert.Contains("c_attn, c_fc", ex.Message);
        Assert.Throws<ArgumentException>(() => TargetSelector.Select(ckpt, ["re:(unclosed"]));
        Assert.Throws<ArgumentException>(() => TargetSelector.Select(ckpt, ["input_layernorm"])); // 1-D, not a candidate
    }

    // ---- synthetic checkpoints for the index rules ----

    private static void WriteSmallCheckpoint(TempDir dir, string index)
    {
        File.WriteAllText(dir.File("config.json"), """{"model_type":"llama","hidden_size":4,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":10}""");
        SafeTensorsWriter.Write(dir.File("a.safetensors"), [SafeTensorEntry.FromSingle("x.weight", [2, 2], [1, 2, 3, 4], SafeTensorDType.BF16)]);
        SafeTensorsWriter.Write(dir.File("b.safetensors"), [SafeTensorEntry.FromSingle("y.weight", [1, 2], [5, 6], SafeTensorDType.F16), SafeTensorEntry.FromSingle("y.bias", [1], [7])]);
        File.WriteAllText(dir.File(HuggingFaceCheckpoint.IndexFileName), index);
    }

    [Fact]
    public void SyntheticShardedCheckpoint_Opens()
    {
        using var dir = new TempDir();
        WriteSmallCheckpoint(dir, """{"metadata":{"total_size":16},"weight_map":{"x.weight":"a.safetensors","y.weight":"b.safetensors","y.bias":"b.safetensors"}}""");
        using HuggingFaceCheckpoint c = HuggingFaceCheckpoint.Open(dir.Path);
        Assert.Equal([1f, 2f, 3f, 4f], c.ReadAsSingle("x.weight"));
        Assert.Equal([5f, 6f], c.ReadAsSingle("y.weight"));
        Assert.Equal(["x.weight", "y.weight", "y.bias"], c.TensorNames);
        Assert.Equal(["x.weight", "y.weight"], TargetSelector.Select(c, ["x", "y"]));
    }

    [Theory]
    [InlineData("""{"weight_map":{"x.weight":"a.safetensors","y.weight":"b.safetensors"}}""", "'y.bias' in shard 'b.safetensors' is missing")]
    [InlineData("""{"weight_map":{"x.weight":"a.safetensors","y.weight":"a.safetensors","z":"b.safetensors"}}""", "does not contain it")]
    [InlineData("""{"weight_map":{"x.weight":"a.safetensors","y.weight":"c.safetensors"}}""", "'c.safetensors' does not exist")]
    [InlineData("""{"weight_map":{"x.weight":"../a.safetensors"}}""", "plain file names")]
    [InlineData("""{"metadata":{}}""", "weight_map")]
    [InlineData("""{"weight_map":{"x.weight":1}}""", "must be a string")]
    [InlineData("""not json""", "JSON")]
    public void ShardIndex_Errors(string index, string fragment)
    {
        using var dir = new TempDir();
        WriteSmallCheckpoint(dir, index);
        var ex = Assert.Throws<CheckpointFormatException>(() => HuggingFaceCheckpoint.Open(dir.Path));
        Assert.Contains(fragment, ex.Message);
        Assert.Contains(HuggingFaceCheckpoint.IndexFileName, ex.Message);
    }

    [Fact]
    public void SingleFileCheckpoint_AndMissingFiles()
    {
        using var dir = new TempDir();
        Assert.Throws<CheckpointFormatException>(() => HuggingFaceCheckpoint.Open(dir.Path)); // no config.json
        File.WriteAllText(dir.File("config.json"), """{"model_type":"llama","hidden_size":4,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":10}""");
        var none = Assert.Throws<CheckpointFormatException>(() => HuggingFaceCheckpoint.Open(dir.Path));
        Assert.Contains("neither", none.Message);
        SafeTensorsWriter.Write(dir.File("model.safetensors"), [SafeTensorEntry.FromSingle("w.weight", [2, 3], [1, 2, 3, 4, 5, 6])]);
        using HuggingFaceCheckpoint c = HuggingFaceCheckpoint.Open(dir.Path);
        Assert.False(c.IsSharded);
        Assert.Null(c.IndexMetadata);
        Assert.Equal(["model.safetensors"], c.ShardFiles);
        Assert.Equal([1f, 2f, 3f, 4f, 5f, 6f], c.ReadAsSingle("w.weight"));
        Assert.Equal(["w.weight"], TargetSelector.Select(c, ["w"]));
    }
}
