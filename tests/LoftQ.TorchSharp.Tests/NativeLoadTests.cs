using LoftQNet.TorchSharp;
using TorchSharp;

namespace LoftQNet.TorchSharp.Tests;

public class NativeLoadTests
{
    [Fact]
    public void TorchSharpLoadsAndRunsARealTensorOp()
    {
        TorchRuntime.EnsureLoaded();
        using var scope = torch.NewDisposeScope();
        torch.Tensor a = torch.tensor(new float[] { 1, 2, 3, 4 }, [2, 2]);
        torch.Tensor product = a.matmul(a);
        Assert.Equal(new float[] { 7, 10, 15, 22 }, product.data<float>().ToArray());
        Assert.Contains("libtorch", TorchRuntime.Describe(), StringComparison.Ordinal);
    }

    [Fact]
    public void OutputCopyDiffersFromThePackageInExactlyTheWeakFlagWhenTheSystemNeedsIt()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        string output = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        string package = Path.Combine(
            Environment.GetEnvironmentVariable("NUGET_PACKAGES") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages"),
            "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(output), $"{output} is missing");
        Assert.True(File.Exists(package), $"{package} is missing");
        byte[] patched = File.ReadAllBytes(output), original = File.ReadAllBytes(package);
        Assert.Equal(original.Length, patched.Length);
        var differences = Enumerable.Range(0, original.Length).Where(i => original[i] != patched[i]).ToList();
        bool systemHasVersion = SystemLibStdCxxHas("GLIBCXX_3.4.32");
        if (systemHasVersion)
        {
            Assert.Empty(differences);
        }
        else
        {
            // One byte: the low byte of vna_flags of the GLIBCXX_3.4.32 Vernaux entry gains VER_FLG_WEAK (0x2).
            int i = Assert.Single(differences);
            Assert.Equal(original[i] | 0x2, patched[i]);
        }
    }

    private static bool SystemLibStdCxxHas(string version)
    {
        string[] candidates = ["/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6"];
        string? path = candidates.FirstOrDefault(File.Exists);
        Assert.NotNull(path);
        byte[] bytes = File.ReadAllBytes(path);
        byte[] needle = System.Text.Encoding.ASCII.GetBytes(version + "\0");
        return bytes.AsSpan().IndexOf(needle) >= 0;
    }
}
