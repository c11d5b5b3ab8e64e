using LoftQNet.Quantization;

namespace LoftQNet.Cuda.Device;

/// <summary>
/// A built-in blockwise quantizer as the device kernels take it: code book and decision thresholds (on the device),
/// bits, block size, symmetric or not, and the scale-search grid.
/// </summary>
internal sealed class DeviceCodec : IDisposable
{
    private DeviceCodec(BlockwiseQuantizer quantizer, DeviceBuffer<float> levels, DeviceBuffer<float> thresholds)
    {
        Quantizer = quantizer;
        Levels = levels;
        Thresholds = thresholds;
    }

    /// <summary>The quantizer on the host (for shapes, names and the error path).</summary>
    public BlockwiseQuantizer Quantizer { get; }

    /// <summary>The ascending code book (2^bits levels).</summary>
    public DeviceBuffer<float> Levels { get; }

    /// <summary>The 2^bits − 1 decision thresholds.</summary>
    public DeviceBuffer<float> Thresholds { get; }

    public int Bits => Quantizer.Bits;

    public int BlockSize => Quantizer.BlockSize;

    public int LevelCount => 1 << Quantizer.Bits;

    public bool Asymmetric => Quantizer.Codec.Asymmetric;

    /// <summary>Ratios tried after 1 (0: the absmax or min/max scale).</summary>
    public int SearchSteps => Quantizer.ScaleSearch?.Steps ?? 0;

    public float SearchMinRatio => Quantizer.ScaleSearch?.MinRatio ?? 1f;

    /// <summary>Why <paramref name="quantizer"/> has no device form, or null.</summary>
    public static string? Unsupported(IQuantizer quantizer) => quantizer is NormalFloatQuantizer or UniformQuantizer
        ? null
        : $"the quantizer '{quantizer.Name}' ({quantizer.GetType().FullName}) is not one of the built-in NormalFloat and uniform quantizers the GPU kernels cover.";

    /// <summary>Uploads the tables of <paramref name="quantizer"/>.</summary>
    public static DeviceCodec Create(IDeviceOps ops, BlockwiseQuantizer quantizer)
    {
        ReadOnlySpan<float> levels = quantizer.Codec.Levels, thresholds = quantizer.Codec.Thresholds;
        DeviceBuffer<float> l = ops.Allocate<float>(levels.Length);
        DeviceBuffer<float> t = ops.Allocate<float>(thresholds.Length);
        ops.Upload(levels, l.All);
        ops.Upload(thresholds, t.All);
        return new DeviceCodec(quantizer, l, t);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Levels.Dispose();
        Thresholds.Dispose();
    }
}
