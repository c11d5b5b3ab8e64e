using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using Module = TorchSharp.torch.nn.Module;

namespace LoftQNet.TorchSharp;

/// <summary>
/// Where a child module lives in its parent, and how to put another module there: a field whose declared type can
/// hold the replacement, an element of a <c>ModuleList</c> / <c>ModuleDict</c>, or an entry of a <c>Sequential</c>.
/// TorchSharp models call their children through such fields with <c>.forward(...)</c>, so forward hooks are no
/// substitute: the reference itself must change.
/// </summary>
internal abstract class ModuleSlot
{
    protected ModuleSlot(Module parent, string name, string path)
    {
        Parent = parent;
        Name = name;
        Path = path;
    }

    public Module Parent { get; }

    public string Name { get; }

    public string Path { get; }

    public abstract void Replace(Module replacement);

    /// <summary>Finds how <paramref name="parent"/> holds its child <paramref name="name"/>, or throws saying why it cannot be replaced by <paramref name="replacementType"/>.</summary>
    public static ModuleSlot Find(Module parent, string name, Module child, string path, Type replacementType)
    {
        Type parentType = parent.GetType();
        if (IsGeneric(parentType, typeof(ModuleList<>), out Type? listItem))
        {
            if (!listItem!.IsAssignableFrom(replacementType))
            {
                throw new InvalidOperationException($"Cannot replace '{path}': it is an element of a ModuleList<{listItem.Name}>, which cannot hold a {replacementType.Name}. Declare the list as ModuleList<Module<Tensor, Tensor>> so LoftQ can swap its elements.");
            }

            return new ListSlot(parent, name, path, int.Parse(name, System.Globalization.CultureInfo.InvariantCulture));
        }

        if (IsGeneric(parentType, typeof(ModuleDict<>), out Type? dictItem))
        {
            if (!dictItem!.IsAssignableFrom(replacementType))
            {
                throw new InvalidOperationException($"Cannot replace '{path}': it is an entry of a ModuleDict<{dictItem.Name}>, which cannot hold a {replacementType.Name}. Declare the dictionary as ModuleDict<Module<Tensor, Tensor>> so LoftQ can swap its entries.");
            }

            return new DictSlot(parent, name, path);
        }

        if (parent is Sequential sequential)
        {
            return SequentialSlot.Create(sequential, name, path, child);
        }

        var fields = new List<FieldInfo>();
        var unfit = new List<FieldInfo>();
        for (Type? t = parentType; t is not null && t != typeof(Module); t = t.BaseType)
        {
            foreach (FieldInfo f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                if (!typeof(Module).IsAssignableFrom(f.FieldType) && !f.FieldType.IsInterface)
                {
                    continue;
                }

                if (!ReferenceEquals(f.GetValue(parent), child))
                {
                    continue;
                }

                (f.FieldType.IsAssignableFrom(replacementType) ? fields : unfit).Add(f);
            }
        }

        if (unfit.Count > 0)
        {
            FieldInfo f = unfit[0];
            throw new InvalidOperationException(
                $"Cannot replace '{path}': the field '{f.DeclaringType!.Name}.{f.Name}' is declared as '{Describe(f.FieldType)}', which cannot hold a {replacementType.Name}. " +
                $"Declare it as 'Module<Tensor, Tensor>' (and call it with .forward or .call) so LoftQ.Initialize can swap it, or leave '{path}' out of LoftQOptions.Targets.");
        }

        if (fields.Count == 0)
        {
            throw new InvalidOperationException(
                $"Cannot replace '{path}': '{parentType.Name}' registers it as child '{name}' but holds it in no field LoftQ can find, so swapping the registration alone would not change what forward calls. " +
                "Hold the child in a field declared as 'Module<Tensor, Tensor>', a ModuleList or a ModuleDict.");
        }

        return new FieldSlot(parent, name, path, fields);
    }

    private static bool IsGeneric(Type type, Type definition, out Type? argument)
    {
        for (Type? t = type; t is not null; t = t.BaseType)
        {
            if (t.IsGenericType && t.GetGenericTypeDefinition() == definition)
            {
                argument = t.GetGenericArguments()[0];
                return true;
            }
        }

        argument = null;
        return false;
    }

    private static string Describe(Type t) => t.IsGenericType
        ? $"{t.Name[..t.Name.IndexOf('`', StringComparison.Ordinal)]}<{string.Join(", ", t.GetGenericArguments().Select(Describe))}>"
        : t.Name;

    protected void Reregister(Module replacement)
    {
        Parent.register_module(Name, null!);
        Parent.register_module(Name, replacement);
    }

    private sealed class FieldSlot(Module parent, string name, string path, List<FieldInfo> fields) : ModuleSlot(parent, name, path)
    {
        public override void Replace(Module replacement)
        {
            foreach (FieldInfo f in fields)
            {
                f.SetValue(Parent, replacement);
            }

            Reregister(replacement);
        }
    }

    private sealed class ListSlot(Module parent, string name, string path, int index) : ModuleSlot(parent, name, path)
    {
        public override void Replace(Module replacement)
        {
            PropertyInfo indexer = Parent.GetType().GetProperties().First(p => p.GetIndexParameters() is [{ ParameterType: var t }] && t == typeof(int) && p.CanWrite);
            indexer.SetValue(Parent, replacement, [index]);
            Reregister(replacement);
        }
    }

    private sealed class DictSlot(Module parent, string name, string path) : ModuleSlot(parent, name, path)
    {
        public override void Replace(Module replacement)
        {
            // ModuleDict keeps an ordered list and a dictionary: update both so iteration and lookup agree.
            Type type = Parent.GetType();
            FieldInfo? list = FindField(type, "_list");
            FieldInfo? dict = FindField(type, "_dict");
            if (list?.GetValue(Parent) is not System.Collections.IList items || dict?.GetValue(Parent) is not System.Collections.IDictionary map)
            {
                throw new InvalidOperationException($"Cannot replace '{Path}': this TorchSharp version's ModuleDict does not keep its entries where LoftQ expects (_list/_dict).");
            }

            for (int i = 0; i < items.Count; i++)
            {
                object entry = items[i]!;
                FieldInfo key = entry.GetType().GetField("Item1")!;
                if ((string)key.GetValue(entry)! == Name)
                {
                    items[i] = Activator.CreateInstance(entry.GetType(), Name, replacement);
                }
            }

            map[Name] = replacement;
            Reregister(replacement);
        }
    }

    private sealed class SequentialSlot(Module parent, string name, string path, System.Collections.IList modules, int index) : ModuleSlot(parent, name, path)
    {
        public static SequentialSlot Create(Sequential sequential, string name, string path, Module child)
        {
            // Sequential keeps its children in a private list that its forward iterates; swap the element there.
            FieldInfo? field = FindField(typeof(Sequential), "_modules");
            if (field?.GetValue(sequential) is not System.Collections.IList modules)
            {
                throw new InvalidOperationException($"Cannot replace '{path}': this TorchSharp version's Sequential does not keep its children where LoftQ expects (_modules). Build the model with fields declared as Module<Tensor, Tensor> or a ModuleList instead.");
            }

            for (int i = 0; i < modules.Count; i++)
            {
                if (ReferenceEquals(modules[i], child))
                {
                    return new SequentialSlot(sequential, name, path, modules, i);
                }
            }

            throw new InvalidOperationException($"Cannot replace '{path}': the Sequential does not list it among the modules its forward calls.");
        }

        public override void Replace(Module replacement)
        {
            modules[index] = replacement;
            Reregister(replacement);
        }
    }

    private static FieldInfo? FindField(Type type, string name)
    {
        for (Type? t = type; t is not null; t = t.BaseType)
        {
            FieldInfo? f = t.GetField(name, BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public | BindingFlags.DeclaredOnly);
            if (f is not null)
            {
                return f;
            }
        }

        return null;
    }
}
