using LoftQNet.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace LoftQNet.TorchSharp;

/// <summary>
/// A frozen linear layer over a packed blockwise-quantized weight (NF2/3/4/8, uniform, or any core quantizer's
/// codes and code book): y = x·deq(W)ᵀ + bias, dequantized with torch ops on the module's device in the input's
/// dtype. It has no trainable parameters.
/// </summary>
/// <remarks>
/// State-dict entries: <c>codes</c> (uint8, the packed bit stream, see <see cref="PackedWeight"/>), <c>scales</c>
/// (float32), <c>offsets</c> (float32, asymmetric quantizers only), <c>code_book</c> (float32) and <c>bias</c>
/// (when present). <c>.to(device)</c> moves them; <c>.to(dtype)</c> leaves them as they are (codes stay packed and
/// scales stay float32), and the compute dtype follows the input. The backward pass dequantizes again rather than
/// keeping the dense weight alive (<see cref="Lora.QuantizedLinear"/>).
/// </remarks>
public sealed class QuantizedLinear : Module<Tensor, Tensor>
{
    private Tensor codes;
    private Tensor scales;
    private Tensor? offsets;
    private Tensor code_book;
    private Parameter? bias;

    /// <summary>Wraps a core <see cref="QuantizedTensor"/> of shape [out, in] (copied to <paramref name="device"/>).</summary>
    /// <param name="weight">The quantized weight.</param>
    /// <param name="bias">Optional bias [out] (copied; frozen).</param>
    /// <param name="device">Where the tensors live; the CPU when null.</param>
    /// <param name="quantizerName">Recorded for <see cref="ToQuantizedTensor"/>; defaults to the tensor's own.</param>
    public QuantizedLinear(QuantizedTensor weight, Tensor? bias = null, Device? device = null, string? quantizerName = null)
        : this(PackedWeight.FromQuantizedTensor(weight ?? throw new ArgumentNullException(nameof(weight)), device), bias, quantizerName ?? weight.QuantizerName)
    {
    }

    /// <summary>Takes ownership of the tensors of <paramref name="weight"/> (validated) and copies <paramref name="bias"/>.</summary>
    /// <exception cref="ArgumentException">A tensor disagrees with the bits, block size or shape, or the bias is not [out].</exception>
    public QuantizedLinear(PackedWeight weight, Tensor? bias = null, string quantizerName = "custom")
        : base(nameof(QuantizedLinear))
    {
        ArgumentNullException.ThrowIfNull(quantizerName);
        weight.Validate();
        Bits = weight.Bits;
        BlockSize = weight.BlockSize;
        OutFeatures = weight.OutFeatures;
        InFeatures = weight.InFeatures;
        QuantizerName = quantizerName;
        codes = weight.Codes.DetachFromDisposeScope();
        scales = weight.Scales.DetachFromDisposeScope();
        offsets = weight.Offsets?.DetachFromDisposeScope();
        code_book = weight.CodeBook.DetachFromDisposeScope();
        if (bias is not null)
        {
            if (bias.Dimensions != 1 || bias.shape[0] != OutFeatures)
            {
                throw new ArgumentException($"The bias must be [{OutFeatures}], got [{string.Join(", ", bias.shape)}].", nameof(bias));
            }

            this.bias = new Parameter(bias.detach().clone().to(codes.device), requires_grad: false);
            this.bias.DetachFromDisposeScope();
        }

        RegisterComponents();
    }

    /// <summary>Bits per code.</summary>
    public int Bits { get; }

    /// <summary>Values per scale.</summary>
    public int BlockSize { get; }

    /// <summary>Output features (rows of the weight).</summary>
    public long OutFeatures { get; }

    /// <summary>Input features (columns of the weight).</summary>
    public long InFeatures { get; }

    /// <summary>The quantizer's name, e.g. <c>nf4</c>.</summary>
    public string QuantizerName { get; }

    /// <summary>The frozen bias, or null.</summary>
    public Tensor? Bias => bias;

    /// <summary>The packed weight's tensors (owned by this module; do not dispose them).</summary>
    public PackedWeight Weight => new(codes, scales, offsets, code_book, Bits, BlockSize, OutFeatures, InFeatures);

    /// <summary>Storage of the packed weight in bytes (codes, scales, offsets, code book).</summary>
    public long StorageBytes => codes.NumberOfElements + (4 * (scales.NumberOfElements + (offsets?.NumberOfElements ?? 0) + code_book.NumberOfElements));

    /// <inheritdoc/>
    public override Tensor forward(Tensor input) => Lora.QuantizedLinear(input, Weight, bias);

    /// <summary>The dense weight deq(W) [out, in] in <paramref name="dtype"/> (the caller owns it).</summary>
    public Tensor Dequantize(ScalarType dtype = ScalarType.Float32) => TorchCodec.Dequantize(Weight, dtype);

    /// <summary>The weight as a core <see cref="QuantizedTensor"/> (copied to the CPU).</summary>
    public QuantizedTensor ToQuantizedTensor() => Weight.ToQuantizedTensor(QuantizerName);

    /// <inheritdoc/>
    protected override Module _to(ScalarType dtype, bool non_blocking) => this; // packed data keeps its dtypes

    /// <inheritdoc/>
    protected override Module _to(Device device, ScalarType dtype, bool non_blocking) => MoveTo(device, non_blocking);

    /// <inheritdoc/>
    protected override Module _to(DeviceType deviceType, int deviceIndex, bool non_blocking) => MoveTo(new Device(deviceType, deviceIndex), non_blocking);

    private QuantizedLinear MoveTo(Device device, bool nonBlocking)
    {
        if (codes.device == device)
        {
            return this;
        }

        codes = Move(codes, "codes");
        scales = Move(scales, "scales");
        code_book = Move(code_book, "code_book");
        if (offsets is not null)
        {
            offsets = Move(offsets, "offsets");
        }

        if (bias is not null)
        {
            var moved = new Parameter(bias.to(device, non_blocking: nonBlocking).detach(), requires_grad: false);
            moved.DetachFromDisposeScope();
            bias.Dispose();
            bias = moved;
            register_parameter("bias", moved);
        }

        return this;

        Tensor Move(Tensor t, string name)
        {
            Tensor moved = t.to(device, non_blocking: nonBlocking).DetachFromDisposeScope();
            t.Dispose();
            register_buffer(name, moved);
            return moved;
        }
    }
}
