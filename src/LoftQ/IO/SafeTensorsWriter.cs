using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Encodings.Web;
using System.Text.Json;
using LoftQNet.Numerics;

namespace LoftQNet.IO;

/// <summary>A tensor held in memory, ready to be written with <see cref="SafeTensorsWriter.Write"/>.</summary>
/// <param name="Info">The name, dtype and shape (<see cref="SafeTensorInfo.DataOffset"/> is not used).</param>
/// <param name="Data">The raw little-endian row-major bytes (<see cref="SafeTensorInfo.ByteLength"/> of them).</param>
public sealed record SafeTensorEntry(SafeTensorInfo Info, ReadOnlyMemory<byte> Data)
{
    /// <summary>
    /// Creates an entry by converting <paramref name="values"/> to <paramref name="dtype"/> (F32, F16 or BF16, round
    /// to nearest even). Every value must be finite and fit the dtype: nothing is silently written as ±∞ or NaN.
    /// </summary>
    /// <exception cref="ArgumentException">The value count does not match the shape, or the dtype is not F32/F16/BF16.</exception>
    /// <exception cref="OverflowException">A finite value is too large for <paramref name="dtype"/> (the message names the tensor, the element and the value).</exception>
    /// <exception cref="NotFiniteNumberException">A value is NaN or ±∞ (the message names the tensor and the element).</exception>
    public static SafeTensorEntry FromSingle(string name, TensorShape shape, ReadOnlySpan<float> values, SafeTensorDType dtype = SafeTensorDType.F32)
    {
        ArgumentNullException.ThrowIfNull(name);
        long n = SafeTensorsWriter.CheckedElementCount(name, shape);
        if (values.Length != n)
        {
            throw new ArgumentException($"Tensor '{name}' with shape {shape} needs {n} values, got {values.Length}.", nameof(values));
        }

        var bytes = new byte[checked(n * SafeTensorsWriter.FloatTargetSize(name, dtype))];
        SafeTensorsWriter.ConvertSingle(name, shape, 0, values, dtype, bytes);
        return new SafeTensorEntry(new SafeTensorInfo(name, dtype, shape), bytes);
    }

    /// <summary>Creates an entry holding <paramref name="data"/> (no conversion).</summary>
    public static SafeTensorEntry FromBytes(string name, SafeTensorDType dtype, TensorShape shape, ReadOnlyMemory<byte> data) => new(new SafeTensorInfo(name, dtype, shape), data);
}

/// <summary>
/// Writes safetensors files atomically: the data goes to a temporary file in the destination's directory, which is
/// renamed over the destination only once complete; on failure (or a writer disposed before
/// <see cref="Commit"/>) the temporary file is deleted and the destination is left untouched.
/// </summary>
/// <remarks>
/// Tensors are written in the order given, in the header and in the data region alike (callers that want the
/// Hugging Face convention sort names ordinally first, as <see cref="PeftAdapterWriter"/> does). The header is
/// compact JSON with <c>__metadata__</c> first, padded with spaces to a multiple of 8 bytes so the data starts
/// 8-byte aligned. The streaming form (<see cref="Create"/>) declares every tensor up front and then takes the data
/// tensor by tensor, optionally in chunks, so a multi-gigabyte shard never has to be held in memory.
/// </remarks>
public sealed class SafeTensorsWriter : IDisposable
{
    private const int ConvertChunk = 1 << 16;

    private readonly string _path;
    private readonly string _tempPath;
    private readonly SafeTensorInfo[] _tensors;
    private readonly long[] _lengths;
    private FileStream? _stream;
    private int _current;
    private long _writtenInCurrent;
    private bool _committed;

    private SafeTensorsWriter(string path, string tempPath, FileStream stream, SafeTensorInfo[] tensors, long[] lengths)
    {
        _path = path;
        _tempPath = tempPath;
        _stream = stream;
        _tensors = tensors;
        _lengths = lengths;
    }

    /// <summary>The destination path.</summary>
    public string Path => _path;

    /// <summary>The temporary file being written (renamed to <see cref="Path"/> by <see cref="Commit"/>).</summary>
    public string TemporaryPath => _tempPath;

    /// <summary>The tensor whose data is expected next, or <see langword="null"/> when all data has been written.</summary>
    public SafeTensorInfo? NextTensor => _current < _tensors.Length ? _tensors[_current] : null;

    /// <summary>Writes a complete file from in-memory entries (in the given order) and <paramref name="metadata"/>.</summary>
    /// <exception cref="ArgumentException">A name is duplicated or reserved, a shape is invalid, or an entry's data length differs from its shape × dtype size.</exception>
    public static void Write(string path, IReadOnlyList<SafeTensorEntry> entries, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var descriptors = new SafeTensorInfo[entries.Count];
        for (int i = 0; i < entries.Count; i++)
        {
            SafeTensorEntry e = entries[i] ?? throw new ArgumentException($"Entry {i} is null.", nameof(entries));
            SafeTensorInfo info = e.Info ?? throw new ArgumentException($"Entry {i} has no info.", nameof(entries));
            descriptors[i] = info;
            long expected = checked(CheckedElementCount(info.Name, info.Shape) * info.DType.ElementSize());
            if (e.Data.Length != expected)
            {
                throw new ArgumentException($"Tensor '{info.Name}' ({info.DType.ToHeaderString()}, shape {info.Shape}) needs {expected} bytes, got {e.Data.Length}.", nameof(entries));
            }
        }

        using SafeTensorsWriter writer = Create(path, descriptors, metadata);
        foreach (SafeTensorEntry e in entries)
        {
            writer.WriteTensor(e.Info.Name, e.Data.Span);
        }

        writer.Commit();
    }

    /// <summary>
    /// Starts a streaming write: the header for <paramref name="tensors"/> is written at once, then the data must
    /// follow in the same order through <see cref="WriteTensor"/>, <see cref="WriteChunk"/> or <see cref="WriteSingle"/>,
    /// and <see cref="Commit"/> publishes the file.
    /// </summary>
    /// <exception cref="ArgumentException">A name is null, duplicated or reserved, or a shape is invalid.</exception>
    public static SafeTensorsWriter Create(string path, IReadOnlyList<SafeTensorInfo> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(tensors);
        var list = new SafeTensorInfo[tensors.Count];
        var lengths = new long[tensors.Count];
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < list.Length; i++)
        {
            SafeTensorInfo t = tensors[i] ?? throw new ArgumentException($"Tensor {i} is null.", nameof(tensors));
            ArgumentNullException.ThrowIfNull(t.Name, nameof(tensors));
            if (t.Name == "__metadata__")
            {
                throw new ArgumentException("'__metadata__' is reserved and cannot name a tensor.", nameof(tensors));
            }

            if (!names.Add(t.Name))
            {
                throw new ArgumentException($"Tensor '{t.Name}' is listed twice.", nameof(tensors));
            }

            _ = t.DType.ElementSize(); // rejects undefined enum values
            list[i] = t;
            lengths[i] = checked(CheckedElementCount(t.Name, t.Shape) * t.DType.ElementSize());
        }

        byte[] header = BuildHeader(list, lengths, metadata);
        string full = System.IO.Path.GetFullPath(path);
        string directory = System.IO.Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{path}' has no directory.", nameof(path));
        string temp = System.IO.Path.Combine(directory, $".{System.IO.Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        try
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            stream.Write(prefix);
            stream.Write(header);
            return new SafeTensorsWriter(full, temp, stream, list, lengths);
        }
        catch
        {
            stream.Dispose();
            File.Delete(temp);
            throw;
        }
    }

    /// <summary>Writes all bytes of the next tensor, which must be <paramref name="name"/>.</summary>
    /// <exception cref="InvalidOperationException">Another tensor is expected next, or all have been written.</exception>
    /// <exception cref="ArgumentException">The length differs from the tensor's byte length.</exception>
    public void WriteTensor(string name, ReadOnlySpan<byte> data)
    {
        SafeTensorInfo next = ExpectStart(name);
        if (data.Length != _lengths[_current])
        {
            throw new ArgumentException($"Tensor '{name}' ({next.DType.ToHeaderString()}, shape {next.Shape}) needs {_lengths[_current]} bytes, got {data.Length}.", nameof(data));
        }

        WriteChunk(data);
    }

    /// <summary>Appends bytes to the current tensor (see <see cref="NextTensor"/>); moves on once it is complete (a zero-length tensor completes with an empty chunk).</summary>
    /// <exception cref="InvalidOperationException">All tensors are complete.</exception>
    /// <exception cref="ArgumentException">The chunk runs past the end of the current tensor.</exception>
    public void WriteChunk(ReadOnlySpan<byte> data)
    {
        FileStream stream = Stream;
        if (_current >= _tensors.Length)
        {
            throw new InvalidOperationException($"All {_tensors.Length} tensors of {_path} have been written.");
        }

        long remaining = _lengths[_current] - _writtenInCurrent;
        if (data.Length > remaining)
        {
            throw new ArgumentException($"Tensor '{_tensors[_current].Name}' has {remaining} bytes left, got a chunk of {data.Length}.", nameof(data));
        }

        stream.Write(data);
        _writtenInCurrent += data.Length;
        if (_writtenInCurrent == _lengths[_current])
        {
            _current++;
            _writtenInCurrent = 0;
        }
    }

    /// <summary>Copies tensor <paramref name="name"/> of <paramref name="source"/> byte for byte as the whole next tensor (streamed, 1 MiB at a time).</summary>
    internal void WriteTensorFrom(SafeTensorsFile source, string name)
    {
        SafeTensorInfo next = ExpectStart(name);
        long length = source.GetInfo(name).ByteLength;
        if (length != _lengths[_current])
        {
            throw new ArgumentException($"Tensor '{name}' ({next.DType.ToHeaderString()}, shape {next.Shape}) needs {_lengths[_current]} bytes, the source has {length}.", nameof(name));
        }

        source.CopyTo(name, static (chunk, writer) => ((SafeTensorsWriter)writer!).WriteChunk(chunk), this);
    }

    /// <summary>Converts <paramref name="values"/> to the declared dtype (F32, F16 or BF16) and writes them as the whole next tensor <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">The count differs from the element count, or the declared dtype is not F32/F16/BF16.</exception>
    /// <exception cref="OverflowException">A finite value is too large for the dtype.</exception>
    /// <exception cref="NotFiniteNumberException">A value is NaN or ±∞.</exception>
    public void WriteSingle(string name, ReadOnlySpan<float> values)
    {
        SafeTensorInfo next = ExpectStart(name);
        int size = FloatTargetSize(name, next.DType);
        if (values.Length != _lengths[_current] / size)
        {
            throw new ArgumentException($"Tensor '{name}' (shape {next.Shape}) needs {_lengths[_current] / size} values, got {values.Length}.", nameof(values));
        }

        byte[] buffer = ArrayPool<byte>.Shared.Rent(ConvertChunk * size);
        try
        {
            if (values.IsEmpty)
            {
                WriteChunk([]);
            }

            for (int start = 0; start < values.Length; start += ConvertChunk)
            {
                int count = Math.Min(ConvertChunk, values.Length - start);
                Span<byte> bytes = buffer.AsSpan(0, count * size);
                ConvertSingle(name, next.Shape, start, values.Slice(start, count), next.DType, bytes);
                WriteChunk(bytes);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Flushes the data to disk and renames the temporary file to <see cref="Path"/> (replacing an existing file).</summary>
    /// <exception cref="InvalidOperationException">Some tensor data is still missing.</exception>
    public void Commit()
    {
        FileStream stream = Stream;
        if (_current < _tensors.Length)
        {
            throw new InvalidOperationException($"Cannot commit {_path}: tensor '{_tensors[_current].Name}' and {_tensors.Length - _current - 1} after it have not been written.");
        }

        stream.Flush(flushToDisk: true);
        stream.Dispose();
        _stream = null;
        File.Move(_tempPath, _path, overwrite: true);
        _committed = true;
    }

    /// <summary>Closes the writer; without a successful <see cref="Commit"/> the temporary file is deleted.</summary>
    public void Dispose()
    {
        _stream?.Dispose();
        _stream = null;
        if (!_committed)
        {
            _committed = true; // dispose once
            try
            {
                File.Delete(_tempPath);
            }
            catch (IOException)
            {
                // Best effort: the temp name is hidden and unique; nothing else refers to it.
            }
        }
    }

    /// <summary>The element count of <paramref name="shape"/>, or an error naming the tensor when it overflows.</summary>
    internal static long CheckedElementCount(string name, TensorShape shape)
    {
        try
        {
            return shape.ElementCount;
        }
        catch (OverflowException)
        {
            throw new ArgumentException($"Tensor '{name}' has shape {shape} whose element count overflows.", nameof(shape));
        }
    }

    internal static int FloatTargetSize(string name, SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F32 => 4,
        SafeTensorDType.F16 or SafeTensorDType.BF16 => 2,
        _ => throw new ArgumentException($"Tensor '{name}': float values convert to F32, F16 or BF16, not {dtype.ToHeaderString()}.", nameof(dtype)),
    };

    /// <summary>
    /// Converts <paramref name="values"/> (elements <paramref name="offset"/>.. of tensor <paramref name="name"/>) to
    /// <paramref name="dtype"/>, refusing NaN, ±∞ and finite values that round to ±∞ in the narrower type.
    /// </summary>
    internal static void ConvertSingle(string name, TensorShape shape, long offset, ReadOnlySpan<float> values, SafeTensorDType dtype, Span<byte> destination)
    {
        int bad = FloatConversions.IndexOfNonFinite(values);
        if (bad >= 0)
        {
            throw NotFinite(name, shape, offset + bad, values[bad], dtype);
        }

        switch (dtype)
        {
            case SafeTensorDType.F32:
                MemoryMarshal.AsBytes(values).CopyTo(destination);
                break;
            case SafeTensorDType.BF16:
                Span<ushort> bf16 = MemoryMarshal.Cast<byte, ushort>(destination);
                FloatConversions.SingleToBFloat16(values, bf16);
                bad = FloatConversions.IndexOfNonFiniteBFloat16(bf16[..values.Length]);
                break;
            case SafeTensorDType.F16:
                Span<Half> f16 = MemoryMarshal.Cast<byte, Half>(destination);
                FloatConversions.SingleToHalf(values, f16);
                bad = FloatConversions.IndexOfNonFinite(f16[..values.Length]);
                break;
            default:
                throw new ArgumentException($"Float values convert to F32, F16 or BF16, not {dtype.ToHeaderString()}.", nameof(dtype));
        }

        if (bad >= 0)
        {
            float largest = dtype == SafeTensorDType.F16 ? (float)Half.MaxValue : FloatConversions.BFloat16ToSingle(0x7F7F);
            throw new OverflowException(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"Tensor '{name}': element {offset + bad}{IndexText(offset + bad, shape)} = {values[bad]:R} does not fit {dtype.ToHeaderString()} (largest finite value ±{largest:R}); it would be written as infinity."));
        }
    }

    /// <summary>Throws if <paramref name="values"/> holds NaN or ±∞ (for tensors written as raw F32 bytes).</summary>
    /// <exception cref="NotFiniteNumberException">A value is NaN or ±∞.</exception>
    internal static void CheckFinite(string name, TensorShape shape, ReadOnlySpan<float> values)
    {
        int bad = FloatConversions.IndexOfNonFinite(values);
        if (bad >= 0)
        {
            throw NotFinite(name, shape, bad, values[bad], SafeTensorDType.F32);
        }
    }

    private static NotFiniteNumberException NotFinite(string name, TensorShape shape, long index, float value, SafeTensorDType dtype) =>
        new(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"Tensor '{name}': element {index}{IndexText(index, shape)} is {value}; refusing to write a non-finite value to {dtype.ToHeaderString()}."), value);

    /// <summary>" [i, j, …]" for a flat row-major index, or "" for a scalar or one-dimensional tensor.</summary>
    private static string IndexText(long flat, TensorShape shape)
    {
        if (shape.Rank < 2 || shape.ElementCount == 0)
        {
            return string.Empty;
        }

        var index = new long[shape.Rank];
        for (int d = shape.Rank - 1; d >= 0; d--)
        {
            index[d] = flat % shape[d];
            flat /= shape[d];
        }

        return $" [{string.Join(", ", index)}]";
    }

    private FileStream Stream => _stream ?? throw new ObjectDisposedException(nameof(SafeTensorsWriter), $"The writer for {_path} is closed.");

    private SafeTensorInfo ExpectStart(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        _ = Stream;
        if (_current >= _tensors.Length)
        {
            throw new InvalidOperationException($"All {_tensors.Length} tensors of {_path} have been written; got '{name}'.");
        }

        SafeTensorInfo next = _tensors[_current];
        if (next.Name != name || _writtenInCurrent != 0)
        {
            throw new InvalidOperationException($"{_path}: tensor '{next.Name}' is expected next{(_writtenInCurrent != 0 ? " (partially written)" : string.Empty)}, got '{name}'.");
        }

        return next;
    }

    private static byte[] BuildHeader(SafeTensorInfo[] tensors, long[] lengths, IReadOnlyDictionary<string, string>? metadata)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, SkipValidation = false }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach (KeyValuePair<string, string> kv in metadata)
                {
                    ArgumentNullException.ThrowIfNull(kv.Value, nameof(metadata));
                    json.WriteString(kv.Key, kv.Value);
                }

                json.WriteEndObject();
            }

            long offset = 0;
            for (int i = 0; i < tensors.Length; i++)
            {
                SafeTensorInfo t = tensors[i];
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", t.DType.ToHeaderString());
                json.WriteStartArray("shape");
                foreach (int d in t.Shape.Dimensions)
                {
                    json.WriteNumberValue(d);
                }

                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + lengths[i]);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += lengths[i];
            }

            json.WriteEndObject();
        }

        int padded = (buffer.WrittenCount + 7) & ~7;
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }
}
