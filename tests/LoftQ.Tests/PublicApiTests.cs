namespace LoftQNet.Tests;

public sealed class PublicApiTests
{
    [Fact]
    public void The_public_API_of_LoftQ_matches_its_baseline() =>
        PublicApi.AssertMatchesBaseline(typeof(LoftQ).Assembly, "LoftQ.txt");
}
