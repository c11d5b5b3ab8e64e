using System.Text.Json;
using LoftQNet.IO;

namespace LoftQNet.Cli;

/// <summary>Process exit codes of <c>loftq</c>.</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    public const int Failure = 1;
    public const int BadInput = 2;

    /// <summary>Cancelled by Ctrl+C (SIGINT): 128 + 2, as a shell reports a process killed by that signal.</summary>
    public const int Interrupted = 130;

    /// <summary>Cancelled by SIGHUP (the terminal went away): 128 + 1.</summary>
    public const int HungUp = 129;

    /// <summary>Cancelled by SIGTERM: 128 + 15.</summary>
    public const int Terminated = 143;

    /// <summary>Whether an exception means the user's input (a file, a tensor, an option) is at fault.</summary>
    public static bool IsBadInput(Exception e) => e is ArgumentException
        or SafeTensorsFormatException
        or CheckpointFormatException
        or FileNotFoundException
        or DirectoryNotFoundException
        or InvalidDataException
        or JsonException
        or KeyNotFoundException
        or OverflowException
        or NotFiniteNumberException
        or LoftQNet.Pipeline.DeviceUnavailableException;
}
