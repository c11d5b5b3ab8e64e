using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp;

/// <summary>
/// The stateless LoRA kernels behind <see cref="QuantizedLinear"/> and <see cref="LoraLinear"/>, usable on their own:
/// a linear layer over a packed quantized weight that never keeps the dense weight for the backward pass, and the
/// LoRA forward y = x·deq(Q)ᵀ + bias + s·(x·Aᵀ)·Bᵀ.
/// </summary>
/// <remarks>
/// Where the input, the factors and the base share one floating dtype and the frozen base needs no gradient (the
/// usual case), the LoRA forward is one autograd node: the low-rank product is added into the base output in place,
/// and backward computes the input's gradient as g·W + s·(g·B)·A in one input-sized tensor, so each layer allocates
/// one output-sized tensor in forward and one input-sized one in backward, where the composed operations allocate
/// about four of each. Its results equal the composed operations' bit for bit when the scaling is 1 and within float32
/// rounding otherwise. Other cases (mixed dtypes, a trainable base) run the composed operations.
/// </remarks>
public static class Lora
{
    /// <summary>
    /// y = x·deq(W)ᵀ (+ bias) over the packed weight, in <paramref name="input"/>'s dtype. The dense weight exists only
    /// while the product is computed: the backward pass dequantizes again instead of keeping it (as QLoRA does), so
    /// a model's frozen backbone never lives in memory densely between forward and backward.
    /// </summary>
    /// <param name="input">[..., in].</param>
    /// <param name="weight">The packed frozen weight [out, in].</param>
    /// <param name="bias">Optional frozen bias [out] (cast to the input's dtype).</param>
    /// <returns>[..., out]; differentiable with respect to <paramref name="input"/> only.</returns>
    /// <exception cref="ArgumentException">The input's last dimension is not in.</exception>
    public static Tensor QuantizedLinear(Tensor input, PackedWeight weight, Tensor? bias = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        CheckInput(input, weight.InFeatures);

        if (!input.requires_grad || !torch.is_grad_enabled())
        {
            using var scope = NewDisposeScope();
            Tensor w = TransientWeight(weight, input.dtype);
            return torch.nn.functional.linear(input, w, bias?.to(input.dtype)).MoveToOuterDisposeScope();
        }

        try
        {
            return QuantizedLinearFunction.apply(input, new WeightBox(weight, bias));
        }
        finally
        {
            FunctionMemory.ReleaseOutputCache();
        }
    }

    /// <summary>Throws unless <paramref name="input"/>'s last dimension is <paramref name="inFeatures"/>.</summary>
    internal static void CheckInput(Tensor input, long inFeatures)
    {
        if (input.Dimensions < 1 || input.shape[^1] != inFeatures)
        {
            throw new ArgumentException($"The input's last dimension must be in_features = {inFeatures}, got shape [{string.Join(", ", input.shape)}].", nameof(input));
        }
    }

    /// <summary>The dense weight deq(W) [out, in] in <paramref name="dtype"/> (the caller owns it).</summary>
    public static Tensor Dequantize(PackedWeight weight, ScalarType dtype = ScalarType.Float32) => TorchCodec.Dequantize(weight, dtype);

    /// <summary>
    /// The LoRA forward over a quantized base: <c>base(x) + scaling · B(A(dropout(x)))</c>, where <paramref name="a"/>
    /// is lora_A's weight [r, in] and <paramref name="b"/> lora_B's [out, r]. When the factors' dtype differs from
    /// the input's, the LoRA branch runs in the factors' dtype and its result is cast back; when they agree it is one
    /// fused autograd node (see the class remarks).
    /// </summary>
    /// <param name="input">[..., in].</param>
    /// <param name="weight">The packed frozen base weight [out, in].</param>
    /// <param name="a">lora_A [r, in].</param>
    /// <param name="b">lora_B [out, r].</param>
    /// <param name="scaling">alpha / r.</param>
    /// <param name="bias">Optional frozen base bias [out].</param>
    /// <param name="dropout">LoRA dropout probability on the LoRA branch's input.</param>
    /// <param name="training">Whether dropout is active.</param>
    public static Tensor Forward(Tensor input, PackedWeight weight, Tensor a, Tensor b, double scaling, Tensor? bias = null, double dropout = 0, bool training = false)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        CheckInput(input, weight.InFeatures);

        Tensor? dropped = dropout > 0 && training ? torch.nn.functional.dropout(input, dropout, training: true) : null;
        try
        {
            return Forward(input, dropped, new LoraBase(weight, null, bias), a, b, scaling);
        }
        finally
        {
            dropped?.Dispose();
        }
    }

    /// <summary>
    /// The LoRA forward over either base, <c>base(x) + scaling · (x_d·Aᵀ)·Bᵀ</c> with x_d = <paramref name="dropped"/>
    /// when given, else <paramref name="input"/>. Where every dtype agrees and only the input and the factors may need
    /// gradients, it is one fused autograd node: one output-sized allocation in forward (the LoRA product is added in
    /// place) and one input-sized one in backward, which dequantizes a packed base again rather than keep it; otherwise
    /// it is composed from torch operations.
    /// </summary>
    internal static Tensor Forward(Tensor input, Tensor? dropped, in LoraBase baseWeight, Tensor a, Tensor b, double scaling)
    {
        Tensor loraInput = dropped ?? input;
        if (!Fusable(input, loraInput, baseWeight, a, b))
        {
            return Composed(input, loraInput, baseWeight, a, b, scaling);
        }

        bool needsGrad = torch.is_grad_enabled() && (input.requires_grad || loraInput.requires_grad || a.requires_grad || b.requires_grad);
        if (!needsGrad)
        {
            using var scope = NewDisposeScope();
            return LoraFunction.Compute(input, loraInput, baseWeight, a, b, scaling, out _).MoveToOuterDisposeScope();
        }

        var box = new LoraBox(baseWeight, scaling, input.shape, dropped is not null, input.requires_grad, dropped?.requires_grad ?? false, a.requires_grad, b.requires_grad);
        try
        {
            return LoraFunction.apply(input, dropped!, a, b, box);
        }
        finally
        {
            FunctionMemory.ReleaseOutputCache();
        }
    }

    /// <summary>Every tensor of the fused path has the input's dtype and the frozen base needs no gradient.</summary>
    private static bool Fusable(Tensor input, Tensor loraInput, in LoraBase baseWeight, Tensor a, Tensor b)
    {
        ScalarType dtype = input.dtype;
        if (loraInput.dtype != dtype || a.dtype != dtype || b.dtype != dtype || !torch.is_floating_point(input))
        {
            return false;
        }

        if (baseWeight.Dense is { } w && (w.dtype != dtype || w.requires_grad))
        {
            return false;
        }

        return baseWeight.Bias is not { } bias || !bias.requires_grad;
    }

    /// <summary>The unfused forward: base output plus the LoRA branch, each an autograd-recorded operation.</summary>
    internal static Tensor Composed(Tensor input, Tensor loraInput, in LoraBase baseWeight, Tensor a, Tensor b, double scaling)
    {
        using var scope = NewDisposeScope();
        Tensor y = baseWeight.Packed is { } packed
            ? QuantizedLinear(input, packed, baseWeight.Bias)
            : torch.nn.functional.linear(input, baseWeight.Dense!, baseWeight.Bias);
        Tensor x = loraInput.dtype != a.dtype ? loraInput.to(a.dtype) : loraInput;
        Tensor delta = torch.nn.functional.linear(torch.nn.functional.linear(x, a), b).mul(scaling);
        if (delta.dtype != y.dtype)
        {
            delta = delta.to(y.dtype);
        }

        return y.add(delta).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// deq(W) in <paramref name="dtype"/> for one product that keeps no reference to it (on the CPU in float32, a view
    /// of the thread's reused scratch buffer: nothing weight-sized is allocated per call).
    /// </summary>
    private static Tensor TransientWeight(in PackedWeight weight, ScalarType dtype)
    {
        Tensor w = TorchCodec.DequantizeTransient(weight);
        return w.dtype == dtype ? w : w.to(dtype);
    }

    /// <summary>Carries the packed weight through autograd's argument list (only tensors are saved for backward).</summary>
    private sealed record WeightBox(PackedWeight Weight, Tensor? Bias);

    private sealed class QuantizedLinearFunction : torch.autograd.SingleTensorFunction<QuantizedLinearFunction>
    {
        public override string Name => "LoftQQuantizedLinear";

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            FunctionMemory.EnterForward(ctx);
            var input = (Tensor)vars[0];
            var box = (WeightBox)vars[1];
            ctx.save_data("weight", box);
            ctx.save_data("dtype", input.dtype);
            ctx.set_materialize_grads(false); // an unused output's gradient arrives undefined: backward returns none
            using var scope = NewDisposeScope();
            using var noGrad = torch.no_grad(); // the function's own node is the graph: record nothing inside
            Tensor w = TransientWeight(box.Weight, input.dtype);
            return torch.nn.functional.linear(input, w, box.Bias?.to(input.dtype)).MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            FunctionMemory.EnterBackward();
            if (gradOutput is null || gradOutput.IsInvalid)
            {
                return [null!, null!];
            }

            var box = (WeightBox)ctx.get_data("weight");
            var dtype = (ScalarType)ctx.get_data("dtype");
            Tensor gradInput;
            using (var scope = NewDisposeScope())
            {
                using var noGrad = torch.no_grad();
                Tensor w = TransientWeight(box.Weight, dtype);
                gradInput = FunctionMemory.HandBack(gradOutput.to(dtype).matmul(w))!;
            }

            gradOutput.Dispose(); // TorchSharp's wrapper only: the engine holds its own reference while it needs one
            return [gradInput, null!];
        }
    }

    /// <summary>A LoRA layer's frozen base: a packed weight or a dense one (exactly one), and its optional bias.</summary>
    internal readonly record struct LoraBase(PackedWeight? Packed, Tensor? Dense, Tensor? Bias);

    /// <summary>
    /// What the fused node needs in backward besides its saved tensors: the input's shape, whether the LoRA branch had
    /// an input of its own (dropout), and which inputs need a gradient.
    /// </summary>
    private sealed record LoraBox(LoraBase Base, double Scaling, long[] InputShape, bool Separate, bool InputGrad, bool DroppedGrad, bool AGrad, bool BGrad);

    /// <summary>
    /// y = x·Wᵀ (+ bias) + s·(x_d·Aᵀ)·Bᵀ as one node. Saves x_d and the rank-r product h = x_d·Aᵀ; backward computes
    /// g_B = s·gᵀh, g_h = s·g·B, g_A = g_hᵀ·x_d and g_x = g·W (+ g_h·A when x_d is x), dequantizing a packed W again.
    /// </summary>
    private sealed class LoraFunction : torch.autograd.SingleTensorFunction<LoraFunction>
    {
        public override string Name => "LoftQLora";

        /// <summary>The fused product without autograd; <paramref name="h"/> is the rank-r product x_d·Aᵀ (in the current scope).</summary>
        public static Tensor Compute(Tensor input, Tensor loraInput, in LoraBase baseWeight, Tensor a, Tensor b, double scaling, out Tensor h)
        {
            using var noGrad = torch.no_grad();
            Tensor? bias = baseWeight.Bias is { } bb && bb.dtype != input.dtype ? bb.to(input.dtype) : baseWeight.Bias;
            Tensor w = baseWeight.Packed is { } packed ? TransientWeight(packed, input.dtype) : baseWeight.Dense!;
            Tensor y = torch.nn.functional.linear(input, w, bias);
            h = torch.nn.functional.linear(loraInput, a);
            y.view(-1, y.shape[^1]).addmm_(h.view(-1, h.shape[^1]), b.t(), beta: 1, alpha: (float)scaling);
            return y;
        }

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            FunctionMemory.EnterForward(ctx);
            var input = (Tensor)vars[0];
            var dropped = vars[1] as Tensor;
            var a = (Tensor)vars[2];
            var b = (Tensor)vars[3];
            var box = (LoraBox)vars[4];
            ctx.save_data("box", box);
            ctx.set_materialize_grads(false); // an unused output's gradient arrives undefined: backward returns none
            using var scope = NewDisposeScope();
            Tensor loraInput = dropped ?? input;
            Tensor y = Compute(input, loraInput, box.Base, a, b, box.Scaling, out Tensor h);
            ctx.save_for_backward([loraInput, FunctionMemory.KeepUntilBuilt(h), a, b]);
            return y.MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            FunctionMemory.EnterBackward();
            if (gradOutput is null || gradOutput.IsInvalid)
            {
                return [null!, null!, null!, null!, null!];
            }

            var box = (LoraBox)ctx.get_data("box");
            long[] shape = box.InputShape;
            bool separate = box.Separate;
            Tensor? gradInput = null, gradDropped = null, gradA = null, gradB = null;
            // The Scalar is disposed here, not by a finalizer in some later step (LoraTrainingOptions.CollectGarbageEachStep).
            using (var scope = NewDisposeScope())
            using (torch.no_grad())
            using (Scalar scaling = box.Scaling.ToScalar())
            {
                List<Tensor> saved = ctx.get_saved_variables();
                Tensor loraInput = saved[0], h = saved[1], a = saved[2], b = saved[3];
                long outFeatures = b.shape[0], rank = a.shape[0], inFeatures = a.shape[1];
                Tensor g = gradOutput.reshape(-1, outFeatures);
                Tensor h2 = h.view(-1, rank);
                if (box.BGrad)
                {
                    gradB = g.t().mm(h2).mul_(scaling).DetachFromDisposeScope();
                }

                Tensor? gh = box.AGrad || box.DroppedGrad || (box.InputGrad && !separate) ? g.mm(b).mul_(scaling) : null;
                if (box.AGrad)
                {
                    gradA = gh!.t().mm(loraInput.reshape(-1, inFeatures)).DetachFromDisposeScope();
                }

                if (box.InputGrad)
                {
                    Tensor w = box.Base.Packed is { } packed ? TransientWeight(packed, g.dtype) : box.Base.Dense!;
                    Tensor gx = g.mm(w);
                    if (!separate)
                    {
                        gx.addmm_(gh!, a);
                    }

                    gradInput = gx.view(shape).DetachFromDisposeScope();
                }

                if (separate && box.DroppedGrad)
                {
                    gradDropped = gh!.mm(a).view(shape).DetachFromDisposeScope();
                }
            }

            gradOutput.Dispose(); // TorchSharp's wrapper only: the engine holds its own reference while it needs one
            return [FunctionMemory.HandBack(gradInput)!, FunctionMemory.HandBack(gradDropped)!, FunctionMemory.HandBack(gradA)!, FunctionMemory.HandBack(gradB)!, null!];
        }
    }
}
