using LoftQNet.Numerics;

namespace LoftQNet.IO;

/// <summary>
/// A tensor in a safetensors file: its name, element type and shape, and, for a tensor read from a file, where its
/// bytes are. The reader returns these, and the streaming writer takes them (<see cref="SafeTensorsWriter.Create"/>);
/// <see cref="SafeTensorEntry"/> pairs one with its bytes.
/// </summary>
/// <param name="Name">The tensor name.</param>
/// <param name="DType">The element type.</param>
/// <param name="Shape">The dimensions, outermost first (row-major data).</param>
public sealed record SafeTensorInfo(string Name, SafeTensorDType DType, TensorShape Shape)
{
    /// <summary>
    /// For a tensor read from a file, the offset of its first byte from the start of the data region (after the
    /// header); -1 for a tensor not read from a file.
    /// </summary>
    public long DataOffset { get; init; } = -1;

    /// <summary>Product of the dimensions (1 for a scalar).</summary>
    public long ElementCount => Shape.ElementCount;

    /// <summary>Bytes of data: <see cref="ElementCount"/> × element size.</summary>
    /// <exception cref="OverflowException">The byte length does not fit a 64-bit integer.</exception>
    public long ByteLength => checked(ElementCount * DType.ElementSize());

    /// <summary>Number of dimensions.</summary>
    public int Rank => Shape.Rank;

    /// <summary>The shape as <c>[d0, d1, ...]</c>.</summary>
    public string ShapeString => Shape.ToString();
}
