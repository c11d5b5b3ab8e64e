using LoftQNet.Quantization;

namespace LoftQNet.Tests.Quantization;

public class QuantizationPolicyTests
{
    private static readonly NormalFloatQuantizer Nf4 = new(4);
    private static readonly NormalFloatQuantizer Nf2 = new(2);

    private static IQuantizer ForBits(int bits) => bits switch
    {
        4 => Nf4,
        2 => Nf2,
        _ => throw new ArgumentOutOfRangeException(nameof(bits)),
    };

    [Theory]
    [InlineData("model.layers.12.self_attn.q_proj.weight", 12)]
    [InlineData("base_model.model.model.layers.0.mlp.down_proj.weight", 0)]
    [InlineData("transformer.h.3.attn.c_attn.weight", 3)]
    [InlineData("layers.7.feed_forward.w1.weight", 7)]
    [InlineData("model.layers.31.mlp.gate_proj", 31)]
    [InlineData("lm_head.weight", null)]
    [InlineData("model.embed_tokens.weight", null)]
    [InlineData("model.layers.x.self_attn.q_proj.weight", null)]
    [InlineData("model.sublayers.4.q_proj.weight", null)]
    [InlineData("transformer.wh.2.attn.weight", null)]
    public void LayerIndexIsParsedFromLlamaAndGpt2Names(string name, int? expected)
    {
        Assert.Equal(expected, QuantizationPolicies.LayerIndexOf(name));
    }

    [Theory]
    [InlineData(2.5, 8, 2)]
    [InlineData(2.0, 8, 0)]
    [InlineData(4.0, 8, 8)]
    [InlineData(3.0, 32, 16)]
    [InlineData(2.25, 6, 1)] // 0.75 rounds to 1
    [InlineData(2.5, 6, 2)]  // 1.5 rounds half to even → 2
    [InlineData(2.25, 4, 0)] // 0.5 rounds half to even → 0
    public void FromAverageBitsGivesTheFirstKLayersFourBits(double averageBits, int layers, int k)
    {
        IQuantizationPolicy policy = QuantizationPolicies.FromAverageBits(averageBits, layers, ForBits);
        for (int layer = 0; layer < layers; layer++)
        {
            IQuantizer expected = layer < k ? Nf4 : Nf2;
            Assert.Same(expected, policy.Select($"model.layers.{layer}.self_attn.v_proj.weight"));
            Assert.Same(expected, policy.Select($"transformer.h.{layer}.mlp.c_fc.weight"));
        }

        Assert.Same(Nf4, policy.Select("lm_head.weight"));
        Assert.Contains("nf4", policy.Describe());
    }

    [Fact]
    public void FromAverageBitsDescribesTheSplit()
    {
        string d = QuantizationPolicies.FromAverageBits(2.5, 8, ForBits).Describe();
        Assert.Contains("layers 0..1", d);
        Assert.Contains("layers 2..7 nf2", d);
        Assert.Contains("k = 2", d);
        Assert.DoesNotContain("..-1", QuantizationPolicies.FromAverageBits(2, 8, ForBits).Describe());
        Assert.Contains("no 2-bit layers", QuantizationPolicies.FromAverageBits(4, 8, ForBits).Describe());
    }

    [Theory]
    [InlineData(1.9)]
    [InlineData(4.1)]
    [InlineData(double.NaN)]
    public void FromAverageBitsRejectsAveragesOutsideTwoToFour(double bits)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => QuantizationPolicies.FromAverageBits(bits, 8, ForBits));
        Assert.Equal("averageBits", e.ParamName);
        Assert.Contains("[2, 4]", e.Message);
    }

    [Fact]
    public void FromAverageBitsRejectsBadLayerCountsAndFactories()
    {
        Assert.Equal("layerCount", Assert.Throws<ArgumentOutOfRangeException>(() => QuantizationPolicies.FromAverageBits(3, 0, ForBits)).ParamName);
        Assert.Throws<ArgumentNullException>(() => QuantizationPolicies.FromAverageBits(3, 4, null!));
        Assert.Throws<ArgumentException>(() => QuantizationPolicies.FromAverageBits(3, 4, _ => null!));
    }

    [Fact]
    public void FromPatternsFirstMatchWinsAndFallsBack()
    {
        var u8 = new UniformQuantizer(8);
        IQuantizationPolicy policy = QuantizationPolicies.FromPatterns(
            [(@"\.mlp\.", Nf2), (@"down_proj", u8), (@"^model\.layers\.0\.", u8)],
            Nf4);
        Assert.Same(Nf2, policy.Select("model.layers.3.mlp.down_proj.weight"));
        Assert.Same(u8, policy.Select("model.layers.3.other.down_proj.weight"));
        Assert.Same(u8, policy.Select("model.layers.0.self_attn.q_proj.weight"));
        Assert.Same(Nf4, policy.Select("model.layers.1.self_attn.q_proj.weight"));
        Assert.Same(Nf4, policy.Select("lm_head.weight"));
        string d = policy.Describe();
        Assert.Contains(@"\.mlp\.", d);
        Assert.Contains("otherwise nf4", d);
    }

    [Fact]
    public void FromPatternsNamesAnInvalidPattern()
    {
        var e = Assert.Throws<ArgumentException>(() => QuantizationPolicies.FromPatterns([("q_proj", Nf4), ("mlp.(up", Nf2)], Nf4));
        Assert.Contains("mlp.(up", e.Message);
        Assert.Equal("rules", e.ParamName);
        Assert.Throws<ArgumentException>(() => QuantizationPolicies.FromPatterns([("x", null!)], Nf4));
        Assert.Throws<ArgumentNullException>(() => QuantizationPolicies.FromPatterns([], (IQuantizer)null!));
        Assert.Throws<ArgumentNullException>(() => QuantizationPolicies.FromPatterns([], (IQuantizationPolicy)null!));
    }

    [Fact]
    public void Patterns_can_fall_back_to_another_policy()
    {
        IQuantizationPolicy mixed = QuantizationPolicies.FromAverageBits(2.5, 8, bits => bits == 4 ? Nf4 : Nf2);
        IQuantizationPolicy policy = QuantizationPolicies.FromPatterns([(@"down_proj", Nf4)], mixed);
        Assert.Same(Nf4, policy.Select("model.layers.7.mlp.down_proj.weight"));
        Assert.Same(Nf2, policy.Select("model.layers.7.mlp.up_proj.weight"));
        Assert.Same(Nf4, policy.Select("model.layers.1.mlp.up_proj.weight"));
        Assert.Contains("otherwise", policy.Describe());
    }

    [Fact]
    public void UniformPolicySelectsOneQuantizerForEverything()
    {
        IQuantizationPolicy policy = QuantizationPolicies.Uniform(Nf2);
        Assert.Same(Nf2, policy.Select("model.layers.0.mlp.up_proj.weight"));
        Assert.Same(Nf2, policy.Select("anything"));
        Assert.Contains("nf2", policy.Describe());
        Assert.Throws<ArgumentNullException>(() => QuantizationPolicies.Uniform(null!));
    }
}
