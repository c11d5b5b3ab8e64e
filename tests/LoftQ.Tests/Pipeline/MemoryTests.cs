using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using LoftQNet.IO;
using LoftQNet.Numerics;

namespace LoftQNet.Tests.Pipeline;

public sealed class MemoryTests
{
    /// <summary>
    /// Peak RSS of a `loftq quantize` child process must not grow with the number of layers. Before: the shard's
    /// new backbone tensors stayed in memory until the shard was written, and the shared array pool kept every
    /// returned weight-sized array, so 4 layers peaked well above 1 layer (and a 4-layer 7B-shaped model at 4.5 GB).
    /// </summary>
    [Fact]
    [Trait("Category", "Slow")]
    public void Peak_memory_does_not_grow_with_the_number_of_layers()
    {
        using var dir = new TempDirectory();
        long one = PeakRssKiB(WriteModel(dir.Combine("one"), layers: 1), dir.Combine("out1"));
        long four = PeakRssKiB(WriteModel(dir.Combine("four"), layers: 4), dir.Combine("out4"));

        // Each extra layer adds 33 MiB of bf16 backbone output (and 66 MiB of float32 input) to the single shard; a
        // pipeline that held a shard's outputs, or pooled the matrices, would add ≥ 100 MiB for three more layers.
        // Measured: +7 to +23 MiB, once more than +48 MiB while the whole suite and the TorchSharp tests competed for
        // the two cores (allocator and GC timing), hence the 64 MiB margin.
        Assert.True(four < one + (64 * 1024), $"peak RSS {four / 1024} MiB with 4 layers vs {one / 1024} MiB with 1");
    }

    /// <summary>A single-shard float32 LLaMA-shaped model, hidden 1280, intermediate 2560 (every target larger than <see cref="Matrix.PoolLimit"/>).</summary>
    private static string WriteModel(string directory, int layers)
    {
        const int hidden = 1280, intermediate = 2560, heads = 10, vocab = 256;
        Directory.CreateDirectory(directory);
        var shapes = new List<(string Name, long[] Shape)> { ("model.embed_tokens.weight", [vocab, hidden]) };
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            shapes.Add((p + "input_layernorm.weight", [hidden]));
            foreach (string n in new[] { "q_proj", "k_proj", "v_proj", "o_proj" })
            {
                shapes.Add((p + $"self_attn.{n}.weight", [hidden, hidden]));
            }

            shapes.Add((p + "post_attention_layernorm.weight", [hidden]));
            shapes.Add((p + "mlp.gate_proj.weight", [intermediate, hidden]));
            shapes.Add((p + "mlp.up_proj.weight", [intermediate, hidden]));
            shapes.Add((p + "mlp.down_proj.weight", [hidden, intermediate]));
        }

        shapes.Add(("model.norm.weight", [hidden]));
        shapes.Add(("lm_head.weight", [vocab, hidden]));
        using (SafeTensorsWriter writer = SafeTensorsWriter.Create(Path.Combine(directory, "model.safetensors"), shapes.Select(s => new SafeTensorInfo(s.Name, SafeTensorDType.BF16, TensorShape.FromInt64(s.Shape))).ToList()))
        {
            int seed = 0;
            foreach ((string name, long[] shape) in shapes)
            {
                using Matrix m = shape.Length == 1 ? Matrix.Zeros(1, (int)shape[0]) : Matrix.RandomNormal((int)shape[0], (int)shape[1], seed++, 0.02f);
                if (shape.Length == 1)
                {
                    m.Span.Fill(1f);
                }

                writer.WriteSingle(name, m.Span);
            }

            writer.Commit();
        }

        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"), ["model_type"] = "llama", ["hidden_size"] = hidden,
            ["intermediate_size"] = intermediate, ["num_hidden_layers"] = layers, ["num_attention_heads"] = heads,
            ["num_key_value_heads"] = heads, ["vocab_size"] = vocab, ["rms_norm_eps"] = 1e-5, ["torch_dtype"] = "bfloat16",
        };
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString());
        return directory;
    }

    /// <summary>Runs the CLI (built beside the tests) in a child process and samples its VmHWM until it exits.</summary>
    private static long PeakRssKiB(string model, string output)
    {
        string cli = Path.Combine(AppContext.BaseDirectory, "LoftQ.Cli.dll");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { cli, "quantize", model, "--out", output, "--bits", "2", "--iters", "2", "--json" })
        {
            start.ArgumentList.Add(a);
        }

        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        long peak = 0;
        string status = $"/proc/{process.Id}/status";
        while (!process.WaitForExit(20))
        {
            try
            {
                foreach (string line in File.ReadLines(status))
                {
                    if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    {
                        peak = Math.Max(peak, long.Parse(line[6..].Trim().Split(' ')[0], CultureInfo.InvariantCulture));
                    }
                }
            }
            catch (IOException)
            {
                // The process exited between the check and the read.
            }
        }

        Assert.True(process.ExitCode == 0, stderr.GetAwaiter().GetResult());
        Assert.NotEmpty(stdout.GetAwaiter().GetResult());
        Assert.True(peak > 0, "no VmHWM sample was taken");
        return peak;
    }
}
