using LoftQNet.Numerics;
using LoftQNet.Pipeline;
using LoftQNet.Tests.IO;

namespace LoftQNet.Tests.Numerics;

public class ComputeSettingsTests
{
    [Fact]
    public void AThreadScopeFlowsIntoWorkersAndLeavesTheGlobalAlone()
    {
        int global = ComputeSettings.MaxThreads;
        int inThread = 0, inScope, nested, afterNested;
        using (ComputeSettings.UseThreads(global + 3))
        {
            inScope = ComputeSettings.EffectiveMaxThreads;
            var worker = new Thread(() => inThread = ComputeSettings.EffectiveMaxThreads);
            worker.Start();
            worker.Join();
            using (ComputeSettings.UseThreads(1))
            {
                nested = ComputeSettings.EffectiveMaxThreads;
            }

            afterNested = ComputeSettings.EffectiveMaxThreads;
        }

        Assert.Equal(global + 3, inScope);
        Assert.Equal(global + 3, inThread);
        Assert.Equal(1, nested);
        Assert.Equal(global + 3, afterNested);
        Assert.Equal(global, ComputeSettings.EffectiveMaxThreads);
        Assert.Equal(global, ComputeSettings.MaxThreads);
        Assert.Throws<ArgumentOutOfRangeException>(() => ComputeSettings.UseThreads(0));
    }

    [Fact]
    public void ConcurrentRunsRecordTheirOwnThreadCountAndLeaveTheProcessSettingAlone()
    {
        // Before: each run set ComputeSettings.MaxThreads for its duration, so concurrent runs with different Threads
        // recorded each other's count and left the process at whichever finished last.
        int global = ComputeSettings.MaxThreads;
        using var dir = new TempDir();
        int[] wanted = [1, 2, 3, 1, 2, 3, 5, 4];
        var recorded = new int[wanted.Length];
        Parallel.For(0, wanted.Length, new ParallelOptions { MaxDegreeOfParallelism = wanted.Length }, i =>
        {
            var options = new LoftQOptions { Bits = 2, Rank = 4, Iterations = 1, Targets = ["k_proj"], Threads = wanted[i] };
            recorded[i] = LoftQ.Initialize(TestData.Model, dir.File($"out{i}"), options).Settings.Threads;
        });

        Assert.Equal(wanted, recorded);
        Assert.Equal(global, ComputeSettings.MaxThreads);
    }
}
