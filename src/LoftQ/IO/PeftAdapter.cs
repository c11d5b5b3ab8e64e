using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using LoftQNet.Numerics;

namespace LoftQNet.IO;

/// <summary>
/// The <c>adapter_config.json</c> of a PEFT LoRA adapter. <see cref="ToJson"/> writes exactly the key set PEFT 0.21
/// writes (keys sorted, two-space indent); the properties cover the fields LoftQ sets, the rest take PEFT's defaults.
/// </summary>
/// <param name="R">LoRA rank r.</param>
/// <param name="LoraAlpha">lora_alpha; PEFT scales B·A by alpha / r (write B already divided by that when alpha ≠ r).</param>
/// <param name="TargetModules">target_modules as PEFT matches them (a module path equal to an entry or ending in "." + entry).</param>
/// <param name="BaseModelNameOrPath">base_model_name_or_path (null allowed).</param>
/// <param name="FanInFanOut">fan_in_fan_out: true when the base layers store weights [in, out] (GPT-2 Conv1D).</param>
public sealed record PeftAdapterConfig(int R, int LoraAlpha, IReadOnlyList<string> TargetModules, string? BaseModelNameOrPath, bool FanInFanOut = false)
{
    /// <summary>task_type (default <c>CAUSAL_LM</c>).</summary>
    public string TaskType { get; init; } = "CAUSAL_LM";

    /// <summary>bias (default <c>none</c>).</summary>
    public string Bias { get; init; } = "none";

    /// <summary>lora_dropout (default 0.0).</summary>
    public double LoraDropout { get; init; }

    /// <summary>inference_mode (default true, as PEFT saves it).</summary>
    public bool InferenceMode { get; init; } = true;

    /// <summary>peft_version written to the file (default <c>0.21.0</c>).</summary>
    public string PeftVersion { get; init; } = "0.21.0";

    /// <summary>revision of the base model (default null).</summary>
    public string? Revision { get; init; }

    /// <summary>modules_to_save (default null).</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>use_rslora (default false).</summary>
    public bool UseRsLora { get; init; }

    /// <summary>The distinct last components of <paramref name="modulePaths"/> in first-seen order (e.g. <c>q_proj</c>), a compact target_modules value.</summary>
    public static IReadOnlyList<string> TargetModulesFor(IEnumerable<string> modulePaths)
    {
        ArgumentNullException.ThrowIfNull(modulePaths);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var result = new List<string>();
        foreach (string path in modulePaths)
        {
            string leaf = path[(path.LastIndexOf('.') + 1)..];
            if (seen.Add(leaf))
            {
                result.Add(leaf);
            }
        }

        return result;
    }

    /// <summary>The adapter_config.json text.</summary>
    /// <exception cref="ArgumentException">r or lora_alpha is not positive, or no target module is given.</exception>
    public string ToJson()
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(R, 1, nameof(R));
        ArgumentOutOfRangeException.ThrowIfLessThan(LoraAlpha, 1, nameof(LoraAlpha));
        if (TargetModules is null || TargetModules.Count == 0)
        {
            throw new ArgumentException("An adapter needs at least one target module.", nameof(TargetModules));
        }

        // Sorted keys, as PEFT's json.dumps(..., sort_keys=True); numbers as Python writes them.
        var fields = new SortedDictionary<string, Action<Utf8JsonWriter>>(StringComparer.Ordinal)
        {
            ["alora_invocation_tokens"] = w => w.WriteNullValue(),
            ["alpha_pattern"] = w => { w.WriteStartObject(); w.WriteEndObject(); },
            ["arrow_config"] = w => w.WriteNullValue(),
            ["auto_mapping"] = w => w.WriteNullValue(),
            ["base_model_name_or_path"] = w => WriteNullableString(w, BaseModelNameOrPath),
            ["bias"] = w => w.WriteStringValue(Bias),
            ["corda_config"] = w => w.WriteNullValue(),
            ["ensure_weight_tying"] = w => w.WriteBooleanValue(false),
            ["eva_config"] = w => w.WriteNullValue(),
            ["exclude_modules"] = w => w.WriteNullValue(),
            ["fan_in_fan_out"] = w => w.WriteBooleanValue(FanInFanOut),
            ["inference_mode"] = w => w.WriteBooleanValue(InferenceMode),
            ["init_lora_weights"] = w => w.WriteBooleanValue(true),
            ["kasa_config"] = w => w.WriteNullValue(),
            ["layer_replication"] = w => w.WriteNullValue(),
            ["layers_pattern"] = w => w.WriteNullValue(),
            ["layers_to_transform"] = w => w.WriteNullValue(),
            ["loftq_config"] = w => { w.WriteStartObject(); w.WriteEndObject(); },
            ["lora_alpha"] = w => w.WriteNumberValue(LoraAlpha),
            ["lora_bias"] = w => w.WriteBooleanValue(false),
            ["lora_dropout"] = w => w.WriteRawValue(PythonFloat(LoraDropout)),
            ["lora_ga_config"] = w => w.WriteNullValue(),
            ["megatron_config"] = w => w.WriteNullValue(),
            ["megatron_core"] = w => w.WriteStringValue("megatron.core"),
            ["modules_to_save"] = w => WriteNullableList(w, ModulesToSave),
            ["monteclora_config"] = w => w.WriteNullValue(),
            ["peft_type"] = w => w.WriteStringValue("LORA"),
            ["peft_version"] = w => w.WriteStringValue(PeftVersion),
            ["qalora_group_size"] = w => w.WriteNumberValue(16),
            ["r"] = w => w.WriteNumberValue(R),
            ["rank_pattern"] = w => { w.WriteStartObject(); w.WriteEndObject(); },
            ["revision"] = w => WriteNullableString(w, Revision),
            ["target_modules"] = w => WriteNullableList(w, TargetModules),
            ["target_parameters"] = w => w.WriteNullValue(),
            ["task_type"] = w => w.WriteStringValue(TaskType),
            ["trainable_token_indices"] = w => w.WriteNullValue(),
            ["use_bdlora"] = w => w.WriteNullValue(),
            ["use_dora"] = w => w.WriteBooleanValue(false),
            ["use_qalora"] = w => w.WriteBooleanValue(false),
            ["use_rslora"] = w => w.WriteBooleanValue(UseRsLora),
            ["velora_config"] = w => w.WriteNullValue(),
        };
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            writer.WriteStartObject();
            foreach ((string key, Action<Utf8JsonWriter> write) in fields)
            {
                writer.WritePropertyName(key);
                write(writer);
            }

            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(stream.ToArray());
    }

    private static void WriteNullableString(Utf8JsonWriter w, string? value)
    {
        if (value is null)
        {
            w.WriteNullValue();
        }
        else
        {
            w.WriteStringValue(value);
        }
    }

    private static void WriteNullableList(Utf8JsonWriter w, IReadOnlyList<string>? values)
    {
        if (values is null)
        {
            w.WriteNullValue();
            return;
        }

        w.WriteStartArray();
        foreach (string v in values)
        {
            w.WriteStringValue(v);
        }

        w.WriteEndArray();
    }

    /// <summary>Formats a double as Python's repr does for the values that occur here (0.0, 0.05, 1e-05).</summary>
    internal static string PythonFloat(double value)
    {
        if (!double.IsFinite(value))
        {
            throw new ArgumentException($"lora_dropout must be finite, got {value}.", nameof(value));
        }

        string s = value.ToString("R", CultureInfo.InvariantCulture);
        int e = s.IndexOf('E', StringComparison.Ordinal);
        if (e >= 0)
        {
            string mantissa = s[..e];
            int exponent = int.Parse(s[(e + 1)..], CultureInfo.InvariantCulture);
            return $"{mantissa}e{(exponent < 0 ? "-" : "+")}{Math.Abs(exponent):00}";
        }

        return s.Contains('.', StringComparison.Ordinal) ? s : s + ".0";
    }
}

/// <summary>The LoRA factors of one target module.</summary>
/// <param name="ModulePath">The module path in the base model, e.g. <c>model.layers.0.self_attn.q_proj</c>.</param>
/// <param name="A">lora_A, r × in.</param>
/// <param name="B">lora_B, out × r.</param>
public sealed record LoraTensors(string ModulePath, Matrix A, Matrix B);

/// <summary>
/// Writes a PEFT LoRA adapter directory: <c>adapter_config.json</c> and <c>adapter_model.safetensors</c> with keys
/// <c>base_model.model.&lt;module path&gt;.lora_A.weight</c> [r, in] and <c>.lora_B.weight</c> [out, r] in F32, sorted
/// ordinally, metadata <c>{"format": "pt"}</c> — the layout PEFT 0.21 itself saves. Tensors are written as given:
/// when lora_alpha ≠ r, pass B already multiplied by r / alpha so that Q + (alpha / r)·B·A reproduces W.
/// </summary>
public static class PeftAdapterWriter
{
    /// <summary>The adapter weights file name.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>The adapter config file name.</summary>
    public const string ConfigFileName = "adapter_config.json";

    /// <summary>The prefix PEFT puts before a module path in adapter keys.</summary>
    public const string KeyPrefix = "base_model.model.";

    /// <summary>Writes the adapter into <paramref name="adapterDirectory"/> (created if needed; both files are replaced atomically).</summary>
    /// <exception cref="ArgumentException">A factor's shape disagrees with r or with its partner, a module appears twice, or there are no layers.</exception>
    public static void Write(string adapterDirectory, PeftAdapterConfig config, IEnumerable<LoraTensors> layers)
    {
        ArgumentException.ThrowIfNullOrEmpty(adapterDirectory);
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(layers);
        string json = config.ToJson();
        var entries = new List<SafeTensorEntry>();
        var modules = new HashSet<string>(StringComparer.Ordinal);
        foreach (LoraTensors layer in layers)
        {
            ArgumentNullException.ThrowIfNull(layer, nameof(layers));
            ArgumentException.ThrowIfNullOrEmpty(layer.ModulePath, nameof(layers));
            if (!modules.Add(layer.ModulePath))
            {
                throw new ArgumentException($"Module '{layer.ModulePath}' is given twice.", nameof(layers));
            }

            if (layer.A.Rows != config.R || layer.B.Columns != config.R)
            {
                throw new ArgumentException($"Module '{layer.ModulePath}': lora_A must be [r={config.R}, in] and lora_B [out, r={config.R}], got A {layer.A.Shape} and B {layer.B.Shape}.", nameof(layers));
            }

            entries.Add(FromMatrix(KeyPrefix + layer.ModulePath + ".lora_A.weight", layer.A));
            entries.Add(FromMatrix(KeyPrefix + layer.ModulePath + ".lora_B.weight", layer.B));
        }

        if (entries.Count == 0)
        {
            throw new ArgumentException("An adapter needs at least one layer.", nameof(layers));
        }

        entries.Sort(static (a, b) => string.CompareOrdinal(a.Name, b.Name));
        Directory.CreateDirectory(adapterDirectory);
        SafeTensorsWriter.Write(Path.Combine(adapterDirectory, WeightsFileName), entries, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(adapterDirectory, ConfigFileName), json);
    }

    private static SafeTensorEntry FromMatrix(string name, Matrix m)
    {
        long[] shape = [m.Rows, m.Columns];
        SafeTensorsWriter.CheckFinite(name, shape, m.Span); // never write NaN or ±∞ into an adapter
        return new(name, SafeTensorDType.F32, shape, MemoryMarshal.AsBytes(m.Span).ToArray());
    }
}
