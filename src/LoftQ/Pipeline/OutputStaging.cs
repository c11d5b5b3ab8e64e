using System.Globalization;
using System.Text.RegularExpressions;
using LoftQNet.IO;

namespace LoftQNet.Pipeline;

/// <summary>
/// A temporary directory beside the requested output that becomes the output only when everything is written:
/// a failure or a cancellation leaves no partial output behind.
/// </summary>
/// <remarks>
/// <para>For an output <c>X</c> in folder <c>P</c>, a run uses three names in <c>P</c>:
/// <c>.X.loftq-lock</c> (held exclusively for the whole run, deleted at the end),
/// <c>.X.loftq-partial-&lt;pid&gt;-&lt;start&gt;-&lt;guid&gt;</c> (the staging directory) and, while an existing
/// output is being replaced, <c>.X.loftq-old-&lt;pid&gt;-&lt;start&gt;-&lt;guid&gt;</c>. <c>&lt;start&gt;</c> is the
/// process start time (<see cref="SafeFileSystem.ProcessStartToken(int)"/>), so a recycled pid is not mistaken for the
/// run that made the folder.</para>
/// <para>Guarantees: the model directory is never the output, inside it or around it (physical paths compared);
/// only one run writes a given output name at a time; the output seen at the start is the one replaced at the end
/// (an output that appears or changes meanwhile is left as is and the run fails); the replacement leaves either the
/// old or the new output at <c>X</c>; and folders left by a killed run are removed (or, for a replaced output that
/// had not been swapped back, restored) by the next run for the same output.</para>
/// </remarks>
internal sealed partial class OutputStaging : IDisposable
{
    /// <summary>Test hook: called with the name of each commit step ("move-old-aside", "move-new-into-place", "delete-old") before it runs; throwing fails that step.</summary>
    internal static readonly AsyncLocal<Action<string>?> FaultInjection = new();

    private readonly FileStream _lock;
    private readonly OutputState _initial;
    private readonly Action<string>? _notice;
    private bool _committed;
    private bool _keepStaging;

    private readonly string _overwriteOption;

    private OutputStaging(string target, string staging, FileStream lockFile, OutputState initial, Action<string>? notice, string overwriteOption)
    {
        _overwriteOption = overwriteOption;
        Target = target;
        Path = staging;
        _lock = lockFile;
        _initial = initial;
        _notice = notice;
    }

    /// <summary>The final output directory (full path, as the caller named it).</summary>
    public string Target { get; }

    /// <summary>The staging directory to write into.</summary>
    public string Path { get; }

    /// <summary>
    /// Checks the output against the model, takes the output's lock, cleans up after earlier killed runs (telling
    /// <paramref name="notice"/>), records the output's current state and creates the staging directory.
    /// </summary>
    public static OutputStaging Create(string outputDirectory, string? modelDirectory, bool overwrite, Action<string>? notice = null, string overwriteOption = "LoftQOptions.Overwrite")
    {
        if (string.IsNullOrWhiteSpace(outputDirectory))
        {
            throw new ArgumentException("The output directory is empty.", nameof(outputDirectory));
        }

        string target = System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(outputDirectory));
        CheckNotOverlapping(outputDirectory, target, modelDirectory);
        if (File.Exists(target))
        {
            throw new ArgumentException($"The output path '{target}' is a file, not a directory.", nameof(outputDirectory));
        }

        string parent = System.IO.Path.GetDirectoryName(target) ?? throw new ArgumentException($"The output directory '{target}' has no parent directory.", nameof(outputDirectory));
        string name = System.IO.Path.GetFileName(target);
        FileStream lockFile = WithWriteAccess(target, parent, () =>
        {
            Directory.CreateDirectory(parent);
            return AcquireLock(target, System.IO.Path.Combine(parent, $".{name}.loftq-lock"));
        });
        try
        {
            RemoveStaleFolders(parent, name, target, notice);
            OutputState initial = OutputState.Of(target);
            if (initial.Kind == OutputKind.NonEmpty && !overwrite)
            {
                throw new ArgumentException($"The output directory '{target}' exists and is not empty; choose another or set {overwriteOption}.", nameof(outputDirectory));
            }

            string staging = System.IO.Path.Combine(parent, $".{name}.loftq-partial-{OwnerTag()}-{Guid.NewGuid():N}");
            WithWriteAccess(target, parent, () => Directory.CreateDirectory(staging));
            return new OutputStaging(target, staging, lockFile, initial, notice, overwriteOption);
        }
        catch
        {
            lockFile.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Moves the staging directory into place. Without an earlier output, the move fails rather than replace
    /// anything that appeared meanwhile; an existing output is replaced only if it is still the one seen at the
    /// start, by renaming it aside, renaming the new one in and then deleting the old one (renamed back if the
    /// second rename fails).
    /// </summary>
    /// <exception cref="IOException">The output appeared or changed during the run, or a rename failed; the message names every folder left.</exception>
    public void Commit()
    {
        OutputState now = OutputState.Of(Target);
        switch (_initial.Kind)
        {
            case OutputKind.Absent:
                if (now.Kind != OutputKind.Absent)
                {
                    throw Changed("appeared");
                }

                MoveIntoPlace();
                break;
            case OutputKind.Empty:
                if (now.Kind != OutputKind.Empty || !now.SameDirectoryAs(_initial))
                {
                    throw Changed("changed");
                }

                try
                {
                    Directory.Delete(Target, recursive: false); // fails if something was put into it meanwhile
                }
                catch (IOException)
                {
                    throw Changed("changed");
                }

                MoveIntoPlace();
                break;
            default:
                if (now.Kind != OutputKind.NonEmpty || !now.SameDirectoryAs(_initial))
                {
                    throw Changed(now.Kind == OutputKind.Absent ? "disappeared" : "changed");
                }

                Swap();
                break;
        }

        _committed = true;
    }

    /// <summary>Deletes the staging directory unless it was committed (or is the only copy of a finished output), then releases the lock.</summary>
    public void Dispose()
    {
        if (!_committed && !_keepStaging && Directory.Exists(Path))
        {
            try
            {
                Directory.Delete(Path, recursive: true);
            }
            catch (IOException)
            {
                // Best effort: the partial directory is hidden and named as partial; the next run removes it.
            }
            catch (UnauthorizedAccessException)
            {
                // Same as above.
            }
        }

        _lock.Dispose(); // deletes the lock file (DeleteOnClose) before releasing the lock
    }

    private void MoveIntoPlace()
    {
        Step("move-new-into-place");
        try
        {
            SafeFileSystem.MoveDirectoryNoReplace(Path, Target);
        }
        catch (DestinationExistsException)
        {
            throw Changed("appeared");
        }
    }

    private void Swap()
    {
        string parent = System.IO.Path.GetDirectoryName(Target)!;
        string old = System.IO.Path.Combine(parent, $".{System.IO.Path.GetFileName(Target)}.loftq-old-{OwnerTag()}-{Guid.NewGuid():N}");
        Step("move-old-aside");
        Directory.Move(Target, old);
        try
        {
            Step("move-new-into-place");
            SafeFileSystem.MoveDirectoryNoReplace(Path, Target);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try
            {
                SafeFileSystem.MoveDirectoryNoReplace(old, Target);
            }
            catch (Exception restore) when (restore is IOException or UnauthorizedAccessException)
            {
                _keepStaging = true;
                throw new IOException(
                    $"Could not move the new output into place ({e.Message}) nor the previous output back ({restore.Message}). " +
                    $"The previous output is in '{old}' and the complete new output in '{Path}'; rename one of them to '{Target}'.", e);
            }

            throw new IOException($"Could not move the new output into place ({e.Message}); the previous output is back at '{Target}' unchanged and the new output was discarded.", e);
        }

        try
        {
            Step("delete-old");
            Directory.Delete(old, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _notice?.Invoke($"The new output is at '{Target}', but the previous output could not be deleted from '{old}' ({e.Message}); delete it by hand (the next run for this output also removes it).");
        }
    }

    private IOException Changed(string what) =>
        new($"The output directory '{Target}' {what} while this run was writing; it was left as is and the new output was discarded. Run again (with {_overwriteOption} to replace it).");

    private static void Step(string name) => FaultInjection.Value?.Invoke(name);

    private static string OwnerTag() =>
        string.Create(CultureInfo.InvariantCulture, $"{Environment.ProcessId}-{SafeFileSystem.CurrentProcessStartToken}");

    private static void CheckNotOverlapping(string outputDirectory, string target, string? modelDirectory)
    {
        if (string.IsNullOrEmpty(modelDirectory))
        {
            return;
        }

        string realOutput = SafeFileSystem.RealPath(target);
        string realModel = SafeFileSystem.RealPath(modelDirectory);
        string where =
            SafeFileSystem.IsSameOrInside(realOutput, realModel) ? (string.Equals(realOutput, realModel, SafeFileSystem.PathComparison) ? "is" : "lies inside")
            : SafeFileSystem.IsSameOrInside(realModel, realOutput) ? "contains"
            : string.Empty;
        if (where.Length == 0)
        {
            return;
        }

        string resolved = string.Equals(realOutput, target, SafeFileSystem.PathComparison) && string.Equals(realModel, System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(modelDirectory)), SafeFileSystem.PathComparison)
            ? string.Empty
            : $" (after resolving links: '{realOutput}' and '{realModel}')";
        throw new ArgumentException($"The output directory '{outputDirectory}' {where} the model directory '{modelDirectory}'{resolved}; writing there could destroy the model. Choose an output outside it.", nameof(outputDirectory));
    }

    private static FileStream AcquireLock(string target, string lockPath)
    {
        try
        {
            var stream = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
            stream.SetLength(0);
            byte[] owner = System.Text.Encoding.UTF8.GetBytes($"loftq {OwnerTag()}\n");
            stream.Write(owner);
            stream.Flush();
            return stream;
        }
        catch (IOException e) when (e is not (FileNotFoundException or DirectoryNotFoundException or PathTooLongException) && File.Exists(lockPath))
        {
            throw new IOException($"Another loftq run is writing the output directory '{target}' (it holds '{lockPath}'); wait for it to finish or choose another output.", e);
        }
    }

    private static T WithWriteAccess<T>(string target, string parent, Func<T> action)
    {
        try
        {
            return action();
        }
        catch (UnauthorizedAccessException e)
        {
            throw new UnauthorizedAccessException($"Cannot write the output directory '{target}': creating files in '{parent}' is not permitted.", e);
        }
        catch (IOException e) when (e.GetType() == typeof(IOException) && !File.Exists(System.IO.Path.Combine(parent, $".{System.IO.Path.GetFileName(target)}.loftq-lock")))
        {
            throw new IOException($"Cannot write the output directory '{target}': creating files in '{parent}' failed ({e.Message}).", e);
        }
    }

    private static void RemoveStaleFolders(string parent, string name, string target, Action<string>? notice)
    {
        var olds = new List<string>();
        foreach (string dir in Directory.EnumerateDirectories(parent, $".{name}.loftq-*"))
        {
            string leaf = System.IO.Path.GetFileName(dir);
            Match m = StaleName().Match(leaf[(name.Length + 2)..]);
            if (!m.Success)
            {
                continue;
            }

            int pid = int.Parse(m.Groups["pid"].Value, NumberStyles.None, CultureInfo.InvariantCulture);
            long? start = m.Groups["start"].Success ? long.Parse(m.Groups["start"].Value, NumberStyles.None, CultureInfo.InvariantCulture) : null;
            if (SafeFileSystem.IsProcessAlive(pid, start))
            {
                continue; // a live run owns it (only runs of older versions, which took no lock, can get here)
            }

            bool old = m.Groups["kind"].Value == "old" || m.Groups["dotold"].Success;
            if (old)
            {
                olds.Add(dir);
                continue;
            }

            if (TryDelete(dir))
            {
                notice?.Invoke($"Removed '{dir}': the unfinished output of an earlier run for this output (process {pid}) that was stopped before it completed.");
            }
        }

        // A previous output renamed aside by a run that died before the swap finished: if nothing is at the
        // output, it is the user's only copy, so put it back; otherwise the swap completed and it is garbage.
        foreach (string dir in olds)
        {
            if (!Directory.Exists(target) && !File.Exists(target) && olds.Count == 1)
            {
                Directory.Move(dir, target);
                notice?.Invoke($"Restored '{target}' from '{dir}': an earlier run was stopped while replacing it.");
            }
            else if (Directory.Exists(target) && TryDelete(dir))
            {
                notice?.Invoke($"Removed '{dir}': the previous output an earlier run had replaced but not yet deleted.");
            }
            else
            {
                notice?.Invoke($"Left '{dir}' in place: a previous output an earlier stopped run had moved aside; check it and delete or rename it to '{target}'.");
            }
        }
    }

    private static bool TryDelete(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    // "<kind>-<pid>-<start>-<guid>" (this version) or "partial-<pid>-<guid>[.old]" (earlier versions).
    [GeneratedRegex(@"^loftq-(?<kind>partial|old)-(?<pid>[0-9]{1,10})-(?:(?<start>[0-9]{1,20})-)?[0-9a-f]{32}(?<dotold>\.old)?$", RegexOptions.CultureInvariant)]
    private static partial Regex StaleName();

    private enum OutputKind
    {
        Absent,
        Empty,
        NonEmpty,
    }

    /// <summary>What is at the output path, with the directory's timestamps as its identity.</summary>
    private readonly record struct OutputState(OutputKind Kind, DateTime Created, DateTime Modified)
    {
        public static OutputState Of(string path)
        {
            if (!Directory.Exists(path))
            {
                return File.Exists(path) || new FileInfo(path).LinkTarget is not null
                    ? new OutputState(OutputKind.NonEmpty, DateTime.MinValue, DateTime.MinValue)
                    : new OutputState(OutputKind.Absent, default, default);
            }

            var info = new DirectoryInfo(path);
            OutputKind kind = info.EnumerateFileSystemInfos().Any() ? OutputKind.NonEmpty : OutputKind.Empty;
            return new OutputState(kind, info.CreationTimeUtc, info.LastWriteTimeUtc);
        }

        public bool SameDirectoryAs(OutputState other) => Created == other.Created && Modified == other.Modified;
    }
}
