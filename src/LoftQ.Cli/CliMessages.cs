using System.Text.RegularExpressions;

namespace LoftQNet.Cli;

/// <summary>
/// Puts library messages in the CLI's words: the library names its C# options (<c>LoftQOptions.Rank</c>,
/// <c>LoftQOptions.Format = OutputFormat.BitsAndBytesNf4</c>); a CLI user reads the flags (<c>--rank</c>,
/// <c>--format bnb-nf4</c>). Also drops the <c>(Parameter 'x')</c> suffix of <see cref="ArgumentException"/>, which
/// names a C# parameter the CLI user never sees.
/// </summary>
internal static partial class CliMessages
{
    private static readonly Dictionary<string, string> Flags = new(StringComparer.Ordinal)
    {
        ["Bits"] = "--bits",
        ["BitsPatterns"] = "--bits-pattern",
        ["Quantizer"] = "--quantizer",
        ["Rank"] = "--rank",
        ["Iterations"] = "--iters",
        ["BlockSize"] = "--block-size",
        ["Solver"] = "--solver",
        ["Alpha"] = "--alpha",
        ["Seed"] = "--seed",
        ["Targets"] = "--targets",
        ["Format"] = "--format",
        ["DoubleQuant"] = "--double-quant",
        ["Threads"] = "--threads",
        ["Overwrite"] = "--overwrite",
    };

    private static readonly (string Library, string Cli)[] Phrases =
    [
        ("OutputFormat.BitsAndBytesNf4", "bnb-nf4"),
        ("OutputFormat.Peft", "peft"),
        ("set --overwrite", "pass --overwrite"),
        ("use a whole --bits", "use whole --bits"),
        ("The output directory is empty", "The output directory (--out) is empty"),
        ("output directory '", "output directory (--out) '"),
        ("output path '", "output path (--out) '"),
    ];

    /// <summary>The message of <paramref name="e"/> as a CLI user should read it.</summary>
    public static string Describe(Exception e)
    {
        string message = e.Message;
        if (e is ArgumentException { ParamName: { Length: > 0 } name })
        {
            // The framework appends " (Parameter 'name')" in the current culture's words: build that suffix the same way.
            string suffix = new ArgumentException(string.Empty, name).Message;
            if (suffix.Length > 0 && message.EndsWith(suffix, StringComparison.Ordinal))
            {
                message = message[..^suffix.Length];
            }
        }

        return Translate(message);
    }

    /// <summary>Replaces the library's option names in <paramref name="message"/> with the CLI's flags.</summary>
    public static string Translate(string message)
    {
        // "LoftQOptions.Bits = 7" -> "--bits 7"; "LoftQOptions.BitsPatterns entry ('re', 3)" -> "--bits-pattern 're=3'".
        message = PatternEntry().Replace(message, m => $"--bits-pattern '{m.Groups[1].Value}={m.Groups[2].Value}'");
        message = OptionName().Replace(message, m => Flags.TryGetValue(m.Groups[1].Value, out string? flag)
            ? flag + (m.Groups[2].Success ? " " : string.Empty)
            : m.Value);
        foreach ((string library, string cli) in Phrases)
        {
            message = message.Replace(library, cli, StringComparison.Ordinal);
        }

        return message;
    }

    [GeneratedRegex(@"LoftQOptions\.BitsPatterns entry \('(.*?)', (-?\d+)\)")]
    private static partial Regex PatternEntry();

    [GeneratedRegex(@"LoftQOptions\.(\w+)( = )?")]
    private static partial Regex OptionName();
}
