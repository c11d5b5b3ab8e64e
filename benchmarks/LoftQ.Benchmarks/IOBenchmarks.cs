using BenchmarkDotNet.Attributes;
using LoftQNet.IO;
using LoftQNet.Numerics;

namespace LoftQNet.Benchmarks;

/// <summary>bf16/f16 conversion throughput and safetensors read/write of a 4096×4096 bf16 tensor.</summary>
[MemoryDiagnoser]
public class IOBenchmarks
{
    private const int N = 4096 * 4096;
    private float[] _floats = [];
    private ushort[] _bf16 = [];
    private Half[] _half = [];
    private string _dir = string.Empty;
    private string _file = string.Empty;

    [GlobalSetup]
    public void Setup()
    {
        _floats = new float[N];
        Gaussian.Fill(_floats, 42, 0.02f);
        _bf16 = new ushort[N];
        _half = new Half[N];
        FloatConversions.SingleToBFloat16(_floats, _bf16);
        _dir = Path.Combine(Path.GetTempPath(), "loftq-io-bench-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        _file = Path.Combine(_dir, "w.safetensors");
        SafeTensorsWriter.Write(_file, [SafeTensorEntry.FromSingle("w", [4096, 4096], _floats, SafeTensorDType.BF16)]);
    }

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [Benchmark]
    public void SingleToBFloat16() => FloatConversions.SingleToBFloat16(_floats, _bf16);

    [Benchmark]
    public void SingleToBFloat16Scalar() => FloatConversions.SingleToBFloat16Core(_floats, _bf16, 0);

    [Benchmark]
    public void BFloat16ToSingle() => FloatConversions.BFloat16ToSingle(_bf16, _floats);

    [Benchmark]
    public void SingleToHalf() => FloatConversions.SingleToHalf(_floats, _half);

    [Benchmark]
    public float ReadBf16Tensor()
    {
        using SafeTensorsFile f = SafeTensorsFile.Open(_file);
        f.ReadAsSingle("w", _floats);
        return _floats[0];
    }

    [Benchmark]
    public void WriteBf16Tensor() =>
        SafeTensorsWriter.Write(Path.Combine(_dir, "out.safetensors"), [SafeTensorEntry.FromSingle("w", [4096, 4096], _floats, SafeTensorDType.BF16)]);
}
