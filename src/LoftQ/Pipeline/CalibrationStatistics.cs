using System.Globalization;
using System.Security.Cryptography;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Optimization;

namespace LoftQNet.Pipeline;

/// <summary>What a LoftQ run minimises for each target.</summary>
public enum LoftQObjective
{
    /// <summary>‖W − Q − B·A‖_F, the paper's objective (no calibration data).</summary>
    Weight,

    /// <summary>
    /// ‖X·(W − Q − B·A)ᵀ‖_F over the target's calibration inputs X, through their full second-moment matrix
    /// (<see cref="InputWeighting.FromSecondMoments"/>).
    /// </summary>
    Activation,

    /// <summary>The same with only each input channel's second moment (<see cref="InputWeighting.Diagonal"/>): cheap, coarser.</summary>
    ActivationDiagonal,
}

/// <summary>
/// The second moments of every projection's inputs, H = XᵀX / tokens, collected from a LLaMA-family model's own
/// float32 forward pass over windows of a calibration text: what the activation-aware objectives
/// (<see cref="LoftQObjective"/>) need. Projections that read the same input (q/k/v, gate/up) share one matrix.
/// </summary>
/// <remarks>
/// Collection streams one window at a time: memory is the model, one window's activations and the statistics
/// themselves (per decoder layer, three hidden×hidden matrices and one intermediate×intermediate; with
/// <c>diagonalOnly</c> just their diagonals, which is what a 7B-sized model should use). <see cref="Save"/> and
/// <see cref="Load"/> keep them in a safetensors file, with the model's and the text's fingerprints, so a later run
/// can reuse them.
/// </remarks>
public sealed class CalibrationStatistics
{
    private const string FormatName = "loftq-calibration/1";

    private static readonly (string Module, LlamaInput Input)[] LlamaModules =
    [
        ("self_attn.q_proj", LlamaInput.Attention), ("self_attn.k_proj", LlamaInput.Attention), ("self_attn.v_proj", LlamaInput.Attention),
        ("self_attn.o_proj", LlamaInput.AttentionOutput), ("mlp.gate_proj", LlamaInput.Mlp), ("mlp.up_proj", LlamaInput.Mlp),
        ("mlp.down_proj", LlamaInput.MlpHidden),
    ];

    private readonly Dictionary<string, string> _siteOfModule;
    private readonly Dictionary<string, (int Features, float[] Values)> _sites;
    private readonly Dictionary<(string Site, LoftQObjective Objective, double Damping), InputWeighting> _weightings = [];

    private CalibrationStatistics(
        Dictionary<string, string> siteOfModule, Dictionary<string, (int, float[])> sites, bool diagonal,
        int windows, int windowLength, long tokens, string modelFingerprint, string textFingerprint)
    {
        _siteOfModule = siteOfModule;
        _sites = sites;
        IsDiagonal = diagonal;
        Windows = windows;
        WindowLength = windowLength;
        Tokens = tokens;
        ModelFingerprint = modelFingerprint;
        TextFingerprint = textFingerprint;
    }

    /// <summary>Whether only the diagonals were collected (enough for <see cref="LoftQObjective.ActivationDiagonal"/> only).</summary>
    public bool IsDiagonal { get; }

    /// <summary>Calibration windows read.</summary>
    public int Windows { get; }

    /// <summary>Bytes (tokens) per window.</summary>
    public int WindowLength { get; }

    /// <summary>Tokens the statistics average over.</summary>
    public long Tokens { get; }

    /// <summary>SHA-256 (hex) of the model's config.json: statistics belong to one model.</summary>
    public string ModelFingerprint { get; }

    /// <summary>SHA-256 (hex) of the calibration text's windows that were read.</summary>
    public string TextFingerprint { get; }

    /// <summary>Module paths (e.g. <c>model.layers.0.self_attn.q_proj</c>) that have statistics.</summary>
    public IReadOnlyCollection<string> Modules => _siteOfModule.Keys;

    /// <summary>
    /// Runs the model at <paramref name="modelDirectory"/> over <paramref name="windows"/> windows of
    /// <paramref name="text"/> (window i is bytes [L·i, L·i + L), L = <paramref name="windowLength"/>; fewer windows if
    /// the text is short) and accumulates the second moments of every projection's inputs.
    /// </summary>
    /// <param name="modelDirectory">A Hugging Face LLaMA-family model directory with a byte-level vocabulary (≥ 256 tokens).</param>
    /// <param name="text">The calibration text, as bytes (keep it apart from any evaluation text).</param>
    /// <param name="windows">Windows to read.</param>
    /// <param name="windowLength">Bytes per window.</param>
    /// <param name="diagonalOnly">Collect only each input channel's second moment.</param>
    /// <param name="cancellationToken">Checked between windows.</param>
    /// <exception cref="ArgumentException">The text holds less than one window, or the model is not a byte-level LLaMA-family model.</exception>
    public static CalibrationStatistics Collect(
        string modelDirectory, ReadOnlySpan<byte> text, int windows = 32, int windowLength = 256, bool diagonalOnly = false,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        ArgumentOutOfRangeException.ThrowIfLessThan(windows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(windowLength, 1);
        int usable = (int)Math.Min(windows, text.Length / windowLength);
        if (usable < 1)
        {
            throw new ArgumentException($"The calibration text has {text.Length} bytes; one window needs {windowLength}.", nameof(text));
        }

        LlamaModel model = Evaluation.Load(modelDirectory);
        LlamaConfig c = model.Config;
        if (c.VocabSize < 256)
        {
            throw new ArgumentException($"Calibration reads text as bytes; '{modelDirectory}' has a vocabulary of {c.VocabSize} < 256 tokens.");
        }

        int[] features = [c.HiddenSize, c.HeadCount * c.HeadDim, c.HiddenSize, c.IntermediateSize];
        var sums = new float[c.LayerCount, 4][];
        for (int l = 0; l < c.LayerCount; l++)
        {
            for (int s = 0; s < 4; s++)
            {
                sums[l, s] = new float[diagonalOnly ? features[s] : (long)features[s] * features[s]];
            }
        }

        void Accumulate(int layer, LlamaInput input, Matrix x)
        {
            float[] sum = sums[layer, (int)input];
            int d = x.Columns;
            if (diagonalOnly)
            {
                for (int i = 0; i < x.Rows; i++)
                {
                    ReadOnlySpan<float> row = x.Row(i);
                    for (int j = 0; j < d; j++)
                    {
                        sum[j] += row[j] * row[j];
                    }
                }
            }
            else
            {
                Gemm.Multiply(Transpose.Yes, Transpose.No, d, d, x.Rows, 1f, x.Span, d, x.Span, d, 1f, sum, d);
            }
        }

        var tokens = new int[windowLength];
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        for (int w = 0; w < usable; w++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            ReadOnlySpan<byte> window = text.Slice(w * windowLength, windowLength);
            hash.AppendData(window);
            for (int i = 0; i < windowLength; i++)
            {
                tokens[i] = window[i];
            }

            using Matrix logits = model.Forward(tokens, Accumulate);
        }

        long count = (long)usable * windowLength;
        var siteOfModule = new Dictionary<string, string>(StringComparer.Ordinal);
        var sites = new Dictionary<string, (int, float[])>(StringComparer.Ordinal);
        for (int l = 0; l < c.LayerCount; l++)
        {
            for (int s = 0; s < 4; s++)
            {
                float[] sum = sums[l, s];
                System.Numerics.Tensors.TensorPrimitives.Multiply(sum, (float)(1.0 / count), sum);
                sites[SiteName(l, (LlamaInput)s)] = (features[s], sum);
            }

            foreach ((string module, LlamaInput input) in LlamaModules)
            {
                siteOfModule[$"model.layers.{l}.{module}"] = SiteName(l, input);
            }
        }

        return new CalibrationStatistics(
            siteOfModule, sites, diagonalOnly, usable, windowLength, count, ModelFingerprintOf(modelDirectory), Convert.ToHexStringLower(hash.GetHashAndReset()));
    }

    /// <summary>SHA-256 (hex) of <c>config.json</c> in <paramref name="modelDirectory"/>, as <see cref="ModelFingerprint"/> records it.</summary>
    public static string ModelFingerprintOf(string modelDirectory)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        return Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(modelDirectory, "config.json"))));
    }

    /// <summary>
    /// Whether these statistics are what <see cref="Collect"/> would return for <paramref name="modelDirectory"/>,
    /// <paramref name="text"/> and <paramref name="windows"/> (same model config, same bytes read, same kind): a cache check.
    /// </summary>
    public bool Matches(string modelDirectory, ReadOnlySpan<byte> text, int windows, bool diagonalOnly, int windowLength = 256)
    {
        int usable = (int)Math.Min(windows, text.Length / windowLength);
        return usable == Windows && windowLength == WindowLength && diagonalOnly == IsDiagonal
            && ModelFingerprint == ModelFingerprintOf(modelDirectory)
            && TextFingerprint == Convert.ToHexStringLower(SHA256.HashData(text[..(usable * windowLength)]));
    }

    /// <summary>Whether <paramref name="modulePath"/> (e.g. <c>model.layers.3.mlp.down_proj</c>) has statistics.</summary>
    public bool Contains(string modulePath) => _siteOfModule.ContainsKey(modulePath);

    /// <summary>The input features of <paramref name="modulePath"/>'s statistics.</summary>
    /// <exception cref="KeyNotFoundException">The module has no statistics.</exception>
    public int FeaturesOf(string modulePath) => _sites[Site(modulePath)].Features;

    /// <summary>
    /// A copy of the second moments of <paramref name="modulePath"/>'s inputs: n×n row-major, or the n diagonal entries
    /// when <see cref="IsDiagonal"/>.
    /// </summary>
    /// <exception cref="KeyNotFoundException">The module has no statistics.</exception>
    public float[] SecondMoments(string modulePath) => (float[])_sites[Site(modulePath)].Values.Clone();

    /// <summary>
    /// The <see cref="InputWeighting"/> of <paramref name="modulePath"/> for <paramref name="objective"/> (computed once
    /// per shared input and cached; thread-safe).
    /// </summary>
    /// <exception cref="ArgumentException">
    /// <paramref name="objective"/> is <see cref="LoftQObjective.Weight"/>, or <see cref="LoftQObjective.Activation"/> with
    /// diagonal-only statistics.
    /// </exception>
    /// <exception cref="KeyNotFoundException">The module has no statistics.</exception>
    public InputWeighting Weighting(string modulePath, LoftQObjective objective, double damping = InputWeighting.DefaultDamping)
    {
        if (objective == LoftQObjective.Weight)
        {
            throw new ArgumentException("The weight objective uses no input weighting.", nameof(objective));
        }

        if (objective == LoftQObjective.Activation && IsDiagonal)
        {
            throw new ArgumentException("The activation objective needs full second-moment matrices; these statistics hold only their diagonals (collected with diagonalOnly).", nameof(objective));
        }

        string site = Site(modulePath);
        lock (_weightings)
        {
            if (_weightings.TryGetValue((site, objective, damping), out InputWeighting? cached))
            {
                return cached;
            }
        }

        (int n, float[] values) = _sites[site];
        InputWeighting weighting;
        if (objective == LoftQObjective.Activation)
        {
            weighting = InputWeighting.FromSecondMoments(values, n, damping);
        }
        else if (IsDiagonal)
        {
            weighting = InputWeighting.Diagonal(values, damping);
        }
        else
        {
            var diagonal = new float[n];
            for (int i = 0; i < n; i++)
            {
                diagonal[i] = values[((long)i * n) + i];
            }

            weighting = InputWeighting.Diagonal(diagonal, damping);
        }

        lock (_weightings)
        {
            return _weightings.TryAdd((site, objective, damping), weighting) ? weighting : _weightings[(site, objective, damping)];
        }
    }

    /// <summary>Writes the statistics to a safetensors file (atomically).</summary>
    public void Save(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var entries = new List<SafeTensorEntry>(_sites.Count);
        foreach ((string site, (int n, float[] values)) in _sites.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            entries.Add(SafeTensorEntry.FromSingle(site, IsDiagonal ? [n] : [n, n], values));
        }

        var metadata = new Dictionary<string, string>
        {
            ["format"] = FormatName,
            ["diagonal"] = IsDiagonal ? "true" : "false",
            ["windows"] = Windows.ToString(CultureInfo.InvariantCulture),
            ["window_length"] = WindowLength.ToString(CultureInfo.InvariantCulture),
            ["tokens"] = Tokens.ToString(CultureInfo.InvariantCulture),
            ["model_config_sha256"] = ModelFingerprint,
            ["text_sha256"] = TextFingerprint,
            ["modules"] = string.Join(',', _siteOfModule.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => p.Key + "=" + p.Value)),
        };
        SafeTensorsWriter.Write(path, entries, metadata);
    }

    /// <summary>Reads statistics that <see cref="Save"/> wrote.</summary>
    /// <exception cref="InvalidDataException">The file is not a LoftQ calibration file or is inconsistent (the message says what).</exception>
    public static CalibrationStatistics Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        IReadOnlyDictionary<string, string> meta = file.Metadata;
        string Get(string key) => meta.TryGetValue(key, out string? v)
            ? v
            : throw new InvalidDataException($"'{path}' is not a LoftQ calibration file: its metadata has no '{key}'.");
        if (Get("format") != FormatName)
        {
            throw new InvalidDataException($"'{path}' has format '{Get("format")}'; expected '{FormatName}'.");
        }

        bool diagonal = Get("diagonal") == "true";
        int windows = ParseInt(Get("windows"), "windows", path);
        int windowLength = ParseInt(Get("window_length"), "window_length", path);
        long tokens = long.TryParse(Get("tokens"), NumberStyles.None, CultureInfo.InvariantCulture, out long t) && t > 0
            ? t
            : throw new InvalidDataException($"'{path}': metadata 'tokens' is not a positive integer.");
        var sites = new Dictionary<string, (int, float[])>(StringComparer.Ordinal);
        foreach (SafeTensorInfo info in file.Tensors)
        {
            bool ok = diagonal ? info.Shape.Rank == 1 : info.Shape.Rank == 2 && info.Shape[0] == info.Shape[1];
            if (!ok || info.DType != SafeTensorDType.F32)
            {
                throw new InvalidDataException($"'{path}': tensor '{info.Name}' is {info.DType} {info.Shape}; expected F32 {(diagonal ? "[n]" : "[n, n]")}.");
            }

            sites[info.Name] = (info.Shape[0], file.ReadAsSingle(info.Name));
        }

        var siteOfModule = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string pair in Get("modules").Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0 || !sites.ContainsKey(pair[(eq + 1)..]))
            {
                throw new InvalidDataException($"'{path}': module entry '{pair}' does not name a tensor of the file.");
            }

            siteOfModule[pair[..eq]] = pair[(eq + 1)..];
        }

        return new CalibrationStatistics(siteOfModule, sites, diagonal, windows, windowLength, tokens, Get("model_config_sha256"), Get("text_sha256"));
    }

    private static int ParseInt(string value, string key, string path) =>
        int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v > 0
            ? v
            : throw new InvalidDataException($"'{path}': metadata '{key}' is not a positive integer.");

    private static string SiteName(int layer, LlamaInput input) => input switch
    {
        LlamaInput.Attention => $"model.layers.{layer}.attention_input",
        LlamaInput.AttentionOutput => $"model.layers.{layer}.attention_output",
        LlamaInput.Mlp => $"model.layers.{layer}.mlp_input",
        _ => $"model.layers.{layer}.mlp_hidden",
    };

    private string Site(string modulePath)
    {
        ArgumentNullException.ThrowIfNull(modulePath);
        return _siteOfModule.TryGetValue(modulePath, out string? site)
            ? site
            : throw new KeyNotFoundException($"The calibration statistics have no inputs for '{modulePath}' (they cover the seven projections of each LLaMA decoder layer).");
    }
}
