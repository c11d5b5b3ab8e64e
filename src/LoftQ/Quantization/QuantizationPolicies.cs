using System.Globalization;
using System.Text.RegularExpressions;

namespace LoftQNet.Quantization;

/// <summary>Built-in <see cref="IQuantizationPolicy"/> implementations and the helpers they use.</summary>
public static partial class QuantizationPolicies
{
    /// <summary>Every tensor gets <paramref name="quantizer"/>.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="quantizer"/> is null.</exception>
    public static IQuantizationPolicy Uniform(IQuantizer quantizer)
    {
        ArgumentNullException.ThrowIfNull(quantizer);
        return new UniformPolicy(quantizer);
    }

    /// <summary>
    /// LoftQ's mixed-precision rule: the first k decoder layers get the 4-bit quantizer and the rest the 2-bit one,
    /// with k = round(<paramref name="layerCount"/> · (<paramref name="averageBits"/> − 2) / 2) (round half to even,
    /// like Python's <c>round</c>), clamped to [0, layerCount]. The layer index is parsed from the tensor name
    /// (see <see cref="LayerIndexOf"/>); a tensor without one gets the 4-bit quantizer.
    /// </summary>
    /// <param name="averageBits">Target average bits per weight, in [2, 4].</param>
    /// <param name="layerCount">Number of decoder layers (≥ 1).</param>
    /// <param name="quantizerForBits">Creates the quantizer for 4 and for 2 bits (called once for each).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="averageBits"/> is outside [2, 4] or <paramref name="layerCount"/> is below 1.</exception>
    /// <exception cref="ArgumentException"><paramref name="quantizerForBits"/> returned null.</exception>
    public static IQuantizationPolicy FromAverageBits(double averageBits, int layerCount, Func<int, IQuantizer> quantizerForBits)
    {
        ArgumentNullException.ThrowIfNull(quantizerForBits);
        if (!(averageBits >= 2.0 && averageBits <= 4.0))
        {
            throw new ArgumentOutOfRangeException(nameof(averageBits), averageBits, "Mixed precision mixes 4-bit and 2-bit layers, so the average bits must be in [2, 4].");
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(layerCount, 1);
        int k = (int)Math.Clamp(Math.Round(layerCount * (averageBits - 2.0) / 2.0, MidpointRounding.ToEven), 0, layerCount);
        IQuantizer high = quantizerForBits(4) ?? throw new ArgumentException("The quantizer factory returned null for 4 bits.", nameof(quantizerForBits));
        IQuantizer low = quantizerForBits(2) ?? throw new ArgumentException("The quantizer factory returned null for 2 bits.", nameof(quantizerForBits));
        return new LayerSplitPolicy(averageBits, layerCount, k, high, low);
    }

    /// <summary>
    /// The first rule whose regular expression matches anywhere in the tensor name wins (use <c>^</c> / <c>$</c> to
    /// anchor); tensors no rule matches get <paramref name="fallback"/>.
    /// </summary>
    /// <exception cref="ArgumentException">A pattern is not a valid regular expression (the message names it), or a rule's quantizer is null.</exception>
    public static IQuantizationPolicy FromPatterns(IEnumerable<(string Pattern, IQuantizer Quantizer)> rules, IQuantizer fallback)
    {
        ArgumentNullException.ThrowIfNull(fallback);
        return FromPatterns(rules, Uniform(fallback));
    }

    /// <summary>
    /// Like <see cref="FromPatterns(IEnumerable{ValueTuple{string, IQuantizer}}, IQuantizer)"/>, but a tensor no rule
    /// matches is handed to another policy (e.g. LoftQ's mixed precision from <see cref="FromAverageBits"/>).
    /// </summary>
    /// <exception cref="ArgumentException">A pattern is not a valid regular expression (the message names it) or a rule is null.</exception>
    public static IQuantizationPolicy FromPatterns(IEnumerable<(string Pattern, IQuantizer Quantizer)> rules, IQuantizationPolicy fallback)
    {
        ArgumentNullException.ThrowIfNull(rules);
        ArgumentNullException.ThrowIfNull(fallback);
        var compiled = new List<(string Pattern, Regex Regex, IQuantizer Quantizer)>();
        foreach ((string pattern, IQuantizer quantizer) in rules)
        {
            if (pattern is null)
            {
                throw new ArgumentException($"Rule {compiled.Count} has a null pattern.", nameof(rules));
            }

            if (quantizer is null)
            {
                throw new ArgumentException($"Rule {compiled.Count} ('{pattern}') has a null quantizer.", nameof(rules));
            }

            Regex regex;
            try
            {
                regex = new Regex(pattern, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"Pattern '{pattern}' is not a valid regular expression: {e.Message}", nameof(rules), e);
            }

            compiled.Add((pattern, regex, quantizer));
        }

        return new PatternPolicy(compiled, fallback);
    }

    /// <summary>
    /// The decoder-layer index in a tensor name: the number N in <c>.layers.N.</c> (Llama, Mistral, Qwen…) or
    /// <c>.h.N.</c> (GPT-2), also at the start of the name; null when there is none.
    /// </summary>
    /// <example><c>model.layers.12.self_attn.q_proj.weight</c> → 12; <c>transformer.h.3.attn.c_attn.weight</c> → 3; <c>lm_head.weight</c> → null.</example>
    public static int? LayerIndexOf(string tensorName)
    {
        ArgumentNullException.ThrowIfNull(tensorName);
        Match m = LayerPattern().Match(tensorName);
        return m.Success && int.TryParse(m.Groups[1].ValueSpan, NumberStyles.None, CultureInfo.InvariantCulture, out int index) ? index : null;
    }

    [GeneratedRegex(@"(?:^|\.)(?:layers|h)\.(\d+)\.", RegexOptions.CultureInvariant)]
    private static partial Regex LayerPattern();

    private sealed class UniformPolicy(IQuantizer quantizer) : IQuantizationPolicy
    {
        public IQuantizer Quantizer => quantizer;

        public IQuantizer Select(string tensorName)
        {
            ArgumentNullException.ThrowIfNull(tensorName);
            return quantizer;
        }

        public string Describe() => $"all tensors: {quantizer.Name}";
    }

    private sealed class LayerSplitPolicy(double averageBits, int layerCount, int highLayers, IQuantizer high, IQuantizer low) : IQuantizationPolicy
    {
        public IQuantizer Select(string tensorName)
        {
            int? layer = LayerIndexOf(tensorName);
            return layer is null || layer.Value < highLayers ? high : low;
        }

        public string Describe()
        {
            string highPart = highLayers == 0 ? $"non-layer tensors {high.Name}" : $"layers 0..{highLayers - 1} and non-layer tensors {high.Name}";
            string lowPart = highLayers == layerCount ? "no 2-bit layers" : $"layers {highLayers}..{layerCount - 1} {low.Name}";
            return string.Create(CultureInfo.InvariantCulture, $"mixed precision (average {averageBits} bits over {layerCount} layers, k = {highLayers}): {highPart}, {lowPart}");
        }
    }

    private sealed class PatternPolicy(List<(string Pattern, Regex Regex, IQuantizer Quantizer)> rules, IQuantizationPolicy fallback) : IQuantizationPolicy
    {
        public IQuantizer Select(string tensorName)
        {
            ArgumentNullException.ThrowIfNull(tensorName);
            foreach ((_, Regex regex, IQuantizer quantizer) in rules)
            {
                if (regex.IsMatch(tensorName))
                {
                    return quantizer;
                }
            }

            return fallback.Select(tensorName);
        }

        public string Describe() =>
            string.Join("; ", rules.Select(r => $"/{r.Pattern}/ → {r.Quantizer.Name}")) + (rules.Count > 0 ? "; " : string.Empty) + $"otherwise {(fallback is UniformPolicy u ? u.Quantizer.Name : fallback.Describe())}";
    }
}
