using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace LoftQNet.IO;

/// <summary>
/// File-system primitives the output staging relies on: physical path resolution (symbolic links at any level,
/// <c>..</c>, trailing separators), a rename that never replaces an existing destination, and a process identity
/// (pid plus start time) that survives pid reuse.
/// </summary>
internal static unsafe class SafeFileSystem
{
    private const int MaxLinkHops = 40; // Linux's MAXSYMLINKS
    private const int AtFdCwd = -100;
    private const uint RenameNoReplace = 1;
    private const int EExist = 17, EInval = 22, ENoSys = 38, ENotEmpty = 39;

    private static readonly delegate* unmanaged<int, byte*, int, byte*, uint, int> s_renameat2 = LoadRenameAt2();

    /// <summary>How paths compare on this platform's usual file systems.</summary>
    public static StringComparison PathComparison =>
        OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    /// <summary>
    /// The physical absolute path of <paramref name="path"/>: every symbolic link along it is followed, <c>.</c> and
    /// <c>..</c> are applied to the resolved directories (as the kernel does, not textually), and trailing separators
    /// are dropped. Components that do not exist yet are appended as written.
    /// </summary>
    /// <exception cref="IOException">More than 40 links were followed (a loop).</exception>
    public static string RealPath(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string absolute = Path.IsPathRooted(path) ? path : Path.Join(Directory.GetCurrentDirectory(), path);
        int hops = 0;
        return Resolve(absolute, ref hops);
    }

    private static string Resolve(string absolute, ref int hops)
    {
        string root = Path.GetPathRoot(absolute) ?? "/";
        var parts = new Stack<string>(absolute[root.Length..]
            .Split([Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar], StringSplitOptions.RemoveEmptyEntries)
            .Reverse());
        string current = root;
        bool missing = false;
        while (parts.Count > 0)
        {
            string part = parts.Pop();
            if (part == ".")
            {
                continue;
            }

            if (part == "..")
            {
                current = Path.GetDirectoryName(current) ?? current;
                continue;
            }

            string candidate = Path.Join(current, part);
            if (!missing)
            {
                var info = new FileInfo(candidate);
                if (info.LinkTarget is string target)
                {
                    if (++hops > MaxLinkHops)
                    {
                        throw new IOException($"Too many levels of symbolic links while resolving '{absolute}'.");
                    }

                    // Resolve the link's target from the directory holding the link, then go on with the rest.
                    string targetAbsolute = Path.IsPathRooted(target) ? target : Path.Join(current, target);
                    current = Resolve(targetAbsolute, ref hops);
                    continue;
                }

                missing = !info.Exists && !Directory.Exists(candidate);
            }

            current = candidate;
        }

        return Path.TrimEndingDirectorySeparator(current);
    }

    /// <summary>Whether <paramref name="inner"/> equals <paramref name="outer"/> or lies below it (both physical paths).</summary>
    public static bool IsSameOrInside(string inner, string outer)
    {
        if (string.Equals(inner, outer, PathComparison))
        {
            return true;
        }

        string prefix = outer.EndsWith(Path.DirectorySeparatorChar) ? outer : outer + Path.DirectorySeparatorChar;
        return inner.StartsWith(prefix, PathComparison);
    }

    /// <summary>
    /// Renames directory <paramref name="source"/> to <paramref name="destination"/>, failing when the destination
    /// exists in any form (even an empty directory). On Linux this is one atomic <c>renameat2(RENAME_NOREPLACE)</c>
    /// call; elsewhere (and on file systems without it) an existence check followed by the rename, which Windows
    /// itself refuses to let replace anything.
    /// </summary>
    /// <exception cref="DestinationExistsException">The destination exists.</exception>
    public static void MoveDirectoryNoReplace(string source, string destination)
    {
        if (s_renameat2 != null)
        {
            int result = InvokeRenameAt2(source, destination);
            if (result == 0)
            {
                return;
            }

            int errno = Marshal.GetLastSystemError();
            if (errno is EExist or ENotEmpty)
            {
                throw new DestinationExistsException(destination);
            }

            if (errno is not (EInval or ENoSys))
            {
                throw new IOException($"Cannot rename '{source}' to '{destination}': {Marshal.GetPInvokeErrorMessage(errno)}.");
            }

            // The file system does not support RENAME_NOREPLACE: fall through to check-then-rename.
        }

        if (Directory.Exists(destination) || File.Exists(destination) || new FileInfo(destination).LinkTarget is not null)
        {
            throw new DestinationExistsException(destination);
        }

        Directory.Move(source, destination);
    }

    /// <summary>This process's start-time token (see <see cref="ProcessStartToken(int)"/>).</summary>
    public static long CurrentProcessStartToken { get; } = ProcessStartToken(Environment.ProcessId) ?? 0;

    /// <summary>
    /// A number that identifies when process <paramref name="pid"/> started, so that a recycled pid is not taken
    /// for the original process: on Linux the start time in clock ticks since boot (<c>/proc/&lt;pid&gt;/stat</c>
    /// field 22, exact), elsewhere the start time in whole seconds since the Unix epoch. Null when no such process
    /// exists (or it cannot be inspected).
    /// </summary>
    public static long? ProcessStartToken(int pid)
    {
        try
        {
            if (OperatingSystem.IsLinux())
            {
                string stat = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat");
                string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                return long.Parse(fields[19], NumberStyles.Integer, CultureInfo.InvariantCulture); // field 22 overall
            }

            using Process p = Process.GetProcessById(pid);
            return p.HasExited ? null : new DateTimeOffset(p.StartTime.ToUniversalTime()).ToUnixTimeSeconds();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException or FormatException or IndexOutOfRangeException or System.ComponentModel.Win32Exception or NotSupportedException)
        {
            return null;
        }
    }

    /// <summary>
    /// Whether process <paramref name="pid"/> is running and, when <paramref name="startToken"/> is given, is the
    /// same process that recorded it (not a later process that reused the pid).
    /// </summary>
    public static bool IsProcessAlive(int pid, long? startToken)
    {
        if (pid <= 0)
        {
            return false;
        }

        long? now = ProcessStartToken(pid);
        if (now is null)
        {
            return false;
        }

        if (startToken is null)
        {
            return true;
        }

        long tolerance = OperatingSystem.IsLinux() ? 0 : 2; // seconds elsewhere: allow for rounding of the start time
        return Math.Abs(now.Value - startToken.Value) <= tolerance;
    }

    private static int InvokeRenameAt2(string source, string destination)
    {
        byte[] from = NulTerminated(source), to = NulTerminated(destination);
        fixed (byte* f = from, t = to)
        {
            Marshal.SetLastSystemError(0);
            return s_renameat2(AtFdCwd, f, AtFdCwd, t, RenameNoReplace);
        }
    }

    private static byte[] NulTerminated(string s)
    {
        byte[] bytes = new byte[System.Text.Encoding.UTF8.GetByteCount(s) + 1];
        System.Text.Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }

    private static delegate* unmanaged<int, byte*, int, byte*, uint, int> LoadRenameAt2()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        foreach (string name in new[] { "libc.so.6", "libc" })
        {
            if (NativeLibrary.TryLoad(name, out IntPtr lib) && NativeLibrary.TryGetExport(lib, "renameat2", out IntPtr fn))
            {
                return (delegate* unmanaged<int, byte*, int, byte*, uint, int>)fn;
            }
        }

        return null;
    }
}

/// <summary>A no-replace rename found its destination already present.</summary>
internal sealed class DestinationExistsException(string destination)
    : IOException($"'{destination}' already exists.")
{
    public string Destination { get; } = destination;
}
