namespace LoftQNet.Pipeline;

/// <summary>
/// <see cref="LoftQOptions.Device"/> asked for a GPU that this machine or application cannot provide; the message says
/// why (the package is not referenced, a CUDA library is missing, no GPU is visible, …). Catch it to fall back to the
/// CPU, or use <see cref="ComputeDevice.Auto"/>, which does so by itself.
/// </summary>
public sealed class DeviceUnavailableException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    public DeviceUnavailableException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    public DeviceUnavailableException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and its cause.</summary>
    public DeviceUnavailableException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
