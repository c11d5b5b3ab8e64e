using LoftQNet.Numerics;

namespace LoftQNet.Tests.Numerics;

public class GaussianTests
{
    [Theory]
    [InlineData(0, 1)]
    [InlineData(0, 7)]
    [InlineData(3, 10)]
    [InlineData(5, 1)]
    [InlineData(11, 100_001)]
    public void FillEqualsSampleElementByElement(long offset, int length)
    {
        float[] filled = new float[length];
        Gaussian.Fill(filled, seed: 77, scale: 2.5f, offset: offset);
        for (int i = 0; i < length; i++)
        {
            Assert.Equal(2.5f * Gaussian.Sample(77, offset + i), filled[i]);
        }
    }

    [Fact]
    public void FillDoesNotDependOnThreads()
    {
        float[] one = new float[200_000], four = new float[200_000];
        // Per-call thread counts (ComputeSettings.UseThreads): the process-wide setting is never changed.
        ComputeSettings.ThreadScope threadScope = default;
        try
        {
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(1);
            Gaussian.Fill(one, 5);
            threadScope.Dispose();
            threadScope = ComputeSettings.UseThreads(4);
            Gaussian.Fill(four, 5);
        }
        finally
        {
            threadScope.Dispose();
        }

        Assert.Equal(one, four);
    }

    [Fact]
    public void SamplesHaveStandardNormalMoments()
    {
        float[] x = new float[400_000];
        Gaussian.Fill(x, 9);
        double mean = x.Average(v => (double)v);
        double variance = x.Average(v => ((double)v - mean) * ((double)v - mean));
        double kurtosis = x.Average(v => Math.Pow(v - mean, 4)) / (variance * variance);
        Assert.InRange(mean, -0.01, 0.01);
        Assert.InRange(variance, 0.99, 1.01);
        Assert.InRange(kurtosis, 2.95, 3.05);
    }
}
