using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using LoftQNet.Numerics;
using Microsoft.Win32.SafeHandles;

namespace LoftQNet.IO;

/// <summary>
/// A read-only safetensors file. The header is read and validated strictly on <see cref="Open"/>; tensor data is
/// read when a tensor is asked for, with positional reads through the open handle (never through a memory map, so
/// a file truncated by another process while it is open gives an <see cref="IOException"/>, not a crash). Any
/// number of threads may read tensors at once. Dispose to release the file handle.
/// </summary>
/// <remarks>
/// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping each tensor name to
/// <c>{"dtype", "shape", "data_offsets": [begin, end)}</c> (offsets relative to the data region that follows the
/// header) plus an optional <c>"__metadata__"</c> object of strings, then the data region. Open rejects: a file
/// shorter than 8 bytes, N larger than the rest of the file or than 100 MB, a header not starting with <c>{</c>,
/// more than <see cref="MaxTensors"/> tensors, a shape of rank above <see cref="MaxRank"/>, invalid UTF-8 or JSON, a header that is
/// not an object, duplicate names, missing or ill-typed fields, an unknown dtype, a negative or non-integer
/// dimension, an element count that overflows, a byte length that differs from elements × dtype size, offsets
/// that are out of range, overlap, leave gaps or do not cover the data region exactly, and non-string metadata.
/// </remarks>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>The largest header accepted (100 MB), as in the reference implementation.</summary>
    public const long MaxHeaderLength = 100_000_000;

    /// <summary>
    /// The most tensors one file may declare (200,000). Real checkpoints hold at most tens of thousands per file; the
    /// bound keeps a valid-but-hostile 100 MB header of millions of empty tensors from costing gigabytes (a file at
    /// the limit costs about 150 MB to open and list). The reference reader bounds only the header size.
    /// </summary>
    public const int MaxTensors = 200_000;

    /// <summary>The highest tensor rank accepted (32, numpy's historical NPY_MAXDIMS; model weights use at most 5).</summary>
    public const int MaxRank = 32;

    private const string MetadataKey = "__metadata__";

    private const int ReadChunk = 1 << 20;

    private readonly Dictionary<string, SafeTensorInfo> _byName;
    private readonly long _dataStart;
    private SafeFileHandle? _handle;

    private SafeTensorsFile(string path, List<SafeTensorInfo> tensors, Dictionary<string, string> metadata, long dataStart, SafeFileHandle handle)
    {
        Path = path;
        Tensors = tensors;
        Metadata = metadata;
        _byName = new Dictionary<string, SafeTensorInfo>(tensors.Count, StringComparer.Ordinal);
        foreach (SafeTensorInfo t in tensors)
        {
            _byName.Add(t.Name, t);
        }

        _dataStart = dataStart;
        _handle = handle;
    }

    /// <summary>The path the file was opened from.</summary>
    public string Path { get; }

    /// <summary>The tensors in file order (ascending data offset).</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors { get; }

    /// <summary>The header's <c>__metadata__</c> (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Offset of the data region from the start of the file (8 + header length).</summary>
    public long DataStart => _dataStart;

    /// <summary>Opens and validates <paramref name="path"/>.</summary>
    /// <exception cref="SafeTensorsFormatException">The file is not a valid safetensors file (the message says why).</exception>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("safetensors data is little-endian; big-endian platforms are not supported.");
        }

        SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        try
        {
            long fileLength = RandomAccess.GetLength(handle);
            if (fileLength < 8)
            {
                throw new SafeTensorsFormatException($"{path} is not a safetensors file: it has {fileLength} bytes, fewer than the 8-byte header length.");
            }

            Span<byte> prefix = stackalloc byte[8];
            ReadExactly(handle, path, prefix, 0);
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (headerLength > MaxHeaderLength)
            {
                throw new SafeTensorsFormatException($"{path} is not a safetensors file: its first 8 bytes give a header length of {headerLength}, which exceeds the {MaxHeaderLength}-byte limit.");
            }

            if (headerLength > (ulong)(fileLength - 8))
            {
                throw new SafeTensorsFormatException($"{path} is not a safetensors file (or is truncated): its first 8 bytes give a header length of {headerLength}, which exceeds the {fileLength - 8} bytes after the length prefix.");
            }

            var header = new byte[(int)headerLength];
            ReadExactly(handle, path, header, 8);
            if (header.Length == 0 || header[0] != (byte)'{')
            {
                throw new SafeTensorsFormatException($"{path} is not a safetensors file: the header does not start with '{{' (a JSON object).");
            }

            long dataStart = 8 + (long)headerLength;
            long dataLength = fileLength - dataStart;
            (List<SafeTensorInfo> tensors, Dictionary<string, string> metadata) = ParseHeader(path, header, dataLength);
            return new SafeTensorsFile(path, tensors, metadata, dataStart, handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Whether the file holds a tensor called <paramref name="name"/>.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The header entry of <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such tensor (the message names it and the file).</exception>
    public SafeTensorInfo GetInfo(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return _byName.TryGetValue(name, out SafeTensorInfo? info)
            ? info
            : throw new KeyNotFoundException($"Tensor '{name}' is not in {Path}.");
    }

    /// <summary>A copy of the raw little-endian bytes of <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such tensor.</exception>
    /// <exception cref="NotSupportedException">The tensor is larger than 2 GiB; use <see cref="CopyBytes"/> in pieces instead.</exception>
    /// <exception cref="IOException">The file was truncated since it was opened.</exception>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        SafeTensorInfo info = GetInfo(name);
        if (info.ByteLength > Array.MaxLength)
        {
            throw new NotSupportedException($"Tensor '{name}' in {Path} has {info.ByteLength} bytes, more than a span can hold; use CopyBytes with an offset.");
        }

        var bytes = new byte[info.ByteLength];
        ReadData(info, 0, bytes);
        return bytes;
    }

    /// <summary>Copies <paramref name="destination"/>.Length raw bytes of <paramref name="name"/> starting at byte <paramref name="offset"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range lies outside the tensor.</exception>
    /// <exception cref="IOException">The file was truncated since it was opened.</exception>
    public void CopyBytes(string name, long offset, Span<byte> destination)
    {
        SafeTensorInfo info = GetInfo(name);
        if (offset < 0 || offset > info.ByteLength || destination.Length > info.ByteLength - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"Bytes [{offset}, {offset + destination.Length}) lie outside tensor '{name}' ({info.ByteLength} bytes) in {Path}.");
        }

        ReadData(info, offset, destination);
    }

    /// <summary>Streams the raw bytes of <paramref name="name"/> to <paramref name="consume"/> in pieces of at most 1 MiB (at least one call, empty for an empty tensor).</summary>
    internal void CopyTo(string name, ReadOnlySpanAction<byte, object?> consume, object? state = null)
    {
        SafeTensorInfo info = GetInfo(name);
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)Math.Min(ReadChunk, Math.Max(1, info.ByteLength)));
        try
        {
            long done = 0;
            do
            {
                int count = (int)Math.Min(buffer.Length, info.ByteLength - done);
                ReadData(info, done, buffer.AsSpan(0, count));
                consume(buffer.AsSpan(0, count), state);
                done += count;
            }
            while (done < info.ByteLength);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Reads <paramref name="name"/> (F32, F16, BF16 or F64) converted to <see cref="float"/>.</summary>
    /// <exception cref="NotSupportedException">The dtype is not a floating-point type.</exception>
    public float[] ReadAsSingle(string name)
    {
        SafeTensorInfo info = GetInfo(name);
        if (info.ElementCount > Array.MaxLength)
        {
            throw new NotSupportedException($"Tensor '{name}' in {Path} has {info.ElementCount} elements, more than an array can hold.");
        }

        var result = new float[info.ElementCount];
        ReadAsSingle(name, result);
        return result;
    }

    /// <summary>Reads <paramref name="name"/> (F32, F16, BF16 or F64) converted to <see cref="float"/> into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentException">The destination length differs from the element count.</exception>
    /// <exception cref="NotSupportedException">The dtype is not a floating-point type.</exception>
    public void ReadAsSingle(string name, Span<float> destination)
    {
        SafeTensorInfo info = GetInfo(name);
        if (destination.Length != info.ElementCount)
        {
            throw new ArgumentException($"Tensor '{name}' in {Path} has {info.ElementCount} elements, the destination {destination.Length}.", nameof(destination));
        }

        int n = destination.Length;
        switch (info.DType)
        {
            case SafeTensorDType.F32:
                ReadData(info, 0, MemoryMarshal.AsBytes(destination));
                break;
            case SafeTensorDType.BF16:
            case SafeTensorDType.F16:
            case SafeTensorDType.F64:
                int size = info.DType.ElementSize();
                byte[] buffer = ArrayPool<byte>.Shared.Rent(ReadChunk);
                try
                {
                    int perChunk = ReadChunk / size;
                    for (int start = 0; start < n; start += perChunk)
                    {
                        int count = Math.Min(perChunk, n - start);
                        Span<byte> bytes = buffer.AsSpan(0, count * size);
                        ReadData(info, (long)start * size, bytes);
                        Span<float> target = destination.Slice(start, count);
                        if (info.DType == SafeTensorDType.BF16)
                        {
                            FloatConversions.BFloat16ToSingle(MemoryMarshal.Cast<byte, ushort>(bytes), target);
                        }
                        else if (info.DType == SafeTensorDType.F16)
                        {
                            FloatConversions.HalfToSingle(MemoryMarshal.Cast<byte, Half>(bytes), target);
                        }
                        else
                        {
                            ReadOnlySpan<double> doubles = MemoryMarshal.Cast<byte, double>(bytes);
                            for (int i = 0; i < count; i++)
                            {
                                target[i] = (float)doubles[i];
                            }
                        }
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }

                break;
            default:
                throw new NotSupportedException($"Tensor '{name}' in {Path} has dtype {info.DType.ToHeaderString()}; only F32, F16, BF16 and F64 convert to float.");
        }
    }

    /// <summary>Releases the file handle.</summary>
    public void Dispose()
    {
        _handle?.Dispose();
        _handle = null;
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Path} ({Tensors.Count} tensors)";

    /// <summary>Reads bytes [<paramref name="offset"/>, +destination.Length) of a tensor's data.</summary>
    private void ReadData(SafeTensorInfo info, long offset, Span<byte> destination)
    {
        SafeFileHandle handle = _handle ?? throw new ObjectDisposedException(nameof(SafeTensorsFile), $"{Path} is closed.");
        long position = _dataStart + info.DataOffset + offset;
        int read = ReadFully(handle, destination, position);
        if (read < destination.Length)
        {
            long length = RandomAccess.GetLength(handle);
            throw new IOException(
                $"{Path} changed while it was being read: tensor '{info.Name}' needs bytes [{_dataStart + info.DataOffset}, {_dataStart + info.DataOffset + info.ByteLength}) " +
                $"of the file, but the file now has {length} bytes. Another program truncated or rewrote it; do not modify a model while it is being read.");
        }
    }

    private static void ReadExactly(SafeFileHandle handle, string path, Span<byte> destination, long position)
    {
        if (ReadFully(handle, destination, position) < destination.Length)
        {
            throw new SafeTensorsFormatException($"{path}: the file ended while its header was being read.");
        }
    }

    private static int ReadFully(SafeFileHandle handle, Span<byte> destination, long position)
    {
        int total = 0;
        while (total < destination.Length)
        {
            int n = RandomAccess.Read(handle, destination[total..], position + total);
            if (n == 0)
            {
                break;
            }

            total += n;
        }

        return total;
    }

    /// <summary>Parses and validates a header against a data region of <paramref name="dataLength"/> bytes.</summary>
    internal static (List<SafeTensorInfo> Tensors, Dictionary<string, string> Metadata) ParseHeader(string path, ReadOnlyMemory<byte> header, long dataLength)
    {
        if (!System.Text.Unicode.Utf8.IsValid(header.Span))
        {
            throw new SafeTensorsFormatException($"{path}: the header is not valid UTF-8.");
        }

        CountEntries(path, header.Span);

        JsonDocument document;
        try
        {
            // UTF-8 was checked above (JsonDocument only checks it lazily, when a string is read); the parser checks the
            // JSON grammar and nesting depth (64) and never allocates more than the input warrants.
            document = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException ex)
        {
            throw new SafeTensorsFormatException($"{path}: the header is not valid UTF-8 JSON ({ex.Message}).", ex);
        }

        using (document)
        {
            JsonElement root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new SafeTensorsFormatException($"{path}: the header must be a JSON object, found {root.ValueKind}.");
            }

            var seen = new HashSet<string>(StringComparer.Ordinal);
            var tensors = new List<SafeTensorInfo>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (JsonProperty property in root.EnumerateObject())
            {
                string name = property.Name;
                if (!seen.Add(name))
                {
                    throw new SafeTensorsFormatException($"{path}: the header names '{name}' twice.");
                }

                if (name == MetadataKey)
                {
                    ParseMetadata(path, property.Value, metadata);
                    continue;
                }

                tensors.Add(ParseTensor(path, name, property.Value, dataLength));
            }

            // Sort by offset (zero-length tensors before a tensor starting at the same offset) and require the
            // ranges to tile [0, dataLength) exactly: this rejects overlaps, gaps and trailing bytes at once.
            tensors.Sort(static (a, b) =>
            {
                int c = a.DataOffset.CompareTo(b.DataOffset);
                if (c == 0)
                {
                    c = a.ByteLength.CompareTo(b.ByteLength);
                }

                return c != 0 ? c : string.CompareOrdinal(a.Name, b.Name);
            });
            long position = 0;
            foreach (SafeTensorInfo t in tensors)
            {
                if (t.DataOffset != position)
                {
                    string problem = t.DataOffset < position ? "overlaps the previous tensor" : "leaves a gap after the previous tensor";
                    throw new SafeTensorsFormatException($"{path}: tensor '{t.Name}' starts at data offset {t.DataOffset} and {problem} (which ends at {position}); tensors must be contiguous.");
                }

                position += t.ByteLength;
            }

            if (position != dataLength)
            {
                throw new SafeTensorsFormatException($"{path}: the tensors cover {position} bytes but the data region has {dataLength}.");
            }

            return (tensors, metadata);
        }
    }

    /// <summary>
    /// A streaming pass (no allocation) over the header's top level that rejects more than <see cref="MaxTensors"/>
    /// entries before any per-tensor object is built; grammar errors are left to the full parse.
    /// </summary>
    private static void CountEntries(string path, ReadOnlySpan<byte> header)
    {
        var reader = new Utf8JsonReader(header, new JsonReaderOptions { MaxDepth = 64 });
        long entries = 0;
        try
        {
            while (reader.Read())
            {
                if (reader.TokenType is JsonTokenType.PropertyName or JsonTokenType.String && reader.ValueIsEscaped)
                {
                    try
                    {
                        _ = reader.GetString();
                    }
                    catch (InvalidOperationException)
                    {
                        throw new SafeTensorsFormatException($"{path}: the header holds a name or string with an escaped unpaired surrogate (such as \\ud800), which is not valid Unicode.");
                    }
                }

                if (reader.TokenType == JsonTokenType.PropertyName && reader.CurrentDepth == 1
                    && !reader.ValueTextEquals(MetadataKey) && ++entries > MaxTensors)
                {
                    throw new SafeTensorsFormatException($"{path}: the header declares more than {MaxTensors:N0} tensors, the limit for one file.");
                }
            }
        }
        catch (JsonException)
        {
            // Reported with its position by the full parse.
        }
    }

    private static void ParseMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new SafeTensorsFormatException($"{path}: '{MetadataKey}' must be an object of strings, found {value.ValueKind}.");
        }

        foreach (JsonProperty entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw new SafeTensorsFormatException($"{path}: metadata '{entry.Name}' must be a string, found {entry.Value.ValueKind}.");
            }

            if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!))
            {
                throw new SafeTensorsFormatException($"{path}: metadata key '{entry.Name}' appears twice.");
            }
        }
    }

    private static SafeTensorInfo ParseTensor(string path, string name, JsonElement value, long dataLength)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' must be an object, found {value.ValueKind}.");
        }

        JsonElement? dtypeElement = null, shapeElement = null, offsetsElement = null;
        foreach (JsonProperty field in value.EnumerateObject())
        {
            switch (field.Name)
            {
                case "dtype": dtypeElement = dtypeElement is null ? field.Value : throw Duplicate(field.Name); break;
                case "shape": shapeElement = shapeElement is null ? field.Value : throw Duplicate(field.Name); break;
                case "data_offsets": offsetsElement = offsetsElement is null ? field.Value : throw Duplicate(field.Name); break;
                default: break; // unknown fields are ignored, as by the reference implementation
            }
        }

        if (dtypeElement is not { ValueKind: JsonValueKind.String } dt)
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' needs a string 'dtype'.");
        }

        string dtypeText = dt.GetString()!;
        if (!SafeTensorDTypeExtensions.TryParse(dtypeText, out SafeTensorDType dtype))
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has unknown dtype '{dtypeText}'.");
        }

        if (shapeElement is not { ValueKind: JsonValueKind.Array } shapeArray)
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' needs an array 'shape'.");
        }

        int rank = shapeArray.GetArrayLength();
        if (rank > MaxRank)
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has a shape of rank {rank:N0}; the limit is {MaxRank}.");
        }
        var shape = new int[rank];
        int k = 0;
        foreach (JsonElement d in shapeArray.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
            {
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' has shape entry {d.GetRawText()}; dimensions must be non-negative integers.");
            }

            if (dim > int.MaxValue)
            {
                throw new SafeTensorsFormatException($"{path}: tensor '{name}' has a dimension of {dim:N0}; the limit is {int.MaxValue:N0} per dimension.");
            }

            shape[k++] = (int)dim;
        }

        long elements = 1;
        if (Array.IndexOf(shape, 0) >= 0)
        {
            elements = 0;
        }
        else
        {
            foreach (int dim in shape)
            {
                if (elements > long.MaxValue / dim)
                {
                    throw new SafeTensorsFormatException($"{path}: tensor '{name}' has shape [{string.Join(", ", shape)}] whose element count overflows.");
                }

                elements *= dim;
            }
        }

        int size = dtype.ElementSize();
        if (elements > long.MaxValue / size)
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has shape [{string.Join(", ", shape)}] whose byte length overflows.");
        }

        long expected = elements * size;
        if (offsetsElement is not { ValueKind: JsonValueKind.Array } offsets || offsets.GetArrayLength() != 2)
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' needs 'data_offsets' as an array of two integers.");
        }

        if (!TryGetOffset(offsets[0], out long begin) || !TryGetOffset(offsets[1], out long end))
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has data_offsets {offsets.GetRawText()}; offsets must be non-negative integers.");
        }

        if (begin > end || end > dataLength)
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' has data_offsets [{begin}, {end}) outside the {dataLength}-byte data region.");
        }

        if (end - begin != expected)
        {
            throw new SafeTensorsFormatException($"{path}: tensor '{name}' ({dtypeText}, shape [{string.Join(", ", shape)}]) needs {expected} bytes but data_offsets [{begin}, {end}) span {end - begin}.");
        }

        return new SafeTensorInfo(name, dtype, new TensorShape(shape)) { DataOffset = begin };

        SafeTensorsFormatException Duplicate(string field) => new($"{path}: tensor '{name}' has field '{field}' twice.");
    }

    private static bool TryGetOffset(JsonElement e, out long value)
    {
        value = 0;
        return e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out value) && value >= 0;
    }
}
