using LoftQNet.TorchSharp;
using TorchSharp;

namespace LoftQNet.TorchSharp.Tests.Engine;

/// <summary>
/// The torch engine's tests run alone (not beside other test classes): the leak tests read the process-wide live
/// tensor count, and two threads of libtorch beside the managed engine on a 2-core machine only contend.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TorchEngineCollection
{
    public const string Name = "torch engine";

    /// <summary>Loads the backend and pins libtorch's thread count (contention is severe on 2 cores otherwise).</summary>
    public static void Setup()
    {
        TorchRuntime.EnsureLoaded();
        if (torch.get_num_threads() != 2)
        {
            torch.set_num_threads(2);
        }
    }
}
