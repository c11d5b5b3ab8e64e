using LoftQNet.Cuda.Device;
using LoftQNet.Optimization;

namespace LoftQNet.Cuda;

/// <summary>
/// The entry point the core finds by name (<c>LoftQOptions.Device</c> = Cuda or Auto): probes the machine and creates
/// the accelerator on GPU 0 (or <c>LOFTQ_CUDA_DEVICE</c>) with <see cref="CudaAccelerator.DefaultLanes"/> concurrent
/// layers (or <c>LOFTQ_CUDA_LANES</c>).
/// </summary>
internal sealed class CudaAcceleratorProvider : ILoftQAcceleratorProvider
{
    /// <summary>
    /// Whether this build's GPU path has passed its agreement tests on a real GPU (benchmarks/gpu/run.sh). Until it
    /// has, the accelerator is only created when <c>LOFTQ_CUDA_UNVERIFIED=1</c>, so no user gets results from
    /// untested device code by default.
    /// </summary>
    internal const bool VerifiedOnDevice = false;

    public ILoftQAccelerator? TryCreate(out string reason)
    {
        if (!VerifiedOnDevice && Environment.GetEnvironmentVariable("LOFTQ_CUDA_UNVERIFIED") != "1")
        {
            reason = "this build's GPU path has not yet passed its tests on a GPU; set LOFTQ_CUDA_UNVERIFIED=1 to try it anyway";
            return null;
        }

        CudaProbe probe = CudaProbe.Current;
        if (!probe.Available)
        {
            reason = probe.Failure ?? "no GPU";
            return null;
        }

        int lanes = CudaAccelerator.DefaultLanes;
        if (Environment.GetEnvironmentVariable("LOFTQ_CUDA_LANES") is { Length: > 0 } lanesText
            && (!int.TryParse(lanesText, System.Globalization.CultureInfo.InvariantCulture, out lanes) || lanes is < 1 or > 64))
        {
            reason = $"LOFTQ_CUDA_LANES is '{lanesText}', but it must be a whole number of concurrent layers in 1..64";
            return null;
        }

        SmallStepKind smallStep = SmallStepKind.Svd;
        if (Environment.GetEnvironmentVariable("LOFTQ_CUDA_SMALL_STEP") is { Length: > 0 } stepText)
        {
            switch (stepText)
            {
                case "svd":
                    break;
                case "gram":
                    smallStep = SmallStepKind.Gram;
                    break;
                default:
                    reason = $"LOFTQ_CUDA_SMALL_STEP is '{stepText}', but it must be svd or gram";
                    return null;
            }
        }

        int ordinal = 0;
        if (Environment.GetEnvironmentVariable("LOFTQ_CUDA_DEVICE") is { Length: > 0 } chosen
            && (!int.TryParse(chosen, System.Globalization.CultureInfo.InvariantCulture, out ordinal) || ordinal < 0 || ordinal >= probe.Devices.Count))
        {
            reason = $"LOFTQ_CUDA_DEVICE is '{chosen}', but the GPUs are numbered 0..{probe.Devices.Count - 1}";
            return null;
        }

        try
        {
            reason = string.Empty;
            return new CudaAccelerator(probe.Devices[ordinal], lanes) { SmallStep = smallStep };
        }
        catch (CudaException e)
        {
            reason = e.Message;
            return null;
        }
    }

    public string Describe()
    {
        string text = CudaProbe.Current.Describe();
        return VerifiedOnDevice ? text : text + "  (the GPU path is used only with LOFTQ_CUDA_UNVERIFIED=1 until it passes its device tests)";
    }
}
