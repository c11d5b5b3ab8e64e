using System.Globalization;
using System.Text.RegularExpressions;

using LoftQNet.Numerics;

namespace LoftQNet.IO;

/// <summary>
/// Checks a checkpoint's config.json against its tensors, so that a config from another model (40 layers declared,
/// 2 present; a different width or head count) is an error naming config.json and the tensor, instead of a run that
/// silently plans for the wrong model.
/// </summary>
internal static partial class ConfigConsistency
{
    private static readonly HashSet<string> s_llamaFamily = new(StringComparer.Ordinal)
    {
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "granite", "cohere", "internlm2",
    };

    /// <summary>Throws when config.json disagrees with the tensors found.</summary>
    /// <exception cref="CheckpointFormatException">The layer count, hidden size or head counts do not match (the message names config.json, the key and the tensor).</exception>
    public static void Validate(HuggingFaceCheckpoint checkpoint)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ModelConfig c = checkpoint.Config;
        CheckLayerCount(checkpoint, c);
        string hiddenKey = c.Raw.ContainsKey("hidden_size") ? "hidden_size" : "n_embd";
        foreach (string name in checkpoint.TensorNames)
        {
            if (name.EndsWith("embed_tokens.weight", StringComparison.Ordinal) || name.EndsWith(".wte.weight", StringComparison.Ordinal))
            {
                TensorShape shape = checkpoint.LogicalShape(name);
                if (shape.Rank == 2 && shape[1] != c.HiddenSize)
                {
                    throw Mismatch(c, $"{hiddenKey} is {c.HiddenSize}, but the embedding '{name}' has shape {shape} (width {shape[1]})");
                }
            }
        }

        if (s_llamaFamily.Contains(c.ModelType))
        {
            CheckAttention(checkpoint, c);
        }
    }

    private static void CheckLayerCount(HuggingFaceCheckpoint checkpoint, ModelConfig c)
    {
        // Group layer indices by the path before them, so a vision tower's layers do not count as the decoder's.
        var groups = new Dictionary<string, SortedSet<int>>(StringComparer.Ordinal);
        foreach (string name in checkpoint.TensorNames)
        {
            Match m = LayerIndex().Match(name);
            if (m.Success && int.TryParse(m.Groups["index"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int index))
            {
                string group = m.Groups["prefix"].Value;
                if (!groups.TryGetValue(group, out SortedSet<int>? set))
                {
                    groups[group] = set = [];
                }

                set.Add(index);
            }
        }

        if (groups.Count == 0)
        {
            return; // an architecture whose layers are not named "<prefix>.layers.N" or similar: nothing to compare
        }

        if (groups.Values.Any(s => s.Count == c.NumHiddenLayers && s.Max + 1 == c.NumHiddenLayers))
        {
            return;
        }

        (string prefix, SortedSet<int> layers) = groups.MaxBy(g => g.Value.Count);
        string key = c.Raw.ContainsKey("num_hidden_layers") || !c.Raw.ContainsKey("n_layer") ? "num_hidden_layers" : "n_layer";
        string found = layers.Count == layers.Max + 1
            ? $"{layers.Count} layers ('{prefix}0.…' to '{prefix}{layers.Max}.…')"
            : $"layer indices {layers.Min}..{layers.Max} with {layers.Max + 1 - layers.Count} missing under '{prefix}'";
        throw Mismatch(c, $"{key} is {c.NumHiddenLayers}, but the checkpoint has {found}");
    }

    private static void CheckAttention(HuggingFaceCheckpoint checkpoint, ModelConfig c)
    {
        long q = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim;
        string heads = $"num_attention_heads {c.NumAttentionHeads} × head_dim {c.HeadDim}";
        string kvHeads = $"num_key_value_heads {c.NumKeyValueHeads} × head_dim {c.HeadDim}";
        foreach (string name in checkpoint.TensorNames)
        {
            if (!name.Contains(".self_attn.", StringComparison.Ordinal) || !name.EndsWith("_proj.weight", StringComparison.Ordinal))
            {
                continue;
            }

            TensorShape shape = checkpoint.LogicalShape(name);
            if (shape.Rank != 2)
            {
                continue; // reported by target selection when it is a target
            }

            (long rows, long cols, string why) = name[(name.LastIndexOf('.', name.Length - ".weight".Length - 1) + 1)..^".weight".Length] switch
            {
                "q_proj" => (q, c.HiddenSize, heads),
                "k_proj" or "v_proj" => (kv, c.HiddenSize, kvHeads),
                "o_proj" => (c.HiddenSize, q, heads),
                _ => (-1L, -1L, string.Empty),
            };
            if (rows >= 0 && (shape[0] != rows || shape[1] != cols))
            {
                throw Mismatch(c, $"{why} and hidden_size {c.HiddenSize} give '{name}' the shape [{rows}, {cols}], but it has {shape}");
            }
        }
    }

    private static CheckpointFormatException Mismatch(ModelConfig c, string detail) =>
        new($"{c.Source}: {detail}. The config does not describe these weights (a config.json from another model?).");

    // "<prefix>.layers.N." / ".h.N." / ".blocks.N." / ".layer.N." anywhere in the name (prefix ends with the separator before N).
    [GeneratedRegex(@"^(?<prefix>(?:.*\.)?(?:layers|h|blocks|layer)\.)(?<index>[0-9]{1,9})\.", RegexOptions.CultureInvariant)]
    private static partial Regex LayerIndex();
}
