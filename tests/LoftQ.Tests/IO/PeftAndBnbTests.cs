using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Tests.IO;

public class PeftAndBnbTests
{
    private static readonly string[] s_varyingKeys = ["r", "lora_alpha", "target_modules", "base_model_name_or_path"];

    [Fact]
    public void PeftAdapter_ForFixture_MatchesReferenceConfigAndTensorListing()
    {
        JsonObject readme = JsonNode.Parse(File.ReadAllText(TestFiles.ReferenceReadme))!.AsObject();
        JsonObject refConfig = readme["peft_adapter_config"]!.AsObject();
        JsonObject refTensors = readme["peft_adapter_tensors"]!.AsObject();

        using var dir = new TempDir();
        using HuggingFaceCheckpoint ckpt = HuggingFaceCheckpoint.Open(TestFiles.FixtureModel);
        IReadOnlyList<string> targets = TargetSelector.Select(ckpt, null);
        var layers = new List<LoraTensors>();
        int seed = 0;
        foreach (string t in targets)
        {
            TensorShape shape = ckpt.GetInfo(t).Shape;
            layers.Add(new LoraTensors(t[..^".weight".Length], Matrix.RandomNormal(16, (int)shape[1], seed++), Matrix.RandomNormal((int)shape[0], 16, seed++)));
        }

        var config = new PeftAdapterConfig(16, 16, PeftAdapterConfig.TargetModulesFor(layers.Select(l => l.ModulePath)), "shared/fixtures/byte-llama-14m");
        string adapterDir = Path.Combine(dir.Path, "loftq_init");
        PeftAdapterWriter.Write(adapterDir, config, layers);

        // adapter_config.json: same key set, same values (the reference used r=16, alpha=16 too).
        string text = File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json"));
        JsonObject ours = JsonNode.Parse(text)!.AsObject();
        Assert.Equal(refConfig.Select(kv => kv.Key).Order(StringComparer.Ordinal), ours.Select(kv => kv.Key));
        foreach ((string key, JsonNode? value) in refConfig)
        {
            if (key == "target_modules")
            {
                Assert.Equal(value!.AsArray().Select(v => v!.GetValue<string>()).Order(), ours[key]!.AsArray().Select(v => v!.GetValue<string>()).Order());
                continue;
            }

            Assert.True(JsonNode.DeepEquals(value, ours[key]), $"{key}: reference {value?.ToJsonString()}, ours {ours[key]?.ToJsonString()}");
        }

        Assert.Contains("\"lora_dropout\": 0.0", text); // written as Python writes floats
        Assert.Contains("\"loftq_config\": {}", text);

        // adapter_model.safetensors: same names, shapes, dtypes and metadata; data bit-exact.
        using SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(adapterDir, "adapter_model.safetensors"));
        Assert.Equal(refTensors.Select(kv => kv.Key).Order(StringComparer.Ordinal), file.Tensors.Select(t => t.Name));
        foreach ((string name, JsonNode? spec) in refTensors)
        {
            SafeTensorInfo info = file.GetInfo(name);
            Assert.Equal(spec!["dtype"]!.GetValue<string>(), info.DType.ToHeaderString());
            Assert.Equal(spec["shape"]!.AsArray().Select(d => d!.GetValue<int>()), info.Shape.Dimensions.ToArray());
        }

        Assert.Equal(readme["peft_adapter_metadata"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<string>()), file.Metadata);
        LoraTensors first = layers[0];
        Assert.Equal(first.A.Span.ToArray(), file.ReadAsSingle($"base_model.model.{first.ModulePath}.lora_A.weight"));
        Assert.Equal(first.B.Span.ToArray(), file.ReadAsSingle($"base_model.model.{first.ModulePath}.lora_B.weight"));
        foreach (LoraTensors l in layers)
        {
            l.A.Dispose();
            l.B.Dispose();
        }
    }

    [Fact]
    public void PeftAdapter_VaryingFields_AndErrors()
    {
        var cfg = new PeftAdapterConfig(8, 32, ["q_proj"], null, FanInFanOut: true) { LoraDropout = 0.05 };
        JsonObject o = JsonNode.Parse(cfg.ToJson())!.AsObject();
        Assert.Equal(8, o["r"]!.GetValue<int>());
        Assert.Equal(32, o["lora_alpha"]!.GetValue<int>());
        Assert.True(o["fan_in_fan_out"]!.GetValue<bool>());
        Assert.Null(o["base_model_name_or_path"]);
        Assert.Equal(0.05, o["lora_dropout"]!.GetValue<double>());
        Assert.Equal("1e-05", PeftAdapterConfig.PythonFloat(1e-5));
        Assert.Equal("2.0", PeftAdapterConfig.PythonFloat(2));

        using var dir = new TempDir();
        using Matrix a = Matrix.Zeros(4, 6), b = Matrix.Zeros(5, 4), wrong = Matrix.Zeros(5, 3);
        var four = new PeftAdapterConfig(4, 4, ["x"], "m");
        Assert.Throws<ArgumentException>(() => PeftAdapterWriter.Write(dir.Path, four, [new LoraTensors("x", a, wrong)]));
        Assert.Throws<ArgumentException>(() => PeftAdapterWriter.Write(dir.Path, four, [new LoraTensors("x", a, b), new LoraTensors("x", a, b)]));
        Assert.Throws<ArgumentException>(() => PeftAdapterWriter.Write(dir.Path, four, []));
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    // ---- bitsandbytes NF4 ----

    private static QuantizedTensor QuantizeRandom(int rows, int cols, int seed, int blockSize = 64)
    {
        using Matrix w = Matrix.RandomNormal(rows, cols, seed, 0.02f);
        return new NormalFloatQuantizer(4, blockSize).Quantize(w.Span, w.Shape);
    }

    [Fact]
    public void Bnb_SingleQuant_EntriesAndExactRoundTrip()
    {
        QuantizedTensor q = QuantizeRandom(96, 67, 5); // 6432 values: 100.5 blocks -> partial last block
        IReadOnlyList<SafeTensorEntry> entries = BitsAndBytesNf4.CreateEntries("m.layers.0.q_proj.weight", q);
        Assert.Equal(
            ["m.layers.0.q_proj.weight", "m.layers.0.q_proj.weight.absmax", "m.layers.0.q_proj.weight.quant_map", "m.layers.0.q_proj.weight.quant_state.bitsandbytes__nf4"],
            entries.Select(e => e.Info.Name));
        Assert.Equal([SafeTensorDType.U8, SafeTensorDType.F32, SafeTensorDType.F32, SafeTensorDType.U8], entries.Select(e => e.Info.DType));
        Assert.Equal<TensorShape>([3216, 1], entries[0].Info.Shape);
        Assert.Equal<TensorShape>([101], entries[1].Info.Shape);
        Assert.Equal<TensorShape>([16], entries[2].Info.Shape);
        string json = Encoding.UTF8.GetString(entries[3].Data.Span);
        Assert.Equal("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [96, 67]}", json);
        Assert.Equal<TensorShape>([json.Length], entries[3].Info.Shape);

        using var dir = new TempDir();
        string path = dir.File("bnb.safetensors");
        SafeTensorsWriter.Write(path, entries);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        QuantizedTensor back = BitsAndBytesNf4.ReadNf4(file, "m.layers.0.q_proj.weight");
        Assert.Equal(q.Shape, back.Shape);
        Assert.Equal(64, back.BlockSize);
        Assert.True(q.PackedCodes.SequenceEqual(back.PackedCodes));
        Assert.True(q.Scales.SequenceEqual(back.Scales));
        var expected = new float[q.ElementCount];
        var actual = new float[q.ElementCount];
        q.Dequantize(expected);
        back.Dequantize(actual);
        Assert.Equal(expected, actual);

        // High nibble = first element (bitsandbytes order), checked against the unpacked codes.
        var codes = new byte[q.ElementCount];
        q.UnpackCodes(codes);
        ReadOnlySpan<byte> packed = file.GetBytes("m.layers.0.q_proj.weight");
        for (int j = 0; j < packed.Length; j++)
        {
            Assert.Equal(codes[2 * j], packed[j] >> 4);
            if ((2 * j) + 1 < codes.Length)
            {
                Assert.Equal(codes[(2 * j) + 1], packed[j] & 0xF);
            }
        }
    }

    [Fact]
    public void Bnb_DoubleQuant_EntriesAndBoundedAbsmaxError()
    {
        QuantizedTensor q = QuantizeRandom(256, 300, 9); // 1200 blocks -> 5 nested blocks (last partial)
        IReadOnlyList<SafeTensorEntry> entries = BitsAndBytesNf4.CreateEntries("w.weight", q, "float16", doubleQuant: true);
        var byName = entries.ToDictionary(e => e.Info.Name);
        Assert.Equal(SafeTensorDType.U8, byName["w.weight.absmax"].Info.DType);
        Assert.Equal<TensorShape>([1200], byName["w.weight.absmax"].Info.Shape);
        Assert.Equal<TensorShape>([5], byName["w.weight.nested_absmax"].Info.Shape);
        Assert.Equal<TensorShape>([256], byName["w.weight.nested_quant_map"].Info.Shape);
        string json = Encoding.UTF8.GetString(byName["w.weight.quant_state.bitsandbytes__nf4"].Data.Span);
        Assert.StartsWith("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [256, 300], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": ", json);
        double mean = 0;
        foreach (float s in q.Scales)
        {
            mean += s;
        }

        mean /= q.BlockCount;
        double offset = JsonNode.Parse(json)!["nested_offset"]!.GetValue<double>();
        Assert.Equal(mean, offset, 1e-7);

        using var dir = new TempDir();
        string path = dir.File("dq.safetensors");
        SafeTensorsWriter.Write(path, entries);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        QuantizedTensor back = BitsAndBytesNf4.ReadNf4(file, "w.weight");
        Assert.True(q.PackedCodes.SequenceEqual(back.PackedCodes));
        float[] nested = file.ReadAsSingle("w.weight.nested_absmax");
        // The dynamic map's widest gap is 1/64 of the range next to ±1 (linspace(0.1, 1, 65)), so the error is at
        // most half of it times the block's max |absmax - mean|.
        for (int i = 0; i < q.BlockCount; i++)
        {
            double bound = (nested[i / 256] * (0.9 / 64 / 2)) + 1e-7;
            Assert.True(Math.Abs(q.Scales[i] - back.Scales[i]) <= bound, $"block {i}: {q.Scales[i]} vs {back.Scales[i]} (bound {bound})");
            Assert.Equal(MathF.Abs(q.Scales.Slice(i / 256 * 256, Math.Min(256, q.BlockCount - (i / 256 * 256))).ToArray().Select(s => MathF.Abs(s - (float)offset)).Max()), nested[i / 256], 1e-6f);
        }
    }

    [Fact]
    public void Bnb_SignedDynamicMap_FollowsTheConstruction()
    {
        ReadOnlySpan<float> map = BitsAndBytesNf4.SignedDynamicMap;
        Assert.Equal(256, map.Length);
        for (int i = 1; i < 256; i++)
        {
            Assert.True(map[i - 1] < map[i]);
        }

        Assert.Equal(0f, map[127]);
        Assert.Equal(1f, map[255]);
        for (int k = 0; k < 127; k++)
        {
            Assert.Equal(-map[254 - k], map[k]); // negatives mirror the positives (1.0 has no mirror)
        }

        Assert.Equal(0.99296875f, map[254], 1e-7f); // mean of the last two points of linspace(0.1, 1, 65)
        Assert.Equal(5.5e-7f, map[128], 1e-12f); // 1e-6 * (0.1 + 1) / 2
        Assert.Equal(-0.99296875f, map[0], 1e-7f);
    }

    [Fact]
    public void Bnb_RejectsNonNf4AndUnsupportedBlockSizes()
    {
        using Matrix w = Matrix.RandomNormal(8, 64, 1);
        QuantizedTensor nf2 = new NormalFloatQuantizer(2, 64).Quantize(w.Span, w.Shape);
        Assert.Contains("4-bit", Assert.Throws<ArgumentException>(() => BitsAndBytesNf4.CreateEntries("a.weight", nf2)).Message);
        QuantizedTensor block16 = new NormalFloatQuantizer(4, 16).Quantize(w.Span, w.Shape);
        Assert.Contains("block sizes", Assert.Throws<ArgumentException>(() => BitsAndBytesNf4.CreateEntries("a.weight", block16)).Message);
        QuantizedTensor block96 = new NormalFloatQuantizer(4, 96).Quantize(w.Span, w.Shape);
        Assert.Throws<ArgumentException>(() => BitsAndBytesNf4.CreateEntries("a.weight", block96));
        var fake = new QuantizedTensor(new TensorShape(2), 4, 64, [0x12], [1f], Enumerable.Range(0, 16).Select(i => i / 15f).ToArray(), "uniform4");
        Assert.Contains("NF4 table", Assert.Throws<ArgumentException>(() => BitsAndBytesNf4.CreateEntries("a.weight", fake)).Message);
        Assert.Throws<ArgumentException>(() => BitsAndBytesNf4.CreateEntries("a.weight", QuantizeRandom(2, 64, 1), "int8"));
        Assert.True(BitsAndBytesNf4.IsSupportedBlockSize(32));
        Assert.True(BitsAndBytesNf4.IsSupportedBlockSize(4096));
        Assert.False(BitsAndBytesNf4.IsSupportedBlockSize(8192));
    }

    [Fact]
    public void Bnb_QuantizationConfig_HasTransformersKeys()
    {
        JsonObject c = BitsAndBytesNf4.QuantizationConfig(true, "bfloat16");
        Assert.Equal("bitsandbytes", c["quant_method"]!.GetValue<string>());
        Assert.True(c["load_in_4bit"]!.GetValue<bool>());
        Assert.False(c["load_in_8bit"]!.GetValue<bool>());
        Assert.Equal("nf4", c["bnb_4bit_quant_type"]!.GetValue<string>());
        Assert.True(c["bnb_4bit_use_double_quant"]!.GetValue<bool>());
        Assert.Equal("bfloat16", c["bnb_4bit_compute_dtype"]!.GetValue<string>());
        Assert.Equal("uint8", c["bnb_4bit_quant_storage"]!.GetValue<string>());
        Assert.Null(c["llm_int8_skip_modules"]);
        Assert.Equal(["lm_head"], BitsAndBytesNf4.QuantizationConfig(false, "float16", ["lm_head"])["llm_int8_skip_modules"]!.AsArray().Select(n => n!.GetValue<string>()));
    }

    [Fact]
    public void Bnb_ReadNf4_ReportsMissingParts()
    {
        using var dir = new TempDir();
        string path = dir.File("partial.safetensors");
        SafeTensorsWriter.Write(path, BitsAndBytesNf4.CreateEntries("w.weight", QuantizeRandom(4, 64, 2)).Where(e => !e.Info.Name.EndsWith(".quant_map", StringComparison.Ordinal)).ToList());
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        var ex = Assert.Throws<SafeTensorsFormatException>(() => BitsAndBytesNf4.ReadNf4(file, "w.weight"));
        Assert.Contains("quant_map", ex.Message);
    }
}
