using System.Diagnostics;
using System.Text;
using LoftQNet.Cli;
using LoftQNet.IO;

namespace LoftQNet.Tests.IO;

/// <summary>Issue 8, items 8 and 9: valid-but-hostile headers and non-safetensors files get fast, typed errors.</summary>
public sealed class HostileHeaderTests
{
    [Theory]
    [InlineData(SafeTensorsFile.MaxTensors + 1)]
    [InlineData(1_000_000)]
    public void A_header_declaring_too_many_tensors_is_refused_quickly(int count)
    {
        using var dir = new TempDir();
        string path = dir.File("many.safetensors");
        File.WriteAllBytes(path, EmptyTensors(count));
        var clock = Stopwatch.StartNew();
        SafeTensorsFormatException e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("more than 200,000 tensors", e.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");

        var stderr = new StringWriter();
        Assert.Equal(ExitCodes.BadInput, CliApp.Run(["inspect", path], new StringWriter(), stderr, interactive: false));
        Assert.Contains("200,000", stderr.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void A_file_at_the_tensor_limit_opens_and_inspect_streams_it()
    {
        using var dir = new TempDir();
        string path = dir.File("limit.safetensors");
        File.WriteAllBytes(path, EmptyTensors(SafeTensorsFile.MaxTensors));
        using (SafeTensorsFile file = SafeTensorsFile.Open(path))
        {
            Assert.Equal(SafeTensorsFile.MaxTensors, file.Tensors.Count);
        }

        var stdout = new StringWriter();
        Assert.Equal(0, CliApp.Run(["inspect", path, "--json"], stdout, new StringWriter(), interactive: false));
        Assert.Contains("\"tensors\": 200000", stdout.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(SafeTensorsFile.MaxRank + 1)]
    [InlineData(3_000_000)]
    public void A_shape_of_huge_rank_is_refused_quickly(int rank)
    {
        using var dir = new TempDir();
        string path = dir.File("rank.safetensors");
        string shape = string.Join(",", Enumerable.Repeat("1", rank));
        File.WriteAllBytes(path, TestFiles.Build($"{{\"a\":{{\"dtype\":\"U8\",\"shape\":[{shape}],\"data_offsets\":[0,1]}}}}", 1));
        var clock = Stopwatch.StartNew();
        SafeTensorsFormatException e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains($"rank {rank:N0}", e.Message, StringComparison.Ordinal);
        Assert.Contains("limit is 32", e.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
    }

    [Theory]
    [InlineData("[2147483648]")]
    [InlineData("[0, 4294967296]")]
    public void A_dimension_beyond_int_range_is_a_format_error(string shape)
    {
        // TensorShape holds 32-bit dimensions; a larger one (even in an empty tensor) is refused with its value.
        using var dir = new TempDir();
        string path = dir.File("wide.safetensors");
        File.WriteAllBytes(path, TestFiles.Build($"{{\"a\":{{\"dtype\":\"U8\",\"shape\":{shape},\"data_offsets\":[0,1]}}}}", 1));
        SafeTensorsFormatException e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("tensor 'a' has a dimension of", e.Message, StringComparison.Ordinal);
        Assert.Contains("the limit is 2,147,483,647 per dimension", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Rank_32_is_accepted()
    {
        using var dir = new TempDir();
        string path = dir.File("rank32.safetensors");
        string shape = string.Join(",", Enumerable.Repeat("1", 32));
        File.WriteAllBytes(path, TestFiles.Build($"{{\"a\":{{\"dtype\":\"U8\",\"shape\":[{shape}],\"data_offsets\":[0,1]}}}}", 1));
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Assert.Equal(32, file.GetInfo("a").Rank);
    }

    [Theory]
    [InlineData("{\"model_type\": \"llama\"}\n")]                         // a JSON file
    [InlineData("Lorem ipsum dolor sit amet, consectetur adipiscing.")] // text: the first 8 bytes give a huge length
    [InlineData("PK\u0003\u0004\u0000\u0000\u0000\u0000rest")]           // a zip (a PyTorch .bin): a small length, no '{'
    public void A_file_that_is_not_safetensors_is_called_that(string content)
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        File.WriteAllBytes(path, Encoding.Latin1.GetBytes(content));
        SafeTensorsFormatException e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("is not a safetensors file", e.Message, StringComparison.Ordinal);
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
    }

    /// <summary>A header of <paramref name="count"/> empty F32 tensors and no data.</summary>
    private static byte[] EmptyTensors(int count)
    {
        var sb = new StringBuilder(count * 56);
        sb.Append('{');
        for (int i = 0; i < count; i++)
        {
            sb.Append(i == 0 ? string.Empty : ",").Append("\"t").Append(i).Append("\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}");
        }

        sb.Append('}');
        return TestFiles.Build(sb.ToString(), 0);
    }
}
