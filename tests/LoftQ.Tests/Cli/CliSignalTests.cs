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

        // 3. SIGHUP behaves the same, with 129 — unless whoever started the tests ignores it (nohup): children inherit
        // the ignored disposition, and a hang-up then rightly does not stop the CLI.
        if (IgnoredHere(signal: 1))
        {
            return;
        }

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
        // 60 passes make each layer take a fraction of a second and the run tens of seconds: it is far from done when
        // the signal arrives, yet a cancellation (checked between layers) is quick.
        foreach (string arg in new[] { cli, "quantize", TestData.Model, "--out", output, "--bits", "4", "--rank", "16", "--iters", "60", "--threads", "1" })
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using var firstLayer = new ManualResetEventSlim();

        // Dedicated threads, not thread-pool callbacks: under a loaded test run the pool can lag by seconds.
        var readOut = new Thread(() =>
        {
            while (process.StandardOutput.ReadLine() is string line)
            {
                lock (stdout)
                {
                    stdout.AppendLine(line);
                }

                if (line.StartsWith("[ 1/", StringComparison.Ordinal) || line.StartsWith("[1/", StringComparison.Ordinal))
                {
                    firstLayer.Set();
                }
            }
        });
        var readErr = new Thread(() =>
        {
            while (process.StandardError.ReadLine() is string line)
            {
                lock (stderr)
                {
                    stderr.AppendLine(line);
                }
            }
        });
        readOut.Start();
        readErr.Start();
        bool started = false, exited = false;
        try
        {
            started = firstLayer.Wait(TimeSpan.FromSeconds(120));
            if (started && !process.HasExited)
            {
                stop(process);
            }

            exited = process.WaitForExit(TimeSpan.FromSeconds(120));
        }
        finally
        {
            // Whatever failed, the readers finish before the process object is disposed: a reader thread that touched
            // a disposed Process would take the whole test host down with it.
            if (!exited && !process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit();
            }

            readOut.Join();
            readErr.Join();
        }

        Assert.True(exited, $"the CLI did not exit\n{stdout}\n{stderr}");
        Assert.True(started, $"no progress line\n{stdout}\n{stderr}");
        return (process.ExitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Whether this process ignores <paramref name="signal"/> (the SigIgn mask of /proc/self/status).</summary>
    private static bool IgnoredHere(int signal)
    {
        string? mask = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        return mask is not null
            && (ulong.Parse(mask["SigIgn:".Length..].Trim(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture) & (1UL << (signal - 1))) != 0;
    }

    private static void Signal(int pid, string signal)
    {
        using var kill = Process.Start("kill", ["-" + signal, pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
    }
}
