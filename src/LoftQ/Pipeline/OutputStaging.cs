namespace LoftQNet.Pipeline;

/// <summary>
/// A temporary directory beside the requested output that becomes the output only when everything is written:
/// a failure or a cancellation leaves no partial output behind.
/// </summary>
internal sealed class OutputStaging : IDisposable
{
    private bool _committed;

    private OutputStaging(string target, string staging)
    {
        Target = target;
        Path = staging;
    }

    /// <summary>The final output directory.</summary>
    public string Target { get; }

    /// <summary>The staging directory to write into.</summary>
    public string Path { get; }

    public static OutputStaging Create(string outputDirectory, string modelDirectory, bool overwrite)
    {
        if (string.IsNullOrWhiteSpace(outputDirectory))
        {
            throw new ArgumentException("The output directory (--out) is empty.", nameof(outputDirectory));
        }

        string target = System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(outputDirectory));
        string model = System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(modelDirectory));
        if (string.Equals(target, model, StringComparison.Ordinal)
            || target.StartsWith(model + System.IO.Path.DirectorySeparatorChar, StringComparison.Ordinal)
            || model.StartsWith(target + System.IO.Path.DirectorySeparatorChar, StringComparison.Ordinal))
        {
            throw new ArgumentException($"The output directory (--out) '{target}' must not contain or lie inside the model directory '{model}'.", nameof(outputDirectory));
        }

        if (File.Exists(target))
        {
            throw new ArgumentException($"The output path (--out) '{target}' is a file, not a directory.", nameof(outputDirectory));
        }

        if (Directory.Exists(target) && Directory.EnumerateFileSystemEntries(target).Any() && !overwrite)
        {
            throw new ArgumentException($"The output directory (--out) '{target}' exists and is not empty; choose another or pass --overwrite.", nameof(outputDirectory));
        }

        string parent = System.IO.Path.GetDirectoryName(target) ?? throw new ArgumentException($"The output directory (--out) '{target}' has no parent directory.", nameof(outputDirectory));
        Directory.CreateDirectory(parent);
        string staging = System.IO.Path.Combine(parent, $".{System.IO.Path.GetFileName(target)}.loftq-partial-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(staging);
        return new OutputStaging(target, staging);
    }

    /// <summary>Moves the staging directory into place, replacing an existing output only now.</summary>
    public void Commit()
    {
        if (Directory.Exists(Target))
        {
            string old = Path + ".old";
            Directory.Move(Target, old);
            Directory.Move(Path, Target);
            Directory.Delete(old, recursive: true);
        }
        else
        {
            Directory.Move(Path, Target);
        }

        _committed = true;
    }

    /// <summary>Deletes the staging directory unless it was committed.</summary>
    public void Dispose()
    {
        if (!_committed && Directory.Exists(Path))
        {
            try
            {
                Directory.Delete(Path, recursive: true);
            }
            catch (IOException)
            {
                // Best effort: the partial directory is hidden (dot-prefixed) and named as partial.
            }
            catch (UnauthorizedAccessException)
            {
                // Same as above.
            }
        }
    }
}
