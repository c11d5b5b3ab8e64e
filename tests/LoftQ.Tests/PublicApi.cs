using System.Reflection;
using System.Text;

namespace LoftQNet.Tests;

/// <summary>
/// The public surface of an assembly as sorted text lines, compared with a baseline checked in under tests/api:
/// a change to the public API fails the tests until the baseline is updated on purpose
/// (<c>LOFTQ_UPDATE_API=1 dotnet test</c> rewrites it; review the diff like any other change).
/// </summary>
internal static class PublicApi
{
    public static void AssertMatchesBaseline(Assembly assembly, string baselineName)
    {
        string path = Path.Combine(LoftQNet.Tests.IO.TestFiles.RepoRoot, "tests", "api", baselineName);
        string actual = string.Join('\n', Describe(assembly)) + "\n";
        if (Environment.GetEnvironmentVariable("LOFTQ_UPDATE_API") == "1")
        {
            File.WriteAllText(path, actual);
            return;
        }

        string expected = File.Exists(path) ? File.ReadAllText(path).ReplaceLineEndings("\n") : string.Empty;
        if (expected == actual)
        {
            return;
        }

        var want = expected.Split('\n', StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
        var have = actual.Split('\n', StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
        var report = new StringBuilder($"The public API of {assembly.GetName().Name} differs from tests/api/{baselineName}. If the change is intended, run LOFTQ_UPDATE_API=1 dotnet test and commit the baseline.\n");
        foreach (string line in have.Except(want).Order(StringComparer.Ordinal))
        {
            report.Append("+ ").AppendLine(line);
        }

        foreach (string line in want.Except(have).Order(StringComparer.Ordinal))
        {
            report.Append("- ").AppendLine(line);
        }

        Assert.Fail(report.ToString());
    }

    public static IEnumerable<string> Describe(Assembly assembly)
    {
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        var lines = new List<string>();
        foreach (Type type in assembly.GetExportedTypes().Where(t => !t.FullName!.Contains('<', StringComparison.Ordinal)))
        {
            // (Types whose names hold '<' are the compiler's markers for C# 14 extension blocks; their members are listed on the enclosing class.)
            string kind = type.IsEnum ? "enum" : type.IsInterface ? "interface" : type.IsValueType ? "struct" : type.IsAbstract && type.IsSealed ? "static class" : "class";
            string bases = string.Join(", ", new[] { type.BaseType }.Where(b => b is not null && b != typeof(object) && b != typeof(ValueType) && b != typeof(Enum)).Select(b => Name(b!))
                .Concat(type.GetInterfaces().Select(Name).Order(StringComparer.Ordinal)));
            string typeName = Name(type);
            lines.Add($"{kind} {typeName}{(bases.Length > 0 ? " : " + bases : string.Empty)}");
            foreach (MemberInfo m in type.GetMembers(all))
            {
                string? line = m switch
                {
                    ConstructorInfo c when Visible(c) => $"{typeName}::.ctor({Parameters(c)})",
                    MethodInfo mi when Visible(mi) && !mi.IsSpecialName => $"{typeName}::{(mi.IsStatic ? "static " : string.Empty)}{Name(mi.ReturnType)} {mi.Name}{Generic(mi)}({Parameters(mi)})",
                    PropertyInfo p when Visible(p.GetMethod) || Visible(p.SetMethod) =>
                        $"{typeName}::{Name(p.PropertyType)} {p.Name} {{{(Visible(p.GetMethod) ? " get;" : string.Empty)}{(Visible(p.SetMethod) ? (p.SetMethod!.ReturnParameter.GetRequiredCustomModifiers().Any(t => t.Name == "IsExternalInit") ? " init;" : " set;") : string.Empty)} }}",
                    FieldInfo f when (f.IsPublic || f.IsFamily || f.IsFamilyOrAssembly) && !f.IsSpecialName =>
                        $"{typeName}::{(f.IsLiteral ? "const " : f.IsStatic ? "static " : string.Empty)}{Name(f.FieldType)} {f.Name}{(f.IsLiteral && !type.IsEnum ? " = " + f.GetRawConstantValue() : string.Empty)}",
                    EventInfo e when Visible(e.AddMethod) => $"{typeName}::event {Name(e.EventHandlerType!)} {e.Name}",
                    _ => null,
                };
                if (line is not null)
                {
                    lines.Add(line);
                }
            }
        }

        lines.Sort(StringComparer.Ordinal);
        return lines;
    }

    private static bool Visible(MethodBase? m) => m is not null && (m.IsPublic || m.IsFamily || m.IsFamilyOrAssembly);

    private static string Generic(MethodInfo m) => m.IsGenericMethodDefinition ? "<" + string.Join(", ", m.GetGenericArguments().Select(a => a.Name)) + ">" : string.Empty;

    private static string Parameters(MethodBase m) =>
        string.Join(", ", m.GetParameters().Select(p => $"{(p.IsOut ? "out " : p.ParameterType.IsByRef ? "ref " : string.Empty)}{Name(p.ParameterType)} {p.Name}{(p.HasDefaultValue ? " = " + (p.DefaultValue ?? "null") : string.Empty)}"));

    private static string Name(Type t)
    {
        if (t.IsByRef)
        {
            return Name(t.GetElementType()!);
        }

        if (t.IsArray)
        {
            return Name(t.GetElementType()!) + "[" + new string(',', t.GetArrayRank() - 1) + "]";
        }

        if (t.IsGenericParameter)
        {
            return t.Name;
        }

        string name = t.IsNested ? Name(t.DeclaringType!) + "." + t.Name : (t.Namespace is { Length: > 0 } ns ? ns + "." : string.Empty) + t.Name;
        if (t.IsGenericType)
        {
            int tick = name.LastIndexOf('`');
            name = (tick >= 0 ? name[..tick] : name) + "<" + string.Join(", ", t.GetGenericArguments().Select(Name)) + ">";
        }

        return name;
    }
}
