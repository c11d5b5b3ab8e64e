namespace LoftQNet.TorchSharp.Tests;

/// <summary>The bundled data under tests/data (the repository root is found by the core tests' helper).</summary>
internal static class TestFiles
{
    public static string Data => System.IO.Path.Combine(LoftQNet.Tests.IO.TestFiles.RepoRoot, "tests", "data");

    public static string FixtureModel => System.IO.Path.Combine(Data, "byte-llama-14m");

    public static string ReferenceLogits => System.IO.Path.Combine(Data, "reference-outputs", "byte-llama-14m-logits.safetensors");

    public static string FortunesVal => System.IO.Path.Combine(Data, "fortunes-val.txt");
}
