using System.Collections.Concurrent;
using System.Security.Cryptography;
using LoftQNet.IO;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>Issue 8, data-safety items 1–4 and 9: the input is protected, outputs appear atomically, and nothing is lost or left behind.</summary>
public sealed class OutputSafetyTests
{
    private const int DeadPid = 2_147_483_000; // above any pid_max

    [Fact]
    public void Overwrite_through_a_symbolic_link_to_the_model_is_refused_and_the_model_is_untouched()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string link = dir.Combine("L");
        Directory.CreateSymbolicLink(link, model);
        string before = Fingerprint(model);

        // ln -s M L; loftq quantize L --out M --overwrite (and the mirror image, and paths that only resolve to M).
        foreach ((string input, string output) in new[]
        {
            (link, model), (model, link), (link, model + "/"), (model, link + "/x/.."),
            (model, Path.Combine(link, "inner")), (link, dir.Path),
        })
        {
            ArgumentException e = Assert.Throws<ArgumentException>(() =>
                LoftQ.Initialize(input, output, SyntheticLlama.QuickOptions with { Overwrite = true }));
            Assert.Contains("model directory", e.Message, StringComparison.Ordinal);
        }

        Assert.Equal(before, Fingerprint(model));
        Assert.DoesNotContain(Directory.EnumerateFileSystemEntries(dir.Path), p => Path.GetFileName(p).Contains("loftq", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_output_that_appears_during_the_run_is_kept_and_the_run_fails(bool withFile)
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = dir.Combine("out");
        var progress = new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.LayerCompleted && !Directory.Exists(output))
            {
                Directory.CreateDirectory(output);
                if (withFile)
                {
                    File.WriteAllText(Path.Combine(output, "theirs.txt"), "mine");
                }
            }
        });
        IOException e = Assert.Throws<IOException>(() => LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions, progress));
        Assert.Contains("appeared", e.Message, StringComparison.Ordinal);
        Assert.Contains(output, e.Message, StringComparison.Ordinal);
        Assert.Equal(withFile ? ["theirs.txt"] : [], Directory.EnumerateFileSystemEntries(output).Select(Path.GetFileName));
        Assert.Equal(["M", "out"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void A_second_run_for_the_same_output_is_refused_while_the_first_holds_the_lock()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = dir.Combine("out");
        Exception? second = null;
        var progress = new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.LayerCompleted && second is null)
            {
                second = Record.Exception(() => LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions with { Overwrite = true }));
            }
        });
        LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions, progress);
        IOException e = Assert.IsType<IOException>(second);
        Assert.Contains("Another loftq run", e.Message, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(output, "loftq_report.json")));
        Assert.Equal(["M", "out"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));

        // Two runs started at once in parallel: exactly one wins; the other fails without touching the winner's output.
        string raced = dir.Combine("raced");
        Exception?[] errors = new Exception?[2];
        Parallel.For(0, 2, i => errors[i] = Record.Exception(() => LoftQ.Initialize(model, raced, SyntheticLlama.QuickOptions with { Seed = i })));
        Assert.Single(errors, e => e is null);
        Assert.IsAssignableFrom<Exception>(errors.Single(e => e is not null)); // the lock, or "appeared" if it came second
        Assert.True(File.Exists(Path.Combine(raced, "loftq_report.json")));
        Assert.Equal(["M", "out", "raced"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Overwrite_of_an_output_changed_during_the_run_fails_and_keeps_it()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = dir.Combine("out");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "x");
        var progress = new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.LayerCompleted && !File.Exists(Path.Combine(output, "new.txt")))
            {
                File.WriteAllText(Path.Combine(output, "new.txt"), "y");
            }
        });
        IOException e = Assert.Throws<IOException>(() => LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions with { Overwrite = true }, progress));
        Assert.Contains("changed", e.Message, StringComparison.Ordinal);
        Assert.Equal(["keep.txt", "new.txt"], Directory.EnumerateFileSystemEntries(output).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(["M", "out"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void A_failed_swap_puts_the_previous_output_back()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = ExistingOutput(dir);
        OutputStaging.FaultInjection.Value = step =>
        {
            if (step == "move-new-into-place")
            {
                throw new IOException("injected rename failure");
            }
        };
        try
        {
            IOException e = Assert.Throws<IOException>(() => LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions with { Overwrite = true }));
            Assert.Contains("injected rename failure", e.Message, StringComparison.Ordinal);
            Assert.Contains($"back at '{output}'", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            OutputStaging.FaultInjection.Value = null;
        }

        Assert.Equal(["keep.txt"], Directory.EnumerateFileSystemEntries(output).Select(Path.GetFileName));
        Assert.Equal(["M", "out"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void A_swap_that_cannot_be_undone_names_every_folder_it_leaves()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = ExistingOutput(dir);
        OutputStaging.FaultInjection.Value = step =>
        {
            if (step == "move-new-into-place")
            {
                // Someone creates the output between the two renames: neither the new nor the old one can go there.
                Directory.CreateDirectory(output);
                File.WriteAllText(Path.Combine(output, "intruder.txt"), "z");
            }
        };
        IOException e;
        try
        {
            e = Assert.Throws<IOException>(() => LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions with { Overwrite = true }));
        }
        finally
        {
            OutputStaging.FaultInjection.Value = null;
        }

        string old = Assert.Single(Directory.EnumerateDirectories(dir.Path, ".out.loftq-old-*"));
        string staged = Assert.Single(Directory.EnumerateDirectories(dir.Path, ".out.loftq-partial-*"));
        Assert.Contains(old, e.Message, StringComparison.Ordinal);
        Assert.Contains(staged, e.Message, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(old, "keep.txt")));
        Assert.True(File.Exists(Path.Combine(staged, "loftq_report.json")));
    }

    [Fact]
    public void An_old_output_that_cannot_be_deleted_is_named_and_the_next_run_removes_it()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = ExistingOutput(dir);
        var notices = new ConcurrentQueue<string>();
        var progress = new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.Notice)
            {
                notices.Enqueue(p.Message!);
            }
        });
        OutputStaging.FaultInjection.Value = step =>
        {
            if (step == "delete-old")
            {
                throw new IOException("injected delete failure");
            }
        };
        try
        {
            LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions with { Overwrite = true }, progress);
        }
        finally
        {
            OutputStaging.FaultInjection.Value = null;
        }

        string old = Assert.Single(Directory.EnumerateDirectories(dir.Path, ".out.loftq-old-*"));
        Assert.Contains(notices, n => n.Contains(old, StringComparison.Ordinal));
        Assert.True(File.Exists(Path.Combine(output, "loftq_report.json")));

        // The old folder belongs to this (live) process, so only a folder of a dead one is collected: rename it so.
        string dead = Path.Combine(dir.Path, $".out.loftq-old-{DeadPid}-1-{Guid.NewGuid():N}");
        Directory.Move(old, dead);
        notices.Clear();
        LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions with { Overwrite = true }, progress);
        Assert.False(Directory.Exists(dead));
        Assert.Contains(notices, n => n.Contains("Removed", StringComparison.Ordinal) && n.Contains(dead, StringComparison.Ordinal));
    }

    [Fact]
    public void Stale_staging_of_dead_processes_is_removed_and_reported_but_a_live_ones_is_kept()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = dir.Combine("out");
        long me = SafeFileSystem.CurrentProcessStartToken;
        string dead = Stale(dir, $"partial-{DeadPid}-5");
        string legacy = Stale(dir, $"partial-{DeadPid}");                    // an earlier version's name, no start time
        string reused = Stale(dir, $"partial-{Environment.ProcessId}-{me + 1}"); // our pid, another start: a recycled pid
        string live = Stale(dir, $"partial-{Environment.ProcessId}-{me}");
        string otherOutput = Path.Combine(dir.Path, $".other.loftq-partial-{DeadPid}-5-{Guid.NewGuid():N}");
        Directory.CreateDirectory(otherOutput);
        var notices = new ConcurrentQueue<string>();
        LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions, new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.Notice)
            {
                notices.Enqueue(p.Message!);
            }
        }));

        Assert.False(Directory.Exists(dead));
        Assert.False(Directory.Exists(legacy));
        Assert.False(Directory.Exists(reused));
        Assert.True(Directory.Exists(live));
        Assert.True(Directory.Exists(otherOutput));
        Assert.Equal(3, notices.Count(n => n.StartsWith("Removed", StringComparison.Ordinal)));
        Assert.Contains(notices, n => n.Contains(dead, StringComparison.Ordinal));
    }

    [Fact]
    public void A_previous_output_moved_aside_by_a_killed_run_is_restored()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = dir.Combine("out");
        string aside = Stale(dir, $"old-{DeadPid}-5");
        File.WriteAllText(Path.Combine(aside, "keep.txt"), "x");
        var notices = new ConcurrentQueue<string>();
        ArgumentException e = Assert.Throws<ArgumentException>(() => LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions, new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.Notice)
            {
                notices.Enqueue(p.Message!);
            }
        })));
        Assert.Contains("LoftQOptions.Overwrite", e.Message, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(output, "keep.txt")));
        Assert.Contains(notices, n => n.StartsWith("Restored", StringComparison.Ordinal));
        Assert.Equal(["M", "out"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void An_unwritable_output_location_is_reported_with_the_out_path_not_the_staging_path()
    {
        if (!Directory.Exists("/sys/kernel"))
        {
            return; // needs a read-only location even root cannot write (Linux sysfs)
        }

        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string output = "/sys/loftq-test-" + Guid.NewGuid().ToString("N");
        Exception e = Assert.ThrowsAny<Exception>(() => LoftQ.Initialize(model, output, SyntheticLlama.QuickOptions));
        Assert.True(e is IOException or UnauthorizedAccessException, e.ToString());
        Assert.Contains($"'{output}'", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("loftq-partial", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("loftq-lock", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_file_passed_as_the_model_directory_is_named_as_a_file()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string file = Path.Combine(model, HuggingFaceCheckpoint.SingleFileName);
        DirectoryNotFoundException e = Assert.Throws<DirectoryNotFoundException>(() => LoftQ.Initialize(file, dir.Combine("out")));
        Assert.Contains("is a file, not a model directory", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<DirectoryNotFoundException>(() => HuggingFaceCheckpoint.Open(file));
        Assert.Contains("is a file, not a model directory", e.Message, StringComparison.Ordinal);
    }

    internal static string Fingerprint(string directory) =>
        string.Join(";", Directory.EnumerateFiles(directory).Order(StringComparer.Ordinal)
            .Select(f => Path.GetFileName(f) + ":" + Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f)))));

    private static string ExistingOutput(TempDirectory dir)
    {
        string output = dir.Combine("out");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "x");
        return output;
    }

    private static string Stale(TempDirectory dir, string kindPidStart)
    {
        string path = Path.Combine(dir.Path, $".out.loftq-{kindPidStart}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(path);
        File.WriteAllText(Path.Combine(path, "model-00001-of-00002.safetensors"), "partial");
        return path;
    }
}
