using System.Text.Json;

namespace LoftQNet.IO;

/// <summary>
/// A streaming pre-check of untrusted JSON (config.json, a shard index) for what <see cref="JsonDocument"/> and
/// <c>JsonNode</c> only notice lazily, with an untyped exception, when a value is read: invalid UTF-8, an escaped
/// unpaired surrogate (<c>"\ud800"</c>) in a key or string, and a key named twice in one object. Grammar and depth
/// errors are left to the caller's parser, which reports them with their position.
/// </summary>
internal static class JsonInputCheck
{
    /// <summary>Throws the exception made by <paramref name="error"/> (given a message naming <paramref name="source"/>) on the first problem.</summary>
    public static void Check(ReadOnlySpan<byte> utf8, string source, Func<string, Exception> error)
    {
        if (!System.Text.Unicode.Utf8.IsValid(utf8))
        {
            throw error($"{source}: not valid UTF-8 text.");
        }

        var reader = new Utf8JsonReader(utf8, new JsonReaderOptions { MaxDepth = 64 });
        var keys = new List<HashSet<string>?>();
        var owners = new List<string>();
        string? property = null;
        try
        {
            while (reader.Read())
            {
                switch (reader.TokenType)
                {
                    case JsonTokenType.StartObject:
                    case JsonTokenType.StartArray:
                        keys.Add(reader.TokenType == JsonTokenType.StartObject ? new HashSet<string>(StringComparer.Ordinal) : null);
                        owners.Add(property is not null ? $"'{property}'" : keys.Count == 1 ? "the top level" : "a nested object");
                        property = null;
                        break;
                    case JsonTokenType.EndObject:
                    case JsonTokenType.EndArray:
                        keys.RemoveAt(keys.Count - 1);
                        owners.RemoveAt(owners.Count - 1);
                        property = null;
                        break;
                    case JsonTokenType.PropertyName:
                        string name = Decode(ref reader, source, error, property is null && keys.Count > 0 ? $"a key in {owners[^1]}" : "a key");
                        if (keys.Count > 0 && keys[^1] is { } seen && !seen.Add(name))
                        {
                            throw error($"{source}: {owners[^1]} lists '{name}' twice.");
                        }

                        property = name;
                        break;
                    case JsonTokenType.String:
                        Decode(ref reader, source, error, property is not null ? $"the value of '{property}'" : "a string");
                        property = null;
                        break;
                    default:
                        property = null;
                        break;
                }
            }
        }
        catch (JsonException)
        {
            // Reported with its position by the caller's parse.
        }
    }

    private static string Decode(ref Utf8JsonReader reader, string source, Func<string, Exception> error, string what)
    {
        try
        {
            return reader.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw error($"{source}: {what} holds an escaped unpaired surrogate (such as \\ud800), which is not valid Unicode.");
        }
    }
}
