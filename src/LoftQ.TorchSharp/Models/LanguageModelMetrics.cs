using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Models;

/// <summary>Scores causal language models on byte-level text.</summary>
public static class LanguageModelMetrics
{
    /// <summary>
    /// Mean next-byte cross-entropy in bits, with the windowing of the core's
    /// <see cref="LoftQNet.Pipeline.Evaluation.BitsPerByte"/>: window i covers bytes [L·i, L·i + L + 1) of
    /// <paramref name="text"/>, the first L are the input and the targets are shifted by one. Runs under no_grad and
    /// dispose scopes, <paramref name="batchSize"/> windows per forward pass, on the device of the model's first parameter.
    /// </summary>
    /// <param name="model">A causal language model mapping int64 token ids [batch, L] to logits [batch, L, vocab], vocab ≥ 256 (byte tokens).</param>
    /// <param name="text">The text, as bytes.</param>
    /// <param name="windows">Number of windows (fewer if the text is short).</param>
    /// <param name="windowLength">Predictions per window, L.</param>
    /// <param name="batchSize">Windows per forward pass.</param>
    /// <exception cref="ArgumentException">The text is too short for one window, or the logits do not have the shape [batch, L, ≥256].</exception>
    public static double BitsPerByte(nn.Module<Tensor, Tensor> model, ReadOnlySpan<byte> text, int windows = 64, int windowLength = 256, int batchSize = 8)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfLessThan(windows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(windowLength, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        int usable = (int)Math.Min(windows, (text.Length - 1L) / windowLength);
        if (usable < 1)
        {
            throw new ArgumentException($"The text has {text.Length} bytes; one window needs {windowLength + 1}.", nameof(text));
        }

        Device device = model.parameters().FirstOrDefault()?.device ?? torch.CPU;
        double nats = 0;
        using (torch.no_grad())
        {
            var ids = new long[(long)Math.Min(batchSize, usable) * (windowLength + 1)];
            for (int first = 0; first < usable; first += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                int n = Math.Min(batchSize, usable - first);
                for (int w = 0; w < n; w++)
                {
                    ReadOnlySpan<byte> window = text.Slice((first + w) * windowLength, windowLength + 1);
                    for (int i = 0; i <= windowLength; i++)
                    {
                        ids[(w * (windowLength + 1)) + i] = window[i];
                    }
                }

                Tensor all = TorchEngine.NativeCopy<long>(ids.AsSpan(0, n * (windowLength + 1)), [n, windowLength + 1], ScalarType.Int64).to(device);
                Tensor inputs = all.narrow(1, 0, windowLength);
                Tensor targets = all.narrow(1, 1, windowLength);
                Tensor logits = model.forward(inputs);
                if (logits.ndim != 3 || logits.shape[0] != n || logits.shape[1] != windowLength || logits.shape[2] < 256)
                {
                    throw new ArgumentException($"The model returned logits of shape [{string.Join(", ", logits.shape)}]; byte-level scoring needs [{n}, {windowLength}, ≥256].", nameof(model));
                }

                long vocab = logits.shape[2];
                Tensor losses = nn.functional.cross_entropy(logits.reshape(-1, vocab).to(ScalarType.Float32), targets.reshape(-1), reduction: nn.Reduction.None);
                nats += losses.to(ScalarType.Float64).sum().item<double>();
            }
        }

        return nats / ((long)usable * windowLength) / Math.Log(2);
    }
}
