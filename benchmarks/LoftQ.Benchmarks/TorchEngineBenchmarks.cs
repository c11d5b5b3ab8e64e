using BenchmarkDotNet.Attributes;
using LoftQNet.LowRank;
using LoftQNet.Numerics;
using LoftQNet.Optimization;
using LoftQNet.Quantization;
using LoftQNet.TorchSharp;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;

namespace LoftQNet.Benchmarks;

/// <summary>
/// The managed engine against LoftQ.TorchSharp's torch engine on the same CPU: NF4 quantize+dequantize of a
/// 4096×4096 Gaussian weight (block 64) and one LoftQ layer (NF4, r = 64, T = 5, randomized SVD). libtorch uses
/// <see cref="ComputeSettings.MaxThreads"/> threads, as the managed engine does.
/// <c>dotnet run -c Release --project benchmarks/LoftQ.Benchmarks -- --filter '*TorchEngine*'</c>
/// </summary>
[MemoryDiagnoser]
public class TorchEngineBenchmarks
{
    private Matrix _weight = null!;
    private float[] _output = null!;
    private torch.Tensor _tensor = null!;
    private readonly NormalFloatQuantizer _managed = new(4);
    private TorchBlockwiseQuantizer _torch = null!;
    private readonly AlternatingOptimizer _optimizer = new(new NormalFloatQuantizer(4), new RandomizedSvdSolver());
    private readonly TorchRandomizedSvdSolver _solver = new();

    /// <summary>Rows = columns of the weight.</summary>
    [Params(4096)]
    public int Size { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        TorchRuntime.EnsureLoaded();
        torch.set_num_threads(ComputeSettings.MaxThreads);
        _weight = Matrix.RandomNormal(Size, Size, 7, 0.02f);
        _output = new float[_weight.Length];
        _tensor = torch.tensor(_weight.Span.ToArray(), [Size, Size]).DetachFromDisposeScope();
        _torch = TorchBlockwiseQuantizer.NormalFloat(4);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _weight.Dispose();
        _tensor.Dispose();
        _torch.Dispose();
    }

    [Benchmark(Baseline = true)]
    public QuantizedTensor ManagedQuantizeDequantize() => _managed.QuantizeDequantize(_weight.Span, _weight.Shape, _output);

    [Benchmark]
    public long TorchQuantizeDequantize()
    {
        using var scope = torch.NewDisposeScope();
        (torch.Tensor codes, _, _, _) = _torch.QuantizeDequantize(_tensor);
        return codes.numel();
    }

    [Benchmark]
    public double ManagedLoftQLayer()
    {
        using LoftQResult result = _optimizer.Run(_weight, 64, 5);
        return result.RelativeError;
    }

    [Benchmark]
    public double TorchLoftQLayer()
    {
        using TorchLoftQResult result = TorchLoftQ.Run(_tensor, _torch, _solver, 64, 5);
        return result.RelativeError;
    }
}
