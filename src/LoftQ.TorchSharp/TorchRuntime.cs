using System.Runtime.InteropServices;
using TorchSharp;

namespace LoftQNet.TorchSharp;

/// <summary>
/// Loads TorchSharp's native backend and, when that fails, reports the real cause (TorchSharp's own message names a
/// missing backend package even when the library was found but could not be loaded).
/// </summary>
public static class TorchRuntime
{
    private static readonly Lock s_gate = new();
    private static bool s_loaded;

    /// <summary>
    /// Initialises TorchSharp's CPU backend, or throws an exception that says why it cannot load: on Linux this tries
    /// the native library itself and includes the loader's message (for example <c>version `GLIBCXX_3.4.32' not
    /// found</c>, which the <c>LoftQTorchSharpNativeFix</c> build property fixes; see docs/torchsharp.md).
    /// </summary>
    /// <exception cref="InvalidOperationException">The native backend cannot be loaded; the message has the loader's own words.</exception>
    public static void EnsureLoaded()
    {
        lock (s_gate)
        {
            if (s_loaded)
            {
                return;
            }

            try
            {
                torch.InitializeDeviceType(DeviceType.CPU);
                s_loaded = true;
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new InvalidOperationException($"TorchSharp's native backend could not be loaded. {Diagnose()} (TorchSharp said: {e.GetBaseException().Message})", e);
            }
        }
    }

    /// <summary>A one-line description of the loaded backend, for bug reports.</summary>
    public static string Describe()
    {
        EnsureLoaded();
        return $"TorchSharp {typeof(torch).Assembly.GetName().Version}, libtorch {torch.__version__}; CUDA available: {torch.cuda.is_available()}; threads: {torch.get_num_threads()}";
    }

    private static string Diagnose()
    {
        if (!OperatingSystem.IsLinux())
        {
            return "Reference a backend package (TorchSharp-cpu, TorchSharp-cuda-windows or TorchSharp-cuda-linux) in the application.";
        }

        string[] candidates =
        [
            Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so"),
            Path.Combine(AppContext.BaseDirectory, "libLibTorchSharp.so"),
        ];
        foreach (string path in candidates)
        {
            if (!File.Exists(path))
            {
                continue;
            }

            try
            {
                NativeLibrary.Free(NativeLibrary.Load(path));
                return $"{path} loads on its own, so libtorch itself is missing or broken: reference TorchSharp-cpu (or libtorch-cpu-linux-x64) or a CUDA backend package.";
            }
            catch (DllNotFoundException e)
            {
                string hint = e.Message.Contains("GLIBCXX_", StringComparison.Ordinal)
                    ? " The system libstdc++ is older than the one TorchSharp was built with: build with the MSBuild property LoftQTorchSharpNativeFix=auto (the default of LoftQ.TorchSharp) so the output gets a patched copy."
                    : string.Empty;
                return $"The loader rejected {path}: {e.Message.Trim()}{hint}";
            }
        }

        return "libLibTorchSharp.so is not in the application's output: reference TorchSharp-cpu (or libtorch-cpu-linux-x64) or a CUDA backend package.";
    }
}
