using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;

namespace LoftQNet.Cuda.Native;

/// <summary>
/// The one native-library resolver of this assembly: maps the logical names used by the <c>[LibraryImport]</c>
/// declarations (<see cref="Driver"/>, <see cref="Cublas"/>, …) to the versioned CUDA libraries, trying each candidate
/// file name in each search folder, and keeps a load trace that every "not available" message quotes.
/// </summary>
/// <remarks>
/// Folders tried, in order: <c>LOFTQ_CUDA_LIB_DIR</c> (when set), the system loader's own search (LD_LIBRARY_PATH,
/// ld.so.cache, PATH on Windows), <c>CUDA_PATH</c>/<c>CUDA_HOME</c> + lib64 / bin, and /usr/local/cuda/lib64 and
/// /usr/local/cuda/targets/x86_64-linux/lib. The resolver is registered once, the first time any binding is used.
/// </remarks>
internal static class CudaLibraries
{
    internal const string Driver = "loftq-cuda-driver";
    internal const string Cublas = "loftq-cublas";
    internal const string Cusolver = "loftq-cusolver";
    internal const string Curand = "loftq-curand";
    internal const string Nvrtc = "loftq-nvrtc";

    /// <summary>The loader's reason for a file that does not exist.</summary>
    internal const string MissingFile = "no such file";

    private static readonly Lock s_gate = new();
    private static readonly Dictionary<string, LoadResult> s_loaded = new(StringComparer.Ordinal);
    private static bool s_registered;

    /// <summary>What a logical library resolved to: the handle and path, or the trace of every attempt.</summary>
    internal sealed record LoadResult(string LogicalName, nint Handle, string? Path, IReadOnlyList<string> Trace)
    {
        /// <summary>Whether the library was found.</summary>
        public bool Loaded => Handle != 0;

        /// <summary>One line: the path loaded, or the attempts that failed.</summary>
        public string Describe()
        {
            if (Loaded)
            {
                return Path!;
            }

            // The common case, every candidate simply absent, reads as a list of names.
            const string Absent = ": " + MissingFile;
            return Trace.All(t => t.EndsWith(Absent, StringComparison.Ordinal))
                ? $"not found (tried {string.Join(", ", Trace.Select(t => t[..^Absent.Length]))})"
                : $"not found (tried {string.Join("; ", Trace)})";
        }
    }

    /// <summary>Candidate file names of a logical library on this OS, newest first.</summary>
    internal static IReadOnlyList<string> CandidateNames(string logicalName, bool windows) => (logicalName, windows) switch
    {
        (Driver, false) => ["libcuda.so.1", "libcuda.so"],
        (Cublas, false) => ["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
        (Cusolver, false) => ["libcusolver.so.12", "libcusolver.so.11", "libcusolver.so"],
        (Curand, false) => ["libcurand.so.10", "libcurand.so"],
        (Nvrtc, false) => ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
        (Driver, true) => ["nvcuda.dll"],
        (Cublas, true) => ["cublas64_13.dll", "cublas64_12.dll"],
        (Cusolver, true) => ["cusolver64_12.dll", "cusolver64_11.dll"],
        (Curand, true) => ["curand64_10.dll"],
        (Nvrtc, true) => ["nvrtc64_130_0.dll", "nvrtc64_120_0.dll"],
        _ => throw new ArgumentException($"Unknown CUDA library '{logicalName}'.", nameof(logicalName)),
    };

    /// <summary>Folders searched after the system loader's own search.</summary>
    internal static IReadOnlyList<string> SearchFolders(Func<string, string?> environment, bool windows)
    {
        var folders = new List<string>();
        foreach (string variable in new[] { "CUDA_PATH", "CUDA_HOME" })
        {
            if (environment(variable) is { Length: > 0 } root)
            {
                folders.Add(System.IO.Path.Combine(root, windows ? "bin" : "lib64"));
            }
        }

        if (!windows)
        {
            folders.Add("/usr/local/cuda/lib64");
            folders.Add("/usr/local/cuda/targets/x86_64-linux/lib");
        }

        return folders.Distinct(StringComparer.Ordinal).ToList();
    }

    /// <summary>Loads (once) the logical library <paramref name="logicalName"/>; never throws.</summary>
    internal static LoadResult Load(string logicalName)
    {
        lock (s_gate)
        {
            if (s_loaded.TryGetValue(logicalName, out LoadResult? known))
            {
                return known;
            }

            LoadResult result = Probe(logicalName, Environment.GetEnvironmentVariable, OperatingSystem.IsWindows(), TryLoadFile);
            s_loaded[logicalName] = result;
            return result;
        }
    }

    /// <summary>
    /// Tries every candidate in every folder with <paramref name="tryLoad"/> (a path or bare file name → handle, or an
    /// error message); the folders are <c>LOFTQ_CUDA_LIB_DIR</c>, the loader's own search (a bare name), then
    /// <see cref="SearchFolders"/>.
    /// </summary>
    internal static LoadResult Probe(string logicalName, Func<string, string?> environment, bool windows, Func<string, (nint Handle, string? Error)> tryLoad)
    {
        var trace = new List<string>();
        var places = new List<string?>();
        if (environment("LOFTQ_CUDA_LIB_DIR") is { Length: > 0 } pinned)
        {
            places.Add(pinned);
        }

        places.Add(null);
        places.AddRange(SearchFolders(environment, windows));
        foreach (string? folder in places)
        {
            foreach (string name in CandidateNames(logicalName, windows))
            {
                string path = folder is null ? name : System.IO.Path.Combine(folder, name);
                if (folder is not null && !File.Exists(path))
                {
                    continue; // not there: not worth a line in the trace
                }

                (nint handle, string? error) = tryLoad(path);
                if (handle != 0)
                {
                    return new LoadResult(logicalName, handle, path, trace);
                }

                trace.Add($"{path}: {error}");
            }
        }

        if (trace.Count == 0)
        {
            trace.Add("no candidate file exists");
        }

        return new LoadResult(logicalName, 0, null, trace);
    }

    /// <summary>Registers the resolver for this assembly (idempotent).</summary>
    internal static void EnsureResolver()
    {
        lock (s_gate)
        {
            if (s_registered)
            {
                return;
            }

            NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);
            s_registered = true;
        }
    }

    /// <summary>The load trace of every library tried so far, one per line (for error messages and Describe).</summary>
    internal static string Trace()
    {
        lock (s_gate)
        {
            var sb = new StringBuilder();
            foreach (LoadResult r in s_loaded.Values)
            {
                sb.Append(r.LogicalName).Append(": ").AppendLine(r.Describe());
            }

            return sb.ToString();
        }
    }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName is not (Driver or Cublas or Cusolver or Curand or Nvrtc))
        {
            return 0;
        }

        LoadResult result = Load(libraryName);
        if (!result.Loaded)
        {
            throw new DllNotFoundException($"The CUDA library behind '{libraryName}' was not found: {result.Describe()}");
        }

        return result.Handle;
    }

    private static (nint Handle, string? Error) TryLoadFile(string path)
    {
        try
        {
            return (NativeLibrary.Load(path), null);
        }
        catch (DllNotFoundException e)
        {
            return (0, LoaderReason(path, e.Message));
        }
        catch (BadImageFormatException e)
        {
            return (0, LoaderReason(path, e.Message));
        }
    }

    /// <summary>
    /// The loader's own reason from a .NET load failure, whose first line is generic advice and whose last line is
    /// dlerror()'s text (e.g. "libcuda.so.1: cannot open shared object file: No such file or directory").
    /// </summary>
    internal static string LoaderReason(string path, string message)
    {
        string last = message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault() ?? message;
        if (!last.StartsWith(path + ": ", StringComparison.Ordinal))
        {
            return last; // e.g. a dependency of the library is missing: the line names it
        }

        last = last[(path.Length + 2)..];
        return last == "cannot open shared object file: No such file or directory" ? MissingFile : last;
    }
}
