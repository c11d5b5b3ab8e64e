using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace LoftQNet.Numerics;

/// <summary>
/// A dense row-major matrix of <see cref="float"/>. Small matrices rent their storage from a shared pool; large ones
/// (a weight matrix) get their own array, which the garbage collector reclaims. Dispose it; a disposed matrix throws
/// on every access.
/// </summary>
/// <remarks>
/// Element (r, c) lives at <c>Span[r * Columns + c]</c>. The type is not thread-safe for writes, but
/// any number of threads may read it, or write disjoint rows, at once.
/// </remarks>
public sealed class Matrix : IDisposable
{
    /// <summary>
    /// Matrices of more elements than this (4 MiB) are not pooled. The shared pool keeps returned arrays for reuse,
    /// rounded up to a power of two, which made a 7B-shaped run hold gigabytes of weight-sized arrays; native memory
    /// was no better (glibc keeps freed blocks of that size in its arenas).
    /// </summary>
    internal const int PoolLimit = 1 << 20;

    private float[]? _buffer;

    private Matrix(int rows, int columns, bool clear)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(columns);
        long length = (long)rows * columns;
        if (length > Array.MaxLength)
        {
            throw new ArgumentOutOfRangeException(nameof(rows), $"A {rows}x{columns} matrix has more than {Array.MaxLength} elements.");
        }

        Rows = rows;
        Columns = columns;
        _buffer = length == 0 ? []
            : length > PoolLimit ? GC.AllocateUninitializedArray<float>((int)length)
            : BufferPool.Floats.Rent((int)length);
        if (clear)
        {
            Span.Clear();
        }
    }

    /// <summary>Number of rows.</summary>
    public int Rows { get; }

    /// <summary>Number of columns.</summary>
    public int Columns { get; }

    /// <summary>Number of elements, <c>Rows * Columns</c>.</summary>
    public int Length => Rows * Columns;

    /// <summary>All elements, row-major.</summary>
    public Span<float> Span => Buffer.AsSpan(0, Length);

    /// <summary>The shape as a two-dimensional <see cref="TensorShape"/>.</summary>
    public TensorShape Shape => new(Rows, Columns);

    internal float[] Buffer => _buffer ?? throw new ObjectDisposedException(nameof(Matrix));

    /// <summary>Gets or sets element (row, column).</summary>
    public float this[int row, int column]
    {
        get
        {
            CheckIndex(row, column);
            return Buffer[(row * Columns) + column];
        }
        set
        {
            CheckIndex(row, column);
            Buffer[(row * Columns) + column] = value;
        }
    }

    /// <summary>Creates a zero-filled matrix.</summary>
    public static Matrix Zeros(int rows, int columns) => new(rows, columns, clear: true);

    /// <summary>Creates a matrix whose contents are unspecified (faster when every element is written next).</summary>
    public static Matrix Uninitialized(int rows, int columns) => new(rows, columns, clear: false);

    /// <summary>Creates a matrix holding a copy of <paramref name="rowMajor"/>.</summary>
    /// <exception cref="ArgumentException">The span's length is not <paramref name="rows"/> × <paramref name="columns"/>.</exception>
    public static Matrix FromSpan(int rows, int columns, ReadOnlySpan<float> rowMajor)
    {
        if (rowMajor.Length != (long)rows * columns)
        {
            throw new ArgumentException($"Expected {(long)rows * columns} values for a {rows}x{columns} matrix, got {rowMajor.Length}.", nameof(rowMajor));
        }

        var m = new Matrix(rows, columns, clear: false);
        rowMajor.CopyTo(m.Span);
        return m;
    }

    /// <summary>Creates a matrix with i.i.d. standard normal entries times <paramref name="scale"/>, reproducible from <paramref name="seed"/>.</summary>
    public static Matrix RandomNormal(int rows, int columns, int seed, float scale = 1f)
    {
        var m = new Matrix(rows, columns, clear: false);
        Gaussian.Fill(m.Span, seed, scale);
        return m;
    }

    /// <summary>Row <paramref name="row"/> as a span of <see cref="Columns"/> elements.</summary>
    public Span<float> Row(int row)
    {
        if ((uint)row >= (uint)Rows)
        {
            throw new ArgumentOutOfRangeException(nameof(row), $"Row {row} is outside [0, {Rows}).");
        }

        return Buffer.AsSpan(row * Columns, Columns);
    }

    /// <summary>A deep copy on freshly rented memory.</summary>
    public Matrix Clone() => FromSpan(Rows, Columns, Span);

    /// <summary>The transpose, as a new matrix.</summary>
    public Matrix Transpose()
    {
        var t = new Matrix(Columns, Rows, clear: false);
        MatrixKernels.Transpose(Span, Rows, Columns, t.Span);
        return t;
    }

    /// <summary>The Frobenius norm, accumulated in double precision.</summary>
    public double FrobeniusNorm() => MatrixKernels.FrobeniusNorm(Span);

    /// <summary>Returns <c>op(a) · op(b)</c> where op transposes when asked.</summary>
    /// <exception cref="ArgumentException">The inner dimensions differ.</exception>
    public static Matrix Multiply(Matrix a, Matrix b, bool transposeA = false, bool transposeB = false)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        int m = transposeA ? a.Columns : a.Rows;
        int k = transposeA ? a.Rows : a.Columns;
        int kb = transposeB ? b.Columns : b.Rows;
        int n = transposeB ? b.Rows : b.Columns;
        if (k != kb)
        {
            throw new ArgumentException($"Inner dimensions differ: op(a) is {m}x{k}, op(b) is {kb}x{n}.");
        }

        var c = new Matrix(m, n, clear: false);
        Gemm.Multiply(
            transposeA ? Numerics.Transpose.Yes : Numerics.Transpose.No,
            transposeB ? Numerics.Transpose.Yes : Numerics.Transpose.No,
            m, n, k, 1f, a.Span, a.Columns, b.Span, b.Columns, 0f, c.Span, n);
        return c;
    }

    /// <summary>Element-wise <c>this - other</c> as a new matrix.</summary>
    public Matrix Subtract(Matrix other)
    {
        CheckSameShape(other);
        var r = new Matrix(Rows, Columns, clear: false);
        TensorPrimitives.Subtract(Span, other.Span, r.Span);
        return r;
    }

    /// <summary>Returns pooled memory to the pool (a large matrix's array is left to the garbage collector). Idempotent.</summary>
    public void Dispose()
    {
        float[]? buffer = Interlocked.Exchange(ref _buffer, null);
        if (buffer is { Length: > 0 } && buffer.Length <= PoolLimit)
        {
            BufferPool.Floats.Return(buffer);
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"Matrix {Rows}x{Columns}";

    internal void CheckSameShape(Matrix other, [CallerArgumentExpression(nameof(other))] string? name = null)
    {
        ArgumentNullException.ThrowIfNull(other, name);
        if (other.Rows != Rows || other.Columns != Columns)
        {
            throw new ArgumentException($"Shape mismatch: expected {Rows}x{Columns}, got {other.Rows}x{other.Columns}.", name);
        }
    }

    private void CheckIndex(int row, int column)
    {
        if ((uint)row >= (uint)Rows || (uint)column >= (uint)Columns)
        {
            throw new ArgumentOutOfRangeException(nameof(row), $"({row}, {column}) is outside a {Rows}x{Columns} matrix.");
        }
    }
}
