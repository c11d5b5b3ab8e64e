using System.Buffers;

namespace LoftQNet.Numerics;

/// <summary>
/// The library's own pool for matrix-sized and kernel scratch float arrays. Unlike the shared pool it can be let go:
/// <see cref="Release"/> drops every array it holds, so a finished initialisation does not keep tens of megabytes of
/// idle buffers alive under the fine-tuning that follows.
/// </summary>
internal static class BufferPool
{
    /// <summary>Largest pooled array (4 Mi floats); larger requests are plain arrays, dropped on return.</summary>
    internal const int MaxPooledLength = 1 << 22;

    private static ArrayPool<float> s_floats = Create();

    /// <summary>The current pool (rent and return through the same property; an array outlives a <see cref="Release"/> harmlessly).</summary>
    public static ArrayPool<float> Floats => Volatile.Read(ref s_floats);

    /// <summary>Drops every idle array: later rents allocate afresh, arrays rented before go back to the new pool.</summary>
    public static void Release() => Volatile.Write(ref s_floats, Create());

    private static ArrayPool<float> Create() => ArrayPool<float>.Create(MaxPooledLength, maxArraysPerBucket: 32);
}
