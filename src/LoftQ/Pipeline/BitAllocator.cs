using System.Globalization;
using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;

namespace LoftQNet.Pipeline;

/// <summary>The outcome of <see cref="BitAllocator"/>: bits per target under an average-bits budget.</summary>
/// <param name="BitsOf">Bits per target weight tensor name.</param>
/// <param name="AverageBits">The allocation's average bits per target weight (never above the budget).</param>
/// <param name="Exact">Whether the allocation is the exact knapsack optimum (else greedy on error reduction per bit).</param>
/// <param name="Policy">The quantization policy that applies it.</param>
internal sealed record BitAllocation(IReadOnlyDictionary<string, int> BitsOf, double AverageBits, bool Exact, IQuantizationPolicy Policy);

/// <summary>
/// Budgeted mixed precision: choose each target's bits from a candidate set so that the average over all target
/// weights stays within a budget and the total error is least. Each target's error at each candidate is probed with
/// one LoftQ pass under the run's objective (the squared weight error; or, for the activation objectives, the relative
/// output error weighted by the projection's measured sensitivity, an estimate of the loss it causes); the choice is then an exact multiple-choice knapsack by dynamic
/// programming over the weights' greatest common size, or greedy when that table would be too large.
/// </summary>
internal static class BitAllocator
{
    /// <summary>LoftQ passes used to probe each candidate (the run itself then uses LoftQOptions.Iterations).</summary>
    internal const int ProbeIterations = 1;

    /// <summary>Largest dynamic-programming table (items × capacity × candidates) solved exactly.</summary>
    internal const long MaxExactWork = 50_000_000;

    /// <summary>Probes every target of <paramref name="checkpoint"/> and allocates <see cref="LoftQOptions.BitBudget"/>.</summary>
    internal static BitAllocation Allocate(
        HuggingFaceCheckpoint checkpoint, IReadOnlyList<string> targets, LoftQOptions options, bool fanInFanOut,
        Action<string>? notice, CancellationToken cancellationToken)
    {
        double budget = options.BitBudget!.Value;
        int[] candidates = [.. options.BudgetBits.Order()];
        var probe = new LoftQPlan(options with { BitBudget = null, Bits = candidates[0], BitsPatterns = null }, checkpoint.Config.NumHiddenLayers);
        IQuantizer[] quantizers = [.. candidates.Select(b => QuantizerFactory.CreateQuantizer(options.Quantizer, b, options.BlockSize, options.ScaleSearch))];
        var sizes = new long[targets.Count];
        var errors = new double[targets.Count][];
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < targets.Count; i++)
        {
            index[targets[i]] = i;
        }

        // Shard by shard, like the pipeline: small targets are probed several at a time (each single-threaded).
        foreach (string shard in checkpoint.ShardFiles)
        {
            SafeTensorsFile file = checkpoint.OpenShard(shard);
            List<SafeTensorInfo> inShard = [.. file.Tensors.Where(t => index.ContainsKey(t.Name))];
            CheckpointPipeline.ForEachTarget(inShard, k =>
            {
                cancellationToken.ThrowIfCancellationRequested();
                SafeTensorInfo info = inShard[k];
                int i = index[info.Name];
                using Matrix raw = Matrix.FromSpan(info.Shape[0], info.Shape[1], file.ReadAsSingle(info.Name));
                using Matrix? transposed = fanInFanOut ? raw.Transpose() : null;
                Matrix w = transposed ?? raw;
                sizes[i] = (long)w.Rows * w.Columns;
                var e = new double[candidates.Length];
                for (int c = 0; c < candidates.Length; c++)
                {
                    try
                    {
                        e[c] = ProbeError(probe, info.Name, w, quantizers[c]);
                    }
                    catch (ArgumentException ex)
                    {
                        throw new ArgumentException($"Tensor '{info.Name}' of '{checkpoint.Directory}': {ex.Message}", ex);
                    }
                }

                errors[i] = e;
            });
        }

        int[] choice = Solve(sizes, errors, candidates, budget, out bool exact);
        var bitsOf = new Dictionary<string, int>(StringComparer.Ordinal);
        double total = 0, weights = 0;
        for (int i = 0; i < targets.Count; i++)
        {
            bitsOf[targets[i]] = candidates[choice[i]];
            total += (double)sizes[i] * candidates[choice[i]];
            weights += sizes[i];
        }

        double average = weights == 0 ? 0 : total / weights;
        var policy = new AllocatedPolicy(bitsOf, candidates.Zip(quantizers).ToDictionary(p => p.First, p => p.Second), budget, average, exact);
        notice?.Invoke($"bit budget {budget.ToString(CultureInfo.InvariantCulture)}: {policy.Describe()}");
        return new BitAllocation(bitsOf, average, exact, policy);
    }

    /// <summary>
    /// The error of one probe run: the squared weight error for the weight objective; under an activation objective,
    /// the relative output error ‖E·R‖²/‖W·R‖² times the projection's measured sensitivity
    /// (<see cref="CalibrationStatistics.Sensitivity"/>): an estimate of the KL divergence the error causes in the model's output.
    /// </summary>
    private static double ProbeError(LoftQPlan plan, string name, Matrix w, IQuantizer quantizer)
    {
        using LoftQResult result = plan.Optimize(name, w, quantizer, Math.Min(ProbeIterations, plan.Options.Iterations), out InputWeighting? weighting);
        if (weighting is not null)
        {
            // WeightedError is ‖E·R‖/‖W·R‖ of the kept pass.
            return result.WeightedError * result.WeightedError * plan.Options.Calibration!.Sensitivity(TargetSelector.ModulePathOf(name));
        }

        // RelativeError is ‖E‖/‖W‖ (‖E‖ itself when W = 0).
        double norm = MatrixKernels.SumOfSquares(w.Span);
        double squared = result.RelativeError * result.RelativeError;
        return norm > 0 ? squared * norm : squared;
    }

    /// <summary>
    /// Chooses one candidate per item (index into <paramref name="candidates"/>, ascending bits) minimising the summed
    /// error with Σ size·bits ≤ budget·Σ size. Exact when the table fits <see cref="MaxExactWork"/>, else greedy.
    /// </summary>
    /// <exception cref="ArgumentException">The budget is below the smallest candidate.</exception>
    internal static int[] Solve(long[] sizes, double[][] errors, int[] candidates, double budget, out bool exact, long maxExactWork = MaxExactWork)
    {
        int items = sizes.Length;
        int k = candidates.Length;
        int lowest = candidates[0];
        if (budget < lowest)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"A bit budget of {budget} is below the smallest candidate, {lowest} bits."));
        }

        var choice = new int[items];
        if (items == 0)
        {
            exact = true;
            return choice;
        }

        long g = 0;
        foreach (long s in sizes)
        {
            g = Gcd(g, s);
        }

        var units = sizes.Select(s => s / g).ToArray();
        long totalUnits = units.Sum();

        // Spare capacity above "every target at the lowest candidate", in units × bits. The float budget is compared
        // with a relative tolerance so that e.g. 2.5 × total is not lost to rounding.
        double spare = (budget - lowest) * totalUnits;
        long capacity = (long)Math.Floor(spare + (1e-9 * Math.Max(1, spare)));
        capacity = Math.Min(capacity, totalUnits * (candidates[^1] - lowest));
        exact = (double)items * (capacity + 1) * k <= maxExactWork;
        return exact ? Knapsack(units, errors, candidates, capacity, choice) : Greedy(units, errors, candidates, capacity, choice);
    }

    private static int[] Knapsack(long[] units, double[][] errors, int[] candidates, long capacity, int[] choice)
    {
        int items = units.Length, k = candidates.Length, cap = (int)capacity;

        // best[j]: least error of the items so far using at most j spare unit-bits; pick[i, j]: item i's candidate there.
        var best = new double[cap + 1];
        var next = new double[cap + 1];
        var pick = new byte[items, cap + 1];
        for (int i = 0; i < items; i++)
        {
            for (int j = 0; j <= cap; j++)
            {
                double bestValue = double.PositiveInfinity;
                byte bestChoice = 0;
                for (int c = 0; c < k; c++)
                {
                    long cost = units[i] * (candidates[c] - candidates[0]);
                    if (cost > j)
                    {
                        break;
                    }

                    double v = best[j - cost] + errors[i][c];
                    if (v < bestValue)
                    {
                        bestValue = v;
                        bestChoice = (byte)c;
                    }
                }

                next[j] = bestValue;
                pick[i, j] = bestChoice;
            }

            (best, next) = (next, best);
        }

        int remaining = cap;
        for (int i = items - 1; i >= 0; i--)
        {
            choice[i] = pick[i, remaining];
            remaining -= (int)(units[i] * (candidates[choice[i]] - candidates[0]));
        }

        return choice;
    }

    private static int[] Greedy(long[] units, double[][] errors, int[] candidates, long capacity, int[] choice)
    {
        long left = capacity;
        while (true)
        {
            int bestItem = -1, bestTo = -1;
            double bestGain = 0;
            for (int i = 0; i < units.Length; i++)
            {
                for (int to = choice[i] + 1; to < candidates.Length; to++)
                {
                    long cost = units[i] * (candidates[to] - candidates[choice[i]]);
                    double gain = (errors[i][choice[i]] - errors[i][to]) / cost;
                    if (cost <= left && gain > bestGain)
                    {
                        bestGain = gain;
                        bestItem = i;
                        bestTo = to;
                    }
                }
            }

            if (bestItem < 0)
            {
                return choice;
            }

            left -= units[bestItem] * (candidates[bestTo] - candidates[choice[bestItem]]);
            choice[bestItem] = bestTo;
        }
    }

    private static long Gcd(long a, long b)
    {
        while (b != 0)
        {
            (a, b) = (b, a % b);
        }

        return a;
    }

    /// <summary>Applies an allocation: each target gets the quantizer of its allocated bits.</summary>
    private sealed class AllocatedPolicy(
        Dictionary<string, int> bitsOf, Dictionary<int, IQuantizer> quantizers, double budget, double average, bool exact) : IQuantizationPolicy
    {
        public IQuantizer Select(string tensorName) =>
            bitsOf.TryGetValue(tensorName, out int bits)
                ? quantizers[bits]
                : throw new ArgumentException($"The bit allocation has no entry for '{tensorName}' (it covers the run's targets only).", nameof(tensorName));

        public string Describe()
        {
            string counts = string.Join(", ", bitsOf.Values.GroupBy(b => b).OrderBy(g => g.Key).Select(g => $"{quantizers[g.Key].Name} x{g.Count()}"));
            return string.Create(
                CultureInfo.InvariantCulture,
                $"budget {budget} bits ({(exact ? "exact knapsack" : "greedy")}, average {average:F4}): {counts}");
        }
    }
}
