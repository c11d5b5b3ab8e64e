namespace LoftQNet.Cuda.Device;

/// <summary>Memory of <see cref="Length"/> elements of <typeparamref name="T"/> owned by an <see cref="IDeviceOps"/>.</summary>
internal abstract class DeviceBuffer<T> : IDisposable
    where T : unmanaged
{
    protected DeviceBuffer(long length) => Length = length;

    /// <summary>Elements.</summary>
    public long Length { get; }

    /// <summary>The whole buffer as a span.</summary>
    public DeviceSpan<T> All => new(this, 0, Length);

    /// <summary>Elements [<paramref name="offset"/>, <paramref name="offset"/> + <paramref name="length"/>).</summary>
    public DeviceSpan<T> Slice(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"Elements [{offset}, {offset + length}) are outside a buffer of {Length}.");
        }

        return new DeviceSpan<T>(this, offset, length);
    }

    /// <inheritdoc/>
    public abstract void Dispose();
}

/// <summary>A range of a <see cref="DeviceBuffer{T}"/>.</summary>
internal readonly record struct DeviceSpan<T>(DeviceBuffer<T> Buffer, long Offset, long Length)
    where T : unmanaged
{
    /// <summary>Elements [<paramref name="offset"/>, <paramref name="offset"/> + <paramref name="length"/>) of this range.</summary>
    public DeviceSpan<T> Slice(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"Elements [{offset}, {offset + length}) are outside a range of {Length}.");
        }

        return new DeviceSpan<T>(Buffer, Offset + offset, length);
    }
}
