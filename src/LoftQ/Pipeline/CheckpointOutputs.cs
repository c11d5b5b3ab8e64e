using System.Globalization;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Pipeline;

/// <summary>The files of an output besides the backbone shards: the shard index, the model's other files, the adapter.</summary>
internal static class CheckpointOutputs
{
    internal const string IndexFileName = "model.safetensors.index.json";

    internal static void WriteIndex(string directory, HuggingFaceCheckpoint checkpoint, SortedDictionary<string, string> weightMap, long totalBytes)
    {
        var metadata = new JsonObject();
        foreach (KeyValuePair<string, string> kv in checkpoint.IndexMetadata ?? new Dictionary<string, string>())
        {
            metadata[kv.Key] = long.TryParse(kv.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out long n) ? n : kv.Value;
        }

        metadata["total_size"] = totalBytes;
        var map = new JsonObject();
        foreach (KeyValuePair<string, string> kv in weightMap)
        {
            map[kv.Key] = kv.Value;
        }

        var index = new JsonObject { ["metadata"] = metadata, ["weight_map"] = map };
        AtomicFile.WriteAllText(Path.Combine(directory, IndexFileName), index.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    internal static void CopyOtherFiles(string modelDirectory, string outputDirectory, ModelConfig config, LoftQOptions options)
    {
        foreach (string source in Directory.EnumerateFiles(modelDirectory))
        {
            string name = Path.GetFileName(source);
            if (name.EndsWith(".safetensors", StringComparison.Ordinal) || name == IndexFileName)
            {
                continue;
            }

            string destination = Path.Combine(outputDirectory, name);
            if (name == "config.json" && options.Format == OutputFormat.BitsAndBytesNf4)
            {
                JsonObject quantization = BitsAndBytesNf4.QuantizationConfig(options.DoubleQuant, config.TorchDType ?? "float32");
                AtomicFile.WriteAllText(destination, config.ToJson(quantization) + "\n");
            }
            else
            {
                File.Copy(source, destination);
            }
        }
    }

    internal static void WriteAdapter(string outputDirectory, string modelDirectory, LoftQOptions options, List<LoraTensors> adapters, bool fanInFanOut)
    {
        var config = new PeftAdapterConfig(
            options.Rank,
            options.Alpha ?? options.Rank,
            PeftAdapterConfig.TargetModulesFor(adapters.Select(a => a.ModulePath).Order(StringComparer.Ordinal)),
            Path.GetFullPath(modelDirectory),
            fanInFanOut);
        PeftAdapterWriter.Write(Path.Combine(outputDirectory, "loftq_init"), config, adapters);
    }
}
