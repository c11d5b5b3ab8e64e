using LoftQNet.Modules;
using LoftQNet.Numerics;

namespace LoftQNet.Tests.Modules;

public class ModuleTests
{
    private sealed class Container : Module
    {
    }

    [Fact]
    public void LinearForwardMatchesNaiveLoop()
    {
        using var layer = new Linear(Matrix.RandomNormal(5, 7, 1), Matrix.RandomNormal(1, 5, 2));
        using Matrix x = Matrix.RandomNormal(3, 7, 3);
        using Matrix y = layer.Forward(x);
        for (int i = 0; i < 3; i++)
        {
            for (int o = 0; o < 5; o++)
            {
                double sum = layer.Bias![0, o];
                for (int k = 0; k < 7; k++)
                {
                    sum += (double)x[i, k] * layer.Weight[o, k];
                }

                Assert.Equal(sum, y[i, o], 1e-5);
            }
        }

        Assert.Equal(["weight", "bias"], layer.NamedParameters().Select(p => p.Key));
        Assert.Equal((7, 5), (layer.InFeatures, layer.OutFeatures));
    }

    [Fact]
    public void NamedParametersAndModulesUseDottedPaths()
    {
        using var root = new Container();
        var block = new Container();
        block.RegisterModule("q_proj", new Linear(Matrix.Zeros(2, 3)));
        block.RegisterParameter("scale", Matrix.Zeros(1, 3));
        root.RegisterModule("layers0", block);
        Assert.Equal(["layers0.scale", "layers0.q_proj.weight"], root.NamedParameters().Select(p => p.Key));
        Assert.Equal(["layers0", "layers0.q_proj"], root.NamedModules().Select(m => m.Key));

        using Module old = block.ReplaceModule("q_proj", new Linear(Matrix.Zeros(4, 3)));
        Assert.Equal(2, ((Linear)old).OutFeatures);
        Assert.Equal(4, ((Linear)block.Children[0].Value).OutFeatures);
        Assert.Throws<KeyNotFoundException>(() => block.ReplaceModule("k_proj", new Container()));
    }

    [Fact]
    public void RejectsDuplicateDottedAndEmptyNames()
    {
        using var m = new Container();
        m.RegisterParameter("w", Matrix.Zeros(1, 1));
        Assert.Contains("already has", Assert.Throws<ArgumentException>(() => m.RegisterParameter("w", Matrix.Zeros(1, 1))).Message);
        Assert.Throws<ArgumentException>(() => m.RegisterModule("w", new Container()));
        Assert.Contains("'.'", Assert.Throws<ArgumentException>(() => m.RegisterParameter("a.b", Matrix.Zeros(1, 1))).Message);
        Assert.Throws<ArgumentException>(() => m.RegisterModule("x.y", new Container()));
        Assert.Throws<ArgumentException>(() => m.RegisterParameter(string.Empty, Matrix.Zeros(1, 1)));
        Assert.Throws<ArgumentException>(() => m.RegisterModule("self", m));
    }

    [Fact]
    public void DisposeReleasesParameters()
    {
        var weight = Matrix.Zeros(2, 2);
        var layer = new Linear(weight);
        layer.Dispose();
        Assert.Throws<ObjectDisposedException>(() => weight.Span.ToArray());
    }
}
