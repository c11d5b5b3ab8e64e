using System.Text.RegularExpressions;

namespace LoftQNet.IO;

/// <summary>Chooses which weight matrices of a checkpoint LoftQ replaces.</summary>
/// <remarks>
/// A candidate is a two-dimensional tensor whose name ends in <c>.weight</c>; its module path is the name without
/// that suffix (e.g. <c>model.layers.0.self_attn.q_proj</c>). A target entry is matched against module paths as
/// follows:
/// <list type="bullet">
/// <item>An entry made only of letters, digits, <c>_</c> and <c>.</c> matches like PEFT's list form: the module
/// path equals it or ends with <c>"." + entry</c> (so <c>q_proj</c> matches every layer's q_proj, and
/// <c>self_attn.q_proj</c> or a full path narrows it).</item>
/// <item>An entry starting with <c>re:</c>, or containing any other character, is a .NET regular expression that
/// must match the whole module path (PEFT's string form uses <c>re.fullmatch</c> likewise); the <c>re:</c>
/// prefix is stripped.</item>
/// </list>
/// </remarks>
internal static class TargetSelector
{
    /// <summary>The module path of a weight tensor's name (<c>model.layers.0.mlp.up_proj.weight</c> → <c>model.layers.0.mlp.up_proj</c>); other names unchanged.</summary>
    internal static string ModulePathOf(string tensorName) =>
        tensorName.EndsWith(".weight", StringComparison.Ordinal) ? tensorName[..^".weight".Length] : tensorName;

    /// <summary>
    /// The names of the weight tensors selected by <paramref name="targets"/> (default:
    /// <see cref="ModelConfig.DefaultTargetModules"/>), in checkpoint order.
    /// </summary>
    /// <exception cref="ArgumentException">An entry is empty or an invalid regular expression, or nothing matches (the message names the targets).</exception>
    public static IReadOnlyList<string> Select(HuggingFaceCheckpoint checkpoint, IReadOnlyList<string>? targets)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        IReadOnlyList<string> list = targets is { Count: > 0 } ? targets : checkpoint.Config.DefaultTargetModules;
        var candidates = new List<(string Tensor, string Module)>();
        foreach (string name in checkpoint.TensorNames)
        {
            if (name.EndsWith(".weight", StringComparison.Ordinal) && checkpoint.GetInfo(name).Rank == 2)
            {
                candidates.Add((name, ModulePathOf(name)));
            }
        }

        List<string> selected = Select(candidates.Select(c => c.Module), list)
            .Select(m => m + ".weight").ToList();
        if (selected.Count == 0)
        {
            throw new ArgumentException($"No two-dimensional '.weight' tensor of the checkpoint at {checkpoint.Directory} matches the targets [{string.Join(", ", list)}].", nameof(targets));
        }

        return selected;
    }

    /// <summary>
    /// The <c>.weight</c> tensors that <paramref name="targets"/> would select by name but that are not two-dimensional
    /// (so LoftQ cannot initialise them and <see cref="Select(HuggingFaceCheckpoint, IReadOnlyList{string}?)"/> leaves them out).
    /// </summary>
    internal static IReadOnlyList<string> SelectNonMatrices(HuggingFaceCheckpoint checkpoint, IReadOnlyList<string>? targets)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        IReadOnlyList<string> list = targets is { Count: > 0 } ? targets : checkpoint.Config.DefaultTargetModules;
        IEnumerable<string> modules = checkpoint.TensorNames
            .Where(n => n.EndsWith(".weight", StringComparison.Ordinal) && checkpoint.GetInfo(n).Rank != 2)
            .Select(n => n[..^".weight".Length]);
        return Select(modules, list).Select(m => m + ".weight").ToList();
    }

    /// <summary>The module paths among <paramref name="modulePaths"/> that <paramref name="targets"/> select (same rules, input order, no error when empty).</summary>
    /// <exception cref="ArgumentException">An entry is empty or an invalid regular expression.</exception>
    public static IReadOnlyList<string> Select(IEnumerable<string> modulePaths, IReadOnlyList<string> targets)
    {
        ArgumentNullException.ThrowIfNull(modulePaths);
        ArgumentNullException.ThrowIfNull(targets);
        var suffixes = new List<string>();
        var regexes = new List<Regex>();
        foreach (string entry in targets)
        {
            if (string.IsNullOrEmpty(entry))
            {
                throw new ArgumentException("Target module entries must not be empty.", nameof(targets));
            }

            if (!entry.StartsWith("re:", StringComparison.Ordinal) && IsPlain(entry))
            {
                suffixes.Add(entry);
                continue;
            }

            string pattern = entry.StartsWith("re:", StringComparison.Ordinal) ? entry[3..] : entry;
            try
            {
                regexes.Add(new Regex($"^(?:{pattern})$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1)));
            }
            catch (ArgumentException ex)
            {
                throw new ArgumentException($"Target '{entry}' is not a valid regular expression: {ex.Message}", nameof(targets), ex);
            }
        }

        var result = new List<string>();
        foreach (string module in modulePaths)
        {
            bool match = suffixes.Exists(s => module == s || (module.Length > s.Length && module.EndsWith(s, StringComparison.Ordinal) && module[^(s.Length + 1)] == '.'))
                || regexes.Exists(r => r.IsMatch(module));
            if (match)
            {
                result.Add(module);
            }
        }

        return result;
    }

    private static bool IsPlain(string entry)
    {
        foreach (char c in entry)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '_' or '.'))
            {
                return false;
            }
        }

        return true;
    }
}
