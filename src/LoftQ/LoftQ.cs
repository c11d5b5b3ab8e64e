using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Pipeline;
using LoftQNet.Quantization;

namespace LoftQNet;

/// <summary>
/// The front door of the library: LoftQ-initialise one weight matrix or a whole Hugging Face checkpoint, and
/// describe the compute environment for bug reports.
/// </summary>
/// <example>
/// <code>
/// using LoftQNet;
/// var report = LoftQ.Initialize("models/llama", "out/llama-loftq", new LoftQOptions { Bits = 2, Rank = 16 });
/// Console.WriteLine(report.MeanLoftQError);
/// </code>
/// </example>
public static class LoftQ
{
    /// <summary>
    /// Streams the checkpoint in <paramref name="modelDirectory"/> (single-file or sharded safetensors with
    /// config.json) and writes a LoftQ-initialised model to <paramref name="outputDirectory"/>: the quantized
    /// backbone with the same sharding, <c>loftq_init/</c> (a PEFT LoRA adapter), and <c>loftq_report.json</c>.
    /// Nothing appears at <paramref name="outputDirectory"/> unless the run completes.
    /// </summary>
    /// <param name="modelDirectory">A Hugging Face model directory.</param>
    /// <param name="outputDirectory">Where to write; must not exist or be empty unless <see cref="LoftQOptions.Overwrite"/>.</param>
    /// <param name="options">Quantization, rank, passes, solver and format; <c>null</c> for the defaults (NF4, r = 16, T = 5).</param>
    /// <param name="progress">Receives one report per finished target and per written shard; may be called from worker threads.</param>
    /// <param name="cancellationToken">Cancels the run; the partial output is removed.</param>
    /// <returns>The per-layer report, also written to <c>loftq_report.json</c>.</returns>
    /// <exception cref="ArgumentException">An option is invalid (the message names it) or a target does not fit it.</exception>
    /// <exception cref="DirectoryNotFoundException">The model directory does not exist.</exception>
    /// <exception cref="DeviceUnavailableException"><see cref="LoftQOptions.Device"/> is <see cref="ComputeDevice.Cuda"/> and no usable GPU was found.</exception>
    /// <exception cref="IO.SafeTensorsFormatException">A safetensors file is malformed.</exception>
    /// <exception cref="IO.CheckpointFormatException">config.json or the index is malformed or does not describe the weights.</exception>
    /// <exception cref="IOException">
    /// Another run is writing the same output, the output appeared or changed during the run (it is left as is), or an
    /// input file changed while it was being read. See docs/reliability.md.
    /// </exception>
    /// <exception cref="OverflowException">A value does not fit the output dtype (the message names tensor and element).</exception>
    /// <exception cref="NotFiniteNumberException">A value to be written is NaN or infinite.</exception>
    public static LoftQReport Initialize(
        string modelDirectory, string outputDirectory, LoftQOptions? options = null,
        IProgress<LoftQProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        ArgumentNullException.ThrowIfNull(outputDirectory);
        return CheckpointPipeline.Run(modelDirectory, outputDirectory, options ?? new LoftQOptions(), progress, cancellationToken);
    }

    /// <summary>
    /// LoftQ-initialises one weight matrix <paramref name="weight"/> (out×in): returns Q, A (r×in) and B (out×r)
    /// minimising ‖W − Q − B·A‖_F over <paramref name="iterations"/> alternating passes.
    /// </summary>
    /// <param name="weight">The weight, out×in.</param>
    /// <param name="quantizer">The quantizer q, e.g. <c>new NormalFloatQuantizer(2)</c>.</param>
    /// <param name="rank">LoRA rank r, in [1, min(out, in)].</param>
    /// <param name="iterations">Alternating passes T; 0 gives the QLoRA baseline.</param>
    /// <param name="solver">The low-rank solver; <c>null</c> for a seeded <see cref="RandomizedSvdSolver"/>.</param>
    /// <param name="seed">Seed for the solver and the QLoRA initialisation of A.</param>
    public static LoftQResult Initialize(Matrix weight, IQuantizer quantizer, int rank, int iterations = 5, ILowRankSolver? solver = null, int seed = 0)
    {
        ArgumentNullException.ThrowIfNull(weight);
        ArgumentNullException.ThrowIfNull(quantizer);
        var optimizer = new AlternatingOptimizer(quantizer, solver ?? new RandomizedSvdSolver(seed: seed)) { Seed = seed };
        return optimizer.Run(weight, rank, iterations);
    }

    /// <summary>A multi-line description of the library version, compute backends, SIMD support and threads, for bug reports.</summary>
    public static string Describe()
    {
        var sb = new StringBuilder();
        string version = typeof(LoftQ).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";
        sb.AppendLine($"LoftQ.NET {version}");
        sb.AppendLine($"Runtime: {RuntimeInformation.FrameworkDescription} on {RuntimeInformation.OSDescription} ({RuntimeInformation.ProcessArchitecture})");
        sb.AppendLine("Backend: managed CPU (SIMD GEMM, fused quantizers)");
        sb.AppendLine(Accelerators.Describe());
        sb.AppendLine(SimdInfo.Describe());
        sb.AppendLine("Threads can be capped with LOFTQ_NUM_THREADS or ComputeSettings.MaxThreads; results do not depend on them.");
        return sb.ToString();
    }
}
