using System.Globalization;
using System.Numerics.Tensors;
using LoftQNet.Numerics;

namespace LoftQNet.Optimization;

/// <summary>
/// The input side of the activation-aware objective ‖X·(W − Q − B·A)ᵀ‖_F: a layer sees its weight only through its
/// inputs X (tokens × in), so the error that matters is E·H·Eᵀ's trace with H = XᵀX/tokens, the inputs' second
/// moments. With a factor R such that R·Rᵀ = H, that error is ‖E·R‖_F², and the best rank-r B·A for a given Q is
/// the truncated SVD of (W − Q)·R mapped back by R⁻¹ (<see cref="AlternatingOptimizer.Weighting"/>).
/// </summary>
/// <remarks>
/// <para>
/// <b>Damping.</b> H is often singular (fewer tokens than features, dead channels), which leaves directions the
/// objective does not see at all. The factor is taken of H + λ·mean(diag H)·I (λ = <see cref="Damping"/>), which
/// keeps every direction weighted a little and makes R invertible; the whole is then scaled to a mean diagonal of 1
/// (the minimiser does not depend on that scale). If the damped matrix is still not numerically positive definite,
/// λ is raised tenfold until it is (<see cref="EffectiveDamping"/> records the value used).
/// </para>
/// <para>
/// <b>The factor.</b> R is the Cholesky factor L (lower triangular) rather than the symmetric square root H^½:
/// both satisfy R·Rᵀ = H, so ‖E·R‖ and the minimiser B·A are the same (H^½ = L·U for an orthogonal U, and a
/// rank-r truncated SVD commutes with the rotation), while Cholesky costs n³/3 operations instead of an eigen
/// decomposition's ~9n³.
/// </para>
/// <para>
/// <b>Diagonal variant.</b> <see cref="Diagonal"/> keeps only diag H (per-input-channel scaling, like AWQ's
/// statistics): R = diag(√h_jj), cheap to collect and apply, for models whose full H would be too large to hold.
/// </para>
/// <para>
/// When H (after damping) is a multiple of the identity, <see cref="IsIsotropic"/> is true and the objective is the
/// plain ‖W − Q − B·A‖_F: the optimizer then runs plain LoftQ, bit for bit.
/// </para>
/// </remarks>
public sealed class InputWeighting
{
    /// <summary>The default damping λ (1% of the mean input second moment).</summary>
    public const double DefaultDamping = 0.01;

    /// <summary>√ColumnWeights: R when it is diagonal (null for the full factor).</summary>
    private readonly float[]? _diagonalFactor;

    private InputWeighting(int features, bool diagonal, bool isotropic, double damping, double effectiveDamping, float[] columnWeights, float[]? lower, float[]? upper)
    {
        Features = features;
        IsDiagonal = diagonal;
        IsIsotropic = isotropic;
        Damping = damping;
        EffectiveDamping = effectiveDamping;
        ColumnWeights = columnWeights;
        if (lower is null)
        {
            _diagonalFactor = new float[features];
            TensorPrimitives.Sqrt(columnWeights, _diagonalFactor);
        }
        Lower = lower;
        Upper = upper;
    }

    /// <summary>Input features n (the weight's columns).</summary>
    public int Features { get; }

    /// <summary>Whether only the diagonal of H is used (R is diagonal).</summary>
    public bool IsDiagonal { get; }

    /// <summary>Whether the damped H is a multiple of the identity, so that the objective is plain LoftQ's.</summary>
    public bool IsIsotropic { get; }

    /// <summary>The damping λ asked for.</summary>
    public double Damping { get; }

    /// <summary>The damping used (λ, or more when the damped H was not numerically positive definite).</summary>
    public double EffectiveDamping { get; }

    /// <summary>
    /// diag of the damped, normalised H (mean 1): each input channel's weight in the per-element error, used by an
    /// activation-aware block scale search.
    /// </summary>
    internal float[] ColumnWeights { get; }

    /// <summary>R = L, the lower Cholesky factor (n×n row-major), or null when diagonal or isotropic.</summary>
    internal float[]? Lower { get; }

    /// <summary>Lᵀ (n×n row-major), for solving A·L = A′ row by row.</summary>
    internal float[]? Upper { get; }

    /// <summary>
    /// The full weighting from the inputs' second-moment matrix H = XᵀX / tokens (n×n, row-major, symmetric).
    /// </summary>
    /// <param name="secondMoments">H, n×n row-major. Only the lower triangle is read.</param>
    /// <param name="features">n.</param>
    /// <param name="damping">λ ≥ 0 (see the remarks).</param>
    /// <exception cref="ArgumentException">The matrix has the wrong length, or holds NaN, infinity or a negative diagonal entry.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> or <paramref name="damping"/> is out of range.</exception>
    public static InputWeighting FromSecondMoments(ReadOnlySpan<float> secondMoments, int features, double damping = DefaultDamping)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(features, 1);
        CheckDamping(damping);
        int n = features;
        if (secondMoments.Length != (long)n * n)
        {
            throw new ArgumentException($"A second-moment matrix for {n} features has {(long)n * n} values, got {secondMoments.Length}.", nameof(secondMoments));
        }

        int bad = FloatConversions.IndexOfNonFinite(secondMoments);
        if (bad >= 0)
        {
            throw new ArgumentException($"Second-moment entry ({bad / n}, {bad % n}) is {secondMoments[bad]}; the statistics must be finite.", nameof(secondMoments));
        }

        double trace = 0;
        bool diagonal = true;
        for (int i = 0; i < n; i++)
        {
            double d = secondMoments[(i * n) + i];
            if (d < 0)
            {
                throw new ArgumentException($"Second-moment diagonal entry {i} is {d}; a second moment cannot be negative.", nameof(secondMoments));
            }

            trace += d;
            for (int j = 0; j < i && diagonal; j++)
            {
                diagonal = secondMoments[(i * n) + j] == 0f;
            }
        }

        if (diagonal || trace == 0)
        {
            var diag = new float[n];
            for (int i = 0; i < n; i++)
            {
                diag[i] = secondMoments[(i * n) + i];
            }

            return Diagonal(diag, damping);
        }

        double mean = trace / n;
        var h = new double[(long)n * n];
        double lambda = damping;
        while (true)
        {
            // The damped H, scaled to a mean diagonal of 1; lower triangle only.
            double scale = 1.0 / (mean * (1 + lambda));
            for (int i = 0; i < n; i++)
            {
                for (int j = 0; j <= i; j++)
                {
                    double v = secondMoments[(i * n) + j];
                    h[((long)i * n) + j] = (i == j ? v + (lambda * mean) : v) * scale;
                }
            }

            if (TryCholesky(h, n))
            {
                break;
            }

            lambda = lambda == 0 ? 1e-6 : lambda * 10;
            if (lambda > 1e6)
            {
                throw new ArgumentException("The second-moment matrix stays indefinite after damping; it is not a second-moment matrix.", nameof(secondMoments));
            }
        }

        var lower = new float[(long)n * n];
        var upper = new float[(long)n * n];
        var weights = new float[n];
        for (int i = 0; i < n; i++)
        {
            double diagonalH = 0;
            for (int j = 0; j <= i; j++)
            {
                double l = h[((long)i * n) + j];
                lower[((long)i * n) + j] = (float)l;
                upper[((long)j * n) + i] = (float)l;
                diagonalH += l * l;
            }

            weights[i] = (float)diagonalH;
        }

        return new InputWeighting(n, diagonal: false, isotropic: false, damping, lambda, weights, lower, upper);
    }

    /// <summary>The diagonal variant from each input channel's second moment E[x_j²] (length n).</summary>
    /// <param name="secondMoments">E[x_j²] per input channel.</param>
    /// <param name="damping">λ ≥ 0; channels get h_jj + λ·mean(h).</param>
    /// <exception cref="ArgumentException">An entry is negative, NaN or infinite, or the span is empty.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="damping"/> is negative or not finite.</exception>
    public static InputWeighting Diagonal(ReadOnlySpan<float> secondMoments, double damping = DefaultDamping)
    {
        CheckDamping(damping);
        int n = secondMoments.Length;
        if (n == 0)
        {
            throw new ArgumentException("The second moments are empty.", nameof(secondMoments));
        }

        double sum = 0;
        for (int j = 0; j < n; j++)
        {
            float v = secondMoments[j];
            if (!float.IsFinite(v) || v < 0)
            {
                throw new ArgumentException($"Second moment {j} is {v}; each must be finite and non-negative.", nameof(secondMoments));
            }

            sum += v;
        }

        var weights = new float[n];
        double mean = sum / n;
        bool isotropic = true;
        if (mean > 0)
        {
            double lambda = damping == 0 ? 1e-6 : damping; // a zero channel must keep a positive weight (R⁻¹ exists)
            double scale = 1.0 / (mean * (1 + lambda));
            for (int j = 0; j < n; j++)
            {
                weights[j] = (float)((secondMoments[j] + (lambda * mean)) * scale);
                isotropic &= weights[j] == weights[0];
            }

            return new InputWeighting(n, diagonal: true, isotropic, damping, lambda, weights, null, null);
        }

        // All inputs are zero: nothing distinguishes one direction from another.
        weights.AsSpan().Fill(1f);
        return new InputWeighting(n, diagonal: true, isotropic: true, damping, damping, weights, null, null);
    }

    /// <summary>The identity weighting (the plain objective) for <paramref name="features"/> inputs.</summary>
    public static InputWeighting Identity(int features)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(features, 1);
        var ones = new float[features];
        ones.AsSpan().Fill(1f);
        return new InputWeighting(features, diagonal: true, isotropic: true, 0, 0, ones, null, null);
    }

    /// <inheritdoc/>
    public override string ToString() => string.Create(
        CultureInfo.InvariantCulture,
        $"{(IsIsotropic ? "isotropic" : IsDiagonal ? "diagonal" : "full")} input weighting over {Features} features, damping {EffectiveDamping:G3}");

    /// <summary>z = x·R for x (rows × n).</summary>
    internal void ApplyFactor(ReadOnlySpan<float> x, int rows, Span<float> z)
    {
        int n = Features;
        if (Lower is not null)
        {
            Gemm.Multiply(Transpose.No, Transpose.No, rows, n, n, 1f, x, n, Lower, n, 0f, z, n);
            return;
        }

        for (int i = 0; i < rows; i++)
        {
            TensorPrimitives.Multiply(x.Slice(i * n, n), _diagonalFactor, z.Slice(i * n, n));
        }
    }

    /// <summary>Solves a·R = a′ for every row of <paramref name="a"/> (rows × n), in place.</summary>
    internal void SolveFactor(Span<float> a, int rows)
    {
        int n = Features;
        if (Upper is null)
        {
            for (int i = 0; i < rows; i++)
            {
                TensorPrimitives.Divide(a.Slice(i * n, n), _diagonalFactor, a.Slice(i * n, n));
            }

            return;
        }

        // a·L = a′ with L lower triangular: a_j = (a′_j − Σ_{k>j} a_k·L_kj) / L_jj, from j = n − 1 down;
        // L_kj for k > j is row j of Lᵀ past the diagonal.
        for (int i = 0; i < rows; i++)
        {
            Span<float> row = a.Slice(i * n, n);
            for (int j = n - 1; j >= 0; j--)
            {
                ReadOnlySpan<float> u = Upper.AsSpan((j * n) + j + 1, n - j - 1);
                float s = row[j] - TensorPrimitives.Dot(u, row[(j + 1)..]);
                row[j] = s / Upper[(j * n) + j];
            }
        }
    }

    private static void CheckDamping(double damping)
    {
        if (!(damping >= 0) || !double.IsFinite(damping))
        {
            throw new ArgumentOutOfRangeException(nameof(damping), damping, "The damping must be finite and at least 0.");
        }
    }

    /// <summary>In-place Cholesky of the lower triangle of h (n×n row-major); false when a pivot is not positive.</summary>
    private static bool TryCholesky(double[] h, int n)
    {
        for (int i = 0; i < n; i++)
        {
            Span<double> rowI = h.AsSpan(i * n, i + 1);
            for (int j = 0; j <= i; j++)
            {
                ReadOnlySpan<double> rowJ = h.AsSpan(j * n, j);
                double s = rowI[j] - TensorPrimitives.Dot(rowI[..j], rowJ);
                if (i == j)
                {
                    if (!(s > 0))
                    {
                        return false;
                    }

                    rowI[i] = Math.Sqrt(s);
                }
                else
                {
                    rowI[j] = s / h[(j * n) + j];
                }
            }
        }

        return true;
    }
}
