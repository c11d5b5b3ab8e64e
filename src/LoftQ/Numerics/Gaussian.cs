namespace LoftQNet.Numerics;

/// <summary>
/// Counter-based standard normal numbers: element i depends only on (seed, i), so results are identical
/// whatever the thread count or the order in which elements are produced.
/// </summary>
internal static class Gaussian
{
    /// <summary>Fills <paramref name="destination"/> with N(0, scale²) values; element i is the i-th value of stream <paramref name="seed"/>.</summary>
    /// <remarks>
    /// Both values of a Box–Muller pair are produced together (the result equals <see cref="Sample"/> element by
    /// element), and long spans are split over threads at even indices; neither changes any value.
    /// </remarks>
    public static unsafe void Fill(Span<float> destination, long seed, float scale = 1f, long offset = 0)
    {
        const int Chunk = 1 << 15;
        int threads = ComputeSettings.ThreadsFor(destination.Length, Chunk);
        if (threads <= 1)
        {
            FillSerial(destination, seed, scale, offset);
            return;
        }

        int length = destination.Length;
        int chunks = (length + Chunk - 1) / Chunk;
        fixed (float* p = destination)
        {
            nint address = (nint)p;
            ComputeSettings.ParallelFor(chunks, threads, c =>
            {
                int start = c * Chunk;
                FillSerial(new Span<float>((float*)address + start, Math.Min(Chunk, length - start)), seed, scale, offset + start);
            });
        }
    }

    private static void FillSerial(Span<float> destination, long seed, float scale, long offset)
    {
        int i = 0;
        if ((offset & 1) != 0 && destination.Length > 0)
        {
            destination[0] = scale * Sample(seed, offset);
            i = 1;
        }

        for (; i + 1 < destination.Length; i += 2)
        {
            long index = offset + i; // even
            (double r, double theta) = Polar(seed, index);
            destination[i] = scale * (float)(r * Math.Cos(theta));
            destination[i + 1] = scale * (float)(r * Math.Sin(theta));
        }

        if (i < destination.Length)
        {
            destination[i] = scale * Sample(seed, offset + i);
        }
    }

    /// <summary>The value at <paramref name="index"/> of stream <paramref name="seed"/> (Box–Muller on two hashed uniforms).</summary>
    public static float Sample(long seed, long index)
    {
        (double r, double theta) = Polar(seed, index);
        return (float)((index & 1) == 0 ? r * Math.Cos(theta) : r * Math.Sin(theta));
    }

    /// <summary>The Box–Muller radius and angle of the pair that <paramref name="index"/> belongs to.</summary>
    private static (double R, double Theta) Polar(long seed, long index)
    {
        ulong pair = (ulong)(index >> 1);
        ulong h1 = SplitMix(((ulong)seed * 0x9E3779B97F4A7C15UL) ^ (pair * 2));
        ulong h2 = SplitMix(((ulong)seed * 0x9E3779B97F4A7C15UL) ^ ((pair * 2) + 1));
        double u1 = ((h1 >> 11) + 1.0) * (1.0 / 9007199254740993.0); // (0, 1]
        double u2 = (h2 >> 11) * (1.0 / 9007199254740992.0);         // [0, 1)
        return (Math.Sqrt(-2.0 * Math.Log(u1)), 2.0 * Math.PI * u2);
    }

    /// <summary>A uniform value in [0, 1) at <paramref name="index"/> of stream <paramref name="seed"/>.</summary>
    public static double Uniform(long seed, long index)
    {
        ulong h = SplitMix(((ulong)seed * 0xD1B54A32D192ED03UL) ^ (ulong)index);
        return (h >> 11) * (1.0 / 9007199254740992.0);
    }

    private static ulong SplitMix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
