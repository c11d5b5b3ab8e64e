namespace LoftQNet.TorchSharp.Training;

/// <summary>
/// Training or evaluation data for a causal language model, as fixed-length windows of token ids. Window k holds
/// <see cref="WindowLength"/> + 1 ids: the first <see cref="WindowLength"/> are the input and the last
/// <see cref="WindowLength"/> the next-token targets. Implement it to plug in a tokenizer; <see cref="ByteWindowDataset"/>
/// is the byte-level one.
/// </summary>
public interface ICausalLMDataset
{
    /// <summary>Number of windows.</summary>
    long WindowCount { get; }

    /// <summary>Predictions per window, L (each window holds L + 1 token ids).</summary>
    int WindowLength { get; }

    /// <summary>Copies window <paramref name="index"/>'s L + 1 token ids into <paramref name="destination"/>.</summary>
    /// <param name="index">0 ≤ index &lt; <see cref="WindowCount"/>.</param>
    /// <param name="destination">Exactly <see cref="WindowLength"/> + 1 values.</param>
    void CopyWindow(long index, Span<long> destination);
}

/// <summary>
/// Fixed windows over bytes, for byte-level models (token id = byte value): window k is bytes
/// [stride·k, stride·k + L + 1). With stride = L consecutive windows share one byte, the target of the last position.
/// </summary>
public sealed class ByteWindowDataset : ICausalLMDataset
{
    private readonly ReadOnlyMemory<byte> _bytes;

    /// <summary>Windows over <paramref name="bytes"/> (not copied: do not change them while the dataset is in use).</summary>
    /// <param name="bytes">The text.</param>
    /// <param name="windowLength">Predictions per window, L ≥ 1.</param>
    /// <param name="stride">Bytes between window starts (≥ 1); L when null.</param>
    /// <param name="name">Where the bytes came from, for error messages.</param>
    /// <exception cref="ArgumentException">The text is shorter than one window, or L or the stride is less than 1.</exception>
    public ByteWindowDataset(ReadOnlyMemory<byte> bytes, int windowLength, int? stride = null, string name = "the text")
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(windowLength, 1);
        int step = stride ?? windowLength;
        ArgumentOutOfRangeException.ThrowIfLessThan(step, 1, nameof(stride));
        if (bytes.Length < windowLength + 1L)
        {
            throw new ArgumentException($"{name} has {bytes.Length} bytes; one window of {windowLength} predictions needs {windowLength + 1}.", nameof(bytes));
        }

        _bytes = bytes;
        WindowLength = windowLength;
        Stride = step;
        WindowCount = ((bytes.Length - (windowLength + 1L)) / step) + 1;
    }

    /// <summary>Reads a whole file as bytes and cuts it into windows.</summary>
    /// <param name="path">The text file.</param>
    /// <param name="windowLength">Predictions per window, L.</param>
    /// <param name="stride">Bytes between window starts; L when null.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="ArgumentException">The file is shorter than one window.</exception>
    public static ByteWindowDataset FromFile(string path, int windowLength, int? stride = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"The text file '{path}' does not exist.", path);
        }

        return new ByteWindowDataset(File.ReadAllBytes(path), windowLength, stride, $"The text file '{path}'");
    }

    /// <inheritdoc/>
    public long WindowCount { get; }

    /// <inheritdoc/>
    public int WindowLength { get; }

    /// <summary>Bytes between window starts.</summary>
    public int Stride { get; }

    /// <inheritdoc/>
    public void CopyWindow(long index, Span<long> destination)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, WindowCount);
        if (destination.Length != WindowLength + 1)
        {
            throw new ArgumentException($"The destination holds {destination.Length} ids; a window has {WindowLength + 1}.", nameof(destination));
        }

        ReadOnlySpan<byte> window = _bytes.Span.Slice((int)(index * Stride), WindowLength + 1);
        for (int i = 0; i < window.Length; i++)
        {
            destination[i] = window[i];
        }
    }
}
