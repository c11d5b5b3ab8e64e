using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using LoftQNet.Pipeline;

namespace LoftQNet.Cli;

/// <summary><c>loftq eval</c>: bits per byte of a byte-level LLaMA-family model (with its LoftQ adapter) on a text.</summary>
internal static class EvalCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var model = new Argument<string>("model-dir") { Description = "A model directory; a LoftQ output's loftq_init/ adapter is merged automatically." };
        var text = new Option<string>("--text") { Description = "The text file to score.", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "A PEFT LoRA adapter directory to merge (default: <model-dir>/loftq_init when present)." };
        var windows = new Option<int>("--windows") { Description = "Number of windows.", DefaultValueFactory = _ => 64 };
        var window = new Option<int>("--window") { Description = "Predictions per window.", DefaultValueFactory = _ => 256 };
        var json = new Option<bool>("--json") { Description = "Print the result as JSON." };
        var command = new Command("eval", "Next-byte cross-entropy (bits per byte) of a byte-level LLaMA-family model on a text: window i covers bytes [L*i, L*i+L+1).")
        {
            model, text, adapter, windows, window, json,
        };
        command.SetAction(parse => CliApp.Guard(stderr, () =>
        {
            string textPath = parse.GetValue(text)!;
            if (!File.Exists(textPath))
            {
                throw new FileNotFoundException($"Text file (--text) '{textPath}' does not exist.");
            }

            if (parse.GetValue(windows) < 1 || parse.GetValue(window) < 1)
            {
                throw new ArgumentException("--windows and --window must be at least 1.");
            }

            EvaluationResult r = Evaluation.BitsPerByte(parse.GetValue(model)!, File.ReadAllBytes(textPath), parse.GetValue(adapter), parse.GetValue(windows), parse.GetValue(window));
            if (parse.GetValue(json))
            {
                var o = new JsonObject
                {
                    ["bits_per_byte"] = r.BitsPerByte,
                    ["windows"] = r.Windows,
                    ["predictions"] = r.Predictions,
                    ["adapter_applied"] = r.AdapterApplied,
                };
                stdout.WriteLine(o.ToJsonString());
            }
            else
            {
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{r.BitsPerByte:F4} bits per byte over {r.Predictions} predictions ({r.Windows} windows){(r.AdapterApplied ? ", adapter merged" : string.Empty)}"));
            }

            return ExitCodes.Ok;
        }));
        return command;
    }
}
