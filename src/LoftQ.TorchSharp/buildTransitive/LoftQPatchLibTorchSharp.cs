// Compiled by MSBuild's RoslynCodeTaskFactory from LoftQ.TorchSharp.targets; not part of the library assembly.
#nullable enable
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

/// <summary>
/// Marks the GLIBCXX_3.4.32 version need of libLibTorchSharp.so weak (ELF64 little-endian, SHT_GNU_verneed),
/// writing the result next to the file and renaming it over, so a hard link into the NuGet cache is never modified.
/// </summary>
public sealed class LoftQPatchLibTorchSharp : Task
{
    private const string Version = "GLIBCXX_3.4.32";
    private const uint ShtGnuVerneed = 0x6ffffffe;
    private const ushort VerFlgWeak = 0x2;

    public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();

    public string Mode { get; set; } = "auto";

    public override bool Execute()
    {
        string mode = (Mode ?? "auto").Trim().ToLowerInvariant();
        if (mode != "auto" && mode != "true")
        {
            Log.LogError("LoftQTorchSharpNativeFix must be 'auto', 'true' or 'false', got '{0}'.", Mode);
            return false;
        }

        if (mode == "auto")
        {
            string? libstdcxx = FindSystemLibStdCxx();
            if (libstdcxx != null && Contains(File.ReadAllBytes(libstdcxx), Encoding.ASCII.GetBytes(Version + "\0")))
            {
                Log.LogMessage(MessageImportance.Low, "LoftQ.TorchSharp: {0} provides {1}; libLibTorchSharp.so is left as shipped.", libstdcxx, Version);
                return true;
            }
        }

        foreach (ITaskItem item in Files)
        {
            string path = item.GetMetadata("FullPath");
            try
            {
                byte[] bytes = File.ReadAllBytes(path);
                int changed = MarkWeak(bytes, out string? problem);
                if (problem != null)
                {
                    Log.LogWarning("LoftQ.TorchSharp: {0} was not patched: {1}", path, problem);
                    continue;
                }

                if (changed == 0)
                {
                    continue; // already weak (an earlier build), or no such version need
                }

                DateTime stamp = File.GetLastWriteTimeUtc(path);
                string temp = path + ".loftq-tmp";
                File.WriteAllBytes(temp, bytes);
                File.SetLastWriteTimeUtc(temp, stamp);
                File.Replace(temp, path, null);
                Log.LogMessage(MessageImportance.Normal, "LoftQ.TorchSharp: marked the {0} version need weak in {1} (the system libstdc++ lacks it).", Version, path);
            }
            catch (IOException e)
            {
                Log.LogError("LoftQ.TorchSharp: could not patch {0}: {1}", path, e.Message);
                return false;
            }
            catch (UnauthorizedAccessException e)
            {
                Log.LogError("LoftQ.TorchSharp: could not patch {0}: {1}", path, e.Message);
                return false;
            }
        }

        return !Log.HasLoggedErrors;
    }

    /// <summary>Sets VER_FLG_WEAK on every Vernaux entry named GLIBCXX_3.4.32; returns how many entries changed.</summary>
    private static int MarkWeak(byte[] f, out string? problem)
    {
        problem = null;
        if (f.Length < 64 || f[0] != 0x7f || f[1] != (byte)'E' || f[2] != (byte)'L' || f[3] != (byte)'F')
        {
            problem = "not an ELF file";
            return 0;
        }

        if (f[4] != 2 || f[5] != 1)
        {
            problem = "not a 64-bit little-endian ELF file";
            return 0;
        }

        long shoff = (long)U64(f, 0x28);
        int shentsize = U16(f, 0x3A), shnum = U16(f, 0x3C);
        if (shoff <= 0 || shentsize < 64 || shoff + ((long)shentsize * shnum) > f.Length)
        {
            problem = "section header table out of range";
            return 0;
        }

        int changed = 0;
        for (int s = 0; s < shnum; s++)
        {
            long sh = shoff + ((long)s * shentsize);
            if (U32(f, sh + 4) != ShtGnuVerneed)
            {
                continue;
            }

            long offset = (long)U64(f, sh + 24), size = (long)U64(f, sh + 32);
            uint link = U32(f, sh + 40), count = U32(f, sh + 44);
            if (link >= shnum || offset < 0 || offset + size > f.Length)
            {
                problem = "version-need section out of range";
                return 0;
            }

            long strtab = (long)U64(f, shoff + ((long)link * shentsize) + 24);
            long strsize = (long)U64(f, shoff + ((long)link * shentsize) + 32);
            long need = offset;
            for (uint n = 0; n < count; n++)
            {
                if (need < offset || need + 16 > offset + size)
                {
                    problem = "version-need entry out of range";
                    return 0;
                }

                int auxCount = U16(f, need + 2);
                long aux = need + U32(f, need + 8);
                for (int a = 0; a < auxCount; a++)
                {
                    if (aux < offset || aux + 16 > offset + size)
                    {
                        problem = "version-need aux entry out of range";
                        return 0;
                    }

                    long name = strtab + U32(f, aux + 8);
                    if (name >= strtab && name < strtab + strsize && NameIs(f, name, Version))
                    {
                        int flags = U16(f, aux + 4);
                        if ((flags & VerFlgWeak) == 0)
                        {
                            flags |= VerFlgWeak;
                            f[aux + 4] = (byte)flags;
                            f[aux + 5] = (byte)(flags >> 8);
                            changed++;
                        }
                    }

                    uint next = U32(f, aux + 12);
                    if (next == 0)
                    {
                        break;
                    }

                    aux += next;
                }

                uint nextNeed = U32(f, need + 12);
                if (nextNeed == 0)
                {
                    break;
                }

                need += nextNeed;
            }
        }

        return changed;
    }

    private static string? FindSystemLibStdCxx()
    {
        string[] candidates =
        {
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
            "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
        };
        foreach (string c in candidates)
        {
            if (File.Exists(c))
            {
                return c;
            }
        }

        return null;
    }

    private static bool NameIs(byte[] f, long at, string s)
    {
        if (at + s.Length >= f.Length)
        {
            return false;
        }

        for (int i = 0; i < s.Length; i++)
        {
            if (f[at + i] != (byte)s[i])
            {
                return false;
            }
        }

        return f[at + s.Length] == 0;
    }

    private static bool Contains(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && haystack[i + j] == needle[j])
            {
                j++;
            }

            if (j == needle.Length)
            {
                return true;
            }
        }

        return false;
    }

    private static ushort U16(byte[] f, long i) => (ushort)(f[i] | (f[i + 1] << 8));

    private static uint U32(byte[] f, long i) => (uint)(f[i] | (f[i + 1] << 8) | (f[i + 2] << 16) | (f[i + 3] << 24));

    private static ulong U64(byte[] f, long i) => U32(f, i) | ((ulong)U32(f, i + 4) << 32);
}
