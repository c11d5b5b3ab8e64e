using System.Text.Json;
using System.Text.Json.Nodes;

namespace LoftQNet.IO;

/// <summary>
/// The parts of a Hugging Face <c>config.json</c> the library needs, plus the raw JSON for round-tripping.
/// Llama-family keys are read directly; GPT-2 style aliases (<c>n_embd</c>, <c>n_layer</c>, <c>n_head</c>,
/// <c>n_inner</c>, <c>layer_norm_epsilon</c>) are understood too.
/// </summary>
public sealed class ModelConfig
{
    private static readonly string[] s_llamaTargets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    private static readonly Dictionary<string, string[]> s_targetsByModelType = new(StringComparer.Ordinal)
    {
        ["gpt2"] = ["c_attn", "c_proj", "c_fc"],
        ["gpt_neox"] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        ["falcon"] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        ["bloom"] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        ["opt"] = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        ["phi"] = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
        ["phi3"] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    };

    private ModelConfig(JsonObject raw, string source)
    {
        Raw = raw;
        Source = source;
        ModelType = RequireString(raw, source, "model_type");
        bool gpt2Style = ModelType == "gpt2" || (!raw.ContainsKey("hidden_size") && raw.ContainsKey("n_embd"));
        HiddenSize = RequireInt(raw, source, gpt2Style ? "n_embd" : "hidden_size");
        NumHiddenLayers = RequireInt(raw, source, gpt2Style ? "n_layer" : "num_hidden_layers");
        NumAttentionHeads = RequireInt(raw, source, gpt2Style ? "n_head" : "num_attention_heads");
        VocabSize = RequireInt(raw, source, "vocab_size");
        IntermediateSize = gpt2Style
            ? OptionalInt(raw, source, "n_inner") ?? (HiddenSize <= int.MaxValue / 4
                ? 4 * HiddenSize
                : throw new CheckpointFormatException($"{source}: 'n_embd' is {HiddenSize}, too large for the default 'n_inner' (4 × n_embd) to fit in an int."))
            : RequireInt(raw, source, "intermediate_size");
        NumKeyValueHeads = OptionalInt(raw, source, "num_key_value_heads") ?? NumAttentionHeads;
        HeadDim = OptionalInt(raw, source, "head_dim") ?? (NumAttentionHeads > 0 ? HiddenSize / NumAttentionHeads : 0);
        RmsNormEps = OptionalDouble(raw, source, "rms_norm_eps") ?? OptionalDouble(raw, source, "layer_norm_epsilon") ?? OptionalDouble(raw, source, "layer_norm_eps");
        RopeTheta = OptionalDouble(raw, source, "rope_theta");
        if (RopeTheta is null && raw["rope_parameters"] is JsonNode rope)
        {
            if (rope is not JsonObject ropeObject)
            {
                throw new CheckpointFormatException($"{source}: 'rope_parameters' must be an object.");
            }

            RopeTheta = OptionalDouble(ropeObject, source, "rope_theta", "rope_parameters.rope_theta");
        }

        TieWordEmbeddings = OptionalBool(raw, source, "tie_word_embeddings") ?? (ModelType == "gpt2");
        TorchDType = OptionalString(raw, source, "dtype") ?? OptionalString(raw, source, "torch_dtype");
        FanInFanOut = ModelType == "gpt2";
        DefaultTargetModules = s_targetsByModelType.TryGetValue(ModelType, out string[]? t) ? t : s_llamaTargets;
    }

    /// <summary>The parsed JSON, kept for writing the config back (with additions such as a quantization config).</summary>
    public JsonObject Raw { get; }

    /// <summary>Where the config came from (a path or a description), used in error messages.</summary>
    public string Source { get; }

    /// <summary><c>model_type</c>, e.g. <c>llama</c>.</summary>
    public string ModelType { get; }

    /// <summary><c>hidden_size</c> (<c>n_embd</c> for GPT-2).</summary>
    public int HiddenSize { get; }

    /// <summary><c>intermediate_size</c> (<c>n_inner</c> or 4·hidden for GPT-2).</summary>
    public int IntermediateSize { get; }

    /// <summary><c>num_hidden_layers</c> (<c>n_layer</c>).</summary>
    public int NumHiddenLayers { get; }

    /// <summary><c>num_attention_heads</c> (<c>n_head</c>).</summary>
    public int NumAttentionHeads { get; }

    /// <summary><c>num_key_value_heads</c>, defaulting to the attention head count.</summary>
    public int NumKeyValueHeads { get; }

    /// <summary><c>head_dim</c>, defaulting to hidden / heads.</summary>
    public int HeadDim { get; }

    /// <summary><c>vocab_size</c>.</summary>
    public int VocabSize { get; }

    /// <summary><c>rms_norm_eps</c> (or <c>layer_norm_epsilon</c>); null when absent.</summary>
    public double? RmsNormEps { get; }

    /// <summary>Rotary base: top-level <c>rope_theta</c>, or <c>rope_parameters.rope_theta</c> (transformers 5); null when absent.</summary>
    public double? RopeTheta { get; }

    /// <summary><c>tie_word_embeddings</c> (default false, true for GPT-2).</summary>
    public bool TieWordEmbeddings { get; }

    /// <summary><c>dtype</c> or <c>torch_dtype</c>, e.g. <c>bfloat16</c>; null when absent.</summary>
    public string? TorchDType { get; }

    /// <summary>
    /// The modules LoftQ targets by default: the seven llama projections (q/k/v/o, gate/up/down) for llama,
    /// mistral, qwen2/3, gemma and every model type not listed below; <c>c_attn c_proj c_fc</c> for gpt2;
    /// fused names for gpt_neox/falcon/bloom/phi3; opt's and phi's own names.
    /// </summary>
    public IReadOnlyList<string> DefaultTargetModules { get; }

    /// <summary>Whether linear weights are stored [in, out] (GPT-2's Conv1D; PEFT's <c>fan_in_fan_out</c>).</summary>
    public bool FanInFanOut { get; }

    /// <summary>Reads <paramref name="path"/> (a config.json file).</summary>
    /// <exception cref="CheckpointFormatException">Bad JSON, or a required key is missing or ill-typed (the message names the file and key).</exception>
    public static ModelConfig Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses config JSON text; <paramref name="source"/> names it in errors.</summary>
    /// <exception cref="CheckpointFormatException">Bad JSON (including a key named twice in one object or an unpaired surrogate escape), or a required key is missing or ill-typed.</exception>
    public static ModelConfig Parse(string json, string source = "config.json")
    {
        ArgumentNullException.ThrowIfNull(json);
        byte[] utf8 = System.Text.Encoding.UTF8.GetBytes(json);
        JsonInputCheck.Check(utf8, source, static message => new CheckpointFormatException(message));
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(utf8);
        }
        catch (JsonException ex)
        {
            throw new CheckpointFormatException($"{source}: not valid JSON ({ex.Message}).", ex);
        }

        return node is JsonObject obj
            ? new ModelConfig(obj, source)
            : throw new CheckpointFormatException($"{source}: the top level must be a JSON object.");
    }

    /// <summary>The config as indented JSON (a deep copy of <see cref="Raw"/>, optionally with <c>quantization_config</c> set).</summary>
    public string ToJson(JsonObject? quantizationConfig = null)
    {
        var copy = (JsonObject)Raw.DeepClone();
        if (quantizationConfig is not null)
        {
            copy["quantization_config"] = quantizationConfig.DeepClone();
        }

        return copy.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static string RequireString(JsonObject o, string source, string key) =>
        OptionalString(o, source, key) ?? throw new CheckpointFormatException($"{source}: required key '{key}' is missing.");

    private static int RequireInt(JsonObject o, string source, string key) =>
        OptionalInt(o, source, key) ?? throw new CheckpointFormatException($"{source}: required key '{key}' is missing.");

    private static string? OptionalString(JsonObject o, string source, string key)
    {
        JsonNode? n = o[key];
        if (n is null)
        {
            return null;
        }

        return n is JsonValue v && v.GetValueKind() == JsonValueKind.String
            ? v.GetValue<string>()
            : throw new CheckpointFormatException($"{source}: key '{key}' must be a string, found {n.GetValueKind()}.");
    }

    private static int? OptionalInt(JsonObject o, string source, string key)
    {
        JsonNode? n = o[key];
        if (n is null)
        {
            return null;
        }

        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out JsonElement e) && e.TryGetInt32(out int i) && i >= 0)
        {
            return i;
        }

        if (n is JsonValue v2 && v2.TryGetValue(out int direct) && direct >= 0)
        {
            return direct;
        }

        throw new CheckpointFormatException($"{source}: key '{key}' must be a non-negative integer, found {n.ToJsonString()}.");
    }

    private static double? OptionalDouble(JsonObject o, string source, string key, string? displayKey = null)
    {
        JsonNode? n = o[key];
        if (n is null)
        {
            return null;
        }

        if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number)
        {
            if (v.TryGetValue(out JsonElement e))
            {
                return e.GetDouble();
            }

            if (v.TryGetValue(out double d))
            {
                return d;
            }
        }

        throw new CheckpointFormatException($"{source}: key '{displayKey ?? key}' must be a number, found {n.ToJsonString()}.");
    }

    private static bool? OptionalBool(JsonObject o, string source, string key)
    {
        JsonNode? n = o[key];
        if (n is null)
        {
            return null;
        }

        return n is JsonValue v && v.GetValueKind() is JsonValueKind.True or JsonValueKind.False
            ? v.GetValueKind() == JsonValueKind.True
            : throw new CheckpointFormatException($"{source}: key '{key}' must be true or false, found {n.ToJsonString()}.");
    }
}
