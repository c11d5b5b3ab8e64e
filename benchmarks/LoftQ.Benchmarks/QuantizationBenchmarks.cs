using BenchmarkDotNet.Attributes;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

namespace LoftQNet.Benchmarks;

/// <summary>
/// Blockwise quantizers on a 4096×4096 Gaussian weight (64 MiB of fp32, block 64): quantize, dequantize and the
/// fused quantize+dequantize fast path. GB/s = 0.0671 / mean seconds. Torch's NF4 quantize+dequantize on the
/// same machine runs about 0.16 GB/s (DESIGN §4).
/// <c>dotnet run -c Release --project benchmarks/LoftQ.Benchmarks -- --filter '*Quantization*'</c>
/// </summary>
[MemoryDiagnoser]
public class QuantizationBenchmarks
{
    private Matrix _weight = null!;
    private float[] _output = null!;
    private IQuantizer _quantizer = null!;
    private QuantizedTensor _quantized = null!;

    /// <summary>The quantizer under test.</summary>
    [Params("nf4", "nf2", "nf3", "uniform4", "uniform2-asym", "uniform8")]
    public string Quantizer { get; set; } = "nf4";

    /// <summary>Rows = columns of the weight.</summary>
    [Params(4096)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _weight = Matrix.RandomNormal(Size, Size, seed: 1);
        _output = new float[_weight.Length];
        _quantizer = Quantizer switch
        {
            "nf4" => new NormalFloatQuantizer(4),
            "nf2" => new NormalFloatQuantizer(2),
            "nf3" => new NormalFloatQuantizer(3),
            "uniform4" => new UniformQuantizer(4),
            "uniform2-asym" => new UniformQuantizer(2, asymmetric: true),
            "uniform8" => new UniformQuantizer(8),
            _ => throw new ArgumentOutOfRangeException(nameof(Quantizer), Quantizer, "unknown quantizer"),
        };
        _quantized = _quantizer.Quantize(_weight.Span, _weight.Shape);
    }

    [GlobalCleanup]
    public void Cleanup() => _weight.Dispose();

    [Benchmark]
    public QuantizedTensor Quantize() => _quantizer.Quantize(_weight.Span, _weight.Shape);

    [Benchmark]
    public void Dequantize() => _quantizer.Dequantize(_quantized, _output);

    [Benchmark]
    public QuantizedTensor QuantizeDequantize() => _quantizer.QuantizeDequantize(_weight.Span, _weight.Shape, _output);
}
