using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>Budgeted mixed precision: the knapsack against enumeration, the budget met exactly, the pipeline's allocation.</summary>
public sealed class BitBudgetTests
{
    private static readonly int[] s_candidates = [2, 3, 4];

    /// <summary>Random sizes (multiples of a base) and errors that fall with the bits.</summary>
    private static (long[] Sizes, double[][] Errors) Problem(int items, int seed)
    {
        var random = new Random(seed);
        var sizes = new long[items];
        var errors = new double[items][];
        for (int i = 0; i < items; i++)
        {
            sizes[i] = 4096L * random.Next(1, 9);
            double e2 = random.NextDouble() * 10;
            errors[i] = [e2, e2 * (0.2 + (0.4 * random.NextDouble())), e2 * (0.02 + (0.1 * random.NextDouble()))];
        }

        return (sizes, errors);
    }

    private static (double Error, double Bits) Evaluate(long[] sizes, double[][] errors, int[] choice)
    {
        double error = 0, bits = 0;
        for (int i = 0; i < sizes.Length; i++)
        {
            error += errors[i][choice[i]];
            bits += (double)sizes[i] * s_candidates[choice[i]];
        }

        return (error, bits / sizes.Sum());
    }

    [Theory]
    [InlineData(1, 2.0)]
    [InlineData(2, 2.25)]
    [InlineData(3, 2.5)]
    [InlineData(4, 3.0)]
    [InlineData(5, 3.7)]
    [InlineData(6, 4.0)]
    public void TheKnapsackIsTheOptimumOfAllAllocations(int seed, double budget)
    {
        (long[] sizes, double[][] errors) = Problem(7, seed);
        int[] choice = BitAllocator.Solve(sizes, errors, s_candidates, budget, out bool exact);
        Assert.True(exact);
        (double error, double bits) = Evaluate(sizes, errors, choice);
        Assert.True(bits <= budget + 1e-12, $"average {bits} exceeds the budget {budget}");

        // Enumerate all 3^7 allocations.
        double best = double.PositiveInfinity;
        var trial = new int[7];
        for (int code = 0; code < 2187; code++)
        {
            for (int i = 0, c = code; i < 7; i++, c /= 3)
            {
                trial[i] = c % 3;
            }

            (double e, double b) = Evaluate(sizes, errors, trial);
            if (b <= budget + 1e-12)
            {
                best = Math.Min(best, e);
            }
        }

        Assert.Equal(best, error, 1e-9);

        // The greedy fallback respects the budget too and is never better than the optimum.
        int[] greedy = BitAllocator.Solve(sizes, errors, s_candidates, budget, out bool greedyExact, maxExactWork: 0);
        Assert.False(greedyExact);
        (double ge, double gb) = Evaluate(sizes, errors, greedy);
        Assert.True(gb <= budget + 1e-12);
        Assert.True(ge >= error - 1e-9);
    }

    [Theory]
    [InlineData(2.25)]
    [InlineData(2.5)]
    [InlineData(3.0)]
    [InlineData(3.5)]
    public void AnAchievableBudgetIsMetExactly(double budget)
    {
        // 8 equal targets: every multiple of 1/8 bit is achievable, and more bits always lower the error.
        long[] sizes = [.. Enumerable.Repeat(65536L, 8)];
        (_, double[][] errors) = Problem(8, seed: 11);
        int[] choice = BitAllocator.Solve(sizes, errors, s_candidates, budget, out _);
        Assert.Equal(budget, Evaluate(sizes, errors, choice).Bits);
    }

    [Fact]
    public void ABudgetBelowTheSmallestCandidateIsRefused()
    {
        (long[] sizes, double[][] errors) = Problem(3, seed: 1);
        ArgumentException e = Assert.Throws<ArgumentException>(() => BitAllocator.Solve(sizes, errors, s_candidates, 1.5, out _));
        Assert.Contains("below the smallest candidate", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ThePipelineSpendsTheBudgetExactlyAndReportsTheAllocation()
    {
        using var dir = new TempDirectory();
        var options = new LoftQOptions { BitBudget = 2.5, Rank = 4, Iterations = 1, Targets = ["q_proj", "v_proj", "down_proj"] };
        LoftQReport report = LoftQ.Initialize(TestData.Model, dir.Combine("out"), options);
        Assert.Equal(2.5, report.AverageBits, 12);
        Assert.Equal(2.5, report.Settings.BitBudget);
        Assert.Null(report.Settings.Bits);
        Assert.Contains("budget 2.5 bits (exact knapsack, average 2.5000)", report.Settings.Policy, StringComparison.Ordinal);
        Assert.All(report.Layers, l => Assert.Contains(l.Bits, s_candidates));
        Assert.Contains(report.Layers, l => l.Bits > 2);
        Assert.Contains(report.Layers, l => l.Bits == 2);
        Assert.All(report.Layers, l => Assert.Equal("nf" + l.Bits, l.Quantizer));
    }

    [Fact]
    public void TheAllocationDoesNotDependOnTheThreadCount()
    {
        using var dir = new TempDirectory();
        var options = new LoftQOptions { BitBudget = 3, Rank = 4, Iterations = 1, Targets = ["k_proj", "o_proj", "up_proj"] };
        LoftQReport one = LoftQ.Initialize(TestData.Model, dir.Combine("one"), options with { Threads = 1 });
        LoftQReport two = LoftQ.Initialize(TestData.Model, dir.Combine("two"), options with { Threads = 2 });
        Assert.Equal(one.Settings.Policy, two.Settings.Policy);
        Assert.Equal(one.Layers.Select(l => (l.Name, l.Bits, l.RelativeError)), two.Layers.Select(l => (l.Name, l.Bits, l.RelativeError)));
    }

    [Fact]
    public void InvalidBudgetsAreRefusedBeforeAnythingIsWritten()
    {
        using var dir = new TempDirectory();
        string output = dir.Combine("out");
        void Refused(LoftQOptions options, string expected)
        {
            ArgumentException e = Assert.ThrowsAny<ArgumentException>(() => LoftQ.Initialize(TestData.Model, output, options));
            Assert.Contains(expected, e.Message, StringComparison.Ordinal);
            Assert.False(Directory.Exists(output));
        }

        Refused(new LoftQOptions { BitBudget = 5 }, "must lie between the smallest and the largest of LoftQOptions.BudgetBits (2..4)");
        Refused(new LoftQOptions { BitBudget = 1.5 }, "LoftQOptions.BitBudget = 1.5");
        Refused(new LoftQOptions { BitBudget = double.NaN }, "LoftQOptions.BitBudget = NaN");
        Refused(new LoftQOptions { BitBudget = 3, BudgetBits = [2, 5] }, "LoftQOptions.BudgetBits entry 5");
        Refused(new LoftQOptions { BitBudget = 3, BudgetBits = [2, 2, 4] }, "each once");
        Refused(new LoftQOptions { BitBudget = 3, BitsPatterns = [("q_proj", 4)] }, "cannot be combined");
        NotSupportedException plan = Assert.Throws<NotSupportedException>(() => new LoftQPlan(new LoftQOptions { BitBudget = 2.5 }, 8));
        Assert.Contains("LoftQOptions.BitsPatterns", plan.Message, StringComparison.Ordinal);
    }
}
