using LoftQNet.IO;
using LoftQNet.Numerics;

namespace LoftQNet.Pipeline;

/// <summary>The result of <see cref="Evaluation.BitsPerByte"/>.</summary>
/// <param name="BitsPerByte">Mean next-byte cross-entropy in bits.</param>
/// <param name="Windows">Windows scored.</param>
/// <param name="Predictions">Predictions scored (windows × window length).</param>
/// <param name="AdapterApplied">Whether a LoRA adapter was merged into the weights.</param>
public sealed record EvaluationResult(double BitsPerByte, int Windows, long Predictions, bool AdapterApplied);

/// <summary>
/// Scores a byte-level LLaMA-family checkpoint (optionally with a PEFT LoRA adapter merged in) by its
/// next-byte cross-entropy on a text, the way the fixture's reference number was measured. Weights stored as
/// bitsandbytes NF4 (a <c>--format bnb-nf4</c> output) are dequantized first.
/// </summary>
public static class Evaluation
{
    /// <summary>
    /// Mean next-byte cross-entropy in bits over <paramref name="windows"/> windows: window i covers bytes
    /// [L·i, L·i + L + 1) of <paramref name="text"/>, the first L are the input and the targets are shifted by one.
    /// </summary>
    /// <param name="modelDirectory">A Hugging Face LLaMA-family model directory with a byte-level vocabulary (≥ 256 tokens).</param>
    /// <param name="text">The text, as bytes.</param>
    /// <param name="adapterDirectory">A PEFT LoRA adapter directory to merge (Q + (alpha/r)·B·A), or <c>null</c>. A LoftQ output's <c>loftq_init</c> is used automatically when this is null and it exists.</param>
    /// <param name="windows">Number of windows (fewer if the text is short).</param>
    /// <param name="windowLength">Predictions per window, L.</param>
    /// <exception cref="ArgumentException">The text is too short for one window, or the model is not a byte-level LLaMA-family model.</exception>
    public static EvaluationResult BitsPerByte(string modelDirectory, ReadOnlySpan<byte> text, string? adapterDirectory = null, int windows = 64, int windowLength = 256)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(windows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(windowLength, 1);
        int usable = (int)Math.Min(windows, (text.Length - 1) / windowLength);
        if (usable < 1)
        {
            throw new ArgumentException($"The text has {text.Length} bytes; one window needs {windowLength + 1}.", nameof(text));
        }

        string? adapter = adapterDirectory ?? (Directory.Exists(Path.Combine(modelDirectory, "loftq_init")) ? Path.Combine(modelDirectory, "loftq_init") : null);
        LlamaModel model = Load(modelDirectory, adapter);
        double nats = 0;
        var tokens = new int[windowLength];
        for (int w = 0; w < usable; w++)
        {
            int start = w * windowLength;
            for (int i = 0; i < windowLength; i++)
            {
                tokens[i] = text[start + i];
            }

            using Matrix logits = model.Forward(tokens);
            for (int i = 0; i < windowLength; i++)
            {
                nats += CrossEntropy(logits.Row(i), text[start + i + 1]);
            }
        }

        long predictions = (long)usable * windowLength;
        double bits = nats / predictions / Math.Log(2);
        if (!double.IsFinite(bits))
        {
            throw new NotFiniteNumberException(
                $"The forward pass of '{modelDirectory}' produced {bits} bits per byte: its activations overflowed float32 (the weights are finite but too large); the model cannot be scored.", bits);
        }

        return new EvaluationResult(bits, usable, predictions, adapter is not null);
    }

    /// <summary>Loads a LLaMA-family model, merging a PEFT LoRA adapter's (alpha/r)·B·A into its targets when given.</summary>
    internal static LlamaModel Load(string modelDirectory, string? adapterDirectory = null)
    {
        using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(modelDirectory);
        ConfigConsistency.Validate(checkpoint);
        ModelConfig c = checkpoint.Config;
        if (c.ModelType is not ("llama" or "mistral" or "qwen2"))
        {
            throw new ArgumentException($"Evaluation supports LLaMA-family models (llama, mistral, qwen2); '{modelDirectory}' is '{c.ModelType}'.");
        }

        var config = new LlamaConfig(c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.VocabSize, c.RmsNormEps ?? 1e-6, c.RopeTheta ?? 10000.0);
        Dictionary<string, (float[] A, float[] B, int Rank, float Scale)> deltas = adapterDirectory is null ? [] : ReadAdapter(adapterDirectory);
        var model = new LlamaModel(config, name =>
        {
            float[] w = checkpoint.ReadDequantized(name); // bitsandbytes NF4 outputs (--format bnb-nf4) are dequantized
            CheckFinite(w, $"Tensor '{name}' of '{modelDirectory}'");
            string module = TargetSelector.ModulePathOf(name);
            if (deltas.TryGetValue(module, out var d))
            {
                int outF = d.B.Length / d.Rank, inF = d.A.Length / d.Rank;
                if ((long)outF * inF != w.LongLength)
                {
                    throw new ArgumentException($"Adapter for '{module}' is {outF}x{inF} but the weight has {w.LongLength} values.");
                }

                CheckFinite(d.A, $"The adapter's lora_A of '{module}' in '{adapterDirectory}'");
                CheckFinite(d.B, $"The adapter's lora_B of '{module}' in '{adapterDirectory}'");
                Gemm.Multiply(Transpose.No, Transpose.No, outF, inF, d.Rank, d.Scale, d.B, d.Rank, d.A, inF, 1f, w, inF);
                CheckFinite(w, $"Tensor '{name}' with the adapter merged (Q + (alpha/r)·B·A)");
            }

            return w;
        });
        return model;
    }

    private static void CheckFinite(float[] values, string what)
    {
        int bad = FloatConversions.IndexOfNonFinite(values);
        if (bad >= 0)
        {
            throw new ArgumentException($"{what} holds {values[bad]} at element {bad}; a model with NaN or infinite weights cannot be evaluated.");
        }
    }

    private static Dictionary<string, (float[] A, float[] B, int Rank, float Scale)> ReadAdapter(string directory)
    {
        using PeftAdapter adapter = PeftAdapterReader.Read(directory);
        if (adapter.Config.FanInFanOut)
        {
            throw new ArgumentException($"'{directory}': fan_in_fan_out adapters are not supported by the LLaMA evaluator.");
        }

        var result = new Dictionary<string, (float[], float[], int, float)>(StringComparer.Ordinal);
        foreach (LoraTensors layer in adapter.Layers)
        {
            result[layer.ModulePath] = (layer.A.Span.ToArray(), layer.B.Span.ToArray(), adapter.Config.R, (float)adapter.Scaling);
        }

        return result;
    }

    private static double CrossEntropy(ReadOnlySpan<float> logits, int target)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float l in logits)
        {
            sum += Math.Exp(l - max);
        }

        return Math.Log(sum) - (logits[target] - max);
    }
}
