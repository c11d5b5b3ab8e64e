using LoftQNet.Numerics;

namespace LoftQNet.Modules;

/// <summary>
/// A node of a module tree: named parameters (matrices) and named child modules, in registration order.
/// Names must be non-empty, must not contain '.', and must be unique within a module (parameters and children share
/// one namespace); <see cref="NamedParameters"/> joins the path with dots, as PyTorch's state dicts do.
/// </summary>
/// <remarks>A module owns its parameters and children: <see cref="Dispose"/> releases them all.</remarks>
public abstract class Module : IDisposable
{
    private readonly List<KeyValuePair<string, Matrix>> _parameters = [];
    private readonly List<KeyValuePair<string, Module>> _children = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private bool _disposed;

    /// <summary>The parameters registered directly on this module, in registration order.</summary>
    public IReadOnlyList<KeyValuePair<string, Matrix>> Parameters => _parameters;

    /// <summary>The direct children, in registration order.</summary>
    public IReadOnlyList<KeyValuePair<string, Module>> Children => _children;

    /// <summary>Registers a parameter under <paramref name="name"/> (taken, not copied).</summary>
    /// <exception cref="ArgumentException">The name is empty, dotted, or already used on this module.</exception>
    public void RegisterParameter(string name, Matrix parameter)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        ClaimName(name);
        _parameters.Add(new(name, parameter));
    }

    /// <summary>Registers a child module under <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">The name is empty, dotted, or already used on this module, or the child is this module.</exception>
    public void RegisterModule(string name, Module module)
    {
        ArgumentNullException.ThrowIfNull(module);
        if (ReferenceEquals(module, this))
        {
            throw new ArgumentException("A module cannot be its own child.", nameof(module));
        }

        ClaimName(name);
        _children.Add(new(name, module));
    }

    /// <summary>Replaces the child registered as <paramref name="name"/> and returns the old one (not disposed).</summary>
    /// <exception cref="KeyNotFoundException">No child has that name.</exception>
    public Module ReplaceModule(string name, Module replacement)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        int index = _children.FindIndex(c => c.Key == name);
        if (index < 0)
        {
            throw new KeyNotFoundException($"Module {GetType().Name} has no child named '{name}'.");
        }

        Module old = _children[index].Value;
        _children[index] = new(name, replacement);
        return old;
    }

    /// <summary>All parameters of this module and its descendants, with dotted paths (e.g. <c>layers.0.lora_A</c>).</summary>
    public IEnumerable<KeyValuePair<string, Matrix>> NamedParameters()
    {
        foreach (KeyValuePair<string, Matrix> p in _parameters)
        {
            yield return p;
        }

        foreach (KeyValuePair<string, Module> child in _children)
        {
            foreach (KeyValuePair<string, Matrix> p in child.Value.NamedParameters())
            {
                yield return new($"{child.Key}.{p.Key}", p.Value);
            }
        }
    }

    /// <summary>All descendants (not this module) with dotted paths, depth first in registration order.</summary>
    public IEnumerable<KeyValuePair<string, Module>> NamedModules()
    {
        foreach (KeyValuePair<string, Module> child in _children)
        {
            yield return child;
            foreach (KeyValuePair<string, Module> d in child.Value.NamedModules())
            {
                yield return new($"{child.Key}.{d.Key}", d.Value);
            }
        }
    }

    /// <summary>Releases the parameters and the children.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        foreach (KeyValuePair<string, Matrix> p in _parameters)
        {
            p.Value.Dispose();
        }

        foreach (KeyValuePair<string, Module> c in _children)
        {
            c.Value.Dispose();
        }

        GC.SuppressFinalize(this);
    }

    private void ClaimName(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name.Contains('.', StringComparison.Ordinal))
        {
            throw new ArgumentException($"Name '{name}' contains '.', which separates path segments.", nameof(name));
        }

        if (!_names.Add(name))
        {
            throw new ArgumentException($"Module {GetType().Name} already has a parameter or child named '{name}'.", nameof(name));
        }
    }
}
