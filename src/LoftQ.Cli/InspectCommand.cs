using System.Buffers;
using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LoftQNet.IO;

namespace LoftQNet.Cli;

/// <summary><c>loftq inspect</c>: list and validate the tensors of a safetensors file or a model directory.</summary>
internal static class InspectCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var path = new Argument<string>("path") { Description = "A .safetensors file or a Hugging Face model directory." };
        var json = new Option<bool>("--json") { Description = "Print the listing as JSON." };
        var command = new Command("inspect", "List tensors (name, dtype, shape, bytes), totals and the validation result of a file or model directory.") { path, json };
        command.SetAction(parse => CliApp.Guard(stderr, () => Execute(parse.GetValue(path)!, parse.GetValue(json), stdout)));
        return command;
    }

    private static int Execute(string path, bool json, TextWriter stdout)
    {
        var files = new List<(string Shard, IReadOnlyList<SafeTensorInfo> Tensors)>();
        var summary = new JsonObject { ["path"] = Path.GetFullPath(path) };
        if (Directory.Exists(path))
        {
            using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(path);
            ConfigConsistency.Validate(checkpoint);
            foreach (string shard in checkpoint.ShardFiles)
            {
                files.Add((shard, checkpoint.TensorsInShard(shard)));
            }

            summary["model_type"] = checkpoint.Config.ModelType;
            summary["layers"] = checkpoint.Config.NumHiddenLayers;
            summary["hidden_size"] = checkpoint.Config.HiddenSize;
            summary["default_targets"] = TargetSelector.Select(checkpoint, null).Count;
            summary["sharded"] = checkpoint.IsSharded;
        }
        else if (File.Exists(path))
        {
            using SafeTensorsFile file = SafeTensorsFile.Open(path);
            files.Add((Path.GetFileName(path), file.Tensors.ToList()));
            if (file.Metadata.Count > 0)
            {
                var metadata = new JsonObject();
                foreach (KeyValuePair<string, string> kv in file.Metadata)
                {
                    metadata[kv.Key] = kv.Value;
                }

                summary["metadata"] = metadata;
            }
        }
        else
        {
            throw new FileNotFoundException($"'{path}' is neither a file nor a directory.");
        }

        long elements = files.Sum(f => f.Tensors.Sum(t => t.ElementCount));
        long bytes = files.Sum(f => f.Tensors.Sum(t => t.ByteLength));
        int count = files.Sum(f => f.Tensors.Count);
        summary["tensors"] = count;
        summary["elements"] = elements;
        summary["bytes"] = bytes;
        summary["valid"] = true;

        // The listing is streamed row by row: memory stays that of the header entries the files already hold, not
        // a table or JSON tree of every row (a header may declare up to a million tensors).
        if (json)
        {
            WriteJson(stdout, summary, files);
            return ExitCodes.Ok;
        }

        WriteTable(stdout, files);
        foreach (KeyValuePair<string, JsonNode?> kv in summary)
        {
            stdout.WriteLine($"{kv.Key}: {kv.Value?.ToJsonString()}");
        }

        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{count} tensors, {elements:N0} elements, {bytes:N0} bytes in {files.Count} file(s): valid"));
        return ExitCodes.Ok;
    }

    private static void WriteJson(TextWriter stdout, JsonObject summary, List<(string Shard, IReadOnlyList<SafeTensorInfo> Tensors)> files)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true });
        writer.WriteStartObject();
        foreach (KeyValuePair<string, JsonNode?> kv in summary)
        {
            writer.WritePropertyName(kv.Key);
            if (kv.Value is null)
            {
                writer.WriteNullValue();
            }
            else
            {
                kv.Value.WriteTo(writer);
            }
        }

        writer.WriteStartArray("listing");
        foreach ((string shard, IReadOnlyList<SafeTensorInfo> tensors) in files)
        {
            foreach (SafeTensorInfo t in tensors)
            {
                writer.WriteStartObject();
                writer.WriteString("name", t.Name);
                writer.WriteString("file", shard);
                writer.WriteString("dtype", t.DType.ToString());
                writer.WriteStartArray("shape");
                foreach (int d in t.Shape)
                {
                    writer.WriteNumberValue(d);
                }

                writer.WriteEndArray();
                writer.WriteNumber("bytes", t.ByteLength);
                writer.WriteEndObject();
                if (buffer.WrittenCount > 1 << 16)
                {
                    Flush(writer, buffer, stdout);
                }
            }
        }

        writer.WriteEndArray();
        writer.WriteEndObject();
        Flush(writer, buffer, stdout);
        stdout.WriteLine();
    }

    private static void Flush(Utf8JsonWriter writer, ArrayBufferWriter<byte> buffer, TextWriter stdout)
    {
        writer.Flush();
        stdout.Write(Encoding.UTF8.GetString(buffer.WrittenSpan));
        buffer.ResetWrittenCount();
    }

    private static void WriteTable(TextWriter stdout, List<(string Shard, IReadOnlyList<SafeTensorInfo> Tensors)> files)
    {
        string[] headers = ["tensor", "file", "dtype", "shape", "bytes"];
        int[] widths = headers.Select(h => h.Length).ToArray();
        foreach ((string shard, IReadOnlyList<SafeTensorInfo> tensors) in files)
        {
            foreach (SafeTensorInfo t in tensors)
            {
                string[] row = Row(shard, t);
                for (int c = 0; c < row.Length; c++)
                {
                    widths[c] = Math.Max(widths[c], row[c].Length);
                }
            }
        }

        stdout.WriteLine(Line(headers, widths));
        stdout.WriteLine(new string('─', widths.Sum() + (2 * widths.Length) + 2));
        foreach ((string shard, IReadOnlyList<SafeTensorInfo> tensors) in files)
        {
            foreach (SafeTensorInfo t in tensors)
            {
                stdout.WriteLine(Line(Row(shard, t), widths));
            }
        }

        stdout.WriteLine();
    }

    private static string[] Row(string shard, SafeTensorInfo t) =>
        [t.Name, shard, t.DType.ToString(), t.Shape.ToString(), t.ByteLength.ToString("N0", CultureInfo.InvariantCulture)];

    private static string Line(string[] cells, int[] widths)
    {
        var sb = new StringBuilder("  ");
        for (int c = 0; c < cells.Length; c++)
        {
            // The last column (bytes) is right-aligned, the others left-aligned.
            sb.Append(c == cells.Length - 1 ? cells[c].PadLeft(widths[c]) : cells[c].PadRight(widths[c]));
            if (c < cells.Length - 1)
            {
                sb.Append("  ");
            }
        }

        return sb.ToString().TrimEnd();
    }
}
