namespace LoftQNet.IO;

/// <summary>A safetensors file is malformed; the message names the file and the problem.</summary>
public sealed class SafeTensorsFormatException : Exception
{
    /// <summary>Creates the exception with a message.</summary>
    public SafeTensorsFormatException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and the underlying cause.</summary>
    public SafeTensorsFormatException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception without a message (prefer the other constructors).</summary>
    public SafeTensorsFormatException()
        : base("Malformed safetensors file.")
    {
    }
}

/// <summary>A Hugging Face checkpoint directory (config.json, shard index) is malformed; the message names the file and the key.</summary>
public sealed class CheckpointFormatException : Exception
{
    /// <summary>Creates the exception with a message.</summary>
    public CheckpointFormatException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and the underlying cause.</summary>
    public CheckpointFormatException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception without a message (prefer the other constructors).</summary>
    public CheckpointFormatException()
        : base("Malformed checkpoint.")
    {
    }
}
