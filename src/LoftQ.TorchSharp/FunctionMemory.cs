using System.Reflection;
using TorchSharp;
using static TorchSharp.torch;

namespace LoftQNet.TorchSharp;

/// <summary>
/// Keeps TorchSharp's custom autograd functions (<c>torch.autograd.Function</c>) from holding memory that libtorch
/// would free at once for a built-in operation. Two things outlive their use in TorchSharp 0.107:
/// <list type="bullet">
/// <item>the gradients a backward call hands back: TorchSharp passes their handles to the engine, which takes its own
/// reference, but never disposes the managed wrappers, so inside a caller's dispose scope every layer's input gradient
/// would stay alive until the whole backward pass ends (byte-llama-14m: ~230 MB by its shapes). They are disposed at
/// this thread's next forward or backward call instead (<see cref="HandBack"/>);</item>
/// <item>one <c>torch.empty_like(output)</c> per output, made when the node is built so that a missing output gradient
/// can be materialised as zeros, and kept until the graph is freed (or the dispose scope around the call ends): an
/// output-sized allocation per layer per step that nothing reads when the function calls
/// <c>set_materialize_grads(false)</c>, as ours do. It is disposed right after <c>apply</c> returns
/// (<see cref="ReleaseOutputCache"/>), before the rest of the layer allocates.</item>
/// </list>
/// </summary>
internal static class FunctionMemory
{
    private const BindingFlags Private = BindingFlags.Instance | BindingFlags.NonPublic;

    private static readonly FieldInfo? s_contextNode = typeof(torch.autograd.AutogradContext).GetField("_node", Private);

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<Type, FieldInfo?> s_outputCaches = new();

    [ThreadStatic]
    private static List<Tensor>? t_handedBack;

    [ThreadStatic]
    private static torch.autograd.AutogradContext? t_building;

    [ThreadStatic]
    private static List<Tensor>? t_savedUntilBuilt;

    /// <summary>
    /// Whether the output caches of this TorchSharp version can be found: true for 0.107 (a test holds it, so an
    /// upgrade that renames the fields fails there instead of silently keeping the caches).
    /// </summary>
    internal static bool CanReleaseOutputCache { get; } =
        s_contextNode is not null
        && typeof(torch.autograd.AutogradContext).Assembly.GetType("TorchSharp.torch+autograd+Node`1")?.GetField("_outputCache", Private) is not null;

    /// <summary>Output caches disposed on this thread so far (tests).</summary>
    [ThreadStatic]
    private static long t_released;

    /// <summary>Output caches disposed on this thread so far (tests).</summary>
    internal static long ReleasedOnThisThread => t_released;

    /// <summary>Called first in a function's forward: releases earlier hand-backs and remembers the node being built.</summary>
    public static void EnterForward(torch.autograd.AutogradContext ctx)
    {
        ReleaseHandedBack();
        t_building = ctx;
    }

    /// <summary>Called first in a function's backward: releases earlier hand-backs.</summary>
    public static void EnterBackward() => ReleaseHandedBack();

    /// <summary>Notes a gradient returned to the engine; its wrapper is disposed at this thread's next call.</summary>
    public static Tensor? HandBack(Tensor? gradient)
    {
        if (gradient is not null)
        {
            gradient.DetachFromDisposeScope();
            (t_handedBack ??= []).Add(gradient);
        }

        return gradient;
    }

    /// <summary>
    /// Keeps the wrapper of a tensor made inside forward and passed to <c>save_for_backward</c> alive until TorchSharp
    /// has saved it (after forward returns); <see cref="ReleaseOutputCache"/> disposes it (the saved variable keeps
    /// its own reference).
    /// </summary>
    public static Tensor KeepUntilBuilt(Tensor t)
    {
        t.DetachFromDisposeScope();
        (t_savedUntilBuilt ??= []).Add(t);
        return t;
    }

    /// <summary>
    /// Disposes the <c>empty_like</c> outputs TorchSharp kept for the node whose forward ran last on this thread, and
    /// the wrappers kept by <see cref="KeepUntilBuilt"/>. Call right after <c>apply</c> (also when it throws); the
    /// caches are left alone when the node cannot be found.
    /// </summary>
    public static void ReleaseOutputCache()
    {
        torch.autograd.AutogradContext? ctx = t_building;
        t_building = null;
        if (t_savedUntilBuilt is { Count: > 0 } kept)
        {
            foreach (Tensor t in kept)
            {
                t.Dispose();
            }

            kept.Clear();
        }

        if (ctx is null || s_contextNode?.GetValue(ctx) is not { } node)
        {
            return;
        }

        FieldInfo? field = s_outputCaches.GetOrAdd(node.GetType(), static t => t.GetField("_outputCache", Private));
        if (field?.GetValue(node) is List<Tensor?> cache)
        {
            for (int i = 0; i < cache.Count; i++)
            {
                if (cache[i] is { } t)
                {
                    t.Dispose();
                    cache[i] = null;
                    t_released++;
                }
            }
        }
    }

    private static void ReleaseHandedBack()
    {
        if (t_handedBack is { Count: > 0 } list)
        {
            foreach (Tensor t in list)
            {
                t.Dispose();
            }

            list.Clear();
        }
    }
}
