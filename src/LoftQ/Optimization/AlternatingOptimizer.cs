using System.Diagnostics;
using System.Numerics.Tensors;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Optimization;

/// <summary>
/// LoftQ's alternating minimisation of ‖W − Q − B·A‖_F: Q_t = q(W − B_{t−1}·A_{t−1}) (with B_0·A_0 = 0), then
/// (B_t, A_t) = the rank-r approximation of W − Q_t. The pass with the lowest error is returned.
/// </summary>
/// <remarks>
/// The optimizer holds no mutable state: one instance may run on several matrices from several threads at once
/// (provided the quantizer and solver are thread-safe, as the built-in ones are). A warm-starting solver
/// (<see cref="IWarmStartLowRankSolver"/>) is given the previous pass's factors. Besides W and the result the run
/// uses two full-size buffers (the dequantized Q and the working residual).
/// </remarks>
public sealed class AlternatingOptimizer
{
    /// <summary>Creates an optimizer.</summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public AlternatingOptimizer(IQuantizer quantizer, ILowRankSolver solver)
    {
        ArgumentNullException.ThrowIfNull(quantizer);
        ArgumentNullException.ThrowIfNull(solver);
        Quantizer = quantizer;
        Solver = solver;
    }

    /// <summary>The quantizer q.</summary>
    public IQuantizer Quantizer { get; }

    /// <summary>The low-rank solver.</summary>
    public ILowRankSolver Solver { get; }

    /// <summary>Seed of the random LoRA A initialisation used by the QLoRA baseline (zero iterations).</summary>
    public int Seed { get; init; }

    /// <summary>Runs LoftQ on <paramref name="weight"/> (out×in).</summary>
    /// <param name="weight">The weight W (not modified).</param>
    /// <param name="rank">The LoRA rank r, in [1, min(out, in)].</param>
    /// <param name="iterations">
    /// Alternating passes T ≥ 0. Zero gives the QLoRA baseline: Q = q(W), B = 0 and A drawn as PEFT does
    /// (Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in)) from <see cref="Seed"/>.
    /// </param>
    /// <exception cref="ArgumentNullException"><paramref name="weight"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="weight"/> holds a NaN or infinity.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="rank"/> or <paramref name="iterations"/> is out of range.</exception>
    public LoftQResult Run(Matrix weight, int rank, int iterations)
    {
        ArgumentNullException.ThrowIfNull(weight);
        int m = weight.Rows, n = weight.Columns;
        int maxRank = Math.Min(m, n);
        if (rank < 1 || rank > maxRank)
        {
            throw new ArgumentOutOfRangeException(nameof(rank), rank, $"Rank must be between 1 and min(out, in) = {maxRank} for a {m}x{n} weight, got {rank}.");
        }

        if (iterations < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(iterations), iterations, "Iterations must be 0 (QLoRA baseline) or more.");
        }

        ReadOnlySpan<float> w = weight.Span;
        int bad = IndexOfNonFinite(w);
        if (bad >= 0)
        {
            throw new ArgumentException(
                $"Weight element ({bad / n}, {bad % n}) (flat index {bad}) is {w[bad]}; LoftQ needs finite weights.", nameof(weight));
        }

        var clock = Stopwatch.StartNew();
        double weightNorm = Math.Sqrt(MatrixKernels.SumOfSquares(w));
        var shape = new TensorShape(m, n);
        using var dequantized = Matrix.Uninitialized(m, n);

        if (iterations == 0)
        {
            QuantizedTensor q0 = Quantizer.QuantizeDequantize(w, shape, dequantized.Span);
            double error = Relative(Math.Sqrt(MatrixKernels.SquaredDistance(w, dequantized.Span)), weightNorm);
            Matrix a0 = KaimingUniformA(rank, n, Seed);
            Matrix b0 = Matrix.Zeros(m, rank);
            return new LoftQResult(q0, a0, b0, [error], 0, error, error, clock.Elapsed);
        }

        // work holds W − B·A before quantization and W − Q while the solver runs.
        using var work = weight.Clone();
        var warm = Solver as IWarmStartLowRankSolver;
        var trace = new List<double>(iterations);
        LowRankFactors? previous = null;
        LowRankFactors? best = null;
        QuantizedTensor? bestQ = null;
        double bestError = double.PositiveInfinity, qloraError = double.NaN;
        int bestPass = 0;
        try
        {
            for (int t = 1; t <= iterations; t++)
            {
                QuantizedTensor q = Quantizer.QuantizeDequantize(work.Span, shape, dequantized.Span);
                TensorPrimitives.Subtract(w, dequantized.Span, work.Span);
                if (t == 1)
                {
                    qloraError = Relative(Math.Sqrt(MatrixKernels.SumOfSquares(work.Span)), weightNorm);
                }

                LowRankFactors factors = warm is not null ? warm.Decompose(work, rank, previous) : Solver.Decompose(work, rank);
                CheckFactors(factors, m, n, rank);

                // work = W − B·A, the input of the next quantization; the error is ‖work − deq(Q)‖.
                w.CopyTo(work.Span);
                Gemm.Multiply(Transpose.No, Transpose.No, m, n, rank, -1f, factors.B.Span, rank, factors.A.Span, n, 1f, work.Span, n);
                double error = Relative(Math.Sqrt(MatrixKernels.SquaredDistance(work.Span, dequantized.Span)), weightNorm);
                trace.Add(error);

                if (error < bestError)
                {
                    best?.Dispose(); // Disposal is idempotent: best may also be previous.
                    best = factors;
                    bestQ = q;
                    bestError = error;
                    bestPass = t;
                }

                if (previous is not null && !ReferenceEquals(previous, best))
                {
                    previous.Dispose();
                }

                previous = factors;
            }

            if (previous is not null && !ReferenceEquals(previous, best))
            {
                previous.Dispose();
            }

            previous = null;
            LowRankFactors result = best!;
            best = null;
            return new LoftQResult(bestQ!, result.A, result.B, trace, bestPass, bestError, qloraError, clock.Elapsed);
        }
        catch
        {
            previous?.Dispose();
            best?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// PEFT's default lora_A init, Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in), drawn counter-based from
    /// <paramref name="seed"/>: the A of the QLoRA baseline (zero iterations). Other engines call it to reproduce that
    /// baseline bit for bit.
    /// </summary>
    /// <param name="rank">Rows r.</param>
    /// <param name="inFeatures">Columns (in).</param>
    /// <param name="seed">The optimizer's <see cref="Seed"/>.</param>
    public static Matrix KaimingUniformA(int rank, int inFeatures, int seed)
    {
        var a = Matrix.Uninitialized(rank, inFeatures);
        double bound = 1.0 / Math.Sqrt(inFeatures);
        Span<float> span = a.Span;
        for (int i = 0; i < span.Length; i++)
        {
            span[i] = (float)(((2.0 * Gaussian.Uniform(seed, i)) - 1.0) * bound);
        }

        return a;
    }

    private static void CheckFactors(LowRankFactors factors, int m, int n, int rank)
    {
        if (factors is null || factors.A.Rows != rank || factors.A.Columns != n || factors.B.Rows != m || factors.B.Columns != rank)
        {
            factors?.Dispose();
            throw new InvalidOperationException($"The low-rank solver returned factors of the wrong shape (expected B {m}x{rank} and A {rank}x{n}).");
        }
    }

    private static double Relative(double error, double weightNorm) => weightNorm > 0 ? error / weightNorm : error;

    private static int IndexOfNonFinite(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                return i;
            }
        }

        return -1;
    }
}
