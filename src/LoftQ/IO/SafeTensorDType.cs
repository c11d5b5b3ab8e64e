namespace LoftQNet.IO;

/// <summary>The element types of the safetensors format (the names are the header's <c>dtype</c> strings).</summary>
public enum SafeTensorDType
{
    /// <summary>IEEE 754 binary64.</summary>
    F64,

    /// <summary>IEEE 754 binary32.</summary>
    F32,

    /// <summary>IEEE 754 binary16.</summary>
    F16,

    /// <summary>bfloat16 (the top 16 bits of a binary32).</summary>
    BF16,

    /// <summary>Signed 64-bit integer.</summary>
    I64,

    /// <summary>Signed 32-bit integer.</summary>
    I32,

    /// <summary>Signed 16-bit integer.</summary>
    I16,

    /// <summary>Signed 8-bit integer.</summary>
    I8,

    /// <summary>Unsigned 8-bit integer.</summary>
    U8,

    /// <summary>Boolean, one byte per element.</summary>
    Bool,
}

/// <summary>Helpers for <see cref="SafeTensorDType"/>.</summary>
internal static class SafeTensorDTypeExtensions
{
    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F64 or SafeTensorDType.I64 => 8,
        SafeTensorDType.F32 or SafeTensorDType.I32 => 4,
        SafeTensorDType.F16 or SafeTensorDType.BF16 or SafeTensorDType.I16 => 2,
        SafeTensorDType.I8 or SafeTensorDType.U8 or SafeTensorDType.Bool => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), $"Unknown safetensors dtype {(int)dtype}."),
    };

    /// <summary>The header string (<c>"F32"</c>, <c>"BF16"</c>, <c>"BOOL"</c>, ...).</summary>
    public static string ToHeaderString(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.Bool => "BOOL",
        SafeTensorDType.F64 or SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16 or SafeTensorDType.I64
            or SafeTensorDType.I32 or SafeTensorDType.I16 or SafeTensorDType.I8 or SafeTensorDType.U8 => dtype.ToString(),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), $"Unknown safetensors dtype {(int)dtype}."),
    };

    /// <summary>Parses a header dtype string (exact, case-sensitive as the format specifies).</summary>
    /// <returns><see langword="false"/> for a dtype this library does not know.</returns>
    public static bool TryParse(string text, out SafeTensorDType dtype)
    {
        switch (text)
        {
            case "F64": dtype = SafeTensorDType.F64; return true;
            case "F32": dtype = SafeTensorDType.F32; return true;
            case "F16": dtype = SafeTensorDType.F16; return true;
            case "BF16": dtype = SafeTensorDType.BF16; return true;
            case "I64": dtype = SafeTensorDType.I64; return true;
            case "I32": dtype = SafeTensorDType.I32; return true;
            case "I16": dtype = SafeTensorDType.I16; return true;
            case "I8": dtype = SafeTensorDType.I8; return true;
            case "U8": dtype = SafeTensorDType.U8; return true;
            case "BOOL": dtype = SafeTensorDType.Bool; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>
    /// The dtype name PyTorch / transformers use in config files and bitsandbytes quant states
    /// (<c>"float32"</c>, <c>"bfloat16"</c>, <c>"float16"</c>, ...).
    /// </summary>
    public static string ToTorchName(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F64 => "float64",
        SafeTensorDType.F32 => "float32",
        SafeTensorDType.F16 => "float16",
        SafeTensorDType.BF16 => "bfloat16",
        SafeTensorDType.I64 => "int64",
        SafeTensorDType.I32 => "int32",
        SafeTensorDType.I16 => "int16",
        SafeTensorDType.I8 => "int8",
        SafeTensorDType.U8 => "uint8",
        SafeTensorDType.Bool => "bool",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), $"Unknown safetensors dtype {(int)dtype}."),
    };
}
