using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>Writes a tiny llama-shaped Hugging Face checkpoint (config.json + model.safetensors) for pipeline tests.</summary>
internal static class SyntheticLlama
{
    public const int Hidden = 64, Intermediate = 128, Heads = 4, Vocab = 256;

    /// <summary>
    /// Writes the model to <paramref name="directory"/>. <paramref name="value"/> gives element i of a tensor
    /// (default: small deterministic pseudo-random values, norms 1); <paramref name="editConfig"/> may change the
    /// config before it is written; <paramref name="extra"/> adds tensors.
    /// </summary>
    public static string Write(
        string directory, int layers = 2, SafeTensorDType dtype = SafeTensorDType.F32,
        Func<string, long, float>? value = null, Action<JsonObject>? editConfig = null,
        IEnumerable<(string Name, long[] Shape)>? extra = null)
    {
        Directory.CreateDirectory(directory);
        int headDim = Hidden / Heads;
        var shapes = new List<(string Name, long[] Shape)> { ("model.embed_tokens.weight", [Vocab, Hidden]) };
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            shapes.Add((p + "input_layernorm.weight", [Hidden]));
            shapes.Add((p + "self_attn.q_proj.weight", [Heads * headDim, Hidden]));
            shapes.Add((p + "self_attn.k_proj.weight", [Heads * headDim, Hidden]));
            shapes.Add((p + "self_attn.v_proj.weight", [Heads * headDim, Hidden]));
            shapes.Add((p + "self_attn.o_proj.weight", [Hidden, Heads * headDim]));
            shapes.Add((p + "post_attention_layernorm.weight", [Hidden]));
            shapes.Add((p + "mlp.gate_proj.weight", [Intermediate, Hidden]));
            shapes.Add((p + "mlp.up_proj.weight", [Intermediate, Hidden]));
            shapes.Add((p + "mlp.down_proj.weight", [Hidden, Intermediate]));
        }

        shapes.Add(("model.norm.weight", [Hidden]));
        shapes.Add(("lm_head.weight", [Vocab, Hidden]));
        shapes.AddRange(extra ?? []);

        var entries = new List<SafeTensorEntry>();
        foreach ((string name, long[] shape) in shapes)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            var values = new float[n];
            var random = new Random(name.Aggregate(17, (h, c) => (h * 31) + c));
            for (long i = 0; i < n; i++)
            {
                values[i] = value?.Invoke(name, i)
                    ?? (name.EndsWith("norm.weight", StringComparison.Ordinal) ? 1f : (float)((random.NextDouble() - 0.5) * 0.1));
            }

            // F32 is written raw, so tests can plant NaN or infinity in the input.
            entries.Add(dtype == SafeTensorDType.F32
                ? SafeTensorEntry.FromBytes(name, dtype, TensorShape.FromInt64(shape), System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray())
                : SafeTensorEntry.FromSingle(name, TensorShape.FromInt64(shape), values, dtype));
        }

        SafeTensorsWriter.Write(Path.Combine(directory, HuggingFaceCheckpoint.SingleFileName), entries);
        var config = new JsonObject
        {
            ["model_type"] = "llama",
            ["hidden_size"] = Hidden,
            ["intermediate_size"] = Intermediate,
            ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = Heads,
            ["vocab_size"] = Vocab,
            ["rms_norm_eps"] = 1e-5,
            ["rope_theta"] = 10000.0,
            ["dtype"] = dtype == SafeTensorDType.F16 ? "float16" : dtype == SafeTensorDType.BF16 ? "bfloat16" : "float32",
        };
        editConfig?.Invoke(config);
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString());
        return directory;
    }

    /// <summary>Small, fast options: NF2, r = 4, one pass, q_proj only.</summary>
    public static LoftQOptions QuickOptions => new() { Bits = 2, Rank = 4, Iterations = 1, Targets = ["q_proj"] };
}

/// <summary>An <see cref="IProgress{T}"/> that calls an action synchronously on the reporting thread.</summary>
internal sealed class SyncProgress(Action<LoftQProgress> action) : IProgress<LoftQProgress>
{
    public void Report(LoftQProgress value) => action(value);
}
