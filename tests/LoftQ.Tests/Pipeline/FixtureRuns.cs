using LoftQNet.Pipeline;

namespace LoftQNet.Tests.Pipeline;

/// <summary>Runs the pipeline on the bundled model once per configuration and shares the outputs between tests.</summary>
public sealed class FixtureRuns : IDisposable
{
    private readonly TempDirectory _dir = new();
    private readonly Dictionary<string, (string Output, LoftQReport Report)> _runs = [];
    private readonly Lock _lock = new();

    public (string Output, LoftQReport Report) Get(string key, LoftQOptions options)
    {
        lock (_lock)
        {
            if (!_runs.TryGetValue(key, out var run))
            {
                string output = _dir.Combine(key);
                LoftQReport report = LoftQ.Initialize(TestData.Model, output, options);
                run = (output, report);
                _runs[key] = run;
            }

            return run;
        }
    }

    /// <summary>Reference LoftQ (absmax block scales, as PEFT computes it) at NF2.</summary>
    public (string Output, LoftQReport Report) Nf2 => Get("nf2", new LoftQOptions { Bits = 2, Rank = 16, Iterations = 5, ScaleSearch = null });

    /// <summary>Reference LoftQ at NF4.</summary>
    public (string Output, LoftQReport Report) Nf4 => Get("nf4", new LoftQOptions { Bits = 4, Rank = 16, Iterations = 5, ScaleSearch = null });

    public void Dispose() => _dir.Dispose();
}
