using System.Buffers.Binary;
using System.Text;

namespace LoftQNet.Tests.IO;

/// <summary>A temporary directory deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "loftq-io-" + Guid.NewGuid().ToString("N"));
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

    public static string FixtureModel => System.IO.Path.Combine(RepoRoot, "tests", "data", "byte-llama-14m");

    public static string ReferenceReadme => System.IO.Path.Combine(RepoRoot, "tests", "data", "reference-outputs", "README.json");

    /// <summary>Raw file bytes: 8-byte length (or an override), the header text, then <paramref name="dataLength"/> bytes.</summary>
    public static byte[] Build(string header, int dataLength, ulong? lengthOverride = null)
    {
        byte[] h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + dataLength];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, lengthOverride ?? (ulong)h.Length);
        h.CopyTo(bytes, 8);
        for (int i = 8 + h.Length; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(i * 31);
        }

        return bytes;
    }
}
