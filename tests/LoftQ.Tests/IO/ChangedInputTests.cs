using LoftQNet.IO;
using LoftQNet.Pipeline;
using LoftQNet.Tests.Pipeline;

namespace LoftQNet.Tests.IO;

/// <summary>Issue 8, item 6: an input file truncated while it is open gives a clean error, never a SIGBUS crash.</summary>
public sealed class ChangedInputTests
{
    [Fact]
    public void Reading_a_tensor_of_a_file_truncated_after_opening_throws_an_IOException()
    {
        using var dir = new TempDir();
        string path = dir.File("a.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("a", [1024], new float[1024]), SafeTensorEntry.FromSingle("b", [4096], new float[4096], SafeTensorDType.BF16)]);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Truncate(path, file.DataStart + 100);

        IOException e = Assert.Throws<IOException>(() => file.ReadAsSingle("b"));
        Assert.Contains("changed while it was being read", e.Message, StringComparison.Ordinal);
        Assert.Contains("'b'", e.Message, StringComparison.Ordinal);
        Assert.Throws<IOException>(() => file.GetBytes("a").Length);
        Assert.Throws<IOException>(() => file.CopyBytes("a", 200, new byte[8]));
    }

    [Fact]
    public void A_model_truncated_during_a_run_fails_cleanly_and_leaves_no_output()
    {
        using var dir = new TempDirectory();
        string model = SyntheticLlama.Write(dir.Combine("M"));
        string shard = Path.Combine(model, HuggingFaceCheckpoint.SingleFileName);
        string output = dir.Combine("out");
        int truncated = 0;
        var progress = new SyncProgress(p =>
        {
            if (p.Kind == LoftQProgressKind.LayerCompleted && Interlocked.Exchange(ref truncated, 1) == 0)
            {
                Truncate(shard, 4096);
            }
        });
        IOException e = Assert.Throws<IOException>(() =>
            LoftQ.Initialize(model, output, new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1, Threads = 1 }, progress));
        Assert.Contains(shard, e.Message, StringComparison.Ordinal);
        Assert.Contains("changed while it was being read", e.Message, StringComparison.Ordinal);
        Assert.Equal(["M"], Directory.EnumerateFileSystemEntries(dir.Path).Select(Path.GetFileName));
    }

    private static void Truncate(string path, long length)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        stream.SetLength(length);
    }
}
