using LoftQNet.Numerics;

namespace LoftQNet.LowRank;

/// <summary>
/// A rank-r factorisation <c>B · A</c> of an out×in matrix: <see cref="A"/> is r×in and <see cref="B"/> is
/// out×r, with the singular values split evenly (B = U·√S, A = √S·Vᵀ).
/// </summary>
public sealed class LowRankFactors : IDisposable
{
    /// <summary>Wraps the factors (taken, not copied).</summary>
    /// <exception cref="ArgumentException">The shapes do not agree.</exception>
    public LowRankFactors(Matrix a, Matrix b, float[] singularValues)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        ArgumentNullException.ThrowIfNull(singularValues);
        if (b.Columns != a.Rows)
        {
            throw new ArgumentException($"B is {b.Rows}x{b.Columns} but A is {a.Rows}x{a.Columns}: B's columns must equal A's rows (the rank).");
        }

        if (singularValues.Length != a.Rows)
        {
            throw new ArgumentException($"Rank {a.Rows} needs {a.Rows} singular values, got {singularValues.Length}.", nameof(singularValues));
        }

        A = a;
        B = b;
        SingularValues = singularValues;
    }

    /// <summary>The r×in factor (LoRA's lora_A).</summary>
    public Matrix A { get; }

    /// <summary>The out×r factor (LoRA's lora_B).</summary>
    public Matrix B { get; }

    /// <summary>The r leading singular values, descending.</summary>
    public IReadOnlyList<float> SingularValues { get; }

    /// <summary>The rank r.</summary>
    public int Rank => A.Rows;

    /// <summary>Returns both factors' memory to the pool.</summary>
    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}
