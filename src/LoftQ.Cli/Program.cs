namespace LoftQNet.Cli;

/// <summary>The <c>loftq</c> executable.</summary>
public static class Program
{
    /// <summary>Runs the command line and returns its exit code (0 ok, 2 bad input, 1 other failure, 130/143/129 cancelled by Ctrl+C/SIGTERM/SIGHUP).</summary>
    public static int Main(string[] args) => CliApp.Run(args, Console.Out, Console.Error, interactive: null);
}
