namespace LoftQNet.Tests;

/// <summary>Paths of the bundled test data (tests/data), found by walking up from the test binaries.</summary>
internal static class TestData
{
    private static readonly Lazy<string> s_root = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "tests", "data");
            if (Directory.Exists(Path.Combine(candidate, "byte-llama-14m")))
            {
                return candidate;
            }
        }

        throw new DirectoryNotFoundException("tests/data/byte-llama-14m not found above " + AppContext.BaseDirectory);
    });

    public static string Root => s_root.Value;

    public static string Model => Path.Combine(Root, "byte-llama-14m");

    public static string ReferenceOutputs => Path.Combine(Root, "reference-outputs");

    public static string FortunesVal => Path.Combine(Root, "fortunes-val.txt");
}

/// <summary>A temporary directory deleted on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "loftq-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string Combine(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);

    public void Dispose()
    {
        if (Directory.Exists(Path))
        {
            Directory.Delete(Path, recursive: true);
        }
    }
}
