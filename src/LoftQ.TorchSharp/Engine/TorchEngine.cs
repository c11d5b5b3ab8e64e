using LoftQNet.LowRank;
using LoftQNet.Numerics;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Engine;

/// <summary>Checks and conversions shared by the torch engine (tensor ↔ core matrix, argument validation).</summary>
internal static class TorchEngine
{
    /// <summary>Throws unless <paramref name="matrix"/> is a two-dimensional floating-point tensor and 1 ≤ rank ≤ min(out, in).</summary>
    public static void CheckMatrixAndRank(Tensor matrix, int rank, string matrixName)
    {
        ArgumentNullException.ThrowIfNull(matrix, matrixName);
        if (matrix.dim() != 2)
        {
            throw new ArgumentException($"Expected a two-dimensional (out×in) tensor, got {matrix.dim()} dimensions [{string.Join(", ", matrix.shape)}].", matrixName);
        }

        if (!matrix.is_floating_point())
        {
            throw new ArgumentException($"Expected a floating-point tensor, got {matrix.dtype}.", matrixName);
        }

        long m = matrix.shape[0], n = matrix.shape[1];
        long max = Math.Min(m, n);
        if (rank < 1 || rank > max)
        {
            throw new ArgumentOutOfRangeException(nameof(rank), rank, $"Rank must be between 1 and min(out, in) = {max} for a {m}x{n} matrix, got {rank}.");
        }
    }

    /// <summary>A CPU fp32 tensor holding a copy of <paramref name="matrix"/>.</summary>
    public static Tensor ToTensor(Matrix matrix) => NativeCopy<float>(matrix.Span, [matrix.Rows, matrix.Columns], ScalarType.Float32);

    /// <summary>
    /// A new CPU tensor of <paramref name="shape"/> holding a copy of <paramref name="data"/> in native memory.
    /// <c>torch.tensor(array)</c> leaves the managed array pinned while the tensor lives, and pinned arrays scattered
    /// through the large-object heap keep the garbage collector from returning the free space between them.
    /// </summary>
    internal static Tensor NativeCopy<T>(ReadOnlySpan<T> data, long[] shape, ScalarType dtype)
        where T : unmanaged
    {
        TorchRuntime.EnsureLoaded();
        Tensor t = empty(shape, dtype);
        if (t.NumberOfElements * t.ElementSize != (long)data.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>())
        {
            t.Dispose();
            throw new ArgumentException($"{data.Length} values of {typeof(T).Name} do not fill a {dtype} tensor of shape [{string.Join(", ", shape)}].", nameof(data));
        }

        System.Runtime.InteropServices.MemoryMarshal.AsBytes(data).CopyTo(t.bytes);
        return t;
    }

    /// <summary>A core matrix holding a float32 copy of the two-dimensional <paramref name="t"/> (any device, any floating dtype; detached from autograd).</summary>
    public static Matrix ToMatrix(Tensor t)
    {
        using var scope = NewDisposeScope();
        Tensor cpu = t.detach().to(ScalarType.Float32).cpu().contiguous();
        var m = Matrix.Uninitialized((int)t.shape[0], (int)t.shape[1]);
        cpu.data<float>().CopyTo(m.Span);
        return m;
    }

    /// <summary>The factors as core <see cref="LowRankFactors"/> (copies on the CPU).</summary>
    public static LowRankFactors ToCore(TorchLowRankFactors factors)
    {
        Matrix a = ToMatrix(factors.A);
        Matrix b = ToMatrix(factors.B);
        using var scope = NewDisposeScope();
        float[] s = factors.SingularValues.to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
        return new LowRankFactors(a, b, s);
    }

    /// <summary>Core factors as CPU tensors (copies).</summary>
    public static TorchLowRankFactors FromCore(LowRankFactors factors) =>
        new(ToTensor(factors.A), ToTensor(factors.B), NativeCopy<float>(factors.SingularValues.ToArray(), [factors.SingularValues.Count], ScalarType.Float32));

    /// <summary>A 64-bit mix of a seed and the bits of some floats (used to vary a generator's seed between warm starts).</summary>
    public static ulong Mix(long seed, ReadOnlySpan<float> values)
    {
        ulong h = 0xCBF29CE484222325UL ^ (ulong)seed;
        foreach (float v in values)
        {
            h = (h ^ BitConverter.SingleToUInt32Bits(v)) * 0x100000001B3UL;
        }

        return SplitMix(h);
    }

    private static ulong SplitMix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
