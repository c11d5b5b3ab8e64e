using LoftQNet.Numerics;

namespace LoftQNet.Modules;

/// <summary>Gradients of a LoRA linear layer's loss with respect to A, B and the input.</summary>
public sealed class LoraGradients : IDisposable
{
    internal LoraGradients(Matrix da, Matrix db, Matrix dx)
    {
        DA = da;
        DB = db;
        DX = dx;
    }

    /// <summary>∂L/∂A (r×in).</summary>
    public Matrix DA { get; }

    /// <summary>∂L/∂B (out×r).</summary>
    public Matrix DB { get; }

    /// <summary>∂L/∂x (batch×in).</summary>
    public Matrix DX { get; }

    /// <summary>Returns the three matrices to the pool.</summary>
    public void Dispose()
    {
        DA.Dispose();
        DB.Dispose();
        DX.Dispose();
    }
}
