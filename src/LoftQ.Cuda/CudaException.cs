namespace LoftQNet.Cuda;

/// <summary>A CUDA library call failed: the message names the call, the library and the status it returned.</summary>
public sealed class CudaException : Exception
{
    /// <summary>Creates an exception with a message only.</summary>
    public CudaException()
    {
        Call = string.Empty;
        Library = string.Empty;
        StatusName = string.Empty;
    }

    /// <summary>Creates an exception with a message.</summary>
    public CudaException(string message)
        : base(message)
    {
        Call = string.Empty;
        Library = string.Empty;
        StatusName = string.Empty;
    }

    /// <summary>Creates an exception with a message and its cause.</summary>
    public CudaException(string message, Exception innerException)
        : base(message, innerException)
    {
        Call = string.Empty;
        Library = string.Empty;
        StatusName = string.Empty;
    }

    /// <summary>Creates the exception for a failed call.</summary>
    /// <param name="library">The library, e.g. <c>cuBLAS</c>.</param>
    /// <param name="call">The call as written, e.g. <c>cublasSgemm(...)</c>.</param>
    /// <param name="status">The status it returned.</param>
    /// <param name="statusName">The status's name (and text where the library has one).</param>
    public CudaException(string library, string call, int status, string statusName)
        : base($"{library} call {call} failed with {statusName} ({status}).")
    {
        Library = library;
        Call = call;
        Status = status;
        StatusName = statusName;
    }

    /// <summary>The library: CUDA driver, cuBLAS, cuSOLVER, cuRAND or NVRTC.</summary>
    public string Library { get; }

    /// <summary>The failed call as written in the source.</summary>
    public string Call { get; }

    /// <summary>The status the call returned.</summary>
    public int Status { get; }

    /// <summary>The status's name.</summary>
    public string StatusName { get; }
}
