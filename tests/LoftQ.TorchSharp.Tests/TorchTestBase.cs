using LoftQNet.TorchSharp;
using TorchSharp;

namespace LoftQNet.TorchSharp.Tests;

/// <summary>Loads TorchSharp (failing with the loader's real message if it cannot) and pins its threads.</summary>
public abstract class TorchTestBase
{
    protected TorchTestBase()
    {
        TorchRuntime.EnsureLoaded();
        torch.set_num_threads(Math.Min(2, Environment.ProcessorCount));
    }

    internal static float[] Values(torch.Tensor t) => t.detach().to(torch.ScalarType.Float32).cpu().contiguous().data<float>().ToArray();

    internal static double[] Doubles(torch.Tensor t) => t.detach().to(torch.ScalarType.Float64).cpu().contiguous().data<double>().ToArray();
}
