using System.CommandLine;
using System.CommandLine.Help;
using LoftQNet.Pipeline;

namespace LoftQNet.Cli;

/// <summary>Builds and runs the command tree; thin: it parses, then calls the library.</summary>
internal static class CliApp
{
    /// <summary>Runs <paramref name="args"/>; <paramref name="interactive"/> null means detect from the console.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, bool? interactive)
    {
        Command root = Build(stdout, stderr, interactive);
        ParseResult parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (System.CommandLine.Parsing.ParseError error in parse.Errors)
            {
                stderr.WriteLine($"error: {error.Message}");
            }

            stderr.WriteLine("Run 'loftq --help' for usage.");
            return ExitCodes.BadInput;
        }

        return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
    }

    internal static Command Build(TextWriter stdout, TextWriter stderr, bool? interactive)
    {
        // RootCommand names itself after the running executable (LoftQ.Cli under dotnet run, testhost in tests); its
        // users type loftq, so the root is a command named loftq with the options RootCommand would add.
        var root = new Command("loftq", "LoftQ.NET: LoRA-fine-tuning-aware quantization (LoftQ) of Hugging Face checkpoints.")
        {
            new HelpOption(),
            new VersionOption(),
        };
        root.Subcommands.Add(QuantizeCommand.Create(stdout, stderr, interactive));
        root.Subcommands.Add(InspectCommand.Create(stdout, stderr));
        root.Subcommands.Add(EvalCommand.Create(stdout, stderr));
        var describe = new Command("describe", "Print the library version, compute backends, SIMD support and thread count (for bug reports).");
        describe.SetAction(_ =>
        {
            stdout.Write(LoftQ.Describe());
            return ExitCodes.Ok;
        });
        root.Subcommands.Add(describe);
        return root;
    }

    /// <summary>Runs <paramref name="action"/>, mapping exceptions to exit codes and one clear line on stderr.</summary>
    public static int Guard(TextWriter stderr, Func<int> action)
    {
        try
        {
            return action();
        }
        catch (OperationCanceledException)
        {
            stderr.WriteLine("cancelled: no output was written.");
            return ExitCodes.Failure;
        }
        catch (Exception e) when (ExitCodes.IsBadInput(e))
        {
            stderr.WriteLine($"error: {CliMessages.Describe(e)}");
            return ExitCodes.BadInput;
        }
        catch (Exception e)
        {
            stderr.WriteLine($"failed: {e.GetType().Name}: {CliMessages.Describe(e)}");
            return ExitCodes.Failure;
        }
    }
}
