using LoftQNet.Numerics;

namespace LoftQNet.Cuda.Device;

/// <summary>
/// The BLAS-shaped primitives the device LoftQ loop (<see cref="DeviceLoftQ"/>) is written in. Matrices are row-major
/// float32 with an explicit leading dimension, as in the core's <c>Gemm</c>. The CUDA implementation maps them onto
/// cuBLAS, cuSOLVER, cuRAND and the NVRTC kernels; the tests run the same loop on a host implementation.
/// Operations are queued in order; <see cref="Download{T}"/> and the reductions wait for everything queued before.
/// </summary>
internal interface IDeviceOps
{
    /// <summary>Uninitialised memory for <paramref name="length"/> elements.</summary>
    DeviceBuffer<T> Allocate<T>(long length)
        where T : unmanaged;

    /// <summary>Copies host memory to the device (<paramref name="destination"/>.Length = source length).</summary>
    void Upload<T>(ReadOnlySpan<T> source, DeviceSpan<T> destination)
        where T : unmanaged;

    /// <summary>Copies device memory to the host, waiting for the queued work.</summary>
    void Download<T>(DeviceSpan<T> source, Span<T> destination)
        where T : unmanaged;

    /// <summary>Device-to-device copy of equal-length ranges.</summary>
    void Copy<T>(DeviceSpan<T> source, DeviceSpan<T> destination)
        where T : unmanaged;

    /// <summary>Sets every byte of the range to zero.</summary>
    void Clear<T>(DeviceSpan<T> destination)
        where T : unmanaged;

    /// <summary>C = alpha·op(A)·op(B) + beta·C, row-major (C is m×n, op(A) m×k, op(B) k×n).</summary>
    void Gemm(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha, DeviceSpan<float> a, int lda,
        DeviceSpan<float> b, int ldb, float beta, DeviceSpan<float> c, int ldc);

    /// <summary>Replaces the <paramref name="rows"/> rows (each <paramref name="columns"/> long, rows ≤ columns) by an orthonormal basis of their span.</summary>
    void OrthonormalizeRows(DeviceSpan<float> x, int rows, int columns);

    /// <summary>
    /// Fills the range with standard normal samples, a function of (<paramref name="seed"/>, <paramref name="stream"/>
    /// offset, position) only.
    /// </summary>
    void FillGaussian(DeviceSpan<float> destination, long seed, long stream);

    /// <summary>
    /// Blockwise-quantizes <paramref name="x"/> with <paramref name="codec"/>: codes (one per byte), scales and offsets;
    /// writes <paramref name="w"/> − dequantized into <paramref name="output"/>. Returns the lowest flat index of a value
    /// that could not be quantized (NaN, infinity, an overflowing range), or −1.
    /// </summary>
    long Quantize(
        DeviceCodec codec, DeviceSpan<float> x, DeviceSpan<float> w, DeviceSpan<float> output, DeviceSpan<byte> codes,
        DeviceSpan<float> scales, DeviceSpan<float>? offsets);

    /// <summary>Packs one code per byte into the big-endian bit stream of <see cref="Quantization.QuantizedTensor"/>.</summary>
    void Pack(DeviceSpan<byte> codes, int bits, DeviceSpan<byte> packed);

    /// <summary>Σ x², accumulated in double; waits for the queued work.</summary>
    double SumOfSquares(DeviceSpan<float> x);

    /// <summary>Waits for everything queued.</summary>
    void Synchronize();
}
