namespace LoftQNet.IO;

/// <summary>One tensor's entry in a safetensors header.</summary>
/// <param name="Name">The tensor name.</param>
/// <param name="DType">The element type.</param>
/// <param name="Shape">The dimensions, outermost first (row-major data).</param>
/// <param name="DataOffset">Offset of the first byte from the start of the data region (after the header).</param>
/// <param name="ByteLength">Length of the data in bytes (= <see cref="ElementCount"/> × element size).</param>
public sealed record SafeTensorInfo(string Name, SafeTensorDType DType, long[] Shape, long DataOffset, long ByteLength)
{
    /// <summary>Product of the dimensions (1 for a scalar).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in Shape)
            {
                n *= d;
            }

            return n;
        }
    }

    /// <summary>Number of dimensions.</summary>
    public int Rank => Shape.Length;

    /// <summary>The shape as <c>[d0, d1, ...]</c>.</summary>
    public string ShapeString => $"[{string.Join(", ", Shape)}]";
}
