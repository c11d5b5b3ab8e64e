using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using LoftQNet.IO;

namespace LoftQNet.Tests.IO;

/// <summary>
/// Issue 8: deterministic fuzzing of every untrusted input the library opens. Three families of generated malformed
/// files (safetensors files, shard indexes with real shards beside them, config.json), 11,000 cases in all, each
/// opened through the public API. Every failure must be one of the exceptions the API documents (never a raw
/// <c>JsonException</c>, <c>NullReferenceException</c>, <c>IndexOutOfRangeException</c>, <c>OverflowException</c>,
/// <c>InvalidOperationException</c>, <c>KeyNotFoundException</c>, …) and every success must be genuinely valid.
/// </summary>
[Trait("Category", "Slow")]
public sealed class FuzzTests
{
    public const int SafeTensorsCases = 6000;
    public const int IndexCases = 2500;
    public const int ConfigCases = 2500;

    private static readonly string[] s_shardA = ["model-00001-of-00002.safetensors", "a.0", "a.1"];
    private static readonly string[] s_shardB = ["model-00002-of-00002.safetensors", "b.0", "b.1"];

    // ---------------------------------------------------------------- family 1: safetensors files

    [Fact]
    public void Safetensors_mutations_open_validly_or_throw_SafeTensorsFormatException()
    {
        var clock = Stopwatch.StartNew();
        (int opened, int rejected) = RunSafeTensorsFamily(SafeTensorsCases, seed: 20240601);
        Assert.True(rejected > SafeTensorsCases / 2, $"rejected {rejected}");
        Assert.True(opened > 50, $"opened {opened}");
        Console.WriteLine($"FuzzTests safetensors: {SafeTensorsCases} cases, {opened} opened, {rejected} rejected, {clock.Elapsed.TotalSeconds:F1} s");
    }

    /// <summary>Runs <paramref name="count"/> safetensors cases (also used, smaller, by the default-run smoke test).</summary>
    internal static (int Opened, int Rejected) RunSafeTensorsFamily(int count, int seed)
    {
        using var dir = new TempDir();
        byte[] valid = ValidSafeTensors(dir.File("valid.safetensors"));
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(valid);
        string header = Encoding.UTF8.GetString(valid, 8, headerLength);

        var rng = new Random(seed);
        string path = dir.File("fuzz.safetensors");
        var failures = new Failures();
        int opened = 0, rejected = 0;
        for (int iteration = 0; iteration < count; iteration++)
        {
            (string kind, byte[] bytes) = MutateSafeTensors(valid, header, headerLength, rng, iteration);
            File.WriteAllBytes(path, bytes);
            try
            {
                using SafeTensorsFile file = SafeTensorsFile.Open(path);
                CheckFullyReadable(file, bytes.Length);
                opened++;
            }
            catch (SafeTensorsFormatException ex) when (ex.Message.Contains(path, StringComparison.Ordinal))
            {
                rejected++;
            }
            catch (Exception ex)
            {
                failures.Add(iteration, kind, bytes.Length < 4096 ? Encoding.UTF8.GetString(bytes) : $"{bytes.Length} bytes", ex);
            }
        }

        failures.AssertNone("safetensors");
        return (opened, rejected);
    }

    private static byte[] ValidSafeTensors(string path)
    {
        SafeTensorsWriter.Write(path, [
            SafeTensorEntry.FromSingle("w.bf16", [4, 6], Enumerable.Range(0, 24).Select(i => i * 0.5f).ToArray(), SafeTensorDType.BF16),
            SafeTensorEntry.FromSingle("w.f32", [3], [1f, -2f, 3f]),
            SafeTensorEntry.FromSingle("w.f16", [2, 2], [0.5f, 1f, 2f, 4f], SafeTensorDType.F16),
            SafeTensorEntry.FromBytes("w.u8", SafeTensorDType.U8, [5], new byte[] { 1, 2, 3, 4, 5 }),
            SafeTensorEntry.FromBytes("w.f64", SafeTensorDType.F64, [1], BitConverter.GetBytes(2.5)),
            SafeTensorEntry.FromBytes("w.empty", SafeTensorDType.F32, [0, 3], Array.Empty<byte>()),
        ], new Dictionary<string, string> { ["format"] = "pt" });
        return File.ReadAllBytes(path);
    }

    /// <summary>An opened file must be self-consistent and every tensor must read back in full.</summary>
    private static void CheckFullyReadable(SafeTensorsFile file, long fileLength)
    {
        long covered = 0;
        foreach (SafeTensorInfo t in file.Tensors)
        {
            Assert.Equal(t.ElementCount * t.DType.ElementSize(), t.ByteLength);
            Assert.Equal(covered, t.DataOffset);
            Assert.True(file.Contains(t.Name));
            covered += t.ByteLength;
            Assert.Equal(t.ByteLength, file.GetBytes(t.Name).Length);
            if (t.DType is SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16 or SafeTensorDType.F64)
            {
                Assert.Equal(t.ElementCount, file.ReadAsSingle(t.Name).LongLength);
            }
        }

        Assert.Equal(fileLength - file.DataStart, covered);
    }

    private static (string Kind, byte[] Bytes) MutateSafeTensors(byte[] valid, string header, int headerLength, Random rng, int iteration)
    {
        byte[] bytes = (byte[])valid.Clone();
        switch (iteration % 16)
        {
            case 0: // truncate anywhere: in the prefix, the header, or the data
                return ("truncate", bytes.AsSpan(0, rng.Next(0, bytes.Length)).ToArray());
            case 1: // flip bits in the header
                for (int k = rng.Next(1, 4); k > 0; k--)
                {
                    bytes[8 + rng.Next(headerLength)] ^= (byte)(1 << rng.Next(8));
                }

                return ("header bit flips", bytes);
            case 2: // flip bits in the length prefix
                bytes[rng.Next(8)] ^= (byte)(1 << rng.Next(8));
                return ("prefix bit flip", bytes);
            case 3: // huge, small or random header lengths
                {
                    ulong[] lengths = [0, 1, 7, 8, 1UL << 63, ulong.MaxValue, (ulong)long.MaxValue, 100_000_000, 100_000_001, (ulong)rng.NextInt64(), (ulong)(headerLength + rng.Next(-16, 16))];
                    BinaryPrimitives.WriteUInt64LittleEndian(bytes, lengths[rng.Next(lengths.Length)]);
                    return ("header length", bytes);
                }

            case 4: // replace one number in the header by a bogus one (offsets, dims)
                {
                    MatchCollection numbers = Regex.Matches(header, "-?\\d+");
                    Match m = numbers[rng.Next(numbers.Count)];
                    string[] bogus = ["-1", "-0", "0", "1", "3", "7", "8", "9223372036854775807", "9223372036854775808", "18446744073709551615", "1e3", "1E400", "4.5", "4.0", "2e0", "99999999999999999999999", "0x10", "NaN", "Infinity", "+4", "04", rng.Next(0, 200).ToString(CultureInfo.InvariantCulture)];
                    return ("bogus number", Rebuild(header[..m.Index] + bogus[rng.Next(bogus.Length)] + header[(m.Index + m.Length)..], valid, headerLength, rng.Next(4) == 0 ? rng.Next(-3, 4) : 0));
                }

            case 5: // structural JSON damage
                {
                    string[] edits =
                    [
                        header.Replace("\"w.f32\"", "\"w.bf16\"", StringComparison.Ordinal), // duplicate name
                    header.Replace("\"F32\"", "\"F31\"", StringComparison.Ordinal),
                    header.Replace("\"BF16\"", "\"U8\"", StringComparison.Ordinal), // wrong byte length
                    header.Replace("\"shape\"", "\"shap\"", StringComparison.Ordinal),
                    header.Replace("\"data_offsets\":[", "\"data_offsets\":[[", StringComparison.Ordinal),
                    header.Replace("]", "", StringComparison.Ordinal),
                    header.Replace("{", "[", StringComparison.Ordinal),
                    header.Replace("\"pt\"", "[\"pt\"]", StringComparison.Ordinal),
                    new string('[', 500) + new string(']', 500),
                    "null",
                    "\"just a string\"",
                    "{}",
                    "{",
                    header.Insert(rng.Next(header.Length), "\u0000"),
                    header.Insert(rng.Next(header.Length), ","),
                    header.Remove(rng.Next(header.Length), 1),
                ];
                    return ("structural", Rebuild(edits[rng.Next(edits.Length)], valid, headerLength, 0));
                }

            case 6: // random bytes anywhere in the header and data
                for (int k = rng.Next(1, 10); k > 0; k--)
                {
                    bytes[8 + rng.Next(bytes.Length - 8)] = (byte)rng.Next(256);
                }

                return ("random bytes", bytes);
            case 7: // grow or shrink the data region
                {
                    int delta = rng.Next(-20, 21);
                    var resized = new byte[Math.Max(0, bytes.Length + delta)];
                    Array.Copy(bytes, resized, Math.Min(bytes.Length, resized.Length));
                    return ("resize data", resized);
                }

            case 8: // wrong dtype names
                {
                    string[] dtypes = ["f32", "float32", "FLOAT", "", " F32", "F32 ", "BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64", "F8_E4M3", "F8_E5M2", "F4", "Q4_0", "\u00c9", "F32\u0000", "\\u0046\\u0033\\u0032"];
                    return ("dtype", EditTensor(header, valid, headerLength, rng, (t, _) => t["dtype"] = dtypes[rng.Next(dtypes.Length)]));
                }

            case 9: // data_offsets: negative, overlapping, out of range, swapped, ill-typed
                return ("offsets", EditTensor(header, valid, headerLength, rng, (t, all) =>
                {
                    long begin = (long)t["data_offsets"]![0]!, end = (long)t["data_offsets"]![1]!;
                    JsonObject other = all[rng.Next(all.Count)];
                    t["data_offsets"] = rng.Next(12) switch
                    {
                        0 => new JsonArray(-1, end),
                        1 => new JsonArray(begin, -1),
                        2 => new JsonArray(end, begin),
                        3 => new JsonArray(begin + 1, end + 1),
                        4 => new JsonArray(begin, long.MaxValue),
                        5 => (JsonNode)other["data_offsets"]!.DeepClone(), // overlap another tensor
                        6 => new JsonArray(begin),
                        7 => new JsonArray(begin, end, end),
                        8 => new JsonArray((double)begin + 0.5, end),
                        9 => new JsonArray(begin.ToString(CultureInfo.InvariantCulture), end),
                        10 => JsonValue.Create(begin),
                        _ => new JsonArray(begin + 1_000_000, end + 1_000_000),
                    };
                }));
            case 10: // shapes: length mismatches, huge dims, ill-typed dims
                return ("shape", EditTensor(header, valid, headerLength, rng, (t, _) =>
                {
                    t["shape"] = rng.Next(14) switch
                    {
                        0 => new JsonArray(long.MaxValue, 2),
                        1 => new JsonArray(4294967296L, 4294967296L),
                        2 => new JsonArray(3037000500L, 3037000500L),
                        3 => new JsonArray(-1),
                        4 => new JsonArray(1.5),
                        5 => new JsonArray("4"),
                        6 => new JsonArray(),
                        7 => new JsonArray((JsonNode?)null),
                        8 => new JsonArray(new JsonArray(2, 2)),
                        9 => new JsonArray(0),
                        10 => new JsonArray(long.MaxValue, 0),
                        11 => new JsonArray(Enumerable.Range(0, 33).Select(_ => (JsonNode?)JsonValue.Create(2)).ToArray()),
                        12 => JsonValue.Create(4),
                        _ => new JsonArray(rng.Next(0, 30), rng.Next(0, 4)),
                    };
                }));
            case 11: // duplicate keys: tensor names, fields, metadata
                {
                    int at = header.IndexOf("\"dtype\"", StringComparison.Ordinal);
                    string[] edits =
                    [
                        header.Insert(at, "\"dtype\":\"F32\","),
                    header.Insert(header.IndexOf("\"shape\"", StringComparison.Ordinal), "\"shape\":[1],"),
                    header.Insert(header.IndexOf("\"data_offsets\"", StringComparison.Ordinal), "\"data_offsets\":[0,0],"),
                    header.Replace("\"format\":\"pt\"", "\"format\":\"pt\",\"format\":\"pt\"", StringComparison.Ordinal),
                    header[..^1] + ",\"__metadata__\":{}}",
                    header[..^1] + ",\"w.u8\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
                    header[..^1] + ",\"w.e2\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},\"w.e2\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
                ];
                    return ("duplicates", Rebuild(edits[rng.Next(edits.Length)], valid, headerLength, 0));
                }

            case 12: // deep nesting inside a tensor entry, the metadata or an unknown field
                {
                    int depth = new[] { 30, 62, 63, 64, 65, 200, 5000 }[rng.Next(7)];
                    string nested = new string('[', depth) + new string(']', depth);
                    string nestedObject = string.Concat(Enumerable.Repeat("{\"a\":", depth)) + "1" + new string('}', depth);
                    string[] edits =
                    [
                        header.Insert(header.IndexOf("\"dtype\"", StringComparison.Ordinal), $"\"extra\":{nested},"),
                    header.Insert(header.IndexOf("\"dtype\"", StringComparison.Ordinal), $"\"extra\":{nestedObject},"),
                    header.Replace("\"pt\"", nested, StringComparison.Ordinal),
                    header[..^1] + $",\"deep\":{nestedObject}}}",
                ];
                    return ("nesting", Rebuild(edits[rng.Next(edits.Length)], valid, headerLength, 0));
                }

            case 13: // __metadata__ with non-string values
                {
                    string[] values = ["1", "null", "true", "[]", "{}", "[\"pt\"]", "{\"a\":\"b\"}", "1.5", "\"\"", "\"\\u0000\"", "\"\\ud800\"", "\"\u00e9\u4e2d\ud83d\ude00\""];
                    string v = values[rng.Next(values.Length)];
                    string[] edits =
                    [
                        header.Replace("\"pt\"", v, StringComparison.Ordinal),
                    header.Replace("{\"format\":\"pt\"}", v, StringComparison.Ordinal),
                    header.Replace("\"format\"", v.StartsWith('"') ? v : "\"k\"", StringComparison.Ordinal),
                ];
                    return ("metadata", Rebuild(edits[rng.Next(edits.Length)], valid, headerLength, 0));
                }

            case 14: // trailing garbage after the JSON, padding, garbage after the data
                {
                    string[] tails = [" ", "   ", "\n", "\t", "\u0000", "x", "}", "{}", "null", ",", "\u00a0", "\ufeff"];
                    string tail = string.Concat(Enumerable.Repeat(tails[rng.Next(tails.Length)], rng.Next(1, 9)));
                    return rng.Next(3) switch
                    {
                        0 => ("trailing header garbage", Rebuild(header + tail, valid, headerLength, 0)),
                        1 => ("leading header garbage", Rebuild(tail + header, valid, headerLength, 0)),
                        _ => ("trailing file garbage", [.. bytes, .. Encoding.UTF8.GetBytes(tail)]),
                    };
                }

            default: // unicode and odd tensor names
                {
                    string[] names = ["\u00e9\u4e2d\ud83d\ude00", "", " ", "\\u0000", "\\ud800", "\\udc00x", "\\ud83d\\ude00", "a\\\\b", "__metadata__", "../../etc/passwd", new string('n', 70_000), "\\\"", "\u200b", "w.f32"];
                    string name = names[rng.Next(names.Length)];
                    string[] tensors = ["\"w.bf16\"", "\"w.f32\"", "\"w.f16\"", "\"w.u8\"", "\"w.f64\"", "\"w.empty\""];
                    return ("names", Rebuild(header.Replace(tensors[rng.Next(tensors.Length)], "\"" + name + "\"", StringComparison.Ordinal), valid, headerLength, 0));
                }
        }
    }

    /// <summary>Applies <paramref name="edit"/> to one random tensor entry of the header (as a JSON tree) and rebuilds the file.</summary>
    private static byte[] EditTensor(string header, byte[] valid, int headerLength, Random rng, Action<JsonObject, List<JsonObject>> edit)
    {
        var root = (JsonObject)JsonNode.Parse(header)!;
        List<JsonObject> tensors = root.Where(p => p.Key != "__metadata__").Select(p => (JsonObject)p.Value!).ToList();
        edit(tensors[rng.Next(tensors.Count)], tensors);
        return Rebuild(root.ToJsonString(), valid, headerLength, rng.Next(5) == 0 ? rng.Next(-8, 9) : 0);
    }

    internal static byte[] Rebuild(string header, byte[] valid, int headerLength, int dataDelta)
    {
        byte[] h = Encoding.UTF8.GetBytes(header);
        int dataLength = Math.Max(0, valid.Length - 8 - headerLength + dataDelta);
        var bytes = new byte[8 + h.Length + dataLength];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)h.Length);
        h.CopyTo(bytes, 8);
        Array.Copy(valid, 8 + headerLength, bytes, 8 + h.Length, Math.Min(dataLength, valid.Length - 8 - headerLength));
        return bytes;
    }

    // ---------------------------------------------------------------- family 2: shard indexes

    [Fact]
    public void Index_mutations_open_validly_or_throw_a_documented_exception()
    {
        var clock = Stopwatch.StartNew();
        using var root = new TempDir();
        string dir = Path.Combine(root.Path, "model");
        Directory.CreateDirectory(dir);
        Directory.CreateDirectory(Path.Combine(dir, "sub"));
        File.WriteAllText(Path.Combine(dir, "config.json"), ValidConfigJson);
        foreach (string[] shard in new[] { s_shardA, s_shardB })
        {
            WriteShard(Path.Combine(dir, shard[0]), shard[1..]);
        }

        WriteShard(Path.Combine(dir, "other.safetensors"), ["x.0"]);
        WriteShard(Path.Combine(dir, "sub", "nested.safetensors"), ["n.0"]);
        WriteShard(Path.Combine(root.Path, "outside.safetensors"), ["o.0"]);
        File.WriteAllBytes(Path.Combine(dir, "garbage.bin"), Encoding.ASCII.GetBytes("PK\u0003\u0004 not a safetensors file"));
        File.WriteAllBytes(Path.Combine(dir, "empty.safetensors"), []);
        string indexPath = Path.Combine(dir, HuggingFaceCheckpoint.IndexFileName);

        var rng = new Random(8_2024);
        var failures = new Failures();
        int opened = 0, rejected = 0;
        for (int iteration = 0; iteration < IndexCases; iteration++)
        {
            (string kind, byte[] bytes) = MutateIndex(rng, iteration);
            File.WriteAllBytes(indexPath, bytes);
            try
            {
                using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(dir);
                // A success must be self-consistent: plain shard names among the real shards, each tensor in its shard and readable.
                Assert.True(checkpoint.IsSharded);
                Assert.Subset(new HashSet<string>([s_shardA[0], s_shardB[0], "other.safetensors"]), checkpoint.ShardFiles.ToHashSet());
                Assert.Equal(checkpoint.TensorNames.Count, checkpoint.TensorNames.Distinct(StringComparer.Ordinal).Count());
                foreach (string tensor in checkpoint.TensorNames)
                {
                    Assert.True(checkpoint.OpenShard(checkpoint.ShardOf(tensor)).Contains(tensor));
                    Assert.Equal(4, checkpoint.ReadAsSingle(tensor).Length);
                }

                opened++;
            }
            catch (Exception ex) when (ex is CheckpointFormatException or SafeTensorsFormatException && ex.Message.Contains(dir, StringComparison.Ordinal))
            {
                rejected++;
            }
            catch (Exception ex)
            {
                failures.Add(iteration, kind, Encoding.UTF8.GetString(bytes), ex);
            }
        }

        failures.AssertNone("index");
        Assert.True(opened > 20, $"opened {opened}");
        Assert.True(rejected > IndexCases / 2, $"rejected {rejected}");
        Console.WriteLine($"FuzzTests index: {IndexCases} cases, {opened} opened, {rejected} rejected, {clock.Elapsed.TotalSeconds:F1} s");
    }

    private static void WriteShard(string path, string[] tensors) =>
        SafeTensorsWriter.Write(path, tensors.Select((t, i) => SafeTensorEntry.FromSingle(t, [2, 2], [i, 1f, 2f, 3f])).ToList());

    private static (string Kind, byte[] Bytes) MutateIndex(Random rng, int iteration)
    {
        // The valid map as an ordered list of raw JSON members, which mutations edit as text (so that duplicates survive).
        var map = new List<(string Key, string Value)>
        {
            ("\"a.0\"", Q(s_shardA[0])), ("\"a.1\"", Q(s_shardA[0])), ("\"b.0\"", Q(s_shardB[0])), ("\"b.1\"", Q(s_shardB[0])),
        };
        string metadata = "{\"total_size\": 64}";
        string kind;
        switch (iteration % 12)
        {
            case 0: // valid, possibly with harmless variations
                {
                    kind = "valid";
                    string[] metas = ["{\"total_size\": 64}", "null", "{}", "{\"a\": [1, 2], \"b\": {\"c\": null}, \"d\": \"\u00e9\"}", "{\"total_size\": 1e400}"];
                    metadata = metas[rng.Next(metas.Length)];
                    Shuffle(rng, map);
                    break;
                }

            case 1: // a tensor missing from the map
                kind = "missing tensor";
                map.RemoveAt(rng.Next(map.Count));
                break;
            case 2: // an extra tensor mapped to an existing shard that lacks it, or to the extra shard
                {
                    kind = "extra tensor";
                    string[] shards = [s_shardA[0], s_shardB[0], "other.safetensors"];
                    string[] names = ["x.0", "zz", "a.0 ", "A.0", "n.0", ""];
                    map.Insert(rng.Next(map.Count + 1), (Q(names[rng.Next(names.Length)]), Q(shards[rng.Next(shards.Length)])));
                    break;
                }

            case 3: // a shard that is absent, outside, nested, a directory, not safetensors, or an odd name
                {
                    kind = "bad shard path";
                    string[] paths =
                    [
                        "model-00003-of-00002.safetensors", "../outside.safetensors", "..", ".", "", "sub", "sub/nested.safetensors",
                    "sub\\\\nested.safetensors", "/etc/passwd", "garbage.bin", "empty.safetensors", "config.json", HuggingFaceCheckpoint.IndexFileName,
                    "a\\u0000b", "\\ud800", "\u00e9\u4e2d.safetensors", new string('s', 300), " ", "./" + s_shardA[0], "..\\\\outside.safetensors",
                    "MODEL-00001-OF-00002.SAFETENSORS",
                ];
                    int i = rng.Next(map.Count);
                    map[i] = (map[i].Key, Q(paths[rng.Next(paths.Length)]));
                    break;
                }

            case 4: // wrong value types
                {
                    kind = "value type";
                    string[] values = ["1", "null", "true", "[]", "{}", "[\"model-00001-of-00002.safetensors\"]", "1.5", "{\"file\": \"x\"}"];
                    int i = rng.Next(map.Count);
                    map[i] = (map[i].Key, values[rng.Next(values.Length)]);
                    break;
                }

            case 5: // a tensor listed in the wrong shard
                {
                    kind = "wrong shard";
                    int i = rng.Next(map.Count);
                    map[i] = (map[i].Key, map[i].Value == Q(s_shardA[0]) ? Q(s_shardB[0]) : Q(s_shardA[0]));
                    break;
                }

            case 6: // duplicates
                {
                    kind = "duplicate";
                    (string key, string value) = map[rng.Next(map.Count)];
                    map.Insert(rng.Next(map.Count + 1), (key, rng.Next(2) == 0 ? value : Q(s_shardB[0])));
                    break;
                }

            case 7: // an empty map, or only some of the shards
                kind = "empty or partial map";
                map.RemoveAll(_ => rng.Next(3) > 0);
                break;
            case 8: // weight_map / metadata of the wrong type, or missing
                {
                    kind = "top-level type";
                    string[] roots =
                    [
                        "{\"metadata\": {}}", "{\"weight_map\": []}", "{\"weight_map\": null}", "{\"weight_map\": \"x\"}", "{\"weight_map\": 1}",
                    "{\"metadata\": [], \"weight_map\": " + Map(map) + "}", "{\"metadata\": \"x\", \"weight_map\": " + Map(map) + "}",
                    "{\"metadata\": 1, \"weight_map\": " + Map(map) + "}", "[]", "null", "\"weight_map\"", "1", "{}",
                    "{\"weight_map\": " + Map(map) + ", \"weight_map\": {}}", "{\"weight_map\": {}, \"weight_map\": " + Map(map) + "}",
                    "{\"Weight_Map\": " + Map(map) + "}",
                ];
                    return (kind, Encoding.UTF8.GetBytes(roots[rng.Next(roots.Length)]));
                }

            case 9: // odd tensor names (unicode, escapes, lone surrogates)
                {
                    kind = "tensor names";
                    string[] names = ["\u00e9\u4e2d\ud83d\ude00", "\\u0061.0", "\\ud800", "\\udc00", "a.0\\u0000", "\\\"", "__metadata__", new string('t', 5000)];
                    int i = rng.Next(map.Count);
                    map[i] = ("\"" + names[rng.Next(names.Length)] + "\"", map[i].Value);
                    break;
                }

            default: // bad JSON: truncation, byte damage, invalid UTF-8, deep nesting
                {
                    byte[] good = Encoding.UTF8.GetBytes(Render(map, metadata));
                    switch (rng.Next(5))
                    {
                        case 0:
                            return ("truncated JSON", good.AsSpan(0, rng.Next(good.Length)).ToArray());
                        case 1:
                            for (int k = rng.Next(1, 4); k > 0; k--)
                            {
                                good[rng.Next(good.Length)] = (byte)rng.Next(256);
                            }

                            return ("random bytes", good);
                        case 2:
                            {
                                // invalid UTF-8 inside a string (a key or a shard name)
                                int quote = IndexOfNth(good, (byte)'"', rng.Next(1, 8));
                                byte[] bad = [0xff, 0xc0, 0x80, 0xed, 0xa0, 0x80];
                                return ("invalid UTF-8", [.. good.AsSpan(0, quote + 1), .. bad.AsSpan(rng.Next(3) * 2, 2), .. good.AsSpan(quote + 1)]);
                            }

                        case 3:
                            {
                                int depth = new[] { 63, 64, 65, 1000, 100_000 }[rng.Next(5)];
                                return ("deep nesting", Encoding.UTF8.GetBytes("{\"metadata\": " + string.Concat(Enumerable.Repeat("{\"a\":", depth)) + "1" + new string('}', depth) + ", \"weight_map\": " + Map(map) + "}"));
                            }

                        default:
                            return ("BOM and trailing", [0xef, 0xbb, 0xbf, .. good, .. "\n,"u8]);
                    }
                }
        }

        // Sometimes stack a second, independent change.
        if (rng.Next(8) == 0 && map.Count > 0)
        {
            int i = rng.Next(map.Count);
            map[i] = (map[i].Key, Q("model-0000" + rng.Next(1, 4) + "-of-00002.safetensors"));
            kind += " + reshard";
        }

        return (kind, Encoding.UTF8.GetBytes(Render(map, metadata)));

        static string Q(string s) => "\"" + s + "\"";
        static string Map(List<(string Key, string Value)> m) => "{" + string.Join(", ", m.Select(p => p.Key + ": " + p.Value)) + "}";
        static string Render(List<(string Key, string Value)> m, string meta) => "{\"metadata\": " + meta + ", \"weight_map\": " + Map(m) + "}";
    }

    private static int IndexOfNth(byte[] bytes, byte value, int n)
    {
        int at = -1;
        for (int k = 0; k < n; k++)
        {
            at = Array.IndexOf(bytes, value, at + 1);
        }

        return at;
    }

    private static void Shuffle<T>(Random rng, List<T> list)
    {
        for (int i = list.Count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }
    }

    // ---------------------------------------------------------------- family 3: config.json

    private const string ValidConfigJson = """
        {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 32, "intermediate_size": 24, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
         "torch_dtype": "float32"}
        """;

    private static readonly string[] s_configKeys =
    [
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size", "intermediate_size",
        "head_dim", "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "rope_theta", "rope_parameters", "tie_word_embeddings",
        "dtype", "torch_dtype", "n_embd", "n_layer", "n_head", "n_inner",
    ];

    private static readonly string[] s_configValues =
    [
        "<remove>", "16", "\"16\"", "16.0", "16.5", "1.6e1", "-1", "-0", "0", "2147483647", "2147483648", "-2147483649", "4294967296",
        "9223372036854775808", "99999999999999999999999999", "1e400", "-1e400", "1e-400", "null", "[]", "[16]", "{}", "{\"value\": 16}",
        "true", "false", "\"\"", "\"llama\"", "\"gpt2\"", "\"\\ud800\"", "\"\u00e9\u4e2d\"", "1073741824", "536870912",
    ];

    private static readonly string[] s_ropeValues =
    [
        "{\"rope_theta\": 500000.0, \"rope_type\": \"default\"}", "{\"rope_theta\": \"500000\"}", "{\"rope_theta\": null}", "{\"rope_theta\": []}",
        "{\"rope_theta\": 1e400}", "{\"rope_type\": \"llama3\", \"factor\": 8.0}", "{}", "[]", "null", "1", "\"rope\"",
        "{\"rope_theta\": 1, \"rope_theta\": 2}", "{\"rope_theta\": {\"rope_theta\": 1}}",
    ];

    [Fact]
    public void Config_mutations_parse_validly_or_throw_CheckpointFormatException()
    {
        var clock = Stopwatch.StartNew();
        using var dir = new TempDir();
        string model = dir.File("model");
        Directory.CreateDirectory(model);
        string configPath = Path.Combine(model, "config.json");
        WriteShard(Path.Combine(model, HuggingFaceCheckpoint.SingleFileName), ["model.layers.0.mlp.x", "model.layers.1.mlp.x"]);

        var rng = new Random(3_1415);
        var failures = new Failures();
        int parsed = 0, rejected = 0;
        for (int iteration = 0; iteration < ConfigCases; iteration++)
        {
            (string kind, string json) = MutateConfig(rng, iteration);

            // In memory, through ModelConfig.Parse.
            try
            {
                ModelConfig c = ModelConfig.Parse(json, "fuzz-config.json");
                CheckConfig(c);
                parsed++;
            }
            catch (CheckpointFormatException ex) when (ex.Message.Contains("fuzz-config.json", StringComparison.Ordinal))
            {
                rejected++;
            }
            catch (Exception ex)
            {
                failures.Add(iteration, kind, json, ex);
            }

            // Every eighth case also through a checkpoint directory (Load, Open and the config/checkpoint consistency check).
            if (iteration % 8 == 0)
            {
                File.WriteAllText(configPath, json);
                try
                {
                    using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(model);
                    CheckConfig(checkpoint.Config);
                    ConfigConsistency.Validate(checkpoint);
                }
                catch (CheckpointFormatException ex) when (ex.Message.Contains(configPath, StringComparison.Ordinal))
                {
                }
                catch (Exception ex)
                {
                    failures.Add(iteration, kind + " (through a checkpoint)", json, ex);
                }
            }
        }

        failures.AssertNone("config");
        Assert.True(parsed > 100, $"parsed {parsed}");
        Assert.True(rejected > ConfigCases / 2, $"rejected {rejected}");
        Console.WriteLine($"FuzzTests config: {ConfigCases} cases, {parsed} parsed, {rejected} rejected, {clock.Elapsed.TotalSeconds:F1} s");
    }

    /// <summary>A parsed config must hold sane values and survive a round trip through <see cref="ModelConfig.ToJson"/>.</summary>
    private static void CheckConfig(ModelConfig c)
    {
        Assert.NotNull(c.ModelType);
        Assert.True(c.HiddenSize >= 0 && c.IntermediateSize >= 0 && c.NumHiddenLayers >= 0 && c.NumAttentionHeads >= 0, "negative size");
        Assert.True(c.NumKeyValueHeads >= 0 && c.HeadDim >= 0 && c.VocabSize >= 0, "negative size");
        Assert.True(c.RmsNormEps is null || !double.IsNaN(c.RmsNormEps.Value));
        Assert.True(c.RopeTheta is null || !double.IsNaN(c.RopeTheta.Value));
        Assert.NotEmpty(c.DefaultTargetModules);
        ModelConfig again = ModelConfig.Parse(c.ToJson(), "round-trip");
        Assert.Equal(c.HiddenSize, again.HiddenSize);
        Assert.Equal(c.IntermediateSize, again.IntermediateSize);
        Assert.Equal(c.NumHiddenLayers, again.NumHiddenLayers);
        Assert.Equal(c.HeadDim, again.HeadDim);
        Assert.Equal(c.RopeTheta, again.RopeTheta);
    }

    private static (string Kind, string Json) MutateConfig(Random rng, int iteration)
    {
        var members = new List<(string Key, string Value)>
        {
            ("model_type", "\"llama\""), ("hidden_size", "16"), ("num_hidden_layers", "2"), ("num_attention_heads", "4"), ("num_key_value_heads", "2"),
            ("vocab_size", "32"), ("intermediate_size", "24"), ("rms_norm_eps", "1e-6"), ("rope_theta", "10000.0"), ("tie_word_embeddings", "false"),
            ("torch_dtype", "\"float32\""),
        };
        if (iteration % 4 == 1)
        {
            // A GPT-2 style config.
            members = [("model_type", "\"gpt2\""), ("n_embd", "16"), ("n_layer", "2"), ("n_head", "4"), ("vocab_size", "32"), ("layer_norm_epsilon", "1e-5")];
        }

        switch (iteration % 10)
        {
            case 0: // bad JSON and non-object roots
                {
                    string good = Render(members);
                    string[] texts =
                    [
                        good[..rng.Next(good.Length)], "[]", "null", "1", "\"config\"", "true", "", " ", "{", "}", "{}",
                    good.Insert(rng.Next(good.Length), "\u0000"), good + ",", good + "}", "\ufeff" + good, good.Replace(':', '='),
                    new string('[', 100) + new string(']', 100), string.Concat(Enumerable.Repeat("{\"a\":", 70)) + "1" + new string('}', 70),
                    "{\"model_type\": \"llama\" // comment\n}", "{'model_type': 'llama'}", "{\"model_type\": \"llama\",}",
                ];
                    return ("bad JSON", texts[rng.Next(texts.Length)]);
                }

            case 2: // rope_parameters variants
                {
                    members.RemoveAll(m => m.Key == "rope_theta" && rng.Next(3) > 0);
                    members.Add(("rope_parameters", s_ropeValues[rng.Next(s_ropeValues.Length)]));
                    return ("rope_parameters", Render(members));
                }

            case 3: // duplicate keys
                {
                    (string key, _) = members[rng.Next(members.Count)];
                    members.Insert(rng.Next(members.Count + 1), (key, s_configValues[rng.Next(1, s_configValues.Length)]));
                    return ("duplicate " + key, Render(members));
                }

            default: // one to three keys set to odd values (or removed)
                {
                    var changed = new List<string>();
                    for (int k = rng.Next(1, 4); k > 0; k--)
                    {
                        string key = s_configKeys[rng.Next(s_configKeys.Length)];
                        string value = s_configValues[rng.Next(s_configValues.Length)];
                        members.RemoveAll(m => m.Key == key);
                        if (value != "<remove>")
                        {
                            members.Add((key, value));
                        }

                        changed.Add($"{key}={value}");
                    }

                    return (string.Join(", ", changed), Render(members));
                }
        }

        static string Render(List<(string Key, string Value)> m) => "{" + string.Join(", ", m.Select(p => $"\"{p.Key}\": {p.Value}")) + "}";
    }

    // ---------------------------------------------------------------- shared

    /// <summary>Collects untyped failures so that one run reports every kind of crash, not only the first.</summary>
    private sealed class Failures
    {
        private readonly List<string> _items = [];
        private readonly HashSet<string> _kinds = [];

        public void Add(int iteration, string kind, string input, Exception ex)
        {
            string signature = ex.GetType().Name + " " + kind;
            if (_kinds.Add(signature) && _items.Count < 20)
            {
                string shown = input.Length > 600 ? input[..600] + "…" : input;
                _items.Add($"case {iteration} ({kind}): {ex.GetType().FullName}: {ex.Message}\n  input: {shown}\n  at {ex.StackTrace?.Split('\n').FirstOrDefault()?.Trim()}");
            }

            Count++;
        }

        public int Count { get; private set; }

        public void AssertNone(string family)
        {
            if (Count > 0)
            {
                Assert.Fail($"{Count} {family} cases failed with an untyped exception or an invalid success:\n" + string.Join("\n", _items));
            }
        }
    }
}

/// <summary>Focused regressions for the crashes the fuzz tests found (each was an untyped exception before).</summary>
public sealed class FuzzRegressionTests
{
    [Theory]
    [InlineData("{\"weight_map\": {\"\\ud800\": \"model-00001-of-00002.safetensors\"}}", "unpaired surrogate")] // was InvalidOperationException
    [InlineData("{\"weight_map\": {\"a.0\": \"\\udc00\"}}", "unpaired surrogate")]
    [InlineData("{\"metadata\": {\"\u00ff\u00fe\": 1}, \"weight_map\": {\"a.0\": \"x\"}}", "not valid UTF-8")]     // bytes 0xFF 0xFE below
    [InlineData("{\"weight_map\": {\"a.0\": \"x\"}, \"weight_map\": {\"a.0\": \"y\"}}", "the top level lists 'weight_map' twice")]
    public void A_malformed_index_is_a_CheckpointFormatException_naming_the_index(string json, string expected)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("config.json"), "{\"model_type\": \"llama\", \"hidden_size\": 4, \"num_hidden_layers\": 1, \"num_attention_heads\": 1, \"vocab_size\": 4, \"intermediate_size\": 4}");
        string index = dir.File(HuggingFaceCheckpoint.IndexFileName);
        File.WriteAllBytes(index, expected == "not valid UTF-8" ? System.Text.Encoding.Latin1.GetBytes(json) : System.Text.Encoding.UTF8.GetBytes(json));
        CheckpointFormatException e = Assert.Throws<CheckpointFormatException>(() => HuggingFaceCheckpoint.Open(dir.Path));
        Assert.Contains(index, e.Message, StringComparison.Ordinal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"model_type\": \"llama\", \"hidden_size\": 16, \"hidden_size\": 32}", "the top level lists 'hidden_size' twice")] // was ArgumentException
    [InlineData("{\"model_type\": \"llama\", \"rope_parameters\": {\"rope_theta\": 1, \"rope_theta\": 2}}", "'rope_parameters' lists 'rope_theta' twice")]
    [InlineData("{\"model_type\": \"\\ud800\"}", "the value of 'model_type' holds an escaped unpaired surrogate")] // was InvalidOperationException
    [InlineData("{\"model_type\": \"llama\", \"rope_theta\": \"\\udc00\"}", "the value of 'rope_theta' holds an escaped unpaired surrogate")]
    [InlineData("{\"model_type\": \"gpt2\", \"n_embd\": 536870912, \"n_layer\": 1, \"n_head\": 1, \"vocab_size\": 4}", "too large for the default 'n_inner'")] // was a silent negative
    public void A_malformed_config_is_a_CheckpointFormatException_naming_the_key(string json, string expected)
    {
        CheckpointFormatException e = Assert.Throws<CheckpointFormatException>(() => ModelConfig.Parse(json, "my/config.json"));
        Assert.StartsWith("my/config.json: ", e.Message, StringComparison.Ordinal);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("\\ud800")]
    [InlineData("a\\udc00b")]
    public void A_tensor_name_with_an_unpaired_surrogate_escape_is_a_SafeTensorsFormatException(string name)
    {
        using var dir = new TempDir();
        string path = dir.File("s.safetensors");
        File.WriteAllBytes(path, TestFiles.Build($"{{\"{name}\":{{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}}}", 1));
        SafeTensorsFormatException e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
        Assert.Contains("unpaired surrogate", e.Message, StringComparison.Ordinal);
    }
}
