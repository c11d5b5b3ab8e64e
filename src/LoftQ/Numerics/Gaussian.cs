namespace LoftQNet.Numerics;

/// <summary>
/// Counter-based standard normal numbers: element i depends only on (seed, i), so results are identical
/// whatever the thread count or the order in which elements are produced.
/// </summary>
internal static class Gaussian
{
    /// <summary>Fills <paramref name="destination"/> with N(0, scale²) values; element i is the i-th value of stream <paramref name="seed"/>.</summary>
    public static void Fill(Span<float> destination, long seed, float scale = 1f, long offset = 0)
    {
        for (int i = 0; i < destination.Length; i++)
        {
            destination[i] = scale * Sample(seed, offset + i);
        }
    }

    /// <summary>The value at <paramref name="index"/> of stream <paramref name="seed"/> (Box–Muller on two hashed uniforms).</summary>
    public static float Sample(long seed, long index)
    {
        ulong pair = (ulong)(index >> 1);
        ulong h1 = SplitMix(((ulong)seed * 0x9E3779B97F4A7C15UL) ^ (pair * 2));
        ulong h2 = SplitMix(((ulong)seed * 0x9E3779B97F4A7C15UL) ^ ((pair * 2) + 1));
        double u1 = ((h1 >> 11) + 1.0) * (1.0 / 9007199254740993.0); // (0, 1]
        double u2 = (h2 >> 11) * (1.0 / 9007199254740992.0);         // [0, 1)
        double r = Math.Sqrt(-2.0 * Math.Log(u1));
        double theta = 2.0 * Math.PI * u2;
        return (float)((index & 1) == 0 ? r * Math.Cos(theta) : r * Math.Sin(theta));
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
