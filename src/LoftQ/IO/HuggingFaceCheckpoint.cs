using System.Text.Json;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.IO;

/// <summary>
/// A Hugging Face model directory: <c>config.json</c> plus either one <c>model.safetensors</c> or shards listed in
/// <c>model.safetensors.index.json</c> (<c>{"metadata": {...}, "weight_map": {tensor: shard}}</c>). Every shard is
/// opened (header validated, data read on demand) on <see cref="Open"/>; the index must map every tensor of every shard to that
/// shard, and nothing else. Dispose to release the shards.
/// </summary>
public sealed class HuggingFaceCheckpoint : IDisposable
{
    /// <summary>Name of a single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";

    /// <summary>Name of a sharded checkpoint's index.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, SafeTensorsFile> _shards;
    private readonly Dictionary<string, string> _shardOf;

    private HuggingFaceCheckpoint(string directory, ModelConfig config, List<string> shardFiles, Dictionary<string, SafeTensorsFile> shards, Dictionary<string, string> shardOf, IReadOnlyDictionary<string, string>? indexMetadata, bool sharded)
    {
        Directory = directory;
        Config = config;
        ShardFiles = shardFiles;
        _shards = shards;
        _shardOf = shardOf;
        IndexMetadata = indexMetadata;
        IsSharded = sharded;
        var names = new List<string>(shardOf.Count);
        foreach (string shard in shardFiles)
        {
            foreach (SafeTensorInfo t in shards[shard].Tensors)
            {
                names.Add(t.Name);
            }
        }

        TensorNames = names;
    }

    /// <summary>The checkpoint directory (full path).</summary>
    public string Directory { get; }

    /// <summary>The parsed config.json.</summary>
    public ModelConfig Config { get; }

    /// <summary>Shard file names relative to <see cref="Directory"/>, in ordinal order (one entry for a single-file checkpoint).</summary>
    public IReadOnlyList<string> ShardFiles { get; }

    /// <summary>Whether the checkpoint is sharded (has an index).</summary>
    public bool IsSharded { get; }

    /// <summary>The index's <c>metadata</c> (values as JSON text for non-strings, e.g. <c>"total_size"</c> → <c>"28717824"</c>); null for a single file.</summary>
    public IReadOnlyDictionary<string, string>? IndexMetadata { get; }

    /// <summary>All tensor names, shard by shard in file order.</summary>
    public IReadOnlyList<string> TensorNames { get; }

    /// <summary>Opens and validates the checkpoint in <paramref name="directory"/>.</summary>
    /// <exception cref="CheckpointFormatException">config.json or the index is missing or malformed, or the index disagrees with the shards.</exception>
    /// <exception cref="SafeTensorsFormatException">A shard is malformed.</exception>
    public static HuggingFaceCheckpoint Open(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        string dir = System.IO.Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(dir))
        {
            throw new DirectoryNotFoundException(File.Exists(dir)
                ? $"'{dir}' is a file, not a model directory (pass the folder holding config.json and the safetensors files)."
                : $"Checkpoint directory '{dir}' does not exist.");
        }

        string configPath = System.IO.Path.Combine(dir, "config.json");
        if (!File.Exists(configPath))
        {
            throw new CheckpointFormatException($"{dir}: no config.json.");
        }

        ModelConfig config = ModelConfig.Load(configPath);
        string single = System.IO.Path.Combine(dir, SingleFileName);
        string index = System.IO.Path.Combine(dir, IndexFileName);
        var shards = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        try
        {
            if (File.Exists(single))
            {
                SafeTensorsFile file = SafeTensorsFile.Open(single);
                shards.Add(SingleFileName, file);
                var map = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (SafeTensorInfo t in file.Tensors)
                {
                    map.Add(t.Name, SingleFileName);
                }

                return new HuggingFaceCheckpoint(dir, config, [SingleFileName], shards, map, null, sharded: false);
            }

            if (!File.Exists(index))
            {
                throw new CheckpointFormatException($"{dir}: neither {SingleFileName} nor {IndexFileName} exists.");
            }

            (Dictionary<string, string> weightMap, Dictionary<string, string> metadata) = ReadIndex(index);
            var shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
            foreach (string shard in shardNames)
            {
                string shardPath = System.IO.Path.Combine(dir, shard);
                if (!File.Exists(shardPath))
                {
                    throw new CheckpointFormatException($"{index}: shard '{shard}' does not exist.");
                }

                shards.Add(shard, SafeTensorsFile.Open(shardPath));
            }

            foreach ((string tensor, string shard) in weightMap)
            {
                if (!shards[shard].Contains(tensor))
                {
                    throw new CheckpointFormatException($"{index}: tensor '{tensor}' is mapped to '{shard}', which does not contain it.");
                }
            }

            foreach ((string shard, SafeTensorsFile file) in shards)
            {
                foreach (SafeTensorInfo t in file.Tensors)
                {
                    if (!weightMap.TryGetValue(t.Name, out string? mapped))
                    {
                        throw new CheckpointFormatException($"{index}: tensor '{t.Name}' in shard '{shard}' is missing from the weight_map.");
                    }

                    if (mapped != shard)
                    {
                        throw new CheckpointFormatException($"{index}: tensor '{t.Name}' is in shard '{shard}' but mapped to '{mapped}'.");
                    }
                }
            }

            return new HuggingFaceCheckpoint(dir, config, shardNames, shards, weightMap, metadata, sharded: true);
        }
        catch
        {
            foreach (SafeTensorsFile f in shards.Values)
            {
                f.Dispose();
            }

            throw;
        }
    }

    /// <summary>The tensors of <paramref name="shard"/> in file order.</summary>
    /// <exception cref="KeyNotFoundException">No such shard.</exception>
    public IReadOnlyList<SafeTensorInfo> TensorsInShard(string shard) => OpenShard(shard).Tensors;

    /// <summary>Whether the checkpoint holds <paramref name="tensor"/>.</summary>
    public bool Contains(string tensor) => _shardOf.ContainsKey(tensor);

    /// <summary>The shard (relative file name) holding <paramref name="tensor"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such tensor (the message names it and the directory).</exception>
    public string ShardOf(string tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        return _shardOf.TryGetValue(tensor, out string? shard)
            ? shard
            : throw new KeyNotFoundException($"Tensor '{tensor}' is not in the checkpoint at {Directory}.");
    }

    /// <summary>The header entry of <paramref name="tensor"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such tensor.</exception>
    public SafeTensorInfo GetInfo(string tensor) => OpenShard(ShardOf(tensor)).GetInfo(tensor);

    /// <summary>Reads <paramref name="tensor"/> converted to float (see <see cref="SafeTensorsFile.ReadAsSingle(string)"/>).</summary>
    public float[] ReadAsSingle(string tensor) => OpenShard(ShardOf(tensor)).ReadAsSingle(tensor);

    /// <summary>Whether <paramref name="tensor"/> is stored as a bitsandbytes NF4 weight (packed U8 codes with a quant state beside them).</summary>
    internal bool IsNf4(string tensor) => Contains(tensor + BitsAndBytesNf4.QuantStateSuffix);

    /// <summary>The shape the model sees: a bitsandbytes NF4 weight's original shape (from its quant state), otherwise the stored one.</summary>
    internal TensorShape LogicalShape(string tensor) =>
        IsNf4(tensor) ? BitsAndBytesNf4.ReadNf4(OpenShard(ShardOf(tensor)), tensor).Shape : GetInfo(tensor).Shape;

    /// <summary>The tensor's values as float32; a bitsandbytes NF4 weight is dequantized (code book value × block absmax).</summary>
    internal float[] ReadDequantized(string tensor)
    {
        if (!IsNf4(tensor))
        {
            return ReadAsSingle(tensor);
        }

        QuantizedTensor nf4 = BitsAndBytesNf4.ReadNf4(OpenShard(ShardOf(tensor)), tensor);
        var values = new float[nf4.Shape.ElementCount];
        nf4.Dequantize(values);
        return values;
    }

    /// <summary>The opened shard <paramref name="shard"/> (owned by the checkpoint: do not dispose it).</summary>
    /// <exception cref="KeyNotFoundException">No such shard.</exception>
    public SafeTensorsFile OpenShard(string shard)
    {
        ArgumentNullException.ThrowIfNull(shard);
        return _shards.TryGetValue(shard, out SafeTensorsFile? file)
            ? file
            : throw new KeyNotFoundException($"Shard '{shard}' is not part of the checkpoint at {Directory}.");
    }

    /// <summary>Releases every shard.</summary>
    public void Dispose()
    {
        foreach (SafeTensorsFile f in _shards.Values)
        {
            f.Dispose();
        }
    }

    private static (Dictionary<string, string> WeightMap, Dictionary<string, string> Metadata) ReadIndex(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        JsonInputCheck.Check(bytes, path, static message => new CheckpointFormatException(message));
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes);
        }
        catch (JsonException ex)
        {
            throw new CheckpointFormatException($"{path}: not valid JSON ({ex.Message}).", ex);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointFormatException($"{path}: the top level must be a JSON object.");
            }

            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            if (doc.RootElement.TryGetProperty("metadata", out JsonElement meta) && meta.ValueKind != JsonValueKind.Null)
            {
                if (meta.ValueKind != JsonValueKind.Object)
                {
                    throw new CheckpointFormatException($"{path}: 'metadata' must be an object.");
                }

                foreach (JsonProperty p in meta.EnumerateObject())
                {
                    metadata[p.Name] = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : p.Value.GetRawText();
                }
            }

            if (!doc.RootElement.TryGetProperty("weight_map", out JsonElement map) || map.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointFormatException($"{path}: 'weight_map' must be an object of tensor name → shard file.");
            }

            var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (JsonProperty p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                {
                    throw new CheckpointFormatException($"{path}: weight_map entry '{p.Name}' must be a string.");
                }

                string shard = p.Value.GetString()!;
                if (shard.Length == 0 || shard.Contains('/') || shard.Contains('\\') || shard is "." or "..")
                {
                    throw new CheckpointFormatException($"{path}: weight_map entry '{p.Name}' names shard '{shard}'; shards must be plain file names in the checkpoint directory.");
                }

                if (!weightMap.TryAdd(p.Name, shard))
                {
                    throw new CheckpointFormatException($"{path}: weight_map lists '{p.Name}' twice.");
                }
            }

            if (weightMap.Count == 0)
            {
                throw new CheckpointFormatException($"{path}: weight_map is empty.");
            }

            return (weightMap, metadata);
        }
    }
}
