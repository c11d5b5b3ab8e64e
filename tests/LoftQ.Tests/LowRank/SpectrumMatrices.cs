using LoftQNet.LowRank;
using LoftQNet.Numerics;

namespace LoftQNet.Tests.LowRank;

/// <summary>Test matrices with a known singular spectrum and naive reference computations in double.</summary>
internal static class SpectrumMatrices
{
    /// <summary>M = Σ s_i u_i v_iᵀ with u, v orthonormal (QR of Gaussian rows).</summary>
    public static Matrix WithSpectrum(int m, int n, double[] s, int seed)
    {
        int k = s.Length;
        using var u = Matrix.RandomNormal(k, m, seed);
        using var v = Matrix.RandomNormal(k, n, seed + 1000);
        Qr.OrthonormalizeRows(u.Span, k, m);
        Qr.OrthonormalizeRows(v.Span, k, n);
        var result = new double[m * n];
        for (int i = 0; i < k; i++)
        {
            Span<float> ui = u.Row(i), vi = v.Row(i);
            for (int r = 0; r < m; r++)
            {
                double f = s[i] * ui[r];
                for (int c = 0; c < n; c++)
                {
                    result[(r * n) + c] += f * vi[c];
                }
            }
        }

        var mat = Matrix.Uninitialized(m, n);
        for (int i = 0; i < result.Length; i++)
        {
            mat.Span[i] = (float)result[i];
        }

        return mat;
    }

    /// <summary>‖M − B·A‖_F by a naive triple loop in double.</summary>
    public static double ReconstructionError(Matrix m, LowRankFactors f)
    {
        double sum = 0;
        int r = f.Rank;
        for (int i = 0; i < m.Rows; i++)
        {
            for (int j = 0; j < m.Columns; j++)
            {
                double p = 0;
                for (int k = 0; k < r; k++)
                {
                    p += (double)f.B[i, k] * f.A[k, j];
                }

                double d = m[i, j] - p;
                sum += d * d;
            }
        }

        return Math.Sqrt(sum);
    }

    /// <summary>√Σ_{i≥r} s_i²: the optimal rank-r error (Eckart–Young).</summary>
    public static double Tail(double[] s, int r) => Math.Sqrt(s.Skip(r).Sum(x => x * x));

    public static double ColumnNorm(Matrix b, int j)
    {
        double sum = 0;
        for (int i = 0; i < b.Rows; i++)
        {
            sum += (double)b[i, j] * b[i, j];
        }

        return Math.Sqrt(sum);
    }

    public static double RowNorm(Matrix a, int j)
    {
        double sum = 0;
        foreach (float x in a.Row(j))
        {
            sum += (double)x * x;
        }

        return Math.Sqrt(sum);
    }
}
