using System.Diagnostics.CodeAnalysis;
using LoftQNet.Optimization;

namespace LoftQNet.Pipeline;

/// <summary>
/// Finds the GPU backend at run time (the LoftQ.Cuda assembly, when the application ships it) and picks the device of
/// a run from <see cref="LoftQOptions.Device"/>: the core never references it at compile time.
/// </summary>
internal static class Accelerators
{
    internal const string CudaProviderType = "LoftQNet.Cuda.CudaAcceleratorProvider, LoftQ.Cuda";

    private static readonly AsyncLocal<Func<ILoftQAcceleratorProvider?>?> s_override = new();

    /// <summary>Overrides the provider lookup for the calling flow (tests); null restores the real one.</summary>
    internal static Func<ILoftQAcceleratorProvider?>? ProviderOverride
    {
        get => s_override.Value;
        set => s_override.Value = value;
    }

    /// <summary>The accelerator a run with <paramref name="options"/> uses, or null for the CPU.</summary>
    /// <param name="options">The run's options.</param>
    /// <param name="notice">Receives the one-line reason when <see cref="ComputeDevice.Auto"/> falls back to the CPU.</param>
    /// <exception cref="ArgumentException"><see cref="ComputeDevice.Cuda"/> with options the GPU path lacks.</exception>
    /// <exception cref="DeviceUnavailableException"><see cref="ComputeDevice.Cuda"/> and no usable GPU (the message says why).</exception>
    internal static ILoftQAccelerator? Select(LoftQOptions options, Action<string> notice)
    {
        if (options.Device == ComputeDevice.Cpu)
        {
            return null;
        }

        string? unsupported = UnsupportedOptions(options);
        if (unsupported is not null)
        {
            if (options.Device == ComputeDevice.Cuda)
            {
                throw new ArgumentException($"Device cuda (--device cuda, LoftQOptions.Device = Cuda): {unsupported} Use cpu or auto for this run.");
            }

            notice($"Running on the CPU: {unsupported}");
            return null;
        }

        ILoftQAcceleratorProvider? provider = Provider(out string missing);
        ILoftQAccelerator? accelerator = null;
        string reason = missing;
        if (provider is not null)
        {
            accelerator = provider.TryCreate(out reason);
        }

        if (accelerator is not null)
        {
            return accelerator;
        }

        if (options.Device == ComputeDevice.Cuda)
        {
            throw new DeviceUnavailableException($"Device cuda (--device cuda, LoftQOptions.Device = Cuda) was asked for, but no usable GPU was found: {reason}");
        }

        notice($"Running on the CPU: no usable GPU ({reason}).");
        return null;
    }

    /// <summary>Why the GPU path cannot run the whole of <paramref name="options"/>, or null.</summary>
    internal static string? UnsupportedOptions(LoftQOptions options)
    {
        if (options.Objective != LoftQObjective.Weight)
        {
            return $"the GPU path runs the weight objective only, not --objective {LoftQPlan.ObjectiveFlag(options.Objective)}.";
        }

        if (options.Solver != SolverKind.Randomized)
        {
            return "the GPU path uses the randomized solver; --solver exact runs on the CPU.";
        }

        return null;
    }

    /// <summary>The description lines of the GPU backend, or why there is none.</summary>
    internal static string Describe()
    {
        ILoftQAcceleratorProvider? provider = Provider(out string missing);
        if (provider is null)
        {
            return $"CUDA: {missing}";
        }

        try
        {
            return provider.Describe().TrimEnd();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return $"CUDA: the probe failed: {e.GetType().Name}: {e.Message}";
        }
    }

    [UnconditionalSuppressMessage("Trimming", "IL2057", Justification = "A constant type name; the DynamicDependency keeps the type when its assembly ships.")]
    [DynamicDependency(DynamicallyAccessedMemberTypes.PublicParameterlessConstructor, "LoftQNet.Cuda.CudaAcceleratorProvider", "LoftQ.Cuda")]
    private static ILoftQAcceleratorProvider? Provider(out string reason)
    {
        if (ProviderOverride is { } test)
        {
            reason = "the test provider returned none";
            return test();
        }

        Type? type;
        try
        {
            type = Type.GetType(CudaProviderType, throwOnError: false);
        }
        catch (Exception e) when (e is FileLoadException or BadImageFormatException)
        {
            reason = $"the LoftQ.Cuda assembly could not be loaded: {e.Message}";
            return null;
        }

        if (type is null)
        {
            reason = "the LoftQ.Cuda package is not part of this application (add a reference to it for the GPU path).";
            return null;
        }

        reason = string.Empty;
        return (ILoftQAcceleratorProvider)Activator.CreateInstance(type)!;
    }
}
