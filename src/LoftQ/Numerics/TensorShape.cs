using System.Runtime.CompilerServices;

namespace LoftQNet.Numerics;

/// <summary>The dimensions of a dense row-major tensor (the last dimension varies fastest).</summary>
/// <remarks>A collection expression makes one: <c>TensorShape shape = [4096, 11008];</c>.</remarks>
[CollectionBuilder(typeof(TensorShape), nameof(Create))]
public readonly struct TensorShape : IEquatable<TensorShape>
{
    private readonly int[]? _dimensions;

    /// <summary>Creates a shape from its dimensions, outermost first.</summary>
    /// <exception cref="ArgumentException">A dimension is negative.</exception>
    public TensorShape(params int[] dimensions)
    {
        ArgumentNullException.ThrowIfNull(dimensions);
        foreach (int d in dimensions)
        {
            if (d < 0)
            {
                throw new ArgumentException($"Tensor dimensions must be non-negative, got [{string.Join(", ", dimensions)}].", nameof(dimensions));
            }
        }

        _dimensions = (int[])dimensions.Clone();
    }

    /// <summary>Creates a shape from its dimensions, outermost first (the collection-expression builder).</summary>
    /// <exception cref="ArgumentException">A dimension is negative.</exception>
    public static TensorShape Create(ReadOnlySpan<int> dimensions) => new(dimensions.ToArray());

    /// <summary>A shape from 64-bit dimensions (TorchSharp's <c>Tensor.shape</c>, for one).</summary>
    /// <exception cref="ArgumentException">A dimension is negative or larger than <see cref="int.MaxValue"/>.</exception>
    public static TensorShape FromInt64(ReadOnlySpan<long> dimensions)
    {
        var dims = new int[dimensions.Length];
        for (int i = 0; i < dims.Length; i++)
        {
            if (dimensions[i] is < 0 or > int.MaxValue)
            {
                throw new ArgumentException($"Tensor dimensions must lie in [0, {int.MaxValue}], got [{string.Join(", ", dimensions.ToArray())}].", nameof(dimensions));
            }

            dims[i] = (int)dimensions[i];
        }

        return new TensorShape(dims);
    }

    /// <summary>Enumerates the dimensions, outermost first.</summary>
    public ReadOnlySpan<int>.Enumerator GetEnumerator() => Dimensions.GetEnumerator();

    /// <summary>Number of dimensions (0 for a scalar).</summary>
    public int Rank => _dimensions?.Length ?? 0;

    /// <summary>The dimensions, outermost first.</summary>
    public ReadOnlySpan<int> Dimensions => _dimensions;

    /// <summary>Dimension <paramref name="index"/>.</summary>
    public int this[int index] => (_dimensions ?? [])[index];

    /// <summary>Product of the dimensions (1 for a scalar).</summary>
    /// <exception cref="OverflowException">The product does not fit a 64-bit integer.</exception>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (int d in Dimensions)
            {
                n = checked(n * d);
            }

            return n;
        }
    }

    /// <summary>First dimension of a two-dimensional shape (the output features of a weight).</summary>
    /// <exception cref="InvalidOperationException">The shape is not two-dimensional.</exception>
    public int Rows => Rank == 2 ? this[0] : throw new InvalidOperationException($"Shape {this} is not two-dimensional.");

    /// <summary>Second dimension of a two-dimensional shape (the input features of a weight).</summary>
    /// <exception cref="InvalidOperationException">The shape is not two-dimensional.</exception>
    public int Columns => Rank == 2 ? this[1] : throw new InvalidOperationException($"Shape {this} is not two-dimensional.");

    /// <summary>Equality operator.</summary>
    public static bool operator ==(TensorShape left, TensorShape right) => left.Equals(right);

    /// <summary>Inequality operator.</summary>
    public static bool operator !=(TensorShape left, TensorShape right) => !left.Equals(right);

    /// <inheritdoc/>
    public bool Equals(TensorShape other) => Dimensions.SequenceEqual(other.Dimensions);

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is TensorShape other && Equals(other);

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var hash = default(HashCode);
        foreach (int d in Dimensions)
        {
            hash.Add(d);
        }

        return hash.ToHashCode();
    }

    /// <summary>The shape as <c>[d0, d1, ...]</c>.</summary>
    public override string ToString() => $"[{string.Join(", ", _dimensions ?? [])}]";
}
