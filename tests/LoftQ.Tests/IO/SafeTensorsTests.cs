using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using LoftQNet.IO;
using LoftQNet.Numerics;

namespace LoftQNet.Tests.IO;

public class SafeTensorsTests
{
    [Fact]
    public void WriteRead_EveryDType_RoundTripsBitExact()
    {
        using var dir = new TempDir();
        var rng = new Random(1);
        var entries = new List<SafeTensorEntry>();
        foreach (SafeTensorDType dtype in Enum.GetValues<SafeTensorDType>())
        {
            TensorShape shape = [3, 5, 2];
            var data = new byte[30 * dtype.ElementSize()];
            rng.NextBytes(data);
            entries.Add(SafeTensorEntry.FromBytes("t." + dtype, dtype, shape, data));
        }

        entries.Add(SafeTensorEntry.FromBytes("scalar", SafeTensorDType.F32, [], BitConverter.GetBytes(3.5f)));
        entries.Add(SafeTensorEntry.FromBytes("empty", SafeTensorDType.BF16, [0, 7], Array.Empty<byte>()));
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode ✓" };
        string path = dir.File("all.safetensors");
        SafeTensorsWriter.Write(path, entries, metadata);

        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Assert.Equal(entries.Select(e => e.Info.Name), file.Tensors.Select(t => t.Name)); // file order = the order given
        Assert.Equal(metadata, file.Metadata);
        Assert.Equal(0, file.DataStart % 8);
        foreach (SafeTensorEntry e in entries)
        {
            SafeTensorInfo info = file.GetInfo(e.Info.Name);
            Assert.Equal(e.Info.DType, info.DType);
            Assert.Equal(e.Info.Shape, info.Shape);
            Assert.Equal(e.Data.Length, info.ByteLength);
            Assert.True(e.Data.Span.SequenceEqual(file.GetBytes(e.Info.Name)), e.Info.Name);
            var copy = new byte[e.Data.Length];
            file.CopyBytes(e.Info.Name, 0, copy);
            Assert.Equal(e.Data.ToArray(), copy);
        }

        Assert.Equal(3.5f, file.ReadAsSingle("scalar")[0]);
        Assert.Empty(file.ReadAsSingle("empty"));
    }

    [Fact]
    public void Tensors_AreInOffsetOrder_AndHeaderKeepsGivenOrder()
    {
        using var dir = new TempDir();
        string path = dir.File("order.safetensors");
        SafeTensorsWriter.Write(path, [
            SafeTensorEntry.FromSingle("zeta", [2], [1f, 2f]),
            SafeTensorEntry.FromSingle("alpha", [1], [3f]),
        ]);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Assert.Equal(["zeta", "alpha"], file.Tensors.Select(t => t.Name));
        Assert.Equal(0, file.Tensors[0].DataOffset);
        Assert.Equal(8, file.Tensors[1].DataOffset);
        string header = Encoding.UTF8.GetString(File.ReadAllBytes(path), 8, (int)file.DataStart - 8);
        Assert.True(header.IndexOf("zeta", StringComparison.Ordinal) < header.IndexOf("alpha", StringComparison.Ordinal));
        Assert.Equal(0, header.Length % 8);
    }

    [Theory]
    [InlineData(SafeTensorDType.F32)]
    [InlineData(SafeTensorDType.F16)]
    [InlineData(SafeTensorDType.BF16)]
    public void FromSingle_ThenReadAsSingle_EqualsManualConversion(SafeTensorDType dtype)
    {
        using var dir = new TempDir();
        var values = new float[1000];
        var rng = new Random(3);
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)((rng.NextDouble() - 0.5) * Math.Pow(10, rng.Next(-4, 4)));
        }

        string path = dir.File("f.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("w", [10, 100], values, dtype)]);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        float[] read = file.ReadAsSingle("w");
        for (int i = 0; i < values.Length; i++)
        {
            float expected = dtype switch
            {
                SafeTensorDType.F32 => values[i],
                SafeTensorDType.F16 => (float)(Half)values[i],
                _ => BitConverter.UInt32BitsToSingle((uint)ReferenceBf16(values[i]) << 16),
            };
            Assert.Equal(expected, read[i]);
        }

        static ushort ReferenceBf16(float f)
        {
            uint b = BitConverter.SingleToUInt32Bits(f);
            return (ushort)((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
        }
    }

    [Fact]
    public void ReadAsSingle_F64_Converts_AndIntegerDTypeIsRejected()
    {
        using var dir = new TempDir();
        string path = dir.File("d.safetensors");
        double[] d = [1.5, -2.25, 1e-3];
        SafeTensorsWriter.Write(path, [
            SafeTensorEntry.FromBytes("d", SafeTensorDType.F64, [3], MemoryMarshal.AsBytes(d.AsSpan()).ToArray()),
            SafeTensorEntry.FromBytes("i", SafeTensorDType.I32, [1], new byte[4]),
        ]);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Assert.Equal([1.5f, -2.25f, 1e-3f], file.ReadAsSingle("d"));
        var ex = Assert.Throws<NotSupportedException>(() => file.ReadAsSingle("i"));
        Assert.Contains("'i'", ex.Message);
        Assert.Contains("I32", ex.Message);
        Assert.Throws<ArgumentException>(() => file.ReadAsSingle("d", new float[2]));
        var missing = Assert.Throws<KeyNotFoundException>(() => file.GetInfo("nope"));
        Assert.Contains("nope", missing.Message);
        Assert.Contains(path, missing.Message);
    }

    [Fact]
    public void Dispose_ReleasesTheFile_AndLaterAccessThrows()
    {
        using var dir = new TempDir();
        string path = dir.File("x.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("a", [2], [1f, 2f])]);
        SafeTensorsFile file = SafeTensorsFile.Open(path);
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.GetBytes("a").Length);
        // The handle is gone: the file can be replaced and deleted.
        SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("b", [1], [5f])]);
        using (SafeTensorsFile again = SafeTensorsFile.Open(path))
        {
            Assert.Equal([5f], again.ReadAsSingle("b"));
        }

        File.Delete(path);
        Assert.Empty(Directory.GetFiles(dir.Path));
        int fdCount = Directory.GetFiles("/proc/self/fd").Length;
        for (int i = 0; i < 50; i++)
        {
            SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("b", [1], [i])]);
            using SafeTensorsFile f = SafeTensorsFile.Open(path);
            Assert.Equal(i, f.ReadAsSingle("b")[0]);
        }

        Assert.InRange(Directory.GetFiles("/proc/self/fd").Length, 0, fdCount + 10);
    }

    // ---- streaming and atomic writes ----

    [Fact]
    public void StreamingWriter_Chunks_AndWriteSingle()
    {
        using var dir = new TempDir();
        string path = dir.File("s.safetensors");
        var big = new float[200_000];
        for (int i = 0; i < big.Length; i++)
        {
            big[i] = i * 0.001f;
        }

        using (SafeTensorsWriter w = SafeTensorsWriter.Create(path, [
            new SafeTensorInfo("bytes", SafeTensorDType.U8, [10]),
            new SafeTensorInfo("big", SafeTensorDType.BF16, [200, 1000]),
            new SafeTensorInfo("none", SafeTensorDType.F32, [0]),
        ]))
        {
            Assert.Equal("bytes", w.NextTensor!.Name);
            w.WriteChunk([0, 1, 2, 3]);
            Assert.Throws<InvalidOperationException>(() => w.WriteTensor("bytes", new byte[10])); // partially written
            Assert.Throws<ArgumentException>(() => w.WriteChunk(new byte[7])); // past the end
            w.WriteChunk([4, 5, 6, 7, 8, 9]);
            Assert.Throws<InvalidOperationException>(() => w.WriteSingle("none", [])); // out of order
            Assert.Throws<InvalidOperationException>(() => w.Commit()); // incomplete
            w.WriteSingle("big", big);
            w.WriteTensor("none", []);
            Assert.Null(w.NextTensor);
            w.Commit();
        }

        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => (byte)i), file.GetBytes("bytes").ToArray());
        float[] read = file.ReadAsSingle("big");
        var expected = new ushort[big.Length];
        FloatConversions.SingleToBFloat16(big, expected);
        for (int i = 0; i < big.Length; i++)
        {
            Assert.Equal(FloatConversions.BFloat16ToSingle(expected[i]), read[i]);
        }

        Assert.Single(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void FailureMidWrite_LeavesNoDestinationAndNoTempFile()
    {
        using var dir = new TempDir();
        string path = dir.File("fail.safetensors");
        string? temp = null;
        Action failingWrite = () =>
        {
            using SafeTensorsWriter w = SafeTensorsWriter.Create(path, [
                new SafeTensorInfo("a", SafeTensorDType.F32, [4]),
                new SafeTensorInfo("b", SafeTensorDType.F32, [4]),
            ]);
            temp = w.TemporaryPath;
            w.WriteSingle("a", [1f, 2f, 3f, 4f]);
            Assert.True(File.Exists(temp));
            throw new IOException("simulated failure while producing 'b'");
        };
        var ex = Assert.Throws<IOException>(failingWrite);
        Assert.Contains("simulated", ex.Message);
        Assert.NotNull(temp);
        Assert.False(File.Exists(path));
        Assert.False(File.Exists(temp));
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void FailureMidWrite_KeepsThePreviousFileIntact()
    {
        using var dir = new TempDir();
        string path = dir.File("keep.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("old", [1], [42f])]);
        byte[] before = File.ReadAllBytes(path);
        using (SafeTensorsWriter w = SafeTensorsWriter.Create(path, [new SafeTensorInfo("new", SafeTensorDType.F32, [2])]))
        {
            w.WriteChunk(new byte[4]); // abandoned half way
        }

        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(dir.Path));

        // Static Write validates every entry before creating anything.
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [
            SafeTensorEntry.FromSingle("ok", [1], [1f]),
            SafeTensorEntry.FromBytes("bad", SafeTensorDType.F32, [2], new byte[7]),
        ]));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void Writer_RejectsBadDescriptors()
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("a", [1], [1f]), SafeTensorEntry.FromSingle("a", [1], [1f])]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("__metadata__", [1], [1f])]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Create(path, [new SafeTensorInfo("n", SafeTensorDType.F32, [-1])]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Create(path, [new SafeTensorInfo("o", SafeTensorDType.F32, [int.MaxValue, int.MaxValue, int.MaxValue])]));
        Assert.Throws<ArgumentException>(() => SafeTensorEntry.FromSingle("x", [2], [1f]));
        Assert.Throws<ArgumentException>(() => SafeTensorEntry.FromSingle("x", [1], [1f], SafeTensorDType.I8));
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    // ---- strict validation: one test per rejection rule ----

    public static TheoryData<string, string, int, string> Rejections => new()
    {
        { "bad JSON", "{\"a\": {\"dtype\": \"F32\"", 0, "JSON" },
        { "not an object", "[1, 2, 3]", 0, "object" },
        { "tensor not an object", "{\"a\": 5}", 0, "'a' must be an object" },
        { "missing dtype", "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "dtype" },
        { "unknown dtype", "{\"a\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1, "unknown dtype" },
        { "missing shape", "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "shape" },
        { "negative dim", "{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, "non-negative" },
        { "fractional dim", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4, "non-negative integers" },
        { "shape overflow", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2147483647, 2147483647, 2147483647], \"data_offsets\": [0, 4]}}", 4, "overflows" },
        { "byte length overflow", "{\"a\": {\"dtype\": \"F64\", \"shape\": [2147483647, 2147483647, 2], \"data_offsets\": [0, 4]}}", 4, "overflows" },
        { "missing offsets", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "data_offsets" },
        { "three offsets", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 4, "data_offsets" },
        { "negative offset", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4, "non-negative" },
        { "begin after end", "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 0]}}", 4, "outside" },
        { "out of range", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 4, "outside" },
        { "wrong byte length", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4, "needs 8 bytes" },
        { "overlap", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8, "overlaps" },
        { "gap", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}", 12, "gap" },
        { "not starting at zero", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8, "gap" },
        { "trailing bytes", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 9, "cover 4 bytes but the data region has 9" },
        { "duplicate names", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8, "twice" },
        { "metadata not an object", "{\"__metadata__\": \"x\"}", 0, "__metadata__" },
        { "metadata value not a string", "{\"__metadata__\": {\"format\": 1}}", 0, "must be a string" },
        { "empty header", "", 0, "JSON" },
    };

    [Theory]
    [MemberData(nameof(Rejections))]
    public void Open_RejectsMalformedHeaders(string rule, string header, int dataLength, string expectedFragment)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        File.WriteAllBytes(path, TestFiles.Build(header, dataLength));
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.True(ex.Message.Contains(expectedFragment, StringComparison.Ordinal), $"{rule}: {ex.Message}");
        Assert.Contains(path, ex.Message);
    }

    [Fact]
    public void Open_RejectsInvalidUtf8()
    {
        using var dir = new TempDir();
        string path = dir.File("utf8.safetensors");
        byte[] bytes = TestFiles.Build("{\"a\u00e9\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1);
        int at = Array.IndexOf(bytes, (byte)0xC3);
        bytes[at] = 0xFF; // not valid UTF-8
        File.WriteAllBytes(path, bytes);
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("UTF-8", ex.Message);
    }

    [Theory]
    [InlineData(0UL)]
    [InlineData(1UL << 63)]
    [InlineData(ulong.MaxValue)]
    [InlineData(100_000_001UL)]
    [InlineData(1000UL)]
    public void Open_RejectsBadHeaderLengths(ulong length)
    {
        using var dir = new TempDir();
        string path = dir.File("len.safetensors");
        File.WriteAllBytes(path, TestFiles.Build("{}", 0, length));
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains(path, ex.Message);
    }

    [Fact]
    public void Open_RejectsHeaderOver100MB_EvenWhenTheFileIsThatLarge()
    {
        using var dir = new TempDir();
        string path = dir.File("huge.safetensors");
        using (var fs = new FileStream(path, FileMode.CreateNew))
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, 100_000_008UL);
            fs.Write(prefix);
            fs.SetLength(8 + 100_000_008L); // sparse
        }

        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("100000000", ex.Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(7)]
    public void Open_RejectsFilesShorterThanThePrefix(int length)
    {
        using var dir = new TempDir();
        string path = dir.File("short.safetensors");
        File.WriteAllBytes(path, new byte[length]);
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("fewer than", ex.Message);
    }

    [Fact]
    public void Open_AcceptsEmptyHeaderObject_AndUnknownTensorFields()
    {
        using var dir = new TempDir();
        string path = dir.File("ok.safetensors");
        File.WriteAllBytes(path, TestFiles.Build("{}", 0));
        using (SafeTensorsFile f = SafeTensorsFile.Open(path))
        {
            Assert.Empty(f.Tensors);
            Assert.Empty(f.Metadata);
        }

        File.WriteAllBytes(path, TestFiles.Build("{\"a\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [0, 2], \"extra\": 1}}   ", 2));
        using SafeTensorsFile g = SafeTensorsFile.Open(path);
        Assert.Equal(2, g.GetBytes("a").Length);
    }

    // ---- fuzzing (the full 6,000-case run and the index/config families are in FuzzTests, Category=Slow) ----

    [Fact]
    public void Fuzz_CorruptedFiles_OpenConsistentlyOrThrowFormatException()
    {
        (int opened, int rejected) = FuzzTests.RunSafeTensorsFamily(800, seed: 20240602);
        Assert.True(rejected > 400, $"rejected {rejected}");
        Assert.True(opened > 0, $"opened {opened}");
    }

    [Fact]
    public void Header_IsValidJson_WithMetadataFirst()
    {
        using var dir = new TempDir();
        string path = dir.File("h.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorEntry.FromSingle("a", [1], [1f])], new Dictionary<string, string> { ["format"] = "pt" });
        byte[] bytes = File.ReadAllBytes(path);
        int n = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using JsonDocument doc = JsonDocument.Parse(bytes.AsMemory(8, n));
        Assert.Equal("__metadata__", doc.RootElement.EnumerateObject().First().Name);
        Assert.Equal("F32", doc.RootElement.GetProperty("a").GetProperty("dtype").GetString());
        Assert.Equal([0, 4], doc.RootElement.GetProperty("a").GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt32()));
    }
}
