namespace LoftQNet.TorchSharp.Tests;

/// <summary>A temporary directory deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "loftq-torch-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>Finds tests/data by walking up from the test binaries to the repository root.</summary>
internal static class TestFiles
{
    public static string RepoRoot
    {
        get
        {
            string? dir = AppContext.BaseDirectory;
            while (dir is not null && !System.IO.File.Exists(System.IO.Path.Combine(dir, "LoftQ.sln")))
            {
                dir = System.IO.Path.GetDirectoryName(dir);
            }

            return dir ?? throw new InvalidOperationException("LoftQ.sln not found above the test binaries.");
        }
    }

    public static string Data => System.IO.Path.Combine(RepoRoot, "tests", "data");

    public static string FixtureModel => System.IO.Path.Combine(Data, "byte-llama-14m");

    public static string ReferenceLogits => System.IO.Path.Combine(Data, "reference-outputs", "byte-llama-14m-logits.safetensors");

    public static string FortunesVal => System.IO.Path.Combine(Data, "fortunes-val.txt");
}
