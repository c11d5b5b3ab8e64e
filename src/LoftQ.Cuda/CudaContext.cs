using System.Runtime.InteropServices;
using System.Text;
using LoftQNet.Cuda.Kernels;
using LoftQNet.Cuda.Native;

namespace LoftQNet.Cuda;

/// <summary>
/// One GPU as this package uses it: its primary context (the one cuBLAS, cuSOLVER and cuRAND attach to) and the
/// kernels compiled by NVRTC for the device's architecture. The streams and library handles live in
/// <see cref="CudaLane"/>s, so that several layers can run at once.
/// </summary>
internal sealed class CudaContext : IDisposable
{
    private readonly PrimaryContextHandle _context;
    private readonly List<IDisposable> _owned = [];

    private CudaContext(int ordinal, PrimaryContextHandle context)
    {
        Ordinal = ordinal;
        _context = context;
    }

    public int Ordinal { get; }

    public nint Context => _context.DangerousGetHandle();

    public nint QuantizeKernel { get; private set; }

    public nint PackKernel { get; private set; }

    public nint SumSquaresKernel { get; private set; }

    /// <summary>Seconds NVRTC took to compile the kernels.</summary>
    public double CompileSeconds { get; private set; }

    /// <summary>Retains device <paramref name="ordinal"/>'s primary context and compiles and loads the kernels.</summary>
    /// <exception cref="CudaException">A call failed (the message names it).</exception>
    public static CudaContext Create(int ordinal, int computeMajor, int computeMinor)
    {
        var context = new CudaContext(ordinal, PrimaryContextHandle.Retain(ordinal));
        try
        {
            context.Initialise(computeMajor, computeMinor);
            return context;
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>Makes the context current on the calling thread (every driver call needs it).</summary>
    public void MakeCurrent() => _context.MakeCurrent();

    /// <summary>Takes ownership of a handle created in this context (disposed before the context is released).</summary>
    internal T Own<T>(T handle)
        where T : IDisposable
    {
        lock (_owned)
        {
            _owned.Add(handle);
        }

        return handle;
    }

    private void Initialise(int major, int minor)
    {
        MakeCurrent();
        nint ctx = Context;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        byte[] cubin = Compile(KernelLaunch.LoadSource(), "quantize.cu", KernelLaunch.CompileOptions($"sm_{major}{minor}"));
        CompileSeconds = clock.Elapsed.TotalSeconds;
        nint module;
        unsafe
        {
            fixed (byte* image = cubin)
            {
                Status.Driver(CudaDriver.cuModuleLoadData(out module, (nint)image));
            }
        }

        Own(new KernelModuleHandle(ctx, module));
        QuantizeKernel = Function(module, KernelLaunch.QuantizeKernel);
        PackKernel = Function(module, KernelLaunch.PackKernel);
        SumSquaresKernel = Function(module, KernelLaunch.SumSquaresKernel);
    }

    private static nint Function(nint module, string name)
    {
        Status.Driver(CudaDriver.cuModuleGetFunction(out nint function, module, name));
        return function;
    }

    /// <summary>Compiles CUDA C++ <paramref name="source"/> to a cubin; a compile error carries NVRTC's log.</summary>
    internal static unsafe byte[] Compile(string source, string name, params string[] options)
    {
        Status.Rtc(Nvrtc.nvrtcCreateProgram(out nint program, source, name, 0, 0, 0));
        try
        {
            string[] all = options;
            nint[] utf8 = all.Select(o => Marshal.StringToCoTaskMemUTF8(o)).ToArray();
            int compiled;
            try
            {
                fixed (nint* p = utf8)
                {
                    compiled = Nvrtc.nvrtcCompileProgram(program, utf8.Length, (byte**)p);
                }
            }
            finally
            {
                foreach (nint s in utf8)
                {
                    Marshal.FreeCoTaskMem(s);
                }
            }

            if (compiled != 0)
            {
                throw new CudaException(
                    $"NVRTC could not compile {name} ({Nvrtc.StatusText(compiled)}, options {string.Join(' ', all)}):{Environment.NewLine}{Log(program)}");
            }

            Status.Rtc(Nvrtc.nvrtcGetCubinSize(program, out nuint size));
            var cubin = new byte[(int)size];
            fixed (byte* c = cubin)
            {
                Status.Rtc(Nvrtc.nvrtcGetCubin(program, c));
            }

            return cubin;
        }
        finally
        {
            _ = Nvrtc.nvrtcDestroyProgram(ref program);
        }
    }

    private static unsafe string Log(nint program)
    {
        if (Nvrtc.nvrtcGetProgramLogSize(program, out nuint size) != 0 || size <= 1)
        {
            return "(no log)";
        }

        var log = new byte[(int)size];
        fixed (byte* l = log)
        {
            _ = Nvrtc.nvrtcGetProgramLog(program, l);
        }

        return Encoding.UTF8.GetString(log, 0, log.Length - 1);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--)
        {
            _owned[i].Dispose();
        }

        _owned.Clear();
        _context.Dispose();
    }
}
