using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>GPT-2 stores its Conv1D weights as [in, out]: the pipeline must optimise Wᵀ and write PEFT's fan_in_fan_out layout.</summary>
public sealed class Gpt2PipelineTests
{
    private const int Embd = 64, Layers = 2, Vocab = 50;

    [Fact]
    public void Conv1D_weights_are_optimised_in_out_by_in_orientation_and_written_back_transposed()
    {
        using var dir = new TempDirectory();
        string model = dir.Combine("gpt2");
        Dictionary<string, (long[] Shape, float[] Values)> tensors = WriteTinyGpt2(model);
        string output = dir.Combine("out");
        LoftQReport report = LoftQ.Initialize(model, output, new LoftQOptions { Bits = 4, Rank = 8, Iterations = 3 });

        Assert.Equal(4 * Layers, report.Layers.Count);
        var config = (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(output, "loftq_init", "adapter_config.json")))!;
        Assert.True(config["fan_in_fan_out"]!.GetValue<bool>());
        Assert.Equal(["c_attn", "c_fc", "c_proj"], config["target_modules"]!.AsArray().Select(n => n!.GetValue<string>()).Order(StringComparer.Ordinal));

        using SafeTensorsFile backbone = SafeTensorsFile.Open(Path.Combine(output, "model.safetensors"));
        using SafeTensorsFile adapter = SafeTensorsFile.Open(Path.Combine(output, "loftq_init", "adapter_model.safetensors"));
        foreach (LayerReport layer in report.Layers)
        {
            (long[] storedShape, float[] stored) = tensors[layer.Name];
            int inF = (int)storedShape[0], outF = (int)storedShape[1];
            Assert.Equal([outF, inF], layer.Shape);
            Assert.Equal(TensorShape.FromInt64(storedShape), backbone.GetInfo(layer.Name).Shape);
            string module = layer.Name[..^".weight".Length];
            SafeTensorInfo a = adapter.GetInfo($"base_model.model.{module}.lora_A.weight");
            SafeTensorInfo b = adapter.GetInfo($"base_model.model.{module}.lora_B.weight");
            Assert.Equal<TensorShape>([8, inF], a.Shape);
            Assert.Equal<TensorShape>([outF, 8], b.Shape);

            // In PyTorch's orientation W = storedᵀ (out×in); the backbone is stored the same way.
            float[] w = TransposeOf(stored, inF, outF);
            float[] q = TransposeOf(backbone.ReadAsSingle(layer.Name), inF, outF);
            double err = CheckpointPipelineTests.ResidualNorm(w, q, adapter.ReadAsSingle(b.Name), adapter.ReadAsSingle(a.Name), outF, inF, 8, 1f)
                / CheckpointPipelineTests.Norm(w);
            Assert.Equal(layer.RelativeError, err, 4);
            Assert.True(layer.RelativeError < layer.QLoRAError);
        }

        Assert.Equal(tensors["transformer.wte.weight"].Values, backbone.ReadAsSingle("transformer.wte.weight"));
    }

    [Fact]
    public void Bnb_format_is_refused_for_fan_in_fan_out_models()
    {
        using var dir = new TempDirectory();
        string model = dir.Combine("gpt2");
        WriteTinyGpt2(model);
        ArgumentException e = Assert.Throws<ArgumentException>(() =>
            LoftQ.Initialize(model, dir.Combine("out"), new LoftQOptions { Bits = 4, Rank = 8, Format = OutputFormat.BitsAndBytesNf4 }));
        Assert.Contains("gpt2", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dir.Combine("out")));
    }

    [Fact]
    public void A_non_finite_weight_is_reported_with_its_tensor_and_file_and_leaves_no_output()
    {
        using var dir = new TempDirectory();
        string model = dir.Combine("gpt2");
        WriteTinyGpt2(model, poison: "transformer.h.1.mlp.c_fc.weight");
        ArgumentException e = Assert.Throws<ArgumentException>(() =>
            LoftQ.Initialize(model, dir.Combine("out"), new LoftQOptions { Bits = 4, Rank = 8, Iterations = 2 }));
        Assert.Contains("transformer.h.1.mlp.c_fc.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("model.safetensors", e.Message, StringComparison.Ordinal);
        Assert.Contains("NaN", e.Message, StringComparison.Ordinal);
        Assert.Equal(["gpt2"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    private static float[] TransposeOf(float[] values, int rows, int cols)
    {
        var t = new float[values.Length];
        MatrixKernels.Transpose(values, rows, cols, t);
        return t;
    }

    private static Dictionary<string, (long[] Shape, float[] Values)> WriteTinyGpt2(string directory, string? poison = null)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "config.json"),
            $$"""{"model_type": "gpt2", "n_embd": {{Embd}}, "n_layer": {{Layers}}, "n_head": 2, "vocab_size": {{Vocab}}, "layer_norm_epsilon": 1e-5}""");
        var tensors = new Dictionary<string, (long[], float[])>(StringComparer.Ordinal);
        int seed = 1;
        void Add(string name, params long[] shape)
        {
            var values = new float[shape.Aggregate(1L, (x, y) => x * y)];
            Gaussian.Fill(values, seed++, 0.05f);
            if (name == poison)
            {
                values[values.Length / 3] = float.NaN;
            }

            tensors[name] = (shape, values);
        }

        Add("transformer.wte.weight", Vocab, Embd);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"transformer.h.{l}.";
            Add(p + "ln_1.weight", Embd);
            Add(p + "attn.c_attn.weight", Embd, 3 * Embd);
            Add(p + "attn.c_proj.weight", Embd, Embd);
            Add(p + "mlp.c_fc.weight", Embd, 4 * Embd);
            Add(p + "mlp.c_proj.weight", 4 * Embd, Embd);
        }

        SafeTensorsWriter.Write(
            Path.Combine(directory, "model.safetensors"),
            tensors.Select(kv => SafeTensorEntry.FromBytes(kv.Key, SafeTensorDType.F32, TensorShape.FromInt64(kv.Value.Item1), MemoryMarshal.AsBytes(kv.Value.Item2.AsSpan()).ToArray())).ToList());
        return tensors;
    }
}
