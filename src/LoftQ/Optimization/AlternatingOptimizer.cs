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
/// uses two full-size buffers (the dequantized Q and the working residual), and a third, (W − Q)·R, with a
/// non-isotropic <see cref="Weighting"/>.
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

    /// <summary>
    /// The activation-aware objective: minimise ‖(W − Q − B·A)·R‖_F with R·Rᵀ the second moments of the layer's
    /// inputs (<see cref="InputWeighting"/>) instead of ‖W − Q − B·A‖_F. Each pass's low-rank step is then the exact
    /// minimiser of that objective given Q, and the pass kept is the one with the least weighted error. Null (the
    /// default) or an isotropic weighting runs plain LoftQ, bit for bit.
    /// </summary>
    public InputWeighting? Weighting { get; init; }

    /// <summary>
    /// With a <see cref="Weighting"/> and a quantizer whose blocks search their scale
    /// (<see cref="BlockwiseQuantizer.ScaleSearch"/>): weigh each value's squared error by its input channel's second
    /// moment in that search, so the quantizer step also follows the activation-aware objective (true by default).
    /// </summary>
    public bool WeightedScaleSearch { get; init; } = true;

    /// <summary>
    /// QPiSSA order: start with the rank-r approximation of W itself and quantize its residual, instead of quantizing
    /// W first. Pass t then quantizes W − B_{t−1}·A_{t−1} as usual. <see cref="LoftQResult.QLoRAError"/> is still the
    /// error of q(W).
    /// </summary>
    public bool LowRankFirst { get; init; }

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

        InputWeighting? weighting = Weighting;
        if (weighting is not null && weighting.Features != n)
        {
            throw new ArgumentException($"The input weighting is over {weighting.Features} features but the weight has {n} columns.", nameof(weight));
        }

        var clock = Stopwatch.StartNew();
        double weightNorm = Math.Sqrt(MatrixKernels.SumOfSquares(w));
        var shape = new TensorShape(m, n);
        using var dequantized = Matrix.Uninitialized(m, n);

        // Transform: minimise ‖(W − Q − B·A)·R‖ (R·Rᵀ = H); the low-rank step then works on z = (W − Q)·R.
        bool transform = weighting is { IsIsotropic: false };
        float[]? columnWeights = transform && WeightedScaleSearch && Quantizer is BlockwiseQuantizer { ScaleSearch: not null } ? weighting!.ColumnWeights : null;
        using Matrix? z = transform ? Matrix.Uninitialized(m, n) : null;
        double objectiveNorm = weightNorm;
        if (transform)
        {
            weighting!.ApplyFactor(w, m, z!.Span);
            objectiveNorm = Math.Sqrt(MatrixKernels.SumOfSquares(z.Span));
        }

        if (iterations == 0)
        {
            using var scratch = Matrix.Uninitialized(m, n);
            QuantizedTensor q0 = QuantizeDequantize(w, shape, dequantized.Span, columnWeights);
            double error = Errors(w, dequantized.Span, weightNorm, scratch.Span, z, objectiveNorm, out double weighted0);
            Matrix a0 = KaimingUniformA(rank, n, Seed);
            Matrix b0 = Matrix.Zeros(m, rank);
            return new LoftQResult(q0, a0, b0, [error], 0, error, error, clock.Elapsed) { WeightedError = weighted0, QLoRAWeightedError = weighted0 };
        }

        // work holds W − B·A before quantization and W − Q while the solver runs.
        using var work = weight.Clone();

        var warm = Solver as IWarmStartLowRankSolver;
        var trace = new List<double>(iterations);
        LowRankFactors? previous = null; // the solver's last factors (of z when transforming), for the warm start
        LowRankFactors? best = null;
        QuantizedTensor? bestQ = null;
        double bestError = double.PositiveInfinity, bestWeighted = double.PositiveInfinity, qloraError = double.NaN, qloraWeighted = double.NaN;
        int bestPass = 0;
        try
        {
            if (LowRankFirst)
            {
                // QPiSSA order: the principal components of W first, then quantize the rest.
                QuantizeDequantize(w, shape, dequantized.Span, columnWeights);
                qloraError = Errors(w, dequantized.Span, weightNorm, work.Span, z, objectiveNorm, out qloraWeighted);
                w.CopyTo(work.Span);
                previous = Solve(transform ? z! : work, rank, null, m, n);
                using Matrix? mapped = transform ? previous.A.Clone() : null; // A = A′·R⁻¹; previous keeps A′ for the warm start
                if (mapped is not null)
                {
                    weighting!.SolveFactor(mapped.Span, rank);
                }

                Gemm.Multiply(Transpose.No, Transpose.No, m, n, rank, -1f, previous.B.Span, rank, (mapped ?? previous.A).Span, n, 1f, work.Span, n);
            }

            for (int t = 1; t <= iterations; t++)
            {
                QuantizedTensor q = QuantizeDequantize(work.Span, shape, dequantized.Span, columnWeights);
                TensorPrimitives.Subtract(w, dequantized.Span, work.Span);
                Matrix target = work;
                if (transform)
                {
                    weighting!.ApplyFactor(work.Span, m, z!.Span);
                    target = z;
                }

                if (t == 1 && !LowRankFirst)
                {
                    qloraError = Relative(Math.Sqrt(MatrixKernels.SumOfSquares(work.Span)), weightNorm);
                    qloraWeighted = transform ? Relative(Math.Sqrt(MatrixKernels.SumOfSquares(z!.Span)), objectiveNorm) : qloraError;
                }

                LowRankFactors solved = Solve(target, rank, previous, m, n);
                LowRankFactors factors = solved;
                double weighted = double.NaN;
                if (transform)
                {
                    // ‖(W − Q − B·A)·R‖ = ‖z − B·A′‖ with A′ = A·R; then A = A′·R⁻¹.
                    Gemm.Multiply(Transpose.No, Transpose.No, m, n, rank, -1f, solved.B.Span, rank, solved.A.Span, n, 1f, z!.Span, n);
                    weighted = Relative(Math.Sqrt(MatrixKernels.SumOfSquares(z.Span)), objectiveNorm);
                    Matrix a = solved.A.Clone();
                    weighting!.SolveFactor(a.Span, rank);
                    factors = new LowRankFactors(a, solved.B.Clone(), [.. solved.SingularValues]);
                }

                // work = W − B·A, the input of the next quantization; the error is ‖work − deq(Q)‖.
                w.CopyTo(work.Span);
                Gemm.Multiply(Transpose.No, Transpose.No, m, n, rank, -1f, factors.B.Span, rank, factors.A.Span, n, 1f, work.Span, n);
                double error = Relative(Math.Sqrt(MatrixKernels.SquaredDistance(work.Span, dequantized.Span)), weightNorm);
                if (!transform)
                {
                    weighted = error;
                }

                trace.Add(error);
                if (weighted < bestWeighted)
                {
                    if (best is not null && !ReferenceEquals(best, previous))
                    {
                        best.Dispose();
                    }

                    best = factors;
                    bestQ = q;
                    bestError = error;
                    bestWeighted = weighted;
                    bestPass = t;
                }
                else if (!ReferenceEquals(factors, solved))
                {
                    factors.Dispose();
                }

                if (previous is not null && !ReferenceEquals(previous, best))
                {
                    previous.Dispose();
                }

                previous = solved;
            }

            if (previous is not null && !ReferenceEquals(previous, best))
            {
                previous.Dispose();
            }

            previous = null;
            LowRankFactors result = best!;
            best = null;
            return new LoftQResult(bestQ!, result.A, result.B, trace, bestPass, bestError, qloraError, clock.Elapsed)
            {
                WeightedError = bestWeighted,
                QLoRAWeightedError = qloraWeighted,
            };
        }
        catch
        {
            if (previous is not null && !ReferenceEquals(previous, best))
            {
                previous.Dispose();
            }

            best?.Dispose();
            throw;
        }

        LowRankFactors Solve(Matrix target, int r, LowRankFactors? prior, int rows, int columns)
        {
            LowRankFactors f = warm is not null ? warm.Decompose(target, r, prior) : Solver.Decompose(target, r);
            CheckFactors(f, rows, columns, r);
            return f;
        }
    }

    private QuantizedTensor QuantizeDequantize(ReadOnlySpan<float> values, TensorShape shape, Span<float> dequantized, float[]? columnWeights) =>
        columnWeights is not null
            ? ((BlockwiseQuantizer)Quantizer).QuantizeDequantize(values, shape, dequantized, columnWeights)
            : Quantizer.QuantizeDequantize(values, shape, dequantized);

    /// <summary>
    /// ‖W − deq‖/‖W‖ and, when <paramref name="z"/> is given, the weighted ‖(W − deq)·R‖/‖W·R‖ (else the same);
    /// <paramref name="scratch"/> and <paramref name="z"/> are overwritten.
    /// </summary>
    private double Errors(ReadOnlySpan<float> w, ReadOnlySpan<float> dequantized, double weightNorm, Span<float> scratch, Matrix? z, double objectiveNorm, out double weighted)
    {
        TensorPrimitives.Subtract(w, dequantized, scratch);
        double error = Relative(Math.Sqrt(MatrixKernels.SumOfSquares(scratch)), weightNorm);
        weighted = error;
        if (z is not null)
        {
            Weighting!.ApplyFactor(scratch, z.Rows, z.Span);
            weighted = Relative(Math.Sqrt(MatrixKernels.SumOfSquares(z.Span)), objectiveNorm);
        }

        return error;
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
