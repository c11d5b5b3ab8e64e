using System.Text.Json;
using System.Text.Json.Nodes;
using LoftQNet.IO;

namespace LoftQNet.TorchSharp.Models;

/// <summary>
/// The shape of a LLaMA-family decoder for <see cref="LlamaForCausalLM"/> (Hugging Face <c>LlamaConfig</c> semantics).
/// </summary>
/// <param name="HiddenSize"><c>hidden_size</c>: the model width.</param>
/// <param name="IntermediateSize"><c>intermediate_size</c>: the SwiGLU MLP width.</param>
/// <param name="NumHiddenLayers"><c>num_hidden_layers</c>: decoder layers.</param>
/// <param name="NumAttentionHeads"><c>num_attention_heads</c>: query heads.</param>
/// <param name="NumKeyValueHeads"><c>num_key_value_heads</c>: key/value heads (grouped-query attention when fewer than the query heads; must divide them).</param>
/// <param name="HeadDim"><c>head_dim</c>: width of one head (even).</param>
/// <param name="VocabSize"><c>vocab_size</c>.</param>
/// <param name="RmsNormEps"><c>rms_norm_eps</c>.</param>
/// <param name="RopeTheta">The rotary base (<c>rope_theta</c> or <c>rope_parameters.rope_theta</c>).</param>
/// <param name="TieWordEmbeddings"><c>tie_word_embeddings</c>: whether <c>lm_head</c> shares the embedding matrix.</param>
/// <param name="SlidingWindow">Mistral's <c>sliding_window</c>, or null (full causal attention). The model refuses sequences longer than the window rather than attend differently from the reference.</param>
public sealed record LlamaModelConfig(
    int HiddenSize,
    int IntermediateSize,
    int NumHiddenLayers,
    int NumAttentionHeads,
    int NumKeyValueHeads,
    int HeadDim,
    int VocabSize,
    double RmsNormEps = 1e-6,
    double RopeTheta = 10000.0,
    bool TieWordEmbeddings = false,
    int? SlidingWindow = null)
{
    private static readonly string[] s_supportedModelTypes = ["llama", "mistral"];

    /// <summary>Builds the config from a parsed Hugging Face <c>config.json</c>.</summary>
    /// <exception cref="CheckpointFormatException">The model type is not LLaMA-family, or the shape is inconsistent (the message names the file and key).</exception>
    /// <exception cref="NotSupportedException">The config asks for something this model does not implement: attention or MLP biases, an activation other than SiLU, or rotary scaling.</exception>
    public static LlamaModelConfig FromModelConfig(ModelConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        string source = config.Source;
        if (Array.IndexOf(s_supportedModelTypes, config.ModelType) < 0)
        {
            throw new CheckpointFormatException($"{source}: model_type '{config.ModelType}' is not supported; LlamaForCausalLM reads {string.Join(" and ", s_supportedModelTypes)}.");
        }

        JsonObject raw = config.Raw;
        if (IsTrue(raw, "attention_bias") || IsTrue(raw, "mlp_bias"))
        {
            throw new NotSupportedException($"{source}: attention_bias / mlp_bias are not supported (the projections have no bias).");
        }

        if (raw["hidden_act"] is JsonValue act && act.GetValueKind() == JsonValueKind.String && act.GetValue<string>() is not ("silu" or "swish"))
        {
            throw new NotSupportedException($"{source}: hidden_act '{act.GetValue<string>()}' is not supported; the MLP is SwiGLU (silu).");
        }

        if (raw["rope_scaling"] is JsonObject)
        {
            throw new NotSupportedException($"{source}: rope_scaling is not supported; only the default rotary embedding is implemented.");
        }

        if (raw["rope_parameters"] is JsonObject rope && rope["rope_type"] is JsonValue ropeType && ropeType.GetValueKind() == JsonValueKind.String && ropeType.GetValue<string>() != "default")
        {
            throw new NotSupportedException($"{source}: rope_parameters.rope_type '{ropeType.GetValue<string>()}' is not supported; only 'default' is implemented.");
        }

        int? slidingWindow = null;
        if (raw["sliding_window"] is JsonValue window && window.GetValueKind() == JsonValueKind.Number)
        {
            slidingWindow = window.TryGetValue(out int w) ? w : (int)Math.Min(int.MaxValue, window.GetValue<double>());
        }

        var result = new LlamaModelConfig(
            config.HiddenSize,
            config.IntermediateSize,
            config.NumHiddenLayers,
            config.NumAttentionHeads,
            config.NumKeyValueHeads,
            config.HeadDim,
            config.VocabSize,
            config.RmsNormEps ?? 1e-6,
            config.RopeTheta ?? 10000.0,
            config.TieWordEmbeddings,
            slidingWindow);
        result.Validate(source);
        return result;
    }

    /// <summary>Reads a Hugging Face <c>config.json</c> file (see <see cref="FromModelConfig"/>).</summary>
    /// <exception cref="CheckpointFormatException">The file is malformed or not a LLaMA-family config.</exception>
    /// <exception cref="NotSupportedException">The config asks for something this model does not implement.</exception>
    public static LlamaModelConfig Load(string configPath) => FromModelConfig(ModelConfig.Load(configPath));

    /// <summary>Checks that the shape is usable; <paramref name="source"/> names the config in the message.</summary>
    /// <exception cref="CheckpointFormatException">A size is zero, the key/value heads do not divide the query heads, or the head width is odd.</exception>
    internal void Validate(string source = "LlamaModelConfig")
    {
        void Positive(int value, string key)
        {
            if (value <= 0)
            {
                throw new CheckpointFormatException($"{source}: {key} must be positive, found {value}.");
            }
        }

        Positive(HiddenSize, "hidden_size");
        Positive(IntermediateSize, "intermediate_size");
        Positive(NumHiddenLayers, "num_hidden_layers");
        Positive(NumAttentionHeads, "num_attention_heads");
        Positive(NumKeyValueHeads, "num_key_value_heads");
        Positive(HeadDim, "head_dim");
        Positive(VocabSize, "vocab_size");
        if (NumAttentionHeads % NumKeyValueHeads != 0)
        {
            throw new CheckpointFormatException($"{source}: num_key_value_heads ({NumKeyValueHeads}) must divide num_attention_heads ({NumAttentionHeads}).");
        }

        if (HeadDim % 2 != 0)
        {
            throw new CheckpointFormatException($"{source}: head_dim ({HeadDim}) must be even for rotary embeddings.");
        }

        if (!(RmsNormEps > 0) || !(RopeTheta > 0))
        {
            throw new CheckpointFormatException($"{source}: rms_norm_eps ({RmsNormEps}) and rope_theta ({RopeTheta}) must be positive.");
        }

        if (SlidingWindow is <= 0)
        {
            throw new CheckpointFormatException($"{source}: sliding_window must be positive or null, found {SlidingWindow}.");
        }
    }

    private static bool IsTrue(JsonObject raw, string key) =>
        raw[key] is JsonValue v && v.GetValueKind() == JsonValueKind.True;
}
