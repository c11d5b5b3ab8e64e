using LoftQNet.Quantization;
using LoftQNet.TorchSharp.Engine;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace LoftQNet.TorchSharp;

/// <summary>
/// A LoRA layer over a frozen base: <c>y = base_layer(x) + (alpha / r) · lora_B(lora_A(dropout(x)))</c>, with trainable
/// <c>lora_A</c> (r × in) and <c>lora_B</c> (out × r). The base is a packed quantized <see cref="QuantizedLinear"/>
/// (QLoRA / LoftQ: <see cref="LoftQ"/>'s <c>Initialize(model)</c> swaps these in) or a dense <c>Linear</c>
/// (full-precision LoRA: <c>LoftQ.AddLora(model)</c>). It can also be built directly.
/// </summary>
/// <remarks>
/// <para>Children and state-dict names follow PEFT: <c>base_layer</c> (a <see cref="QuantizedLinear"/> or a <c>Linear</c>),
/// <c>lora_A.weight</c> [r, in], <c>lora_B.weight</c> [out, r], <c>lora_dropout</c>. A model's key
/// <c>&lt;path&gt;.lora_A.weight</c> is PEFT's adapter key <c>base_model.model.&lt;path&gt;.lora_A.weight</c>.</para>
/// <para>Only lora_A and lora_B require gradients. The base never keeps a dense weight between forward and
/// backward. Forward and backward run as one fused autograd node per layer when the dtypes agree (see
/// <see cref="Lora"/>). <c>.to(dtype)</c> converts the LoRA factors (the packed base keeps its dtypes; compute follows the
/// input); <c>.to(device)</c> moves everything.</para>
/// </remarks>
public sealed class LoraLinear : Module<Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> base_layer;
    private readonly Linear lora_A;
    private readonly Linear lora_B;
    private readonly Module<Tensor, Tensor> lora_dropout;

    /// <summary>Creates the layer from a packed base and the LoRA factors (copied).</summary>
    /// <param name="baseLayer">The frozen quantized base (taken: this module owns it).</param>
    /// <param name="a">lora_A's weight, r × in.</param>
    /// <param name="b">lora_B's weight, out × r.</param>
    /// <param name="alpha">LoRA alpha; the scaling is alpha / r. Must be positive and finite.</param>
    /// <param name="dropout">LoRA dropout probability in [0, 1).</param>
    /// <exception cref="ArgumentException">The shapes do not agree, or alpha or dropout is out of range.</exception>
    public LoraLinear(QuantizedLinear baseLayer, Tensor a, Tensor b, double alpha, double dropout = 0)
        : this(baseLayer, baseLayer?.InFeatures ?? 0, baseLayer?.OutFeatures ?? 0, baseLayer?.Weight.Codes.device, a, b, alpha, dropout)
    {
    }

    /// <summary>Creates a full-precision LoRA layer over a dense base and the LoRA factors (copied).</summary>
    /// <param name="baseLayer">The frozen dense base (taken: this module owns it); its weight is [out, in].</param>
    /// <param name="a">lora_A's weight, r × in.</param>
    /// <param name="b">lora_B's weight, out × r.</param>
    /// <param name="alpha">LoRA alpha; the scaling is alpha / r. Must be positive and finite.</param>
    /// <param name="dropout">LoRA dropout probability in [0, 1).</param>
    /// <exception cref="ArgumentException">The base has no two-dimensional weight, the shapes do not agree, or alpha or dropout is out of range.</exception>
    public LoraLinear(Linear baseLayer, Tensor a, Tensor b, double alpha, double dropout = 0)
        : this(baseLayer, DenseShape(baseLayer).In, DenseShape(baseLayer).Out, baseLayer?.weight?.device, a, b, alpha, dropout)
    {
    }

    private LoraLinear(Module<Tensor, Tensor>? baseLayer, long inFeatures, long outFeatures, Device? device, Tensor a, Tensor b, double alpha, double dropout)
        : base(nameof(LoraLinear))
    {
        ArgumentNullException.ThrowIfNull(baseLayer);
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a.Dimensions != 2 || b.Dimensions != 2 || a.shape[1] != inFeatures || b.shape[0] != outFeatures || a.shape[0] != b.shape[1] || a.shape[0] < 1)
        {
            throw new ArgumentException($"lora_A must be [r, {inFeatures}] and lora_B [{outFeatures}, r] with the same r ≥ 1, got A [{string.Join(", ", a.shape)}] and B [{string.Join(", ", b.shape)}].");
        }

        if (!(alpha > 0) || !double.IsFinite(alpha))
        {
            throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "LoRA alpha must be positive and finite.");
        }

        if (!(dropout >= 0 && dropout < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "LoRA dropout must be in [0, 1).");
        }

        Rank = (int)a.shape[0];
        Alpha = alpha;
        Dropout = dropout;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        base_layer = baseLayer;
        lora_A = torch.nn.Linear(inFeatures, Rank, hasBias: false, device: device, dtype: a.dtype);
        lora_B = torch.nn.Linear(Rank, outFeatures, hasBias: false, device: device, dtype: b.dtype);
        using (torch.no_grad())
        {
            lora_A.weight!.copy_(a);
            lora_B.weight!.copy_(b);
        }

        lora_dropout = dropout > 0 ? torch.nn.Dropout(dropout) : torch.nn.Identity();
        RegisterComponents();
        foreach (Parameter p in base_layer.parameters())
        {
            p.requires_grad = false;
        }
    }

    /// <summary>
    /// Builds the layer from a core quantized weight and factors, e.g. the result of the core's LoftQ optimizer.
    /// </summary>
    /// <param name="weight">The quantized base [out, in].</param>
    /// <param name="a">lora_A, r × in (row-major, <paramref name="rank"/>·in values).</param>
    /// <param name="b">lora_B, out × r (row-major).</param>
    /// <param name="rank">r.</param>
    /// <param name="alpha">LoRA alpha (scaling alpha / r).</param>
    /// <param name="bias">Optional frozen bias [out].</param>
    /// <param name="dtype">dtype of the LoRA factors (float32 by default).</param>
    /// <param name="device">Device of every tensor (the CPU by default).</param>
    /// <param name="dropout">LoRA dropout probability.</param>
    public static LoraLinear Create(
        QuantizedTensor weight, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, double alpha,
        Tensor? bias = null, ScalarType dtype = ScalarType.Float32, Device? device = null, double dropout = 0)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape.Rank != 2)
        {
            throw new ArgumentException($"The quantized weight must be two-dimensional, got {weight.Shape}.", nameof(weight));
        }

        int outF = weight.Shape.Rows, inF = weight.Shape.Columns;
        if (rank < 1 || a.Length != (long)rank * inF || b.Length != (long)outF * rank)
        {
            throw new ArgumentException($"For rank {rank}, A needs {(long)rank * inF} values and B {(long)outF * rank}; got {a.Length} and {b.Length}.");
        }

        using var scope = NewDisposeScope();
        device ??= CPU;
        var baseLayer = new QuantizedLinear(weight, bias, device);
        Tensor ta = TorchEngine.NativeCopy(a, [rank, inF], ScalarType.Float32).to(dtype).to(device);
        Tensor tb = TorchEngine.NativeCopy(b, [outF, rank], ScalarType.Float32).to(dtype).to(device);
        var layer = new LoraLinear(baseLayer, ta, tb, alpha, dropout);
        return layer;
    }

    /// <summary>The frozen base (<c>base_layer</c>): a <see cref="QuantizedLinear"/> or a dense <c>Linear</c>.</summary>
    public Module<Tensor, Tensor> BaseLayer => base_layer;

    /// <summary>The packed quantized base, or null when the base is dense (full-precision LoRA).</summary>
    public QuantizedLinear? QuantizedBase => base_layer as QuantizedLinear;

    /// <summary>The frozen bias of the base, if any.</summary>
    public Tensor? Bias => base_layer switch
    {
        QuantizedLinear q => q.Bias,
        Linear l => l.bias,
        _ => null,
    };

    /// <summary>lora_A's weight, r × in (trainable).</summary>
    public Parameter A => lora_A.weight!;

    /// <summary>lora_B's weight, out × r (trainable).</summary>
    public Parameter B => lora_B.weight!;

    /// <summary>The rank r.</summary>
    public int Rank { get; }

    /// <summary>LoRA alpha.</summary>
    public double Alpha { get; private set; }

    /// <summary>alpha / r, PEFT's LoRA scaling.</summary>
    public double Scaling => Alpha / Rank;

    /// <summary>LoRA dropout probability.</summary>
    public double Dropout { get; }

    /// <summary>Input features.</summary>
    public long InFeatures { get; }

    /// <summary>Output features.</summary>
    public long OutFeatures { get; }

    /// <inheritdoc/>
    public override Tensor forward(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        Lora.CheckInput(input, InFeatures);

        using var scope = NewDisposeScope();
        Tensor? dropped = Dropout > 0 && training ? lora_dropout.forward(input) : null;
        Lora.LoraBase baseWeight = base_layer switch
        {
            QuantizedLinear q => new Lora.LoraBase(q.Weight, null, q.Bias),
            Linear l => new Lora.LoraBase(null, l.weight!, l.bias),
            _ => throw new InvalidOperationException($"Unexpected LoRA base layer {base_layer.GetType().Name}."),
        };
        return Lora.Forward(input, dropped, baseWeight, A, B, Scaling).MoveToOuterDisposeScope();
    }

    /// <summary>The dense merged weight deq(Q) + (alpha/r)·B·A [out, in] in <paramref name="dtype"/> (the caller owns it).</summary>
    public Tensor Merge(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        Tensor w = Dequantize(ScalarType.Float32);
        Tensor delta = B.to(ScalarType.Float32).matmul(A.to(ScalarType.Float32)).mul(Scaling);
        return w.add_(delta).to(dtype).MoveToOuterDisposeScope();
    }

    /// <summary>A dense TorchSharp <c>Linear</c> with the merged weight (and the base bias), e.g. to export or serve a fine-tuned model.</summary>
    public Linear ToMergedLinear(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = NewDisposeScope();
        Tensor merged = Merge(dtype);
        Tensor? bias = Bias;
        var linear = torch.nn.Linear(InFeatures, OutFeatures, hasBias: bias is not null, device: merged.device, dtype: dtype);
        using (torch.no_grad())
        {
            linear.weight!.copy_(merged);
            if (bias is not null)
            {
                linear.bias!.copy_(bias);
            }
        }

        return linear;
    }

    /// <summary>The dense base weight [out, in] in <paramref name="dtype"/>: deq(Q), or a copy of the dense base's weight (the caller owns it).</summary>
    public Tensor Dequantize(ScalarType dtype = ScalarType.Float32)
    {
        if (base_layer is QuantizedLinear q)
        {
            return q.Dequantize(dtype);
        }

        using var noGrad = torch.no_grad();
        Tensor w = ((Linear)base_layer).weight!;
        return w.dtype == dtype ? w.detach().clone() : w.detach().to(dtype);
    }

    /// <summary>Sets alpha (e.g. from an adapter's <c>lora_alpha</c>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">alpha is not positive and finite.</exception>
    public void SetAlpha(double alpha)
    {
        if (!(alpha > 0) || !double.IsFinite(alpha))
        {
            throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "LoRA alpha must be positive and finite.");
        }

        Alpha = alpha;
    }

    /// <inheritdoc/>
    public override string ToString() => $"LoraLinear(in={InFeatures}, out={OutFeatures}, r={Rank}, alpha={Alpha}, base={(base_layer is QuantizedLinear q ? q.QuantizerName : "dense")})";

    private static (long In, long Out) DenseShape(Linear? layer) =>
        layer is null ? throw new ArgumentNullException(nameof(layer))
        : layer.weight is { Dimensions: 2 } w
            ? (w.shape[1], w.shape[0])
            : throw new ArgumentException("The dense base must be a Linear with a two-dimensional weight [out, in].", nameof(layer));
}
