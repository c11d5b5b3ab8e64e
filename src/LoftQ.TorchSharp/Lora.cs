using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp;

/// <summary>
/// The stateless LoRA kernels behind <see cref="QuantizedLinear"/> and <see cref="LoraLinear"/>, usable on their own:
/// a linear layer over a packed quantized weight that never keeps the dense weight for the backward pass, and the
/// LoRA forward y = x·deq(Q)ᵀ + bias + s·(x·Aᵀ)·Bᵀ.
/// </summary>
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
        if (input.Dimensions < 1 || input.shape[^1] != weight.InFeatures)
        {
            throw new ArgumentException($"The input's last dimension must be in_features = {weight.InFeatures}, got shape [{string.Join(", ", input.shape)}].", nameof(input));
        }

        if (!input.requires_grad || !torch.is_grad_enabled())
        {
            using var scope = NewDisposeScope();
            Tensor w = TransientWeight(weight, input.dtype);
            return torch.nn.functional.linear(input, w, bias?.to(input.dtype)).MoveToOuterDisposeScope();
        }

        return QuantizedLinearFunction.apply(input, new WeightBox(weight, bias));
    }

    /// <summary>The dense weight deq(W) [out, in] in <paramref name="dtype"/> (the caller owns it).</summary>
    public static Tensor Dequantize(PackedWeight weight, ScalarType dtype = ScalarType.Float32) => TorchCodec.Dequantize(weight, dtype);

    /// <summary>
    /// The LoRA forward over a quantized base: <c>base(x) + scaling · B(A(dropout(x)))</c>, where <paramref name="a"/>
    /// is lora_A's weight [r, in] and <paramref name="b"/> lora_B's [out, r]. When the factors' dtype differs from
    /// the input's, the LoRA branch runs in the factors' dtype and its result is cast back.
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
        using var scope = NewDisposeScope();
        Tensor y = QuantizedLinear(input, weight, bias);
        Tensor x = dropout > 0 && training ? torch.nn.functional.dropout(input, dropout, training: true) : input;
        if (x.dtype != a.dtype)
        {
            x = x.to(a.dtype);
        }

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
        /// <summary>
        /// Gradients handed back to TorchSharp by this thread's last backward call. TorchSharp copies the handle into the
        /// graph as soon as backward returns but never disposes the wrapper, so in a caller's dispose scope every layer's
        /// input gradient would stay alive until the whole backward pass ends (byte-llama-14m: ~230 MB by its shapes); the
        /// next call, forward or backward, releases them instead.
        /// </summary>
        [ThreadStatic]
        private static List<Tensor>? t_handedBack;

        public override string Name => "LoftQQuantizedLinear";

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            ReleaseHandedBack();
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
            ReleaseHandedBack();
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
                gradInput = gradOutput.to(dtype).matmul(w).DetachFromDisposeScope();
            }

            gradOutput.Dispose(); // TorchSharp's wrapper only: the engine holds its own reference while it needs one
            (t_handedBack ??= []).Add(gradInput);
            return [gradInput, null!];
        }

        private static void ReleaseHandedBack()
        {
            if (t_handedBack is { Count: > 0 } list)
            {
                foreach (Tensor t in list)
                {
                    t.Dispose();
                }

                list.Clear();
            }
        }
    }
}
