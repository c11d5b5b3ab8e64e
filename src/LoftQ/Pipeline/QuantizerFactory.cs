using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Pipeline;

/// <summary>The quantizers and the per-tensor quantization policy that <see cref="LoftQOptions"/> describe.</summary>
internal static class QuantizerFactory
{
    internal static IQuantizer CreateQuantizer(QuantizerKind kind, int bits, int blockSize, BlockScaleSearch? scaleSearch = null) => kind switch
    {
        QuantizerKind.NormalFloat => new NormalFloatQuantizer(bits, blockSize, scaleSearch),
        QuantizerKind.Uniform => new UniformQuantizer(bits, blockSize, scaleSearch: scaleSearch),
        _ => new UniformQuantizer(bits, blockSize, asymmetric: true, scaleSearch),
    };

    internal static IQuantizationPolicy BuildPolicy(LoftQOptions o, int layerCount)
    {
        if (o.Policy is not null)
        {
            return o.Policy;
        }

        var cache = new ConcurrentDictionary<int, IQuantizer>();
        IQuantizer ForBits(int bits) => cache.GetOrAdd(bits, b => CreateQuantizer(o.Quantizer, b, o.BlockSize, o.ScaleSearch));
        IQuantizationPolicy basePolicy = o.Bits == Math.Floor(o.Bits)
            ? QuantizationPolicies.Uniform(ForBits((int)o.Bits))
            : QuantizationPolicies.FromAverageBits(o.Bits, layerCount, ForBits);
        if (o.BitsPatterns is not { Count: > 0 } patterns)
        {
            return basePolicy;
        }

        return QuantizationPolicies.FromPatterns(patterns.Select(p => (p.Pattern, ForBits(p.Bits))), basePolicy);
    }
}
