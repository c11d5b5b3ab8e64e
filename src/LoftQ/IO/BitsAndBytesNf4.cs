using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.IO;

/// <summary>
/// The pre-quantized bitsandbytes NF4 layout that transformers loads without re-quantizing. For a weight key
/// <c>W</c> (e.g. <c>model.layers.0.self_attn.q_proj.weight</c>) the entries are <c>W</c> (U8 [(n+1)/2, 1], packed
/// codes, first element in the high nibble), <c>W.absmax</c> (F32 [blocks]), <c>W.quant_map</c> (F32 [16]) and
/// <c>W.quant_state.bitsandbytes__nf4</c> (U8, UTF-8 JSON <c>{"quant_type": "nf4", "blocksize": 64, "dtype":
/// "bfloat16", "shape": [out, in]}</c>). With double quantization <c>W.absmax</c> is U8: the absmax values minus
/// their mean, quantized blockwise (256 per block) to bitsandbytes' signed dynamic 8-bit map, with
/// <c>W.nested_absmax</c> (F32), <c>W.nested_quant_map</c> (F32 [256]) and JSON keys <c>nested_blocksize</c>,
/// <c>nested_dtype</c> ("float32") and <c>nested_offset</c> (the mean).
/// </summary>
public static class BitsAndBytesNf4
{
    /// <summary>The block size of the nested (double) quantization of absmax values.</summary>
    public const int NestedBlockSize = 256;

    internal const string QuantStateSuffix = ".quant_state.bitsandbytes__nf4";

    private static readonly float[] s_dynamicMap = CreateSignedDynamicMap();

    /// <summary>
    /// bitsandbytes' signed dynamic 8-bit map (create_dynamic_map(signed=True), 7 exponent bits): for
    /// i = 0..6, the 2^i midpoints of float32 linspace(0.1, 1, 2^i + 1), scaled by ±10^(i−6); plus 0 and 1;
    /// sorted ascending (256 values).
    /// </summary>
    public static ReadOnlySpan<float> SignedDynamicMap => s_dynamicMap;

    /// <summary>Whether bitsandbytes accepts <paramref name="blockSize"/> for 4-bit quantization (powers of two, 32..4096; 32 needs a recent CUDA build).</summary>
    public static bool IsSupportedBlockSize(int blockSize) => blockSize is >= 32 and <= 4096 && int.IsPow2(blockSize);

    /// <summary>
    /// bitsandbytes dequantizes to <paramref name="dtype"/> as code × absmax: an absmax beyond that dtype's range
    /// (or not finite) would become ±∞ when the model is loaded, so it is refused here.
    /// </summary>
    private static void CheckScalesFit(string weightName, ReadOnlySpan<float> scales, string dtype)
    {
        float largest = dtype switch
        {
            "float16" => (float)Half.MaxValue,
            "bfloat16" => FloatConversions.BFloat16ToSingle(0x7F7F),
            _ => float.MaxValue,
        };
        for (int i = 0; i < scales.Length; i++)
        {
            if (!float.IsFinite(scales[i]) || Math.Abs(scales[i]) > largest)
            {
                throw new OverflowException(string.Create(CultureInfo.InvariantCulture,
                    $"Tensor '{weightName}': block {i}'s absmax {scales[i]:R} does not fit {dtype} (largest finite value {largest:R}); bitsandbytes would dequantize it to infinity."));
            }
        }
    }

    /// <summary>Creates the safetensors entries for one NF4-quantized weight.</summary>
    /// <param name="weightName">The weight key, e.g. <c>model.layers.0.mlp.up_proj.weight</c>; the other keys append to it.</param>
    /// <param name="nf4">An NF4 tensor (bitsandbytes' code book, no offsets, supported block size).</param>
    /// <param name="originalDType">The dtype transformers restores on dequantization (<c>bfloat16</c>, <c>float16</c> or <c>float32</c>).</param>
    /// <param name="doubleQuant">Also quantize the absmax values (bitsandbytes' compress_statistics).</param>
    /// <exception cref="ArgumentException">The tensor is not bitsandbytes-compatible NF4.</exception>
    public static IReadOnlyList<SafeTensorEntry> CreateEntries(string weightName, QuantizedTensor nf4, string originalDType = "bfloat16", bool doubleQuant = false)
    {
        ArgumentException.ThrowIfNullOrEmpty(weightName);
        ArgumentNullException.ThrowIfNull(nf4);
        ArgumentNullException.ThrowIfNull(originalDType);
        Validate(weightName, nf4);
        if (originalDType is not ("bfloat16" or "float16" or "float32"))
        {
            throw new ArgumentException($"'{weightName}': original dtype must be bfloat16, float16 or float32, got '{originalDType}'.", nameof(originalDType));
        }

        CheckScalesFit(weightName, nf4.Scales, originalDType);
        long n = nf4.ElementCount;
        var state = new List<(string Key, string Json)>
        {
            ("quant_type", "\"nf4\""),
            ("blocksize", nf4.BlockSize.ToString(CultureInfo.InvariantCulture)),
            ("dtype", $"\"{originalDType}\""),
            ("shape", $"[{string.Join(", ", nf4.Shape.Dimensions.ToArray())}]"),
        };
        var entries = new List<SafeTensorEntry>(6)
        {
            SafeTensorEntry.FromBytes(weightName, SafeTensorDType.U8, [checked((int)((n + 1) / 2)), 1], nf4.PackedCodes.ToArray()),
        };
        if (doubleQuant)
        {
            (byte[] codes, float[] nestedAbsmax, float offset) = QuantizeAbsmax(nf4.Scales);
            entries.Add(SafeTensorEntry.FromBytes(weightName + ".absmax", SafeTensorDType.U8, [codes.Length], codes));
            entries.Add(F32(weightName + ".quant_map", nf4.CodeBook));
            entries.Add(F32(weightName + ".nested_absmax", nestedAbsmax));
            entries.Add(F32(weightName + ".nested_quant_map", s_dynamicMap));
            state.Add(("nested_blocksize", NestedBlockSize.ToString(CultureInfo.InvariantCulture)));
            state.Add(("nested_dtype", "\"float32\""));
            state.Add(("nested_offset", PeftAdapterConfig.PythonFloat(offset)));
        }
        else
        {
            entries.Add(F32(weightName + ".absmax", nf4.Scales));
            entries.Add(F32(weightName + ".quant_map", nf4.CodeBook));
        }

        // json.dumps with its default separators, keys in bitsandbytes' order.
        byte[] json = Encoding.UTF8.GetBytes("{" + string.Join(", ", state.Select(kv => $"\"{kv.Key}\": {kv.Json}")) + "}");
        entries.Add(SafeTensorEntry.FromBytes(weightName + QuantStateSuffix, SafeTensorDType.U8, [json.Length], json));
        return entries;
    }

    /// <summary>
    /// The <c>quantization_config</c> object for config.json (transformers' BitsAndBytesConfig.to_dict() for NF4).
    /// </summary>
    /// <param name="doubleQuant">bnb_4bit_use_double_quant.</param>
    /// <param name="computeDType">bnb_4bit_compute_dtype, e.g. <c>bfloat16</c>.</param>
    /// <param name="skipModules">llm_int8_skip_modules: modules left unquantized (null lets transformers decide, it skips lm_head).</param>
    public static JsonObject QuantizationConfig(bool doubleQuant, string computeDType = "bfloat16", IReadOnlyList<string>? skipModules = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(computeDType);
        return new JsonObject
        {
            ["_load_in_4bit"] = true,
            ["_load_in_8bit"] = false,
            ["bnb_4bit_compute_dtype"] = computeDType,
            ["bnb_4bit_quant_storage"] = "uint8",
            ["bnb_4bit_quant_type"] = "nf4",
            ["bnb_4bit_use_double_quant"] = doubleQuant,
            ["llm_int8_enable_fp32_cpu_offload"] = false,
            ["llm_int8_has_fp16_weight"] = false,
            ["llm_int8_skip_modules"] = skipModules is null ? null : new JsonArray(skipModules.Select(s => (JsonNode?)JsonValue.Create(s)).ToArray()),
            ["llm_int8_threshold"] = 6.0,
            ["load_in_4bit"] = true,
            ["load_in_8bit"] = false,
            ["quant_method"] = "bitsandbytes",
        };
    }

    /// <summary>
    /// Reads the NF4 weight <paramref name="weightName"/> back from <paramref name="file"/> into a
    /// <see cref="QuantizedTensor"/> (code book = the stored quant_map); double-quantized absmax values are
    /// dequantized as bitsandbytes does (nested_quant_map[code] · nested_absmax[block] + nested_offset, in float32).
    /// </summary>
    /// <exception cref="SafeTensorsFormatException">An entry is missing or inconsistent.</exception>
    public static QuantizedTensor ReadNf4(SafeTensorsFile file, string weightName)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentException.ThrowIfNullOrEmpty(weightName);
        string where = $"{file.Path}: NF4 weight '{weightName}'";
        JsonElement state;
        try
        {
            using JsonDocument doc = JsonDocument.Parse(Require(file, weightName + QuantStateSuffix, SafeTensorDType.U8, where).ToArray());
            state = doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            throw new SafeTensorsFormatException($"{where}: the quant state is not valid JSON ({ex.Message}).", ex);
        }

        if (state.ValueKind != JsonValueKind.Object
            || !state.TryGetProperty("quant_type", out JsonElement qt) || qt.ValueKind != JsonValueKind.String || qt.GetString() != "nf4"
            || !state.TryGetProperty("blocksize", out JsonElement bs) || !bs.TryGetInt32(out int blockSize) || !IsSupportedBlockSize(blockSize)
            || !state.TryGetProperty("shape", out JsonElement shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
        {
            throw new SafeTensorsFormatException($"{where}: the quant state needs quant_type \"nf4\", a supported blocksize and a shape, got {state.GetRawText()}.");
        }

        var dims = new List<int>();
        foreach (JsonElement d in shapeElement.EnumerateArray())
        {
            if (!d.TryGetInt32(out int v) || v < 0)
            {
                throw new SafeTensorsFormatException($"{where}: bad shape {shapeElement.GetRawText()}.");
            }

            dims.Add(v);
        }

        var shape = new TensorShape([.. dims]);
        long n = shape.ElementCount;
        byte[] packed = Require(file, weightName, SafeTensorDType.U8, where).ToArray();
        if (packed.LongLength != (n + 1) / 2)
        {
            throw new SafeTensorsFormatException($"{where}: {n} values need {(n + 1) / 2} packed bytes, found {packed.Length}.");
        }

        float[] codeBook = ReadF32(file, weightName + ".quant_map", where);
        if (codeBook.Length != 16)
        {
            throw new SafeTensorsFormatException($"{where}: quant_map has {codeBook.Length} entries, expected 16.");
        }

        long blocks = (n + blockSize - 1) / blockSize;
        float[] absmax;
        SafeTensorInfo absmaxInfo = file.Contains(weightName + ".absmax")
            ? file.GetInfo(weightName + ".absmax")
            : throw new SafeTensorsFormatException($"{where}: '{weightName}.absmax' is missing.");
        if (state.TryGetProperty("nested_blocksize", out JsonElement nb))
        {
            if (!nb.TryGetInt32(out int nestedBlock) || nestedBlock < 1
                || !state.TryGetProperty("nested_offset", out JsonElement no) || no.ValueKind != JsonValueKind.Number)
            {
                throw new SafeTensorsFormatException($"{where}: nested_blocksize and nested_offset must be numbers, got {state.GetRawText()}.");
            }

            float offset = no.GetSingle();
            ReadOnlySpan<byte> codes = Require(file, weightName + ".absmax", SafeTensorDType.U8, where);
            float[] nestedAbsmax = ReadF32(file, weightName + ".nested_absmax", where);
            float[] nestedMap = ReadF32(file, weightName + ".nested_quant_map", where);
            if (codes.Length != blocks || nestedMap.Length != 256 || nestedAbsmax.LongLength != (codes.Length + nestedBlock - 1) / nestedBlock)
            {
                throw new SafeTensorsFormatException($"{where}: double-quantized absmax has {codes.Length} codes, {nestedAbsmax.Length} nested scales and a {nestedMap.Length}-entry map; expected {blocks}, {(blocks + nestedBlock - 1) / nestedBlock} and 256.");
            }

            absmax = new float[blocks];
            for (int i = 0; i < absmax.Length; i++)
            {
                absmax[i] = (nestedMap[codes[i]] * nestedAbsmax[i / nestedBlock]) + offset;
            }
        }
        else
        {
            if (absmaxInfo.DType != SafeTensorDType.F32)
            {
                throw new SafeTensorsFormatException($"{where}: absmax is {absmaxInfo.DType.ToHeaderString()} without nested quantization; expected F32.");
            }

            absmax = file.ReadAsSingle(weightName + ".absmax");
            if (absmax.LongLength != blocks)
            {
                throw new SafeTensorsFormatException($"{where}: absmax has {absmax.Length} entries, expected {blocks}.");
            }
        }

        return new QuantizedTensor(shape, 4, blockSize, packed, absmax, codeBook, "nf4");
    }

    /// <summary>
    /// Blockwise 8-bit quantization of absmax values as bitsandbytes' compress_statistics does it: subtract the
    /// mean, take each 256-block's absolute maximum, and map value / blockmax to the nearest entry of the signed
    /// dynamic map (ties to the lower index).
    /// </summary>
    internal static (byte[] Codes, float[] NestedAbsmax, float Offset) QuantizeAbsmax(ReadOnlySpan<float> absmax)
    {
        double sum = 0;
        foreach (float a in absmax)
        {
            sum += a;
        }

        float offset = absmax.IsEmpty ? 0f : (float)(sum / absmax.Length);
        int blocks = (absmax.Length + NestedBlockSize - 1) / NestedBlockSize;
        var nested = new float[blocks];
        var codes = new byte[absmax.Length];
        for (int b = 0; b < blocks; b++)
        {
            int start = b * NestedBlockSize;
            int end = Math.Min(start + NestedBlockSize, absmax.Length);
            float max = 0f;
            for (int i = start; i < end; i++)
            {
                max = Math.Max(max, Math.Abs(absmax[i] - offset));
            }

            nested[b] = max;
            float inv = max > 0f ? 1f / max : 0f;
            for (int i = start; i < end; i++)
            {
                codes[i] = (byte)Nearest(s_dynamicMap, (absmax[i] - offset) * inv);
            }
        }

        return (codes, nested, offset);
    }

    private static int Nearest(float[] sortedMap, float x)
    {
        int index = Array.BinarySearch(sortedMap, x);
        if (index >= 0)
        {
            return Array.IndexOf(sortedMap, sortedMap[index]); // first of equal entries (the map repeats nothing but be safe)
        }

        int upper = ~index;
        if (upper == 0)
        {
            return 0;
        }

        if (upper == sortedMap.Length)
        {
            return sortedMap.Length - 1;
        }

        int lower = upper - 1;
        return x - sortedMap[lower] <= sortedMap[upper] - x ? lower : upper;
    }

    private static float[] CreateSignedDynamicMap()
    {
        var values = new List<float>(256) { 0f, 1f };
        for (int i = 0; i < 7; i++)
        {
            int items = (1 << i) + 1;
            float[] boundaries = TorchLinspace(0.1f, 1f, items);
            double scale = Math.Pow(10, i - 6);
            for (int k = 0; k < items - 1; k++)
            {
                float mean = (boundaries[k] + boundaries[k + 1]) / 2f;
                values.Add((float)(scale * mean));
                values.Add((float)(-scale * mean));
            }
        }

        values.Sort();
        return [.. values];
    }

    /// <summary>torch.linspace in float32: start + i·step for the lower half, end − (steps−1−i)·step for the upper half.</summary>
    private static float[] TorchLinspace(float start, float end, int steps)
    {
        var result = new float[steps];
        if (steps == 1)
        {
            result[0] = start;
            return result;
        }

        float step = (end - start) / (steps - 1);
        int half = steps / 2;
        for (int i = 0; i < steps; i++)
        {
            result[i] = i < half ? start + (step * i) : end - (step * (steps - 1 - i));
        }

        return result;
    }

    private static void Validate(string weightName, QuantizedTensor nf4)
    {
        if (nf4.Bits != 4 || nf4.HasOffsets)
        {
            throw new ArgumentException($"'{weightName}': bitsandbytes NF4 needs 4-bit codes without offsets, got {nf4.Bits}-bit {nf4.QuantizerName}{(nf4.HasOffsets ? " with offsets" : string.Empty)}.", nameof(nf4));
        }

        ReadOnlySpan<float> expected = new NormalFloatQuantizer(4).CodeBook;
        if (!nf4.CodeBook.SequenceEqual(expected))
        {
            throw new ArgumentException($"'{weightName}': the code book is not bitsandbytes' NF4 table (quantizer '{nf4.QuantizerName}').", nameof(nf4));
        }

        if (!IsSupportedBlockSize(nf4.BlockSize))
        {
            throw new ArgumentException($"'{weightName}': bitsandbytes accepts 4-bit block sizes 32, 64, ..., 4096 (powers of two), got {nf4.BlockSize}.", nameof(nf4));
        }
    }

    private static ReadOnlySpan<byte> Require(SafeTensorsFile file, string name, SafeTensorDType dtype, string where)
    {
        if (!file.Contains(name))
        {
            throw new SafeTensorsFormatException($"{where}: '{name}' is missing.");
        }

        SafeTensorInfo info = file.GetInfo(name);
        return info.DType == dtype
            ? file.GetBytes(name)
            : throw new SafeTensorsFormatException($"{where}: '{name}' is {info.DType.ToHeaderString()}, expected {dtype.ToHeaderString()}.");
    }

    private static float[] ReadF32(SafeTensorsFile file, string name, string where) =>
        MemoryMarshal.Cast<byte, float>(Require(file, name, SafeTensorDType.F32, where)).ToArray();

    private static SafeTensorEntry F32(string name, ReadOnlySpan<float> values) =>
        SafeTensorEntry.FromBytes(name, SafeTensorDType.F32, [values.Length], MemoryMarshal.AsBytes(values).ToArray());
}
