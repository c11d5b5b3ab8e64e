namespace LoftQNet.Numerics;

/// <summary>Whether a GEMM operand is used as stored or transposed (BLAS-shaped kernels).</summary>
internal enum Transpose
{
    /// <summary>Use the operand as stored.</summary>
    No,

    /// <summary>Use the transpose of the operand.</summary>
    Yes,
}
