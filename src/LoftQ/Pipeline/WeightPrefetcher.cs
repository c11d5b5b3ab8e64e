using LoftQNet.IO;
using LoftQNet.Numerics;

namespace LoftQNet.Pipeline;

/// <summary>
/// Reads the targets of one shard in order, one ahead: while target i is being computed, target i + 1 is read from
/// disk and converted to float32 on a worker thread. For a run that computes one target at a time (large layers, or a
/// GPU that finishes a layer faster than the disk delivers the next), this hides the read behind the compute. At most
/// one weight is read ahead; an unconsumed one is released on dispose.
/// </summary>
internal sealed class WeightPrefetcher : IDisposable
{
    private readonly SafeTensorsFile _file;
    private readonly IReadOnlyList<SafeTensorInfo> _targets;
    private readonly Lock _gate = new();
    private (int Index, Task<Matrix> Read)? _ahead;
    private bool _disposed;

    public WeightPrefetcher(SafeTensorsFile file, IReadOnlyList<SafeTensorInfo> targets)
    {
        _file = file;
        _targets = targets;
    }

    /// <summary>Weights read on a worker thread ahead of their turn (for tests).</summary>
    public int ReadAhead { get; private set; }

    /// <summary>
    /// Target <paramref name="index"/>'s weight as stored ([rows, columns], float32); the caller owns it. Starts reading
    /// <paramref name="index"/> + 1. Read errors surface here, for the target they belong to.
    /// </summary>
    public Matrix Take(int index)
    {
        Task<Matrix>? pending = null;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_ahead is { } ahead && ahead.Index == index)
            {
                pending = ahead.Read;
                _ahead = null;
            }
        }

        Matrix weight = pending is null ? Read(_file, _targets[index]) : pending.GetAwaiter().GetResult();
        if (index + 1 < _targets.Count)
        {
            lock (_gate)
            {
                if (!_disposed && _ahead is null)
                {
                    int next = index + 1;
                    _ahead = (next, Task.Run(() => Read(_file, _targets[next])));
                    ReadAhead++;
                }
            }
        }

        return weight;
    }

    /// <summary>Reads <paramref name="info"/>'s weight from <paramref name="file"/> as a float32 [rows, columns] matrix the caller owns.</summary>
    internal static Matrix Read(SafeTensorsFile file, SafeTensorInfo info)
    {
        var m = Matrix.Uninitialized((int)info.Shape[0], (int)info.Shape[1]);
        try
        {
            file.ReadAsSingle(info.Name, m.Span);
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>Waits for a read in flight and releases its weight.</summary>
    public void Dispose()
    {
        (int Index, Task<Matrix> Read)? ahead;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            ahead = _ahead;
            _ahead = null;
        }

        if (ahead is { } a)
        {
            try
            {
                a.Read.GetAwaiter().GetResult().Dispose();
            }
            catch (Exception e) when (e is IOException or SafeTensorsFormatException or ArgumentException or OverflowException)
            {
                // The target it belonged to was never processed; its error is not this run's to report.
            }
        }
    }
}
