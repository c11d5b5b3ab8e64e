using System.Text;

namespace LoftQNet.Pipeline;

/// <summary>Writes a file under a temporary name in the same directory, then renames it into place.</summary>
internal static class AtomicFile
{
    public static void WriteAllText(string path, string contents)
    {
        string temp = path + $".tmp-{Guid.NewGuid():N}";
        try
        {
            File.WriteAllText(temp, contents, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false));
            File.Move(temp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }
        }
    }
}
