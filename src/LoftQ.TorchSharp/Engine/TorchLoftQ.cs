using System.Diagnostics;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Engine;

/// <summary>
/// LoftQ's alternating minimisation of ‖W − Q − B·A‖_F entirely in torch operations on the weight's device:
/// Q_t = q(W − B_{t−1}·A_{t−1}) (B_0·A_0 = 0), then (B_t, A_t) = the solver's rank-r approximation of W − Q_t; the
/// pass with the lowest error is returned. The semantics are the core <c>AlternatingOptimizer</c>'s: the same error
/// trace, best pass (earliest on ties) and QLoRA baseline for zero iterations.
/// </summary>
public static class TorchLoftQ
{
    /// <summary>Runs LoftQ on <paramref name="weight"/> (out×in, any floating dtype, computed in fp32) on its device.</summary>
    /// <param name="weight">The weight W (not modified).</param>
    /// <param name="quantizer">The blockwise quantizer q.</param>
    /// <param name="solver">The low-rank solver (given the previous pass's factors for a warm start).</param>
    /// <param name="rank">The LoRA rank r, in [1, min(out, in)].</param>
    /// <param name="iterations">
    /// Alternating passes T ≥ 0. Zero gives the QLoRA baseline: Q = q(W), B = 0 and A drawn as PEFT does
    /// (U(−1/√in, 1/√in)) from <paramref name="seed"/>, the same values as the core optimizer with that seed.
    /// </param>
    /// <param name="seed">Seed of the QLoRA baseline's A.</param>
    /// <returns>The best pass; its tensors live on the weight's device and belong to the caller (or the active dispose scope).</returns>
    /// <exception cref="ArgumentException"><paramref name="weight"/> is not a two-dimensional floating-point tensor, or holds NaN or infinity (the message names the element).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="rank"/> or <paramref name="iterations"/> is out of range.</exception>
    public static TorchLoftQResult Run(Tensor weight, TorchBlockwiseQuantizer quantizer, ITorchLowRankSolver solver, int rank, int iterations, int seed = 0)
    {
        ArgumentNullException.ThrowIfNull(quantizer);
        ArgumentNullException.ThrowIfNull(solver);
        TorchEngine.CheckMatrixAndRank(weight, rank, nameof(weight));
        if (iterations < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(iterations), iterations, "Iterations must be 0 (QLoRA baseline) or more.");
        }

        long m = weight.shape[0], n = weight.shape[1];
        var shape = new TensorShape(checked((int)m), checked((int)n));
        var clock = Stopwatch.StartNew();
        using var scope = NewDisposeScope();
        Tensor w = weight.to(ScalarType.Float32).contiguous();
        long bad = TorchBlockwiseQuantizer.IndexOfNonFinite(w);
        if (bad >= 0)
        {
            throw new ArgumentException(
                $"Weight element ({bad / n}, {bad % n}) (flat index {bad}) is {TorchBlockwiseQuantizer.ValueAt(w, bad)}; LoftQ needs finite weights.", nameof(weight));
        }

        double weightNorm = Norm(w);
        if (iterations == 0)
        {
            (Tensor codes0, Tensor scales0, Tensor? offsets0, Tensor deq0) = quantizer.QuantizeDequantize(w);
            double error0 = Relative(Norm(w - deq0), weightNorm);
            using Matrix a0Values = AlternatingOptimizer.KaimingUniformA(rank, (int)n, seed);
            Tensor a0 = TorchEngine.ToTensor(a0Values).to(w.device);
            Tensor b0 = zeros([m, rank], ScalarType.Float32, w.device);
            Tensor packed0 = TorchBlockwiseQuantizer.Pack(codes0, quantizer.Bits);
            return Keep(new TorchLoftQResult(quantizer, shape, packed0, scales0, offsets0, a0, b0, [error0], 0, error0, error0, clock.Elapsed), scope);
        }

        var trace = new List<double>(iterations);
        Tensor work = w;                 // the input of the next quantization: W − B·A
        TorchLowRankFactors? previous = null, best = null;
        Tensor? bestCodes = null, bestScales = null, bestOffsets = null;
        double bestError = double.PositiveInfinity, qloraError = double.NaN;
        int bestPass = 0;
        for (int t = 1; t <= iterations; t++)
        {
            using var pass = NewDisposeScope();
            (Tensor codes, Tensor scales, Tensor? offsets, Tensor deq) = quantizer.QuantizeDequantize(work);
            Tensor residual = w - deq;
            deq.Dispose(); // free it before the solver allocates
            if (t == 1)
            {
                qloraError = Relative(Norm(residual), weightNorm);
            }

            TorchLowRankFactors factors = solver.Decompose(residual, rank, previous);

            // Keep the factors beyond this pass (a solver that returns them unscoped leaves them to us).
            pass.MoveToOuter(factors.A, factors.B, factors.SingularValues);
            if (factors.A.shape is not [var ar, var an] || ar != rank || an != n || factors.B.shape is not [var bm, var br] || bm != m || br != rank)
            {
                factors.Dispose();
                throw new InvalidOperationException($"The low-rank solver returned factors of the wrong shape (expected B {m}x{rank} and A {rank}x{n}).");
            }

            // The error ‖W − deq(Q) − B·A‖, in place in the residual; W − B·A is the next quantization's input.
            Tensor b32 = factors.B.to(ScalarType.Float32), a32 = factors.A.to(ScalarType.Float32);
            double error = Relative(Norm(residual.addmm_(b32, a32, beta: 1, alpha: -1)), weightNorm);
            residual.Dispose();
            Tensor next = addmm(w, b32, a32, beta: 1, alpha: -1);
            trace.Add(error);
            if (!ReferenceEquals(work, w))
            {
                work.Dispose();
            }

            work = next.MoveToOuterDisposeScope();
            if (error < bestError)
            {
                if (best is not null && !ReferenceEquals(best, previous))
                {
                    best.Dispose();
                }

                bestCodes?.Dispose();
                bestScales?.Dispose();
                bestOffsets?.Dispose();
                best = factors;
                bestCodes = codes.MoveToOuterDisposeScope(); // packed once, at the end
                bestScales = scales.MoveToOuterDisposeScope();
                bestOffsets = offsets?.MoveToOuterDisposeScope();
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

        Tensor bestPacked = TorchBlockwiseQuantizer.Pack(bestCodes!, quantizer.Bits);
        Synchronize(w.device);
        return Keep(
            new TorchLoftQResult(quantizer, shape, bestPacked, bestScales!, bestOffsets, best!.A, best.B, trace, bestPass, bestError, qloraError, clock.Elapsed),
            scope,
            best.SingularValues);
    }

    /// <summary>Moves the result's tensors out of the run's scope (into the caller's, if any) and disposes the rest.</summary>
    private static TorchLoftQResult Keep(TorchLoftQResult result, DisposeScope scope, Tensor? drop = null)
    {
        drop?.Dispose();
        scope.MoveToOuter(result.PackedCodes, result.Scales, result.A, result.B);
        if (result.Offsets is not null)
        {
            scope.MoveToOuter(result.Offsets);
        }

        return result;
    }

    private static double Norm(Tensor t)
    {
        using var scope = NewDisposeScope();
        return linalg.vector_norm(t).item<float>();
    }

    private static double Relative(double error, double weightNorm) => weightNorm > 0 ? error / weightNorm : error;

    private static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA)
        {
            cuda.synchronize(device);
        }
    }
}
