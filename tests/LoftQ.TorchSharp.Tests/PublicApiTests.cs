namespace LoftQNet.TorchSharp.Tests;

public sealed class PublicApiTests
{
    [Fact]
    public void ThePublicApiOfLoftQTorchSharpMatchesItsBaseline() =>
        LoftQNet.Tests.PublicApi.AssertMatchesBaseline(typeof(LoraLinear).Assembly, "LoftQ.TorchSharp.txt");
}
