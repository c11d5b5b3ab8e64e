using System.Text.Json;
using LoftQNet.IO;

namespace LoftQNet.Cli;

/// <summary>Process exit codes of <c>loftq</c>.</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    public const int Failure = 1;
    public const int BadInput = 2;

    /// <summary>Whether an exception means the user's input (a file, a tensor, an option) is at fault.</summary>
    public static bool IsBadInput(Exception e) => e is ArgumentException
        or SafeTensorsFormatException
        or CheckpointFormatException
        or FileNotFoundException
        or DirectoryNotFoundException
        or InvalidDataException
        or JsonException
        or KeyNotFoundException;
}
