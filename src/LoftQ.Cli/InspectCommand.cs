using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using Spectre.Console;

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

        if (json)
        {
            var list = new JsonArray();
            foreach ((string shard, IReadOnlyList<SafeTensorInfo> tensors) in files)
            {
                foreach (SafeTensorInfo t in tensors)
                {
                    list.Add((JsonNode)new JsonObject
                    {
                        ["name"] = t.Name,
                        ["file"] = shard,
                        ["dtype"] = t.DType.ToString(),
                        ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)d).ToArray()),
                        ["bytes"] = t.ByteLength,
                    });
                }
            }

            summary["listing"] = list;
            stdout.WriteLine(summary.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return ExitCodes.Ok;
        }

        IAnsiConsole console = ConsoleFactory.Create(stdout, interactive: false);
        var table = new Table().Border(TableBorder.Simple)
            .AddColumn("tensor").AddColumn("file").AddColumn("dtype").AddColumn("shape").AddColumn(new TableColumn("bytes").RightAligned());
        foreach ((string shard, IReadOnlyList<SafeTensorInfo> tensors) in files)
        {
            foreach (SafeTensorInfo t in tensors)
            {
                table.AddRow(Markup.Escape(t.Name), Markup.Escape(shard), t.DType.ToString(), $"[[{string.Join(", ", t.Shape)}]]", t.ByteLength.ToString("N0", CultureInfo.InvariantCulture));
            }
        }

        console.Write(table);
        foreach (KeyValuePair<string, JsonNode?> kv in summary)
        {
            console.WriteLine($"{kv.Key}: {kv.Value?.ToJsonString()}");
        }

        console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{count} tensors, {elements:N0} elements, {bytes:N0} bytes in {files.Count} file(s): valid"));
        return ExitCodes.Ok;
    }
}
