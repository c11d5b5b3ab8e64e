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

        entries.Sort(static (a, b) => string.CompareOrdinal(a.Info.Name, b.Info.Name));
        Directory.CreateDirectory(adapterDirectory);
        SafeTensorsWriter.Write(Path.Combine(adapterDirectory, WeightsFileName), entries, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(adapterDirectory, ConfigFileName), json);
    }

    private static SafeTensorEntry FromMatrix(string name, Matrix m)
    {
        TensorShape shape = [m.Rows, m.Columns];
        SafeTensorsWriter.CheckFinite(name, shape, m.Span); // never write NaN or ±∞ into an adapter
        return SafeTensorEntry.FromBytes(name, SafeTensorDType.F32, shape, MemoryMarshal.AsBytes(m.Span).ToArray());
    }
}

/// <summary>A PEFT LoRA adapter read from disk: its config and the factors of every module, as stored.</summary>
/// <param name="Config">adapter_config.json's fields LoftQ uses.</param>
/// <param name="Layers">lora_A [r, in] and lora_B [out, r] per module path, in file order.</param>
public sealed record PeftAdapter(PeftAdapterConfig Config, IReadOnlyList<LoraTensors> Layers) : IDisposable
{
    /// <summary>PEFT's scaling of B·A: lora_alpha / r (rsLoRA: lora_alpha / √r).</summary>
    public double Scaling => Config.UseRsLora ? Config.LoraAlpha / Math.Sqrt(Config.R) : (double)Config.LoraAlpha / Config.R;

    /// <summary>Returns the factors' memory to the pool.</summary>
    public void Dispose()
    {
        foreach (LoraTensors layer in Layers)
        {
            layer.A.Dispose();
            layer.B.Dispose();
        }
    }
}

/// <summary>Reads a PEFT LoRA adapter directory (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c>), the layout <see cref="PeftAdapterWriter"/> and PEFT write.</summary>
public static class PeftAdapterReader
{
    /// <summary>Reads the adapter in <paramref name="adapterDirectory"/>.</summary>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="FileNotFoundException">A file of the adapter is missing.</exception>
    /// <exception cref="InvalidDataException">The config is not a LoRA config, a key is not PEFT's, an A has no B, or a factor's shape disagrees with r (the message names the file and tensor).</exception>
    public static PeftAdapter Read(string adapterDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(adapterDirectory);
        if (!Directory.Exists(adapterDirectory))
        {
            throw new DirectoryNotFoundException($"Adapter directory '{adapterDirectory}' does not exist.");
        }

        string configPath = Path.Combine(adapterDirectory, PeftAdapterWriter.ConfigFileName);
        string weightsPath = Path.Combine(adapterDirectory, PeftAdapterWriter.WeightsFileName);
        PeftAdapterConfig config = ReadConfig(configPath);
        if (!File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"The adapter has no weights file '{weightsPath}'.", weightsPath);
        }

        using SafeTensorsFile file = SafeTensorsFile.Open(weightsPath);
        var layers = new List<LoraTensors>();
        try
        {
            foreach (SafeTensorInfo info in file.Tensors)
            {
                const string ASuffix = ".lora_A.weight", BSuffix = ".lora_B.weight";
                if (info.Name.EndsWith(BSuffix, StringComparison.Ordinal))
                {
                    string aName = info.Name[..^BSuffix.Length] + ASuffix;
                    if (!file.Contains(aName))
                    {
                        throw new InvalidDataException($"'{weightsPath}': '{info.Name}' has no partner '{aName}'.");
                    }

                    continue;
                }

                if (!info.Name.EndsWith(ASuffix, StringComparison.Ordinal) || !info.Name.StartsWith(PeftAdapterWriter.KeyPrefix, StringComparison.Ordinal))
                {
                    throw new InvalidDataException($"'{weightsPath}': tensor '{info.Name}' is not a LoRA factor named '{PeftAdapterWriter.KeyPrefix}<module>.lora_A.weight' / '.lora_B.weight'.");
                }

                string module = info.Name[PeftAdapterWriter.KeyPrefix.Length..^ASuffix.Length];
                string bName = PeftAdapterWriter.KeyPrefix + module + BSuffix;
                if (!file.Contains(bName))
                {
                    throw new InvalidDataException($"'{weightsPath}': '{info.Name}' has no partner '{bName}'.");
                }

                SafeTensorInfo bInfo = file.GetInfo(bName);
                if (info.Rank != 2 || bInfo.Rank != 2 || info.Shape[0] != config.R || bInfo.Shape[1] != config.R)
                {
                    throw new InvalidDataException($"'{weightsPath}': module '{module}' has lora_A {info.ShapeString} and lora_B {bInfo.ShapeString}; r = {config.R} needs [r, in] and [out, r].");
                }

                var a = Matrix.Uninitialized(config.R, checked((int)info.Shape[1]));
                var b = Matrix.Uninitialized(checked((int)bInfo.Shape[0]), config.R);
                layers.Add(new LoraTensors(module, a, b));
                file.ReadAsSingle(info.Name, a.Span);
                file.ReadAsSingle(bName, b.Span);
            }
        }
        catch
        {
            foreach (LoraTensors layer in layers)
            {
                layer.A.Dispose();
                layer.B.Dispose();
            }

            throw;
        }

        if (layers.Count == 0)
        {
            throw new InvalidDataException($"'{weightsPath}' holds no LoRA factors.");
        }

        return new PeftAdapter(config, layers);
    }

    /// <summary>Reads adapter_config.json.</summary>
    /// <exception cref="FileNotFoundException">The file is missing.</exception>
    /// <exception cref="InvalidDataException">It is not a LoRA config with a positive integer r and a positive lora_alpha.</exception>
    public static PeftAdapterConfig ReadConfig(string configPath)
    {
        ArgumentException.ThrowIfNullOrEmpty(configPath);
        if (!File.Exists(configPath))
        {
            throw new FileNotFoundException($"The adapter has no config '{configPath}'.", configPath);
        }

        System.Text.Json.Nodes.JsonObject json;
        try
        {
            json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(configPath)) as System.Text.Json.Nodes.JsonObject
                ?? throw new InvalidDataException($"'{configPath}' is not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{configPath}' is not valid JSON: {e.Message}", e);
        }

        try
        {
            string? type = json["peft_type"]?.GetValue<string>();
            if (type is not null && type != "LORA")
            {
                throw new InvalidDataException($"'{configPath}': peft_type is '{type}', not 'LORA'.");
            }

            int r = json["r"]?.GetValue<int>() ?? throw new InvalidDataException($"'{configPath}' has no \"r\".");
            double alpha = json["lora_alpha"]?.GetValue<double>() ?? r;
            if (r < 1 || !(alpha > 0) || alpha != Math.Floor(alpha))
            {
                throw new InvalidDataException($"'{configPath}': r must be a positive integer and lora_alpha a positive integer, got r = {r}, lora_alpha = {alpha}.");
            }

            IReadOnlyList<string> targets = json["target_modules"] switch
            {
                System.Text.Json.Nodes.JsonArray array => array.Select(n => n!.GetValue<string>()).ToList(),
                System.Text.Json.Nodes.JsonValue value => [value.GetValue<string>()],
                _ => [],
            };
            return new PeftAdapterConfig(r, (int)alpha, targets, json["base_model_name_or_path"]?.GetValue<string>(), json["fan_in_fan_out"]?.GetValue<bool>() ?? false)
            {
                LoraDropout = json["lora_dropout"]?.GetValue<double>() ?? 0,
                UseRsLora = json["use_rslora"]?.GetValue<bool>() ?? false,
                TaskType = json["task_type"]?.GetValue<string>() ?? "CAUSAL_LM",
            };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"'{configPath}': a field has the wrong type ({e.Message}).", e);
        }
    }
}
