using LoftQNet.IO;
using LoftQNet.Numerics;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp.Models;

#pragma warning disable IDE1006 // field names are the Hugging Face module names

/// <summary>
/// A LLaMA-family causal language model in TorchSharp (Hugging Face <c>LlamaForCausalLM</c>): token ids
/// [batch, T] (int64) → logits [batch, T, vocab]. Module paths and <c>state_dict()</c> keys are the Hugging Face
/// names (<c>model.layers.0.self_attn.q_proj</c>, <c>lm_head</c>, ...). The seven projections of every layer are
/// held in fields typed <see cref="nn.Module{T, TResult}"/>, so a LoRA module can replace them in place.
/// </summary>
/// <remarks>
/// With <see cref="LlamaModelConfig.TieWordEmbeddings"/>, <c>lm_head.weight</c> shares the embedding's storage, and
/// <c>.to(dtype/device)</c> keeps the tie. TorchSharp's <c>Embedding.weight</c> returns a new wrapper object per
/// call, so compare storage, not references; <c>parameters()</c> lists the shared matrix under both names. No KV cache: every call runs the
/// whole sequence (positions 0..T−1) with full causal attention.
/// </remarks>
public sealed class LlamaForCausalLM : nn.Module<Tensor, Tensor>
{
    private const string EmbedName = "model.embed_tokens.weight";
    private const string HeadName = "lm_head.weight";

    /// <summary>Largest piece copied at once: the byte copy of a whole tensor, or one staging chunk of rows.</summary>
    internal const long DefaultMaxChunkBytes = 256L << 20;

    private readonly LlamaDecoder model;
    private readonly Linear lm_head;
    private readonly LlamaModelConfig _config;

    /// <summary>
    /// Builds a randomly initialised model (TorchSharp's default initialisers; norms start at one) of
    /// <paramref name="config"/>'s shape, in <paramref name="dtype"/> on <paramref name="device"/> (CPU by default).
    /// The parameters are detached from any dispose scope active during construction.
    /// </summary>
    /// <exception cref="CheckpointFormatException">The config's shape is inconsistent.</exception>
    /// <exception cref="ArgumentException"><paramref name="dtype"/> is not float32, bfloat16 or float16.</exception>
    public LlamaForCausalLM(LlamaModelConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(LlamaForCausalLM))
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        CheckComputeType(dtype, nameof(dtype));
        TorchRuntime.EnsureLoaded();
        _config = config;
        model = new LlamaDecoder(nameof(model), config, dtype, device);
        lm_head = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false, device: device, dtype: dtype);
        if (config.TieWordEmbeddings)
        {
            lm_head.weight = model.EmbedTokens.weight!;
        }

        RegisterComponents();
        foreach ((string _, Parameter p) in named_parameters())
        {
            p.DetachFromDisposeScope();
        }
    }

    /// <summary>The model's shape.</summary>
    public LlamaModelConfig Config => _config;

    /// <summary>The decoder stack (<c>model</c>).</summary>
    public LlamaDecoder Model => model;

    /// <summary>The output projection (<c>lm_head</c>); its weight is the embedding's when the embeddings are tied.</summary>
    public Linear LmHead => lm_head;

    /// <summary>
    /// Loads a Hugging Face model directory: <c>config.json</c> plus <c>model.safetensors</c> or sharded safetensors
    /// with <c>model.safetensors.index.json</c>.
    /// </summary>
    /// <param name="modelDirectory">The checkpoint directory.</param>
    /// <param name="dtype">The compute dtype: float32, bfloat16 or float16. Null: the checkpoint's own (config <c>dtype</c>/<c>torch_dtype</c>, else the embedding tensor's; float64 checkpoints load as float32).</param>
    /// <param name="device">Where the parameters live (CPU by default).</param>
    /// <returns>The model, its parameters detached from any dispose scope.</returns>
    /// <exception cref="CheckpointFormatException">The config is not LLaMA-family, or a tensor is missing, has the wrong shape or an unusable dtype, or the checkpoint has a tensor the model does not (the message names the tensor and the file).</exception>
    /// <exception cref="NotSupportedException">The config asks for something this model does not implement (biases, rope scaling, another activation).</exception>
    /// <exception cref="ArgumentException"><paramref name="dtype"/> is not float32, bfloat16 or float16.</exception>
    public static LlamaForCausalLM FromPretrained(string modelDirectory, ScalarType? dtype = null, Device? device = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelDirectory);
        if (dtype is ScalarType requested)
        {
            CheckComputeType(requested, nameof(dtype));
        }

        TorchRuntime.EnsureLoaded();
        using HuggingFaceCheckpoint checkpoint = HuggingFaceCheckpoint.Open(modelDirectory);
        LlamaModelConfig config = LlamaModelConfig.FromModelConfig(checkpoint.Config);
        var result = new LlamaForCausalLM(config, dtype ?? StoredComputeType(checkpoint), device);
        try
        {
            result.Load(checkpoint);
        }
        catch
        {
            result.Dispose();
            throw;
        }

        return result;
    }

    /// <summary>Logits [batch, T, vocab] for token ids <paramref name="input"/> [batch, T] (int64), in the model's dtype.</summary>
    /// <exception cref="ArgumentException">The ids are not an int64 [batch, T] tensor with T ≥ 1.</exception>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        Tensor hidden = model.forward(input);
        return lm_head.forward(hidden).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    protected override nn.Module _to(ScalarType dtype, bool non_blocking)
    {
        nn.Module result = base._to(dtype, non_blocking);
        Retie();
        return result;
    }

    /// <inheritdoc/>
    protected override nn.Module _to(Device device, ScalarType dtype, bool non_blocking)
    {
        nn.Module result = base._to(device, dtype, non_blocking);
        Retie();
        return result;
    }

    /// <inheritdoc/>
    protected override nn.Module _to(DeviceType deviceType, int deviceIndex, bool non_blocking)
    {
        nn.Module result = base._to(deviceType, deviceIndex, non_blocking);
        Retie();
        return result;
    }

    /// <summary>Fills every parameter from <paramref name="checkpoint"/>, checking names, shapes and dtypes; tensors over <paramref name="maxChunkBytes"/> are staged in pieces of rows.</summary>
    internal void Load(HuggingFaceCheckpoint checkpoint, long maxChunkBytes = DefaultMaxChunkBytes)
    {
        Dictionary<string, Tensor> parameters = state_dict();
        var expected = new HashSet<string>(parameters.Keys, StringComparer.Ordinal);
        if (_config.TieWordEmbeddings)
        {
            // Hugging Face drops the tied lm_head.weight when saving; when a checkpoint has it anyway, the tie wins.
            expected.Remove(HeadName);
        }

        foreach (string name in expected)
        {
            if (!checkpoint.Contains(name))
            {
                throw new CheckpointFormatException($"{checkpoint.Directory}: tensor '{name}' (shape [{string.Join(", ", parameters[name].shape)}]) is missing from the checkpoint.");
            }
        }

        foreach (string name in checkpoint.TensorNames)
        {
            bool ignorable = name.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || (name == HeadName && _config.TieWordEmbeddings);
            if (!expected.Contains(name) && !ignorable)
            {
                throw new CheckpointFormatException($"{Path.Combine(checkpoint.Directory, checkpoint.ShardOf(name))}: unexpected tensor '{name}'; the {_config.NumHiddenLayers}-layer LLaMA model has no such parameter.");
            }
        }

        using (torch.no_grad())
        {
            foreach (string name in expected)
            {
                SafeTensorsFile file = checkpoint.OpenShard(checkpoint.ShardOf(name));
                Fill(parameters[name], file, name, maxChunkBytes);
            }
        }
    }

    private static void Fill(Tensor destination, SafeTensorsFile file, string name, long maxChunkBytes)
    {
        SafeTensorInfo info = file.GetInfo(name);
        if (info.Shape != TensorShape.FromInt64(destination.shape))
        {
            throw new CheckpointFormatException($"{file.Path}: tensor '{name}' has shape {info.ShapeString}; the config needs [{string.Join(", ", destination.shape)}].");
        }

        ScalarType stored = info.DType switch
        {
            SafeTensorDType.F32 => ScalarType.Float32,
            SafeTensorDType.BF16 => ScalarType.BFloat16,
            SafeTensorDType.F16 => ScalarType.Float16,
            SafeTensorDType.F64 => ScalarType.Float64,
            _ => throw new CheckpointFormatException($"{file.Path}: tensor '{name}' has dtype {info.DType.ToHeaderString()}; a weight must be F32, BF16, F16 or F64."),
        };

        // Same dtype on the CPU: the checkpoint's bytes go straight into the parameter's storage.
        if (stored == destination.dtype && destination.device_type == DeviceType.CPU && destination.is_contiguous() && info.ByteLength <= maxChunkBytes)
        {
            file.CopyBytes(name, 0, destination.bytes);
            return;
        }

        // Otherwise stage rows in the stored dtype (no float detour) and let copy_ convert and move them.
        long rows = info.Rank == 0 ? 1 : info.Shape[0];
        long rowBytes = rows == 0 ? 0 : info.ByteLength / rows;
        long rowsPerChunk = Math.Max(1, maxChunkBytes / Math.Max(1, rowBytes));
        for (long r = 0; r < rows; r += rowsPerChunk)
        {
            long n = Math.Min(rowsPerChunk, rows - r);
            long[] shape = info.Rank == 0 ? [] : [n, .. info.Shape.Dimensions[1..].ToArray().Select(d => (long)d)];
            using Tensor staging = torch.empty(shape, stored);
            file.CopyBytes(name, r * rowBytes, staging.bytes);
            if (info.Rank == 0)
            {
                destination.copy_(staging);
            }
            else
            {
                using Tensor slice = destination.narrow(0, r, n);
                slice.copy_(staging);
            }
        }
    }

    private static ScalarType StoredComputeType(HuggingFaceCheckpoint checkpoint)
    {
        switch (checkpoint.Config.TorchDType)
        {
            case "float32": return ScalarType.Float32;
            case "bfloat16": return ScalarType.BFloat16;
            case "float16": return ScalarType.Float16;
            default: break;
        }

        SafeTensorDType? stored = checkpoint.Contains(EmbedName) ? checkpoint.GetInfo(EmbedName).DType : null;
        return stored switch
        {
            SafeTensorDType.BF16 => ScalarType.BFloat16,
            SafeTensorDType.F16 => ScalarType.Float16,
            _ => ScalarType.Float32,
        };
    }

    private static void CheckComputeType(ScalarType dtype, string parameter)
    {
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
        {
            throw new ArgumentException($"The compute dtype must be float32, bfloat16 or float16, not {dtype}.", parameter);
        }
    }

    private void Retie()
    {
        if (_config.TieWordEmbeddings)
        {
            // Module._to converts each module's parameters one module at a time. On the CPU the two handles still
            // share one tensor afterwards (measured for dtype conversion); a conversion that allocates a new tensor
            // would give lm_head its own copy, so point it back at the embedding's (the setter disposes the old one).
            lm_head.weight = model.EmbedTokens.weight!;
        }
    }
}
