using System.Collections.Concurrent;
using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using LoftQNet.Pipeline;
using Spectre.Console;

namespace LoftQNet.Cli;

/// <summary><c>loftq quantize</c>: LoftQ-initialise a Hugging Face checkpoint.</summary>
internal static class QuantizeCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr, bool? interactive)
    {
        var model = new Argument<string>("model-dir") { Description = "Hugging Face model directory (config.json + model.safetensors or a sharded index)." };
        var output = new Option<string>("--out", "-o") { Description = "Output directory (must not exist or be empty, unless --overwrite).", Required = true };
        var bits = new Option<double>("--bits", "-b") { Description = "Bits per weight: 2, 3, 4 or 8 (uniform: 2..8), or a fractional average in (2, 4) for LoftQ's mixed precision (first layers 4-bit, the rest 2-bit).", DefaultValueFactory = _ => 4 };
        var quantizer = new Option<string>("--quantizer", "-q") { Description = "Quantizer: nf (NormalFloat), uniform (symmetric absmax) or uniform-asym (min/max with zero point).", DefaultValueFactory = _ => "nf" };
        quantizer.AcceptOnlyFromAmong("nf", "uniform", "uniform-asym");
        var rank = new Option<int>("--rank", "-r") { Description = "LoRA rank r.", DefaultValueFactory = _ => 16 };
        var iters = new Option<int>("--iters", "-t") { Description = "Alternating passes T (0 = QLoRA baseline, B = 0).", DefaultValueFactory = _ => 5 };
        var blockSize = new Option<int>("--block-size") { Description = "Values per quantization block.", DefaultValueFactory = _ => 64 };
        var solver = new Option<string>("--solver") { Description = "Low-rank solver: randomized (fast, warm-started) or exact (a full SVD of every target: much slower, e.g. 91 s instead of 5 s on the bundled model).", DefaultValueFactory = _ => "randomized" };
        solver.AcceptOnlyFromAmong("randomized", "exact");
        var alpha = new Option<int?>("--alpha") { Description = "lora_alpha written to the adapter (default: r). B is scaled so Q + (alpha/r)·B·A is unchanged." };
        var seed = new Option<int>("--seed") { Description = "Seed for the randomized solver and the QLoRA initialisation.", DefaultValueFactory = _ => 0 };
        var targets = new Option<string[]>("--targets") { Description = "Target modules: names (q_proj v_proj ...) or 're:<regex>' over the module path. Default: the architecture's projections.", AllowMultipleArgumentsPerToken = true };
        var bitsPattern = new Option<string[]>("--bits-pattern") { Description = "Explicit mixed precision: REGEX=BITS over the tensor name (repeatable, first match wins), e.g. 'layers\\.[0-3]\\.=4'." };
        var format = new Option<string>("--format") { Description = "Backbone format: peft (dequantized Q in the original dtype) or bnb-nf4 (pre-quantized bitsandbytes NF4).", DefaultValueFactory = _ => "peft" };
        format.AcceptOnlyFromAmong("peft", "bnb-nf4");
        var doubleQuant = new Option<bool>("--double-quant") { Description = "With --format bnb-nf4: quantize the absmax values too (bitsandbytes double quantization)." };
        var scaleSearch = new Option<bool>("--scale-search") { Description = "Search each block's scale (a clip ratio from 1 down to 0.5) for the least squared error instead of using its absmax (the default); '--scale-search false' gives the reference LoftQ that PEFT computes and bitsandbytes' QLoRA. Formats are the same either way.", DefaultValueFactory = _ => true };
        var objective = new Option<string>("--objective") { Description = "What each target minimises: weight (the paper's ||W - Q - B*A||), activation (the output error on the calibration inputs, full second moments) or activation-diag (per-input-channel second moments only; cheap). The activation objectives need --calibration.", DefaultValueFactory = _ => "weight" };
        objective.AcceptOnlyFromAmong("weight", "activation", "activation-diag");
        var calibration = new Option<string?>("--calibration") { Description = "Calibration text for the activation objectives (read as bytes; keep it apart from your evaluation text)." };
        var calibrationWindows = new Option<int>("--calibration-windows") { Description = "Windows of 256 bytes read from --calibration.", DefaultValueFactory = _ => 32 };
        var calibrationCache = new Option<string?>("--calibration-cache") { Description = "A file for the collected statistics: reused when it matches the model, text and windows, written otherwise." };
        var damping = new Option<double>("--damping") { Description = "Damping of the activation objectives: H + damping*mean(diag H)*I.", DefaultValueFactory = _ => LoftQNet.Optimization.InputWeighting.DefaultDamping };
        var bitBudget = new Option<double?>("--bit-budget") { Description = "Budgeted mixed precision: an average of bits per target weight (e.g. 2.5) spent where it reduces the error most (each target's bits chosen from --budget-bits by an exact knapsack over probed errors). Overrides --bits." };
        var budgetBits = new Option<int[]>("--budget-bits") { Description = "The bit widths --bit-budget chooses from.", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [2, 3, 4] };
        var plainScales = new Option<bool>("--plain-scale-search") { Description = "With --scale-search and an activation objective: search block scales for the plain squared error instead of the activation-weighted one." };
        var lowRankFirst = new Option<bool>("--low-rank-first") { Description = "QPiSSA order: take the rank-r approximation of W first and quantize its residual." };
        var threads = new Option<int?>("--threads") { Description = "Threads to use (default: all processors, or LOFTQ_NUM_THREADS)." };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace an existing output directory once the new one is complete." };
        var json = new Option<bool>("--json") { Description = "Print the report as JSON on stdout (progress goes to stderr)." };
        var device = new Option<string>("--device") { Description = "Where each target's LoftQ loop runs: cpu, cuda (an NVIDIA GPU through the CUDA libraries on the machine; an error when there is none) or auto (the GPU when it can, else the CPU with a one-line note). 'loftq describe' says what was found. The GPU path is not yet verified on a GPU and stays off unless LOFTQ_CUDA_UNVERIFIED=1 (docs/gpu.md).", DefaultValueFactory = _ => "cpu" };
        device.AcceptOnlyFromAmong("cpu", "cuda", "auto");

        var command = new Command("quantize", "LoftQ-initialise a checkpoint: quantized backbone + PEFT LoRA adapter (loftq_init/) + loftq_report.json.")
        {
            model, output, bits, quantizer, rank, iters, blockSize, solver, alpha, seed, targets, bitsPattern, format, doubleQuant, scaleSearch,
            bitBudget, budgetBits, objective, calibration, calibrationWindows, calibrationCache, damping, plainScales, lowRankFirst, threads, device, overwrite, json,
        };
        command.SetAction(parse => CliApp.Guard(stderr, () =>
        {
            var options = new LoftQOptions
            {
                Bits = parse.GetValue(bits),
                Quantizer = parse.GetValue(quantizer) switch
                {
                    "uniform" => QuantizerKind.Uniform,
                    "uniform-asym" => QuantizerKind.UniformAsymmetric,
                    _ => QuantizerKind.NormalFloat,
                },
                Rank = parse.GetValue(rank),
                Iterations = parse.GetValue(iters),
                BlockSize = parse.GetValue(blockSize),
                Solver = parse.GetValue(solver) == "exact" ? SolverKind.Exact : SolverKind.Randomized,
                Alpha = parse.GetValue(alpha),
                Seed = parse.GetValue(seed),
                Targets = parse.GetValue(targets) is { Length: > 0 } t ? t : null,
                BitsPatterns = ParsePatterns(parse.GetValue(bitsPattern)),
                Format = parse.GetValue(format) == "bnb-nf4" ? OutputFormat.BitsAndBytesNf4 : OutputFormat.Peft,
                DoubleQuant = parse.GetValue(doubleQuant),
                ScaleSearch = parse.GetValue(scaleSearch) ? LoftQNet.Quantization.BlockScaleSearch.Default : null,
                Threads = parse.GetValue(threads),
                Overwrite = parse.GetValue(overwrite),
                Objective = parse.GetValue(objective) switch
                {
                    "activation" => LoftQObjective.Activation,
                    "activation-diag" => LoftQObjective.ActivationDiagonal,
                    _ => LoftQObjective.Weight,
                },
                Damping = parse.GetValue(damping),
                LowRankFirst = parse.GetValue(lowRankFirst),
                ActivationWeightedScales = !parse.GetValue(plainScales),
                BitBudget = parse.GetValue(bitBudget),
                BudgetBits = parse.GetValue(budgetBits) ?? [2, 3, 4],
                Device = parse.GetValue(device) switch
                {
                    "cuda" => ComputeDevice.Cuda,
                    "auto" => ComputeDevice.Auto,
                    _ => ComputeDevice.Cpu,
                },
            };
            options = options with
            {
                Calibration = Calibrate(
                    parse.GetValue(model)!, options.Objective, parse.GetValue(calibration), parse.GetValue(calibrationWindows),
                    options.BitBudget is null ? 0 : SensitivityWindows, parse.GetValue(calibrationCache), options.Threads, stderr),
            };
            if (options.Solver == SolverKind.Exact)
            {
                stderr.WriteLine("note: --solver exact computes a full SVD of every target; it is much slower than the default randomized solver (91 s instead of 5 s on the bundled model) for errors within 0.5%.");
            }

            return Execute(parse.GetValue(model)!, parse.GetValue(output)!, options, parse.GetValue(json), stdout, stderr, interactive);
        }));
        return command;
    }

    /// <summary>Loads (from the cache) or collects the calibration statistics an activation objective needs; null for the weight objective.</summary>
    /// <summary>Calibration windows on which a bit budget's per-projection sensitivities are measured.</summary>
    internal const int SensitivityWindows = 2;

    internal static CalibrationStatistics? Calibrate(string model, LoftQObjective objective, string? text, int windows, int sensitivityWindows, string? cache, int? threads, TextWriter stderr)
    {
        if (objective == LoftQObjective.Weight)
        {
            if (text is not null || cache is not null)
            {
                throw new ArgumentException("--calibration and --calibration-cache are used only by --objective activation or activation-diag.");
            }

            return null;
        }

        if (text is null)
        {
            throw new ArgumentException($"--objective {LoftQPlan.ObjectiveFlag(objective)} needs --calibration FILE (a text to collect the layers' inputs from).");
        }

        if (windows < 1)
        {
            throw new ArgumentException($"--calibration-windows must be at least 1, got {windows}.");
        }

        if (!File.Exists(text))
        {
            throw new FileNotFoundException($"--calibration: '{text}' does not exist or is not a file.", text);
        }

        byte[] bytes = File.ReadAllBytes(text);
        bool diagonal = objective == LoftQObjective.ActivationDiagonal;
        if (cache is not null && File.Exists(cache))
        {
            CalibrationStatistics cached = CalibrationStatistics.Load(cache);
            if (cached.Matches(model, bytes, windows, diagonal) && (sensitivityWindows == 0 || cached.HasSensitivities))
            {
                stderr.WriteLine($"calibration: reusing {cache} ({cached.Windows} windows, {cached.Tokens} tokens)");
                return cached;
            }

            stderr.WriteLine($"calibration: {cache} is for another model, text or window count, or lacks the sensitivities a bit budget needs; collecting again");
        }

        using LoftQNet.Numerics.ComputeSettings.ThreadScope scope = threads is int t ? LoftQNet.Numerics.ComputeSettings.UseThreads(t) : default;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        CalibrationStatistics statistics = CalibrationStatistics.Collect(model, bytes, windows, diagonalOnly: diagonal, sensitivityWindows: sensitivityWindows);
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"calibration: {statistics.Windows} windows of {text} ({statistics.Tokens} tokens) in {clock.Elapsed.TotalSeconds:F1} s"));
        if (cache is not null)
        {
            statistics.Save(cache);
        }

        return statistics;
    }

    internal static IReadOnlyList<(string Pattern, int Bits)>? ParsePatterns(string[]? values)
    {
        if (values is not { Length: > 0 })
        {
            return null;
        }

        var rules = new List<(string, int)>(values.Length);
        foreach (string value in values)
        {
            int eq = value.LastIndexOf('=');
            if (eq <= 0 || !int.TryParse(value.AsSpan(eq + 1), NumberStyles.Integer, CultureInfo.InvariantCulture, out int b))
            {
                throw new ArgumentException($"--bits-pattern '{value}' must look like REGEX=BITS, e.g. 'layers\\.[0-3]\\.=4'.");
            }

            rules.Add((value[..eq], b));
        }

        return rules;
    }

    private static int Execute(string model, string output, LoftQOptions options, bool json, TextWriter stdout, TextWriter stderr, bool? interactive)
    {
        bool live = !json && (interactive ?? (!Console.IsOutputRedirected && Environment.GetEnvironmentVariable("CI") is null));
        IAnsiConsole console = ConsoleFactory.Create(stdout, live);
        TextWriter lines = json ? stderr : stdout;

        using var cts = new CancellationTokenSource();
        int? signalExit = null;
        void Stop(int exitCode)
        {
            signalExit ??= exitCode;
            cts.Cancel();
        }

        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            Stop(ExitCodes.Interrupted);
        };
        Console.CancelKeyPress += onCancel;

        // SIGTERM (kill, systemd, docker stop) and SIGHUP (terminal closed) cancel the run like Ctrl+C, so the staging
        // folder is removed before the process exits instead of being left behind.
        using PosixSignalRegistration? term = TryRegister(PosixSignal.SIGTERM, () => Stop(ExitCodes.Terminated));
        using PosixSignalRegistration? hup = TryRegister(PosixSignal.SIGHUP, () => Stop(ExitCodes.HungUp));
        try
        {
            var queue = new BlockingCollection<LoftQProgress>();
            var progress = new QueueProgress(queue);
            var run = Task.Run(() =>
            {
                try
                {
                    return LoftQ.Initialize(model, output, options, progress, cts.Token);
                }
                finally
                {
                    queue.CompleteAdding();
                }
            });

            if (live)
            {
                ShowLiveProgress(console, queue, stderr);
            }
            else
            {
                foreach (LoftQProgress p in queue.GetConsumingEnumerable())
                {
                    WritePlain(lines, stderr, p);
                }
            }

            LoftQReport report;
            try
            {
                report = run.GetAwaiter().GetResult();
            }
            catch (OperationCanceledException) when (signalExit is int code)
            {
                string by = code switch
                {
                    ExitCodes.Terminated => "SIGTERM",
                    ExitCodes.HungUp => "SIGHUP",
                    _ => "Ctrl+C",
                };
                stderr.WriteLine($"cancelled ({by}): no output was written and the partial output was removed.");
                return code;
            }

            if (json)
            {
                stdout.WriteLine(report.ToJson());
            }
            else
            {
                Summary.Write(console, report);
            }

            return ExitCodes.Ok;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    private static PosixSignalRegistration? TryRegister(PosixSignal signal, Action stop)
    {
        try
        {
            return PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true; // keep running until the pipeline has cleaned up, then exit with our code
                stop();
            });
        }
        catch (PlatformNotSupportedException)
        {
            return null;
        }
    }

    private static void ShowLiveProgress(IAnsiConsole console, BlockingCollection<LoftQProgress> queue, TextWriter stderr)
    {
        console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                ProgressTask task = ctx.AddTask("LoftQ", autoStart: true, maxValue: 1);
                foreach (LoftQProgress p in queue.GetConsumingEnumerable())
                {
                    // Spectre's progress is not thread-safe: every update happens here, on this one thread.
                    switch (p.Kind)
                    {
                        case LoftQProgressKind.Started:
                            task.MaxValue = Math.Max(1, p.Total);
                            break;
                        case LoftQProgressKind.LayerCompleted:
                            task.Value = p.Completed;
                            task.Description = Markup.Escape(ShortName(p.Layer!.Name));
                            break;
                        case LoftQProgressKind.ShardWritten:
                            task.Description = Markup.Escape($"wrote {p.Message}");
                            break;
                        case LoftQProgressKind.Completed:
                            task.Value = task.MaxValue;
                            task.Description = "done";
                            break;
                        case LoftQProgressKind.Notice:
                            stderr.WriteLine($"note: {p.Message}");
                            break;
                    }
                }
            });
    }

    private static void WritePlain(TextWriter writer, TextWriter stderr, LoftQProgress p)
    {
        switch (p.Kind)
        {
            case LoftQProgressKind.Started:
                writer.WriteLine($"LoftQ: {p.Total} target matrices");
                break;
            case LoftQProgressKind.LayerCompleted:
                LayerReport l = p.Layer!;
                string width = p.Total.ToString(CultureInfo.InvariantCulture);
                writer.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{p.Completed.ToString(CultureInfo.InvariantCulture).PadLeft(width.Length)}/{width}] {l.Name} {l.Quantizer} [{l.Shape[0]}x{l.Shape[1]}] QLoRA {l.QLoRAError:F4} -> LoftQ {l.RelativeError:F4} ({l.Seconds:F2} s)"));
                break;
            case LoftQProgressKind.ShardWritten:
                writer.WriteLine($"wrote {p.Message}");
                break;
            case LoftQProgressKind.Completed:
                break;
            case LoftQProgressKind.Notice:
                stderr.WriteLine($"note: {p.Message}");
                break;
        }
    }

    private static string ShortName(string name) => LoftQNet.IO.TargetSelector.ModulePathOf(name);

    private sealed class QueueProgress(BlockingCollection<LoftQProgress> queue) : IProgress<LoftQProgress>
    {
        public void Report(LoftQProgress value) => queue.Add(value);
    }
}
