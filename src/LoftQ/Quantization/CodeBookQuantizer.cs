namespace LoftQNet.Quantization;

/// <summary>
/// A blockwise quantizer over your own code book, with the built-in quantizers' fused, SIMD, multi-threaded engine:
/// each block is scaled by its absmax (symmetric: levels in [−1, 1]) or by its min/max with an offset (asymmetric:
/// levels in [0, 1]), and every value gets the code of the nearest level (ties to the lower index).
/// For a scaling rule of your own, implement <see cref="IQuantizer"/> and build the result with
/// <see cref="QuantizedTensor.FromCodes"/> (docs/algorithm.md has an example).
/// </summary>
/// <example>
/// <code>
/// var q = new CodeBookQuantizer("my3bit", [-1f, -0.6f, -0.3f, -0.1f, 0f, 0.2f, 0.5f, 1f]);
/// using var result = LoftQ.Initialize(weight, q, rank: 16);
/// </code>
/// </example>
public sealed class CodeBookQuantizer : BlockwiseQuantizer
{
    /// <summary>Creates the quantizer.</summary>
    /// <param name="name">A short name for reports and file metadata.</param>
    /// <param name="codeBook">2, 4, 8, …, 256 strictly ascending finite levels (2^bits), within [−1, 1] (symmetric) or [0, 1] (asymmetric).</param>
    /// <param name="blockSize">Values per block (2..1,048,576).</param>
    /// <param name="asymmetric">Scale each block by max − min with offset min, instead of by its absmax.</param>
    /// <exception cref="ArgumentException">The name is empty, or the code book's size, order or range is invalid (the message says which level).</exception>
    /// <param name="scaleSearch">Search each block's scale for the least squared error (<see cref="BlockScaleSearch"/>); null keeps the absmax.</param>
    /// <exception cref="ArgumentOutOfRangeException">The block size is out of range, or the search grid is invalid.</exception>
    public CodeBookQuantizer(string name, ReadOnlySpan<float> codeBook, int blockSize = 64, bool asymmetric = false, BlockScaleSearch? scaleSearch = null)
        : base(ValidName(name), BitsOf(codeBook), blockSize, Validated(codeBook, asymmetric), asymmetric, scaleSearch)
    {
        IsAsymmetric = asymmetric;
    }

    /// <summary>Whether blocks use min/max (scale and offset) rather than the symmetric absmax.</summary>
    public bool IsAsymmetric { get; }

    private static string ValidName(string name) =>
        string.IsNullOrWhiteSpace(name) ? throw new ArgumentException("A quantizer needs a name.", nameof(name)) : name;

    private static int BitsOf(ReadOnlySpan<float> codeBook) =>
        codeBook.Length is >= 2 and <= 256 && int.IsPow2(codeBook.Length)
            ? int.Log2(codeBook.Length)
            : throw new ArgumentException($"A code book has 2^bits levels for 1..8 bits (2, 4, …, 256), got {codeBook.Length}.", nameof(codeBook));

    private static float[] Validated(ReadOnlySpan<float> codeBook, bool asymmetric)
    {
        float low = asymmetric ? 0f : -1f;
        for (int i = 0; i < codeBook.Length; i++)
        {
            float v = codeBook[i];
            if (!float.IsFinite(v) || v < low || v > 1f)
            {
                throw new ArgumentException($"Level {i} of the code book is {v}; {(asymmetric ? "asymmetric" : "symmetric")} levels lie in [{low}, 1].", nameof(codeBook));
            }

            if (i > 0 && !(v > codeBook[i - 1]))
            {
                throw new ArgumentException($"The code book must be strictly ascending; level {i} ({v}) is not above level {i - 1} ({codeBook[i - 1]}).", nameof(codeBook));
            }
        }

        return codeBook.ToArray();
    }
}
