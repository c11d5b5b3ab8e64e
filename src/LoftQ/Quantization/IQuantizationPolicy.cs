namespace LoftQNet.Quantization;

/// <summary>
/// Chooses the quantizer for each tensor of a model (mixed precision). Implementations must be thread-safe:
/// the pipeline asks for several tensors at once.
/// </summary>
public interface IQuantizationPolicy
{
    /// <summary>The quantizer to use for the tensor named <paramref name="tensorName"/>.</summary>
    IQuantizer Select(string tensorName);

    /// <summary>A one-line human-readable description for logs and reports.</summary>
    string Describe();
}
