using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace LoftQNet.Numerics;

/// <summary>Packing of op(A) and op(B) into the micro-kernels' panel layouts (the transposes are absorbed here).</summary>
internal static partial class Gemm
{
    /// <summary>
    /// Packs op(A)[i0:i0+rows, p0:p0+kc] as consecutive MR-row slabs (slab s at dst + s·kc·mr). For a transposed A
    /// the stored rows are walked in order (p outer) so the reads stream through memory.
    /// </summary>
    internal static unsafe void PackABlock(float* a, int lda, bool transA, int i0, int rows, int p0, int kc, int mr, float* dst)
    {
        int slabs = (rows + mr - 1) / mr;
        if (!transA)
        {
            for (int s = 0; s < slabs; s++)
            {
                PackA(a, lda, transA: false, i0 + (s * mr), Math.Min(mr, rows - (s * mr)), p0, kc, mr, dst + ((nint)s * kc * mr));
            }

            return;
        }

        bool vector8 = mr == 8 && Vector256.IsHardwareAccelerated;
        for (int p = 0; p < kc; p++)
        {
            float* src = a + ((nint)(p0 + p) * lda) + i0;
            for (int s = 0; s < slabs; s++)
            {
                float* d = dst + ((nint)s * kc * mr) + ((nint)p * mr);
                int r0 = s * mr, count = Math.Min(mr, rows - r0);
                if (vector8 && count == 8)
                {
                    Vector256.Store(Vector256.Load(src + r0), d);
                    continue;
                }

                int r = 0;
                for (; r < count; r++)
                {
                    d[r] = src[r0 + r];
                }

                for (; r < mr; r++)
                {
                    d[r] = 0f;
                }
            }
        }
    }

    /// <summary>
    /// Packs the micro-panels [panelStart, panelEnd) of op(B)[p0:p0+kc, jc:] (panel q at dst + q·kc·nr). For an
    /// untransposed B the stored rows are walked in order (p outer) so the reads stream through memory.
    /// </summary>
    internal static unsafe void PackBPanels(float* b, int ldb, bool transB, int p0, int kc, int jc, int panelStart, int panelEnd, int n, int nr, float* dst)
    {
        if (transB)
        {
            for (int q = panelStart; q < panelEnd; q++)
            {
                int j0 = jc + (q * nr);
                PackB(b, ldb, transB: true, p0, kc, j0, Math.Min(nr, n - j0), nr, dst + ((nint)q * kc * nr));
            }

            return;
        }

        for (int p = 0; p < kc; p++)
        {
            float* src = b + ((nint)(p0 + p) * ldb) + jc;
            for (int q = panelStart; q < panelEnd; q++)
            {
                float* d = dst + ((nint)q * kc * nr) + ((nint)p * nr);
                int j0 = q * nr, count = Math.Min(nr, n - jc - j0);
                if (count == nr)
                {
                    Buffer.MemoryCopy(src + j0, d, nr * sizeof(float), nr * sizeof(float));
                    continue;
                }

                int j = 0;
                for (; j < count; j++)
                {
                    d[j] = src[j0 + j];
                }

                for (; j < nr; j++)
                {
                    d[j] = 0f;
                }
            }
        }
    }

    /// <summary>Packs op(A)[r0:r0+rows, p0:p0+kc] as dst[p·mr + r], zero-padding rows up to mr.</summary>
    internal static unsafe void PackA(float* a, int lda, bool transA, int r0, int rows, int p0, int kc, int mr, float* dst)
    {
        if (transA)
        {
            // A is stored k×m: row p of the stored matrix holds op(A)[·, p] contiguously.
            if (rows == 8 && mr == 8 && Vector256.IsHardwareAccelerated)
            {
                for (int p = 0; p < kc; p++)
                {
                    Vector256.Store(Vector256.Load(a + ((nint)(p0 + p) * lda) + r0), dst + ((nint)p * 8));
                }

                return;
            }

            for (int p = 0; p < kc; p++)
            {
                float* src = a + ((nint)(p0 + p) * lda) + r0;
                float* d = dst + ((nint)p * mr);
                int r = 0;
                for (; r < rows; r++)
                {
                    d[r] = src[r];
                }

                for (; r < mr; r++)
                {
                    d[r] = 0f;
                }
            }

            return;
        }

        int pStart = 0;
        if (rows == 8 && mr == 8 && Transposer.IsAccelerated)
        {
            for (; pStart + 8 <= kc; pStart += 8)
            {
                Transposer.Transpose8x8(a + ((nint)r0 * lda) + p0 + pStart, lda, dst + ((nint)pStart * 8), 8);
            }
        }

        for (int r = 0; r < mr; r++)
        {
            float* src = a + ((nint)(r0 + r) * lda) + p0;
            if (r < rows)
            {
                for (int p = pStart; p < kc; p++)
                {
                    dst[((nint)p * mr) + r] = src[p];
                }
            }
            else
            {
                for (int p = pStart; p < kc; p++)
                {
                    dst[((nint)p * mr) + r] = 0f;
                }
            }
        }
    }

    /// <summary>Packs op(B)[p0:p0+kc, j0:j0+cols] as dst[p·nr + j], zero-padding columns up to nr.</summary>
    internal static unsafe void PackB(float* b, int ldb, bool transB, int p0, int kc, int j0, int cols, int nr, float* dst)
    {
        if (!transB)
        {
            for (int p = 0; p < kc; p++)
            {
                float* src = b + ((nint)(p0 + p) * ldb) + j0;
                float* d = dst + ((nint)p * nr);
                if (cols == nr)
                {
                    Buffer.MemoryCopy(src, d, nr * sizeof(float), nr * sizeof(float));
                }
                else
                {
                    int j = 0;
                    for (; j < cols; j++)
                    {
                        d[j] = src[j];
                    }

                    for (; j < nr; j++)
                    {
                        d[j] = 0f;
                    }
                }
            }

            return;
        }

        // B is stored n×k: op(B)[p, j] = b[j·ldb + p]; transpose 8×8 tiles where possible.
        int fullCols = Transposer.IsAccelerated ? cols / 8 * 8 : 0;
        int pFull = Transposer.IsAccelerated ? kc / 8 * 8 : 0;
        for (int j = 0; j < fullCols; j += 8)
        {
            float* src = b + ((nint)(j0 + j) * ldb) + p0;
            for (int p = 0; p < pFull; p += 8)
            {
                Transposer.Transpose8x8(src + p, ldb, dst + ((nint)p * nr) + j, nr);
            }
        }

        for (int j = 0; j < nr; j++)
        {
            bool inFullBlock = j < fullCols;
            float* src = b + ((nint)(j0 + j) * ldb) + p0;
            for (int p = inFullBlock ? pFull : 0; p < kc; p++)
            {
                dst[((nint)p * nr) + j] = j < cols ? src[p] : 0f;
            }
        }
    }
}
