using LoftQNet.IO;
using LoftQNet.Numerics;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace LoftQNet.TorchSharp;

/// <summary>
/// PEFT adapters in and out of a TorchSharp model's <see cref="LoraLinear"/> layers: the same files the checkpoint
/// pipeline writes to <c>loftq_init/</c> and PEFT's <c>save_pretrained</c> writes (keys
/// <c>base_model.model.&lt;module path&gt;.lora_A.weight</c> [r, in] and <c>.lora_B.weight</c> [out, r], float32).
/// </summary>
public static class LoraAdapters
{
    /// <summary>The <see cref="LoraLinear"/> layers of <paramref name="model"/> by module path, in module order.</summary>
    public static IReadOnlyList<(string Path, LoraLinear Layer)> Find(Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return model.named_modules().Where(m => m.module is LoraLinear).Select(m => (m.name, (LoraLinear)m.module)).ToList();
    }

    /// <summary>
    /// Writes the LoRA factors of every <see cref="LoraLinear"/> of <paramref name="model"/> as a PEFT adapter into
    /// <paramref name="adapterDirectory"/> (created if needed; each file is replaced atomically).
    /// </summary>
    /// <param name="model">A model with LoRA layers (e.g. after <c>LoftQ.Initialize(model)</c> and training).</param>
    /// <param name="adapterDirectory">The adapter directory.</param>
    /// <param name="baseModelNameOrPath">base_model_name_or_path for adapter_config.json.</param>
    /// <exception cref="InvalidOperationException">The model has no LoRA layers, or they differ in r or alpha (one PEFT config cannot describe them).</exception>
    public static void Save(Module model, string adapterDirectory, string? baseModelNameOrPath = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(adapterDirectory);
        IReadOnlyList<(string Path, LoraLinear Layer)> layers = Find(model);
        if (layers.Count == 0)
        {
            throw new InvalidOperationException($"The {model.GetType().Name} has no LoraLinear layers to save; call LoftQ.Initialize(model) first.");
        }

        (int rank, double alpha, double dropout) = (layers[0].Layer.Rank, layers[0].Layer.Alpha, layers[0].Layer.Dropout);
        foreach ((string path, LoraLinear layer) in layers)
        {
            if (layer.Rank != rank || layer.Alpha != alpha)
            {
                throw new InvalidOperationException($"LoRA layer '{path}' has r = {layer.Rank}, alpha = {layer.Alpha} but '{layers[0].Path}' has r = {rank}, alpha = {alpha}; a PEFT adapter config has one r and one lora_alpha.");
            }
        }

        if (alpha != Math.Floor(alpha))
        {
            throw new InvalidOperationException($"LoRA alpha {alpha} is not a whole number; PEFT adapter configs written by LoftQ.NET hold an integer lora_alpha.");
        }

        var tensors = new List<LoraTensors>(layers.Count);
        try
        {
            foreach ((string path, LoraLinear layer) in layers)
            {
                tensors.Add(new LoraTensors(path, TorchEngine.ToMatrix(layer.A), TorchEngine.ToMatrix(layer.B)));
            }

            var config = new PeftAdapterConfig(rank, (int)alpha, PeftAdapterConfig.TargetModulesFor(layers.Select(l => l.Path).Order(StringComparer.Ordinal)), baseModelNameOrPath)
            {
                LoraDropout = dropout,
            };
            PeftAdapterWriter.Write(adapterDirectory, config, tensors);
        }
        finally
        {
            foreach (LoraTensors t in tensors)
            {
                t.A.Dispose();
                t.B.Dispose();
            }
        }
    }

    /// <summary>
    /// Loads a PEFT adapter into the model's <see cref="LoraLinear"/> layers: copies every module's lora_A and lora_B
    /// (converted to each layer's dtype and device) and sets each layer's alpha from the adapter's lora_alpha.
    /// </summary>
    /// <returns>The number of layers loaded.</returns>
    /// <exception cref="InvalidDataException">The adapter is malformed, names a module the model has no LoraLinear for, leaves a LoraLinear without factors, or its r or shapes differ from the model's.</exception>
    public static int Load(Module model, string adapterDirectory)
    {
        ArgumentNullException.ThrowIfNull(model);
        using PeftAdapter adapter = PeftAdapterReader.Read(adapterDirectory);
        if (adapter.Config.FanInFanOut)
        {
            throw new InvalidDataException($"'{adapterDirectory}': fan_in_fan_out adapters (GPT-2 Conv1D) do not apply to LoraLinear layers.");
        }

        var layers = Find(model).ToDictionary(l => l.Path, l => l.Layer, StringComparer.Ordinal);
        var missing = layers.Keys.Except(adapter.Layers.Select(l => l.ModulePath), StringComparer.Ordinal).ToList();
        if (missing.Count > 0)
        {
            throw new InvalidDataException($"'{adapterDirectory}' has no factors for the model's LoRA layer(s) [{string.Join(", ", missing.Take(5))}{(missing.Count > 5 ? ", …" : string.Empty)}].");
        }

        foreach (LoraTensors t in adapter.Layers)
        {
            if (!layers.TryGetValue(t.ModulePath, out LoraLinear? layer))
            {
                throw new InvalidDataException($"'{adapterDirectory}' has factors for '{t.ModulePath}', which is not a LoraLinear of the {model.GetType().Name}.");
            }

            if (t.A.Rows != layer.Rank || t.A.Columns != layer.InFeatures || t.B.Rows != layer.OutFeatures)
            {
                throw new InvalidDataException($"'{adapterDirectory}': '{t.ModulePath}' has lora_A {t.A.Shape} and lora_B {t.B.Shape}, but the model's layer is r = {layer.Rank}, in = {layer.InFeatures}, out = {layer.OutFeatures}.");
            }
        }

        using (torch.no_grad())
        {
            foreach (LoraTensors t in adapter.Layers)
            {
                LoraLinear layer = layers[t.ModulePath];
                using var scope = NewDisposeScope();
                layer.A.copy_(TorchEngine.ToTensor(t.A));
                layer.B.copy_(TorchEngine.ToTensor(t.B));
                layer.SetAlpha(adapter.Config.UseRsLora ? adapter.Scaling * layer.Rank : adapter.Config.LoraAlpha);
            }
        }

        return adapter.Layers.Count;
    }
}
