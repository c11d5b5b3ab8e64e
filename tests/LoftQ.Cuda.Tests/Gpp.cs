using System.Diagnostics;
using System.Globalization;

namespace LoftQNet.Cuda.Tests;

/// <summary>g++, which builds the kernel emulation (Emulation/*.cpp) for the tests that run CUDA code on the CPU.</summary>
internal static class Gpp
{
    private static readonly Lazy<string?> s_path = new(Find);

    /// <summary>The g++ on PATH, or null.</summary>
    public static string? Path => s_path.Value;

    /// <summary>Why the emulation tests are skipped, or null when g++ is available.</summary>
    public static string? SkipReason => Path is null ? "g++ is not on PATH: the CUDA kernel emulation cannot be built." : null;

    /// <summary>
    /// Compiles <paramref name="cpp"/> (which includes the kernel source <paramref name="kernelSource"/> through
    /// cuda_emulation.h) into the shared library <paramref name="output"/>, for a host whose CPU quantizer sums in
    /// <paramref name="lanes"/> float lanes (<see cref="Kernels.KernelLaunch.HostDefines"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">g++ is missing or the build failed (with its output).</exception>
    public static void Compile(string cpp, string output, string kernelSource, int lanes, bool fused)
    {
        var start = new ProcessStartInfo(Path ?? throw new InvalidOperationException(SkipReason))
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        foreach (string argument in new[]
        {
            "-O2", "-std=c++20", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-strict-aliasing", "-Wno-unknown-pragmas",
            "-DLOFTQ_KERNEL_SOURCE=\"" + kernelSource + "\"",
            string.Create(CultureInfo.InvariantCulture, $"-DLOFTQ_CPU_SUM_LANES={lanes}"),
            fused ? "-DLOFTQ_CPU_FUSED_ERROR=1" : "-DLOFTQ_CPU_FUSED_ERROR=0",
            "-o", output, cpp,
        })
        {
            start.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        string errors = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"g++ failed ({process.ExitCode}) on {cpp}:\n{stdout.Result}\n{errors}");
        }
    }

    private static string? Find()
    {
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(System.IO.Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = System.IO.Path.Combine(directory, "g++");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }
}
