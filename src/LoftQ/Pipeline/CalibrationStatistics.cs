using System.Globalization;
using System.Numerics.Tensors;
using System.Security.Cryptography;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

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
    private const string SensitivitiesName = "sensitivities";

    private static readonly (string Module, LlamaInput Input)[] LlamaModules =
    [
        ("self_attn.q_proj", LlamaInput.Attention), ("self_attn.k_proj", LlamaInput.Attention), ("self_attn.v_proj", LlamaInput.Attention),
        ("self_attn.o_proj", LlamaInput.AttentionOutput), ("mlp.gate_proj", LlamaInput.Mlp), ("mlp.up_proj", LlamaInput.Mlp),
        ("mlp.down_proj", LlamaInput.MlpHidden),
    ];

    private readonly Dictionary<string, string> _siteOfModule;
    private readonly Dictionary<string, (int Features, float[] Values)> _sites;
    private readonly Dictionary<(string Site, LoftQObjective Objective, double Damping), InputWeighting> _weightings = [];
    private float[]? _sensitivities;

    /// <summary>Relative noise energy ε² of the sensitivity probe (ε = 0.2, the size of a 2-bit target's relative output error).</summary>
    private const float ProbeEpsilon = 0.2f;

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
    /// <param name="sensitivityWindows">
    /// When &gt; 0, also measure each projection's output sensitivity on that many of the windows (what
    /// <see cref="LoftQOptions.BitBudget"/> weighs errors by under an activation objective): the model's mean next-byte
    /// KL divergence when Gaussian noise of relative energy ε² (ε = 0.2) is added to that projection's output alone,
    /// divided by ε². It costs 7 × layers × that many forward passes.
    /// </param>
    /// <param name="cancellationToken">Checked between windows.</param>
    /// <exception cref="ArgumentException">The text holds less than one window, or the model is not a byte-level LLaMA-family model.</exception>
    public static CalibrationStatistics Collect(
        string modelDirectory, ReadOnlySpan<byte> text, int windows = 32, int windowLength = 256, bool diagonalOnly = false,
        int sensitivityWindows = 0, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        ArgumentOutOfRangeException.ThrowIfLessThan(windows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(windowLength, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(sensitivityWindows);
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

        float[]? sensitivities = sensitivityWindows > 0
            ? MeasureSensitivities(model, text[..(Math.Min(sensitivityWindows, usable) * windowLength)], windowLength, cancellationToken)
            : null;
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
            siteOfModule, sites, diagonalOnly, usable, windowLength, count, ModelFingerprintOf(modelDirectory), Convert.ToHexStringLower(hash.GetHashAndReset()))
        {
            _sensitivities = sensitivities,
        };
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

    /// <summary>Whether per-projection output sensitivities were measured (<see cref="Sensitivity"/>).</summary>
    public bool HasSensitivities => _sensitivities is not null;

    /// <summary>
    /// The model's next-byte KL divergence (nats per byte) per unit of relative output-error energy of
    /// <paramref name="modulePath"/>: a target whose relative output error is e costs about Sensitivity·e².
    /// </summary>
    internal double Sensitivity(string modulePath)
    {
        int layer = QuantizationPolicies.LayerIndexOf(modulePath + ".weight") ?? throw new KeyNotFoundException($"'{modulePath}' has no layer index.");
        int projection = Array.FindIndex(LlamaModules, 0, 7, m => modulePath.EndsWith("." + m.Module, StringComparison.Ordinal));
        if (_sensitivities is null || projection < 0 || (7 * layer) + projection >= _sensitivities.Length)
        {
            throw new KeyNotFoundException($"The calibration statistics have no sensitivity for '{modulePath}'.");
        }

        return _sensitivities[(7 * layer) + projection];
    }

    private static float[] MeasureSensitivities(LlamaModel model, ReadOnlySpan<byte> text, int windowLength, CancellationToken cancellationToken)
    {
        int windows = text.Length / windowLength, layers = model.Config.LayerCount, vocab = model.Config.VocabSize;
        var tokens = new int[windows][];
        var reference = new Matrix[windows];
        try
        {
            for (int w = 0; w < windows; w++)
            {
                tokens[w] = new int[windowLength];
                for (int i = 0; i < windowLength; i++)
                {
                    tokens[w][i] = text[(w * windowLength) + i];
                }

                reference[w] = model.Forward(tokens[w]);
                LogSoftmax(reference[w]);
            }

            var result = new float[layers * 7];
            for (int target = 0; target < result.Length; target++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                int layer = target / 7, projection = target % 7;
                double kl = 0;
                for (int w = 0; w < windows; w++)
                {
                    int window = w;
                    void AddNoise(int l, int p, Matrix output)
                    {
                        if (l != layer || p != projection)
                        {
                            return;
                        }

                        int d = output.Columns;
                        var noise = new float[d];
                        for (int i = 0; i < output.Rows; i++)
                        {
                            Span<float> row = output.Row(i);
                            Gaussian.Fill(noise, seed: target, scale: 1f, offset: ((long)window * output.Rows * d) + ((long)i * d));
                            float scale = (float)(ProbeEpsilon * Math.Sqrt(MatrixKernels.SumOfSquares(row) / d));
                            TensorPrimitives.MultiplyAdd(noise, scale, row, row);
                        }
                    }

                    using Matrix logits = model.Forward(tokens[w], perturb: AddNoise);
                    LogSoftmax(logits);
                    for (int i = 0; i < windowLength; i++)
                    {
                        ReadOnlySpan<float> p = reference[w].Row(i), q = logits.Row(i);
                        for (int v = 0; v < vocab; v++)
                        {
                            kl += Math.Exp(p[v]) * (p[v] - q[v]);
                        }
                    }
                }

                result[target] = (float)(kl / ((double)windows * windowLength) / (ProbeEpsilon * ProbeEpsilon));
            }

            return result;
        }
        finally
        {
            foreach (Matrix? m in reference)
            {
                m?.Dispose();
            }
        }
    }

    private static void LogSoftmax(Matrix logits)
    {
        for (int i = 0; i < logits.Rows; i++)
        {
            Span<float> row = logits.Row(i);
            float max = TensorPrimitives.Max(row);
            double sum = 0;
            foreach (float v in row)
            {
                sum += Math.Exp(v - max);
            }

            TensorPrimitives.Subtract(row, (float)(max + Math.Log(sum)), row);
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

        if (_sensitivities is not null)
        {
            entries.Add(SafeTensorEntry.FromSingle(SensitivitiesName, [_sensitivities.Length / 7, 7], _sensitivities));
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
        float[]? sensitivities = null;
        foreach (SafeTensorInfo info in file.Tensors)
        {
            if (info.Name == SensitivitiesName)
            {
                if (info.DType != SafeTensorDType.F32 || info.Shape.Rank != 2 || info.Shape[1] != 7)
                {
                    throw new InvalidDataException($"'{path}': tensor '{SensitivitiesName}' is {info.DType} {info.Shape}; expected F32 [layers, 7].");
                }

                sensitivities = file.ReadAsSingle(info.Name);
                continue;
            }

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

        return new CalibrationStatistics(siteOfModule, sites, diagonal, windows, windowLength, tokens, Get("model_config_sha256"), Get("text_sha256"))
        {
            _sensitivities = sensitivities,
        };
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
