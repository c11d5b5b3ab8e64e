namespace LoftQNet.Numerics;

/// <summary>
/// Process-wide compute settings: how many threads the numeric kernels may use.
/// </summary>
/// <remarks>
/// The default is <see cref="Environment.ProcessorCount"/>, overridable by the <c>LOFTQ_NUM_THREADS</c> environment
/// variable. A run with <see cref="Pipeline.LoftQOptions.Threads"/> set uses that many threads for its own work only
/// (the setting flows with the call, into the workers it starts) and leaves this process-wide value alone, so
/// concurrent runs with different thread counts do not disturb each other. Work that is already running in parallel (for example several layers at once) enters
/// <see cref="EnterSerialRegion"/> so that the kernels it calls stay single-threaded and the machine is not
/// oversubscribed. Results never depend on the thread count.
/// </remarks>
public static class ComputeSettings
{
    private static readonly AsyncLocal<int> s_callThreads = new();
    private static int s_maxThreads = ReadEnvironment();

    [ThreadStatic]
    private static int t_serialDepth;

    /// <summary>The most threads one kernel call may use (≥ 1).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is below 1.</exception>
    public static int MaxThreads
    {
        get => Volatile.Read(ref s_maxThreads);
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1, nameof(MaxThreads));
            Volatile.Write(ref s_maxThreads, value);
        }
    }

    /// <summary>The most threads one kernel call may use here: the innermost <see cref="UseThreads"/> scope's count on this call path, else <see cref="MaxThreads"/>.</summary>
    internal static int EffectiveMaxThreads => s_callThreads.Value is int n and > 0 ? n : MaxThreads;

    /// <summary>
    /// Makes kernels called on this logical call path (this thread, the awaits after it and the parallel workers it
    /// starts) use up to <paramref name="threads"/> threads until the scope is disposed, without touching
    /// <see cref="MaxThreads"/>. Scopes nest; dispose them in reverse order (a <c>using</c> does).
    /// </summary>
    internal static ThreadScope UseThreads(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        int previous = s_callThreads.Value;
        s_callThreads.Value = threads;
        return new ThreadScope(previous);
    }

    /// <summary>Whether the calling thread is inside a serial region (kernels then run on it alone).</summary>
    internal static bool IsSerialRegion => t_serialDepth > 0;

    /// <summary>Makes kernels called on this thread single-threaded until the returned scope is disposed.</summary>
    internal static SerialRegion EnterSerialRegion()
    {
        t_serialDepth++;
        return default;
    }

    /// <summary>
    /// The number of threads to use for <paramref name="work"/> units when each thread should get at least
    /// <paramref name="minWorkPerThread"/>: 1 inside a serial region, never more than <see cref="MaxThreads"/>.
    /// </summary>
    internal static int ThreadsFor(long work, long minWorkPerThread)
    {
        if (t_serialDepth > 0 || work <= minWorkPerThread)
        {
            return 1;
        }

        long byWork = work / Math.Max(1, minWorkPerThread);
        return (int)Math.Clamp(byWork, 1, EffectiveMaxThreads);
    }

    /// <summary>
    /// Runs <paramref name="body"/> for every index in [0, <paramref name="count"/>) on up to
    /// <paramref name="threads"/> threads; each worker body runs inside a serial region.
    /// </summary>
    internal static void ParallelFor(int count, int threads, Action<int> body)
    {
        if (threads <= 1 || count <= 1)
        {
            for (int i = 0; i < count; i++)
            {
                body(i);
            }

            return;
        }

        Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = threads }, i =>
        {
            using SerialRegion region = EnterSerialRegion();
            body(i);
        });
    }

    private static int ReadEnvironment()
    {
        string? value = Environment.GetEnvironmentVariable("LOFTQ_NUM_THREADS");
        return int.TryParse(value, out int n) && n >= 1 ? n : Environment.ProcessorCount;
    }

    /// <summary>A scope returned by <see cref="UseThreads"/>; disposing it restores the enclosing setting.</summary>
    internal readonly struct ThreadScope : IDisposable
    {
        private readonly int _previous;
        private readonly bool _active;

        internal ThreadScope(int previous)
        {
            _previous = previous;
            _active = true;
        }

        /// <summary>Restores the thread count of the enclosing scope (none: <see cref="MaxThreads"/>).</summary>
        public void Dispose()
        {
            if (_active)
            {
                s_callThreads.Value = _previous;
            }
        }
    }

    /// <summary>A scope returned by <see cref="EnterSerialRegion"/>; dispose it to leave the region.</summary>
    internal readonly struct SerialRegion : IDisposable
    {
        /// <summary>Leaves the serial region.</summary>
        public void Dispose() => t_serialDepth--;
    }
}
