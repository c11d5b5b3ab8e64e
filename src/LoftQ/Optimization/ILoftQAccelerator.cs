using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Optimization;

/// <summary>
/// A device that runs the whole LoftQ loop of one matrix (the weight objective, a randomized low-rank step) and
/// returns the same kind of result as <see cref="AlternatingOptimizer.Run"/>. Implemented by the GPU backend
/// (LoftQ.Cuda), found at run time by <see cref="Pipeline.Accelerators"/>.
/// </summary>
internal interface ILoftQAccelerator : IDisposable
{
    /// <summary>One line naming the device, e.g. <c>CUDA 0: NVIDIA H100 80GB HBM3</c>.</summary>
    string Name { get; }

    /// <summary>Runs that proceed at once (more wait); the pipeline computes this many targets at a time.</summary>
    int Concurrency { get; }

    /// <summary>Null when <paramref name="quantizer"/> runs on the device, otherwise why not.</summary>
    string? Unsupported(IQuantizer quantizer);

    /// <summary>
    /// LoftQ on <paramref name="weight"/> (out×in, finite) as <see cref="AlternatingOptimizer"/> with a warm-started
    /// randomized solver: <paramref name="iterations"/> passes (0 = QLoRA with A drawn from <paramref name="seed"/>), the
    /// pass with the least error kept. Thread-safe: up to <see cref="Concurrency"/> runs at once.
    /// </summary>
    LoftQResult Run(Matrix weight, IQuantizer quantizer, int rank, int iterations, int seed, bool lowRankFirst);
}

/// <summary>The entry point of a device backend assembly: probes the machine and creates the accelerator.</summary>
internal interface ILoftQAcceleratorProvider
{
    /// <summary>The accelerator, or null with <paramref name="reason"/> saying why there is none (never throws).</summary>
    ILoftQAccelerator? TryCreate(out string reason);

    /// <summary>Lines for <see cref="LoftQ.Describe"/>: the device, driver and libraries found, or why none.</summary>
    string Describe();
}
