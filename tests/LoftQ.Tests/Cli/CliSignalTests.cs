using System.Diagnostics;
using System.Text;

namespace LoftQNet.Tests.Cli;

/// <summary>A real <c>loftq</c> process stopped mid-run: SIGTERM cleans up at once, SIGKILL's leftovers are cleaned by the next run.</summary>
public sealed class CliSignalTests
{
    [Fact]
    public void Sigkill_leaves_staging_that_the_next_run_removes_and_sigterm_leaves_nothing()
    {
        if (OperatingSystem.IsWindows())
        {
            return; // POSIX signals
        }

        using var dir = new TempDirectory();
        string output = dir.Combine("out");

        // 1. SIGKILL cannot be handled: the staging folder (and the lock file) stay behind.
        (int killedCode, _, _) = RunUntilFirstLayer(output, p => p.Kill());
        Assert.NotEqual(0, killedCode);
        Assert.Single(Directory.EnumerateDirectories(dir.Path, ".out.loftq-partial-*"));
        Assert.False(Directory.Exists(output));

        // 2. The next run removes it and says so; SIGTERM then cancels it cleanly with exit code 143.
        (int code, string stdout, string stderr) = RunUntilFirstLayer(output, p => Signal(p.Id, "TERM"));
        Assert.True(code == 143, $"exit {code}\n{stdout}\n{stderr}");
        Assert.Contains("note: Removed", stderr, StringComparison.Ordinal);
        Assert.Contains("cancelled (SIGTERM)", stderr, StringComparison.Ordinal);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path));

        // 3. SIGHUP behaves the same, with 129.
        (code, stdout, stderr) = RunUntilFirstLayer(output, p => Signal(p.Id, "HUP"));
        Assert.True(code == 129, $"exit {code}\n{stdout}\n{stderr}");
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path));
    }

    private static (int Code, string Stdout, string Stderr) RunUntilFirstLayer(string output, Action<Process> stop)
    {
        string cli = Path.Combine(AppContext.BaseDirectory, "LoftQ.Cli.dll");
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in new[] { cli, "quantize", TestData.Model, "--out", output, "--bits", "4", "--rank", "16", "--iters", "5", "--threads", "1" })
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using var firstLayer = new ManualResetEventSlim();
        process.OutputDataReceived += (_, e) =>
        {
            lock (stdout)
            {
                stdout.AppendLine(e.Data);
            }

            if (e.Data?.StartsWith("[ 1/", StringComparison.Ordinal) == true || e.Data?.StartsWith("[1/", StringComparison.Ordinal) == true)
            {
                firstLayer.Set();
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            lock (stderr)
            {
                stderr.AppendLine(e.Data);
            }
        };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        bool started = firstLayer.Wait(TimeSpan.FromSeconds(120));
        if (started && !process.HasExited)
        {
            stop(process);
        }

        Assert.True(process.WaitForExit(TimeSpan.FromSeconds(120)), "the CLI did not exit");
        process.WaitForExit(); // drain the output
        Assert.True(started, $"no progress line\n{stdout}\n{stderr}");
        return (process.ExitCode, stdout.ToString(), stderr.ToString());
    }

    private static void Signal(int pid, string signal)
    {
        using var kill = Process.Start("kill", ["-" + signal, pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
    }
}
