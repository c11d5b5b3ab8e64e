namespace LoftQNet.Pipeline;

/// <summary>What a <see cref="LoftQProgress"/> report is about.</summary>
public enum LoftQProgressKind
{
    /// <summary>The run has planned its work: <see cref="LoftQProgress.Total"/> targets.</summary>
    Started,

    /// <summary>One target matrix is done; <see cref="LoftQProgress.Layer"/> holds its report.</summary>
    LayerCompleted,

    /// <summary>One output shard has been written.</summary>
    ShardWritten,

    /// <summary>All outputs are written and in place.</summary>
    Completed,

    /// <summary>
    /// Something the user should know that does not stop the run; <see cref="LoftQProgress.Message"/> says what
    /// (e.g. a folder left by an earlier, killed run was removed, or a folder could not be deleted).
    /// </summary>
    Notice,
}

/// <summary>A progress report from the checkpoint pipeline, delivered through <see cref="IProgress{T}"/>.</summary>
/// <param name="Kind">What happened.</param>
/// <param name="Completed">Targets finished so far.</param>
/// <param name="Total">Targets in the run.</param>
/// <param name="Layer">The finished target's report, for <see cref="LoftQProgressKind.LayerCompleted"/>.</param>
/// <param name="Message">A human-readable line (e.g. the shard written).</param>
public sealed record LoftQProgress(LoftQProgressKind Kind, int Completed, int Total, LayerReport? Layer = null, string? Message = null);
