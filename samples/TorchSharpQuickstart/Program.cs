// The README's TorchSharp example: load a Hugging Face LLaMA in TorchSharp, LoftQ-initialise it at 2 bits,
// take one fine-tuning step on the LoRA factors, save them as a PEFT adapter.
//   dotnet run -- <model directory> <adapter output directory>
using LoftQNet;
using LoftQNet.Pipeline;
using LoftQNet.TorchSharp;
using LoftQNet.TorchSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

string modelDir = args.Length > 0 ? args[0] : "tests/data/byte-llama-14m";
string adapterDir = args.Length > 1 ? args[1] : "loftq-adapter";

using var model = LlamaForCausalLM.FromPretrained(modelDir, ScalarType.Float32);
LoftQReport report = LoftQ.Initialize(model, new LoftQOptions { Bits = 2, Rank = 16 });
Console.WriteLine($"{report.Layers.Count} layers: QLoRA error {report.MeanQLoRAError:F4} -> LoftQ {report.MeanLoftQError:F4}");

// Only the LoRA factors require gradients now.
using var optimizer = torch.optim.AdamW(model.parameters().Where(p => p.requires_grad), lr: 1e-4);
byte[] text = "A journey of a thousand miles begins with a single step."u8.ToArray();
using (var scope = torch.NewDisposeScope())
{
    Tensor ids = torch.tensor(text.Select(b => (long)b).ToArray(), [1, text.Length]);
    Tensor logits = model.forward(ids.narrow(1, 0, text.Length - 1));
    Tensor loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), ids.narrow(1, 1, text.Length - 1).reshape(-1));
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    Console.WriteLine($"one step: loss {loss.item<float>():F4}");
}

LoraAdapters.Save(model, adapterDir, modelDir);
Console.WriteLine($"adapter written to {adapterDir}");
