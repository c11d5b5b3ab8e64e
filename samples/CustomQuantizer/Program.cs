// Your own quantizer, with nothing but the LoftQ package's public API (scripts/package-smoke.sh compiles and runs this
// file in a fresh console app against the packed package). docs/algorithm.md walks through it.
using LoftQNet;
using LoftQNet.Numerics;
using LoftQNet.Quantization;

// 1. Your own code book, on the built-in engine: one line.
var myCodeBook = new CodeBookQuantizer("my3bit", [-1f, -0.55f, -0.28f, -0.09f, 0.09f, 0.28f, 0.55f, 1f]);

// 2. Your own scaling rule: implement IQuantizer, pick codes and scales, let QuantizedTensor.FromCodes pack them.
var clipped = new ClippedAbsmaxQuantizer(clip: 0.85f);

using Matrix w = Matrix.RandomNormal(256, 512, seed: 1);
foreach (IQuantizer q in new IQuantizer[] { myCodeBook, clipped })
{
    using var qlora = LoftQ.Initialize(w, q, rank: 8, iterations: 0);
    using var loftq = LoftQ.Initialize(w, q, rank: 8, iterations: 3);
    Console.WriteLine($"{q.Name}: QLoRA error {qlora.RelativeError:F4}, LoftQ error {loftq.RelativeError:F4}");
    if (!(loftq.RelativeError < qlora.RelativeError))
    {
        throw new InvalidOperationException($"{q.Name}: LoftQ did not improve on QLoRA.");
    }
}

Console.WriteLine("custom quantizers: ok");

/// <summary>Symmetric 2-bit levels {−1, −1/3, 1/3, 1} scaled by a fraction of each block's absmax (outliers clip).</summary>
internal sealed class ClippedAbsmaxQuantizer(float clip) : IQuantizer
{
    private static readonly float[] Levels = [-1f, -1f / 3, 1f / 3, 1f];

    public string Name => $"clip{clip}-2bit";

    public int Bits => 2;

    public int BlockSize => 64;

    public QuantizedTensor Quantize(ReadOnlySpan<float> values, TensorShape shape)
    {
        int blocks = (values.Length + BlockSize - 1) / BlockSize;
        var scales = new float[blocks];
        var codes = new byte[values.Length];
        for (int b = 0; b < blocks; b++)
        {
            ReadOnlySpan<float> block = values.Slice(b * BlockSize, Math.Min(BlockSize, values.Length - (b * BlockSize)));
            float absmax = 0;
            foreach (float v in block)
            {
                absmax = Math.Max(absmax, Math.Abs(v));
            }

            scales[b] = absmax * clip;
            for (int i = 0; i < block.Length; i++)
            {
                float x = scales[b] == 0 ? 0 : block[i] / scales[b];
                int best = 0;
                for (int c = 1; c < Levels.Length; c++)
                {
                    if (Math.Abs(x - Levels[c]) < Math.Abs(x - Levels[best]))
                    {
                        best = c;
                    }
                }

                codes[(b * BlockSize) + i] = (byte)best;
            }
        }

        return QuantizedTensor.FromCodes(shape, Bits, BlockSize, codes, scales, (float[])Levels.Clone(), Name);
    }

    public void Dequantize(QuantizedTensor quantized, Span<float> destination) => quantized.Dequantize(destination);
}
