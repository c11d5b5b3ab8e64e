using Microsoft.Win32.SafeHandles;

namespace LoftQNet.Cuda.Native;

/// <summary>
/// A retained primary context of one device (the context cuBLAS, cuSOLVER and cuRAND attach to); released on dispose.
/// </summary>
internal sealed class PrimaryContextHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    internal PrimaryContextHandle()
        : base(ownsHandle: true)
    {
    }

    /// <summary>The device ordinal whose primary context this is.</summary>
    internal int Device { get; private set; }

    /// <summary>Retains the primary context of <paramref name="device"/>.</summary>
    internal static PrimaryContextHandle Retain(int device)
    {
        Status.Driver(CudaDriver.cuDevicePrimaryCtxRetain(out nint context, device));
        var handle = new PrimaryContextHandle { Device = device };
        handle.SetHandle(context);
        return handle;
    }

    /// <summary>Makes the context current on the calling thread.</summary>
    internal void MakeCurrent()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        Status.Driver(CudaDriver.cuCtxSetCurrent(handle));
    }

    protected override bool ReleaseHandle() => CudaDriver.cuDevicePrimaryCtxRelease(Device) == 0;
}

/// <summary>A handle whose release first makes its context current (driver objects belong to a context).</summary>
internal abstract class ContextBoundHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    private readonly nint _context;

    protected ContextBoundHandle(nint context, nint value)
        : base(ownsHandle: true)
    {
        _context = context;
        SetHandle(value);
    }

    protected sealed override bool ReleaseHandle() => CudaDriver.cuCtxSetCurrent(_context) == 0 && Release(handle);

    /// <summary>Destroys the object; returns whether the call succeeded.</summary>
    protected abstract bool Release(nint value);
}

/// <summary>A non-blocking CUDA stream.</summary>
internal sealed class StreamHandle(nint context, nint value) : ContextBoundHandle(context, value)
{
    protected override bool Release(nint value) => CudaDriver.cuStreamDestroy(value) == 0;
}

/// <summary>A CUDA event (timing and cross-stream ordering).</summary>
internal sealed class EventHandle(nint context, nint value) : ContextBoundHandle(context, value)
{
    protected override bool Release(nint value) => CudaDriver.cuEventDestroy(value) == 0;
}

/// <summary>A loaded module (the compiled kernels).</summary>
internal sealed class KernelModuleHandle(nint context, nint value) : ContextBoundHandle(context, value)
{
    protected override bool Release(nint value) => CudaDriver.cuModuleUnload(value) == 0;
}

/// <summary>A cuBLAS handle.</summary>
internal sealed class CublasHandle(nint context, nint value) : ContextBoundHandle(context, value)
{
    protected override bool Release(nint value) => Cublas.cublasDestroy(value) == 0;
}

/// <summary>A cuSOLVER dense handle.</summary>
internal sealed class CusolverHandle(nint context, nint value) : ContextBoundHandle(context, value)
{
    protected override bool Release(nint value) => Cusolver.cusolverDnDestroy(value) == 0;
}

/// <summary>A cuRAND generator.</summary>
internal sealed class CurandHandle(nint context, nint value) : ContextBoundHandle(context, value)
{
    protected override bool Release(nint value) => Curand.curandDestroyGenerator(value) == 0;
}

/// <summary>Device memory from cuMemAlloc.</summary>
internal sealed class DeviceMemoryHandle(nint context, nint value, long bytes) : ContextBoundHandle(context, value)
{
    /// <summary>The size in bytes.</summary>
    internal long Bytes { get; } = bytes;

    /// <summary>The device address.</summary>
    internal ulong Address
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsClosed, this);
            return (ulong)handle;
        }
    }

    protected override bool Release(nint value) => CudaDriver.cuMemFree((ulong)value) == 0;
}
