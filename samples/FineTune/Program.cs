// Fine-tunes LoRA on a byte-level LLaMA-family model, starting from LoftQ, QLoRA or full-precision LoRA, and
// evaluates it: docs/finetuning.md. `--protocol` runs the five-row comparison of the README.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using LoftQNet;
using LoftQNet.Pipeline;
using LoftQNet.TorchSharp;
using LoftQNet.TorchSharp.Models;
using LoftQNet.TorchSharp.Training;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

var modelArg = new Argument<string>("model-dir") { Description = "A Hugging Face LLaMA-family model directory (byte-level: vocab 256), e.g. tests/data/byte-llama-14m." };
var trainOpt = new Option<string>("--train") { Description = "Training text file.", Required = true };
var valOpt = new Option<string>("--val") { Description = "Evaluation text file (64 windows of 256 bytes).", Required = true };
var outOpt = new Option<string>("--out") { Description = "Output directory: backbone/ (quantized starts), adapter/ (the fine-tuned PEFT adapter), finetune_report.json.", Required = true };
var startOpt = new Option<string>("--start") { Description = "loftq | qlora | lora (full precision).", DefaultValueFactory = _ => "loftq" };
var bitsOpt = new Option<double>("--bits") { Description = "Backbone bits for loftq/qlora (NF quantizer; 2.5 = mixed).", DefaultValueFactory = _ => 2 };
var rankOpt = new Option<int>("--rank") { Description = "LoRA rank r.", DefaultValueFactory = _ => 16 };
var alphaOpt = new Option<int>("--alpha") { Description = "LoRA alpha.", DefaultValueFactory = _ => 16 };
var itersOpt = new Option<int>("--iters") { Description = "LoftQ passes T.", DefaultValueFactory = _ => 5 };
var solverOpt = new Option<string>("--solver") { Description = "exact | randomized.", DefaultValueFactory = _ => "exact" };
var stepsOpt = new Option<int>("--steps") { Description = "AdamW steps.", DefaultValueFactory = _ => 200 };
var lrOpt = new Option<double>("--lr") { Description = "Learning rate.", DefaultValueFactory = _ => 5e-4 };
var batchOpt = new Option<int>("--batch") { Description = "Windows per step.", DefaultValueFactory = _ => 8 };
var windowOpt = new Option<int>("--window") { Description = "Bytes predicted per training window.", DefaultValueFactory = _ => 128 };
var accumOpt = new Option<int>("--accumulate") { Description = "Gradient accumulation micro-batches per step (each of --batch windows).", DefaultValueFactory = _ => 1 };
var warmupOpt = new Option<int>("--warmup") { Description = "Linear warm-up steps.", DefaultValueFactory = _ => 0 };
var cosineOpt = new Option<bool>("--cosine") { Description = "Cosine decay after the warm-up (default: constant)." };
var clipOpt = new Option<double?>("--clip") { Description = "Clip the gradient norm to this value." };
var evalEveryOpt = new Option<int>("--eval-every") { Description = "Evaluate every N steps (0: at start and end only).", DefaultValueFactory = _ => 0 };
var seedOpt = new Option<int>("--seed") { Description = "Seed (LoftQ, A's init, dropout).", DefaultValueFactory = _ => 0 };
var threadsOpt = new Option<int?>("--threads") { Description = "Threads (default: all cores)." };
var overwriteOpt = new Option<bool>("--overwrite") { Description = "Replace existing outputs." };
var protocolOpt = new Option<bool>("--protocol") { Description = "Run the five-row comparison (LoRA, QLoRA/LoftQ at NF4 and NF2) and print the table; --start and --bits are ignored." };

var root = new RootCommand("LoRA fine-tuning from a LoftQ, QLoRA or full-precision start, then evaluation (bits per byte).")
{
    modelArg, trainOpt, valOpt, outOpt, startOpt, bitsOpt, rankOpt, alphaOpt, itersOpt, solverOpt, stepsOpt, lrOpt, batchOpt,
    windowOpt, accumOpt, warmupOpt, cosineOpt, clipOpt, evalEveryOpt, seedOpt, threadsOpt, overwriteOpt, protocolOpt,
};

root.SetAction((parse, cancellationToken) => Task.FromResult(Execute(parse, cancellationToken)));

return await root.Parse(args).InvokeAsync();

int Execute(ParseResult parse, CancellationToken cancellationToken)
{
    try
    {
        var run = new Run(
            parse.GetValue(modelArg)!, parse.GetValue(trainOpt)!, parse.GetValue(valOpt)!, parse.GetValue(outOpt)!,
            parse.GetValue(rankOpt), parse.GetValue(alphaOpt), parse.GetValue(itersOpt),
            parse.GetValue(solverOpt) switch
            {
                "exact" => SolverKind.Exact,
                "randomized" => SolverKind.Randomized,
                var s => throw new ArgumentException($"--solver must be exact or randomized, got '{s}'."),
            },
            new LoraTrainingOptions
            {
                Steps = parse.GetValue(stepsOpt),
                LearningRate = parse.GetValue(lrOpt),
                BatchSize = parse.GetValue(batchOpt),
                GradientAccumulationSteps = parse.GetValue(accumOpt),
                WarmupSteps = parse.GetValue(warmupOpt),
                Schedule = parse.GetValue(cosineOpt) ? LearningRateSchedule.WarmupCosine : LearningRateSchedule.Constant,
                MaxGradientNorm = parse.GetValue(clipOpt),
                EvaluateEvery = parse.GetValue(evalEveryOpt),
                Seed = parse.GetValue(seedOpt),
                Overwrite = parse.GetValue(overwriteOpt),
            },
            parse.GetValue(windowOpt), parse.GetValue(seedOpt), parse.GetValue(threadsOpt), parse.GetValue(overwriteOpt));
        IReadOnlyList<(string Start, double Bits)> rows = parse.GetValue(protocolOpt)
            ? [("lora", 16), ("qlora", 4), ("loftq", 4), ("qlora", 2), ("loftq", 2)]
            : [(parse.GetValue(startOpt)!, parse.GetValue(bitsOpt))];
        var results = new List<RowResult>();
        foreach ((string start, double bits) in rows)
        {
            string dir = rows.Count == 1 ? run.Out : Path.Combine(run.Out, RowResult.Slug(start, bits));
            results.Add(run.Execute(start, bits, dir, cancellationToken));
        }

        Table table = new Table().AddColumns("start", "bits", "bpb at init", "after fine-tuning", "final loss", "training s", "tokens/s");
        foreach (RowResult r in results)
        {
            table.AddRow(r.Start, r.BitsLabel, F(r.InitialBitsPerByte), F(r.FinalBitsPerByte), F(r.FinalLoss), r.TrainingSeconds.ToString("F1", CultureInfo.InvariantCulture), r.TokensPerSecond.ToString("F0", CultureInfo.InvariantCulture));
        }

        AnsiConsole.Write(table);
        string reportPath = Path.Combine(run.Out, rows.Count == 1 ? "finetune_report.json" : "protocol.json");
        File.WriteAllText(reportPath, JsonSerializer.Serialize(results, new JsonSerializerOptions { WriteIndented = true }));
        AnsiConsole.MarkupLineInterpolated($"Report: [bold]{reportPath}[/]");
        return 0;
    }
    catch (OperationCanceledException)
    {
        Console.Error.WriteLine("Cancelled; no adapter was written for the unfinished run.");
        return 130;
    }
    catch (Exception e) when (e is ArgumentException or IOException or InvalidOperationException or UnauthorizedAccessException or LoftQNet.IO.CheckpointFormatException)
    {
        Console.Error.WriteLine($"error: {e.Message}");
        return 1;
    }
}

static string F(double v) => double.IsNaN(v) ? "-" : v.ToString("F3", CultureInfo.InvariantCulture);

internal sealed record RowResult(
    string Start, double Bits, string BitsLabel, double InitialBitsPerByte, double FinalBitsPerByte, double FinalLoss,
    double TrainingSeconds, double TokensPerSecond, double InitSeconds, string AdapterDirectory, string? BackboneDirectory)
{
    public static string Slug(string start, double bits) => start == "lora" ? "lora-16" : string.Create(CultureInfo.InvariantCulture, $"{start}-nf{bits}");
}

internal sealed record Run(
    string Model, string TrainPath, string ValPath, string Out, int Rank, int Alpha, int Iterations, SolverKind Solver,
    LoraTrainingOptions Training, int Window, int Seed, int? Threads, bool Overwrite)
{
    public RowResult Execute(string start, double bits, string directory, CancellationToken cancellationToken)
    {
        if (start is not ("loftq" or "qlora" or "lora"))
        {
            throw new ArgumentException($"--start must be loftq, qlora or lora, got '{start}'.");
        }

        torch.set_num_threads(Threads ?? Environment.ProcessorCount);
        var train = ByteWindowDataset.FromFile(TrainPath, Window);
        var val = ByteWindowDataset.FromFile(ValPath, 256);
        var loftq = new LoftQOptions
        {
            Bits = start == "lora" ? 4 : bits,
            Rank = Rank,
            Alpha = Alpha,
            Iterations = start == "qlora" ? 0 : Iterations,
            Solver = Solver,
            Seed = Seed,
            Threads = Threads,
            ScaleSearch = null, // the paper's protocol: reference LoftQ and bitsandbytes' QLoRA (absmax block scales)
        };
        string label = start == "lora" ? "16" : string.Create(CultureInfo.InvariantCulture, $"NF{bits}");
        AnsiConsole.MarkupLineInterpolated($"[bold]{start} {label}[/] on {Model} -> {directory}");
        var clock = Stopwatch.StartNew();

        // The quantized backbone and LoftQ's own adapter, as `loftq quantize` writes them, so that `loftq eval` can score
        // the fine-tuned adapter on exactly the backbone that was trained (LoftQ.Initialize(model) computes the same Q).
        string? backbone = null;
        if (start != "lora")
        {
            backbone = Path.Combine(directory, "backbone");
            LoftQ.Initialize(Model, backbone, loftq with { Overwrite = Overwrite }, cancellationToken: cancellationToken);
        }

        using var model = LlamaForCausalLM.FromPretrained(Model, ScalarType.Float32);
        if (start == "lora")
        {
            LoftQ.AddLora(model, loftq);
        }
        else
        {
            LoftQ.Initialize(model, loftq with { Threads = null }, cancellationToken: cancellationToken);
        }

        double initSeconds = clock.Elapsed.TotalSeconds;
        LoraTrainingOptions options = Training with
        {
            AdapterDirectory = Path.Combine(directory, "adapter"),
            BaseModelNameOrPath = backbone ?? Model,
        };
        var trainer = new LoraTrainer(model, options);
        TrainingResult result = Train(trainer, train, val, cancellationToken);
        return new RowResult(
            start, start == "lora" ? 16 : bits, label, result.Evaluations[0].BitsPerToken, result.Evaluations[^1].BitsPerToken, result.Losses[^1],
            result.TrainingSeconds, result.TokensPerSecond, initSeconds, result.AdapterDirectory!, backbone);
    }

    private static TrainingResult Train(LoraTrainer trainer, ByteWindowDataset train, ByteWindowDataset val, CancellationToken cancellationToken)
    {
        if (!AnsiConsole.Profile.Capabilities.Interactive)
        {
            var lines = new SynchronousProgress(p =>
            {
                if (p.EvaluationBitsPerToken is double bpb)
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  step {p.Step,4}/{p.TotalSteps}: eval {bpb:F4} bits per byte"));
                }
                else if (p.Step % 10 == 0)
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  step {p.Step,4}/{p.TotalSteps}: loss {p.Loss:F4}, {p.TokensPerSecond:F0} tokens/s, ETA {p.Remaining:mm\\:ss}"));
                }
            });
            return trainer.Train(train, val, lines, cancellationToken);
        }

        TrainingResult? result = null;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                ProgressTask task = ctx.AddTask("fine-tuning", maxValue: trainer.Options.Steps);
                var progress = new SynchronousProgress(p =>
                {
                    task.Value = p.Step;
                    task.Description = p.EvaluationBitsPerToken is double bpb
                        ? string.Create(CultureInfo.InvariantCulture, $"eval {bpb:F4} bpb")
                        : string.Create(CultureInfo.InvariantCulture, $"loss {p.Loss:F3}, {p.TokensPerSecond:F0} tok/s");
                });
                result = trainer.Train(train, val, progress, cancellationToken);
            });
        return result!;
    }
}

/// <summary>Reports on the training thread (Progress&lt;T&gt; would post to the thread pool and reorder lines).</summary>
internal sealed class SynchronousProgress(Action<TrainingProgress> action) : IProgress<TrainingProgress>
{
    public void Report(TrainingProgress value) => action(value);
}
