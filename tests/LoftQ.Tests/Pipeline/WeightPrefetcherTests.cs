using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

public sealed class WeightPrefetcherTests
{
    private static (HuggingFaceCheckpoint Checkpoint, SafeTensorsFile File, List<SafeTensorInfo> Targets) Open()
    {
        HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(TestData.Model);
        SafeTensorsFile file = checkpoint.OpenShard(checkpoint.ShardFiles[0]);
        List<SafeTensorInfo> targets = file.Tensors.Where(t => t.Shape.Rank == 2 && t.Name.Contains("proj", StringComparison.Ordinal)).Take(4).ToList();
        Assert.Equal(4, targets.Count);
        return (checkpoint, file, targets);
    }

    [Fact]
    public void EachWeightComesBackAsStoredWhileTheNextIsReadAhead()
    {
        (HuggingFaceCheckpoint checkpoint, SafeTensorsFile file, List<SafeTensorInfo> targets) = Open();
        using (checkpoint)
        using (var prefetcher = new WeightPrefetcher(file, targets))
        {
            for (int i = 0; i < targets.Count; i++)
            {
                using Matrix taken = prefetcher.Take(i);
                float[] direct = file.ReadAsSingle(targets[i].Name);
                Assert.Equal(targets[i].Shape[0], taken.Rows);
                Assert.Equal(targets[i].Shape[1], taken.Columns);
                Assert.Equal(direct, taken.Span.ToArray());
                Assert.Equal(Math.Min(i + 1, targets.Count - 1), prefetcher.ReadAhead); // nothing is read past the last target
            }
        }
    }

    [Fact]
    public void AnUnconsumedReadIsReleasedAndTakeAfterDisposeFails()
    {
        (HuggingFaceCheckpoint checkpoint, SafeTensorsFile file, List<SafeTensorInfo> targets) = Open();
        using (checkpoint)
        {
            var prefetcher = new WeightPrefetcher(file, targets);
            prefetcher.Take(0).Dispose(); // target 1 is now being read ahead
            prefetcher.Dispose();         // waits for it and releases it
            prefetcher.Dispose();
            Assert.Throws<ObjectDisposedException>(() => prefetcher.Take(1));
        }
    }

    [Fact]
    public void OneTargetAtATimeGivesTheSameOutputAsSeveral()
    {
        // Threads = 1 computes one target at a time and reads the next ahead; the output must not change.
        using var dir = new TempDirectory();
        LoftQOptions options = SyntheticLlama.QuickOptions with { Targets = ["q_proj", "down_proj"] };
        LoftQ.Initialize(TestData.Model, dir.Combine("one"), options with { Threads = 1 });
        LoftQ.Initialize(TestData.Model, dir.Combine("two"), options with { Threads = 2 });
        foreach (string name in Directory.GetFiles(dir.Combine("two"), "*.safetensors", SearchOption.AllDirectories).Select(p => Path.GetRelativePath(dir.Combine("two"), p)))
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir.Combine("two"), name)), File.ReadAllBytes(Path.Combine(dir.Combine("one"), name)));
        }
    }
}
