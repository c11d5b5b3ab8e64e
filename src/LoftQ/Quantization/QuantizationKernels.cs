using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace LoftQNet.Quantization;

/// <summary>
/// Flat-buffer kernels shared by the built-in quantizers: nearest-level search through precomputed decision
/// thresholds, and code → value lookup. Each hot kernel has a Vector512, a Vector256 and a scalar form; the
/// dispatching entry points pick the widest the CPU accelerates, and tests call every form directly.
/// </summary>
/// <remarks>
/// The nearest-level rule is defined by <see cref="NearestScalar"/>: the level with the smallest
/// <c>|x − level|</c> in float arithmetic, ties to the lower index. For ascending levels the chosen index equals
/// the number of thresholds t_k with <c>x ≥ t_k</c>, where t_k is the smallest float for which level k+1 is
/// strictly nearer than level k (found by stepping floats with the same float comparison, so the count agrees
/// with the distance rule bit for bit, exact midpoints included).
/// </remarks>
internal static class QuantizationKernels
{
    private static volatile bool s_avoidVector512;

    /// <summary>
    /// Test hook: when set, the dispatchers skip the AVX-512 kernels and take the Vector256 / AVX2 / scalar forms
    /// (results are identical either way, so flipping it while other work runs is harmless).
    /// </summary>
    internal static bool AvoidVector512
    {
        get => s_avoidVector512;
        set => s_avoidVector512 = value;
    }

    /// <summary>Whether the AVX-512 kernels are used.</summary>
    internal static bool UseVector512 => Vector512.IsHardwareAccelerated && Avx512F.IsSupported && !s_avoidVector512;

    /// <summary>The largest code book the SIMD permute paths handle (16 levels = 4 bits).</summary>
    internal const int SmallCodeBook = 16;

    /// <summary>Index of the level nearest to <paramref name="x"/> by float distance; ties go to the lower index.</summary>
    internal static int NearestScalar(ReadOnlySpan<float> levels, float x)
    {
        int best = 0;
        float bestDistance = Math.Abs(x - levels[0]);
        for (int i = 1; i < levels.Length; i++)
        {
            float d = Math.Abs(x - levels[i]);
            if (d < bestDistance)
            {
                best = i;
                bestDistance = d;
            }
        }

        return best;
    }

    /// <summary>
    /// Decision thresholds for strictly ascending <paramref name="levels"/>: t_k is the smallest float x with
    /// <c>|x − levels[k+1]| &lt; |x − levels[k]|</c>.
    /// </summary>
    internal static float[] ComputeThresholds(ReadOnlySpan<float> levels)
    {
        var thresholds = new float[levels.Length - 1];
        for (int k = 0; k < thresholds.Length; k++)
        {
            float lo = levels[k];
            float hi = levels[k + 1];
            if (!(lo < hi))
            {
                throw new ArgumentException($"Levels must be strictly ascending; level {k + 1} ({hi}) is not above level {k} ({lo}).", nameof(levels));
            }

            // Binary search over the floats of [lo, hi] in order (the predicate is false at lo, true at hi and
            // monotone in between).
            int a = OrderedKey(lo), b = OrderedKey(hi);
            while (b - a > 1)
            {
                int mid = a + ((b - a) / 2);
                if (PrefersUpper(FromOrderedKey(mid), lo, hi))
                {
                    b = mid;
                }
                else
                {
                    a = mid;
                }
            }

            float t = FromOrderedKey(b);
            thresholds[k] = t;
        }

        return thresholds;
    }

    /// <summary>Buckets of the bucketed code search (one 32-lane two-vector permute).</summary>
    internal const int BucketCount = 32;

    /// <summary>
    /// Builds the bucket table of the AVX-512 code search for a code book of ≤ 16 levels: the ratio range
    /// [first level, last level] is cut into 32 equal buckets, <c>bases[j]</c> counts the thresholds certainly below
    /// every ratio that can land in bucket j (a 1e-5 margin covers the rounding of the bucket computation), and the
    /// code is then <c>bases[j] + (r ≥ t[bases[j]]) + (r ≥ t[bases[j] + 1])</c>. Returns null when some bucket
    /// window holds more than two thresholds (the linear count is used then).
    /// </summary>
    internal static int[]? BuildBuckets(ReadOnlySpan<float> levels, ReadOnlySpan<float> thresholds, out float low, out float bucketsPerUnit)
    {
        const double Margin = 1e-5;
        low = levels[0];
        bucketsPerUnit = BucketCount / (levels[^1] - levels[0]);
        if (levels.Length > SmallCodeBook || !float.IsFinite(bucketsPerUnit))
        {
            return null;
        }

        var bases = new int[BucketCount];
        for (int j = 0; j < BucketCount; j++)
        {
            double lower = j == 0 ? double.NegativeInfinity : low + (j / (double)bucketsPerUnit) - Margin;
            double upper = j == BucketCount - 1 ? double.PositiveInfinity : low + ((j + 1) / (double)bucketsPerUnit) + Margin;
            int below = 0, inside = 0;
            foreach (float t in thresholds)
            {
                if (t < lower)
                {
                    below++;
                }
                else if (t <= upper)
                {
                    inside++;
                }
            }

            if (inside > 2)
            {
                return null;
            }

            bases[j] = below;
        }

        return bases;
    }

    /// <summary>A monotone integer key for finite floats (−0 and +0 share key 0).</summary>
    private static int OrderedKey(float f)
    {
        int bits = BitConverter.SingleToInt32Bits(f);
        return bits >= 0 ? bits : -(bits & int.MaxValue);
    }

    private static float FromOrderedKey(int key) =>
        key >= 0 ? BitConverter.Int32BitsToSingle(key) : -BitConverter.Int32BitsToSingle(-key);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool PrefersUpper(float x, float lower, float upper) => Math.Abs(x - upper) < Math.Abs(x - lower);

    /// <summary>The code for ratio <paramref name="r"/>: the number of thresholds ≤ r (branch-free binary search; thresholds.Length = 2^b − 1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int CodeOf(ref float thresholds, int levelCount, float r)
    {
        int index = 0;
        for (int step = levelCount >> 1; step > 0; step >>= 1)
        {
            index += Unsafe.Add(ref thresholds, index + step - 1) <= r ? step : 0;
        }

        return index;
    }

    /// <summary>
    /// Codes of one block: ratio = (x − offset) · inverse, code = number of thresholds ≤ ratio. When
    /// <paramref name="inverse"/> is infinite (a subnormal scale) the ratio is (x − offset) / scale instead.
    /// </summary>
    internal static void Codes(ReadOnlySpan<float> x, float offset, float scale, float inverse, ReadOnlySpan<float> thresholds, Span<byte> codes)
    {
        if (float.IsInfinity(inverse))
        {
            CodesByDivision(x, offset, scale, thresholds, codes);
        }
        else if (thresholds.Length < SmallCodeBook && UseVector512)
        {
            CodesVector512(x, offset, inverse, thresholds, codes);
        }
        else if (thresholds.Length < SmallCodeBook && Vector256.IsHardwareAccelerated)
        {
            CodesVector256(x, offset, inverse, thresholds, codes);
        }
        else
        {
            CodesScalar(x, offset, inverse, thresholds, codes);
        }
    }

    /// <summary>Scalar form of <see cref="Codes"/> for a finite inverse.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void CodesScalar(ReadOnlySpan<float> x, float offset, float inverse, ReadOnlySpan<float> thresholds, Span<byte> codes)
    {
        ref float t = ref MemoryMarshal.GetReference(thresholds);
        int levels = thresholds.Length + 1;
        for (int i = 0; i < x.Length; i++)
        {
            codes[i] = (byte)CodeOf(ref t, levels, (x[i] - offset) * inverse);
        }
    }

    private static void CodesByDivision(ReadOnlySpan<float> x, float offset, float scale, ReadOnlySpan<float> thresholds, Span<byte> codes)
    {
        ref float t = ref MemoryMarshal.GetReference(thresholds);
        int levels = thresholds.Length + 1;
        for (int i = 0; i < x.Length; i++)
        {
            codes[i] = (byte)CodeOf(ref t, levels, (x[i] - offset) / scale);
        }
    }

    /// <summary>Vector512 form (≤ 15 thresholds): per lane, subtract one for every threshold compare that holds.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void CodesVector512(ReadOnlySpan<float> x, float offset, float inverse, ReadOnlySpan<float> thresholds, Span<byte> codes)
    {
        int nt = thresholds.Length;
        Span<Vector512<float>> tv = stackalloc Vector512<float>[SmallCodeBook];
        for (int k = 0; k < nt; k++)
        {
            tv[k] = Vector512.Create(thresholds[k]);
        }

        ref float src = ref MemoryMarshal.GetReference(x);
        ref byte dst = ref MemoryMarshal.GetReference(codes);
        ref Vector512<float> t0 = ref MemoryMarshal.GetReference(tv);
        var off = Vector512.Create(offset);
        var inv = Vector512.Create(inverse);
        int n = x.Length;
        int i = 0;
        for (; i <= n - 64; i += 64)
        {
            Vector512<float> r0 = (Vector512.LoadUnsafe(ref src, (nuint)i) - off) * inv;
            Vector512<float> r1 = (Vector512.LoadUnsafe(ref src, (nuint)(i + 16)) - off) * inv;
            Vector512<float> r2 = (Vector512.LoadUnsafe(ref src, (nuint)(i + 32)) - off) * inv;
            Vector512<float> r3 = (Vector512.LoadUnsafe(ref src, (nuint)(i + 48)) - off) * inv;
            Vector512<int> c0 = Vector512<int>.Zero, c1 = c0, c2 = c0, c3 = c0;
            for (int k = 0; k < nt; k++)
            {
                Vector512<float> t = Unsafe.Add(ref t0, k);
                c0 -= Vector512.GreaterThanOrEqual(r0, t).AsInt32();
                c1 -= Vector512.GreaterThanOrEqual(r1, t).AsInt32();
                c2 -= Vector512.GreaterThanOrEqual(r2, t).AsInt32();
                c3 -= Vector512.GreaterThanOrEqual(r3, t).AsInt32();
            }

            Avx512F.ConvertToVector128Byte(c0).StoreUnsafe(ref dst, (nuint)i);
            Avx512F.ConvertToVector128Byte(c1).StoreUnsafe(ref dst, (nuint)(i + 16));
            Avx512F.ConvertToVector128Byte(c2).StoreUnsafe(ref dst, (nuint)(i + 32));
            Avx512F.ConvertToVector128Byte(c3).StoreUnsafe(ref dst, (nuint)(i + 48));
        }

        for (; i <= n - 16; i += 16)
        {
            Vector512<float> r0 = (Vector512.LoadUnsafe(ref src, (nuint)i) - off) * inv;
            Vector512<int> c0 = Vector512<int>.Zero;
            for (int k = 0; k < nt; k++)
            {
                c0 -= Vector512.GreaterThanOrEqual(r0, Unsafe.Add(ref t0, k)).AsInt32();
            }

            Avx512F.ConvertToVector128Byte(c0).StoreUnsafe(ref dst, (nuint)i);
        }

        CodesScalar(x[i..], offset, inverse, thresholds, codes[i..]);
    }

    /// <summary>Vector256 form (≤ 15 thresholds).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void CodesVector256(ReadOnlySpan<float> x, float offset, float inverse, ReadOnlySpan<float> thresholds, Span<byte> codes)
    {
        int nt = thresholds.Length;
        Span<Vector256<float>> tv = stackalloc Vector256<float>[SmallCodeBook];
        for (int k = 0; k < nt; k++)
        {
            tv[k] = Vector256.Create(thresholds[k]);
        }

        ref float src = ref MemoryMarshal.GetReference(x);
        ref byte dst = ref MemoryMarshal.GetReference(codes);
        ref Vector256<float> t0 = ref MemoryMarshal.GetReference(tv);
        var off = Vector256.Create(offset);
        var inv = Vector256.Create(inverse);
        int n = x.Length;
        int i = 0;
        for (; i <= n - 32; i += 32)
        {
            Vector256<float> r0 = (Vector256.LoadUnsafe(ref src, (nuint)i) - off) * inv;
            Vector256<float> r1 = (Vector256.LoadUnsafe(ref src, (nuint)(i + 8)) - off) * inv;
            Vector256<float> r2 = (Vector256.LoadUnsafe(ref src, (nuint)(i + 16)) - off) * inv;
            Vector256<float> r3 = (Vector256.LoadUnsafe(ref src, (nuint)(i + 24)) - off) * inv;
            Vector256<int> c0 = Vector256<int>.Zero, c1 = c0, c2 = c0, c3 = c0;
            for (int k = 0; k < nt; k++)
            {
                Vector256<float> t = Unsafe.Add(ref t0, k);
                c0 -= Vector256.GreaterThanOrEqual(r0, t).AsInt32();
                c1 -= Vector256.GreaterThanOrEqual(r1, t).AsInt32();
                c2 -= Vector256.GreaterThanOrEqual(r2, t).AsInt32();
                c3 -= Vector256.GreaterThanOrEqual(r3, t).AsInt32();
            }

            Vector256.Narrow(Vector256.Narrow(c0, c1), Vector256.Narrow(c2, c3)).AsByte().StoreUnsafe(ref dst, (nuint)i);
        }

        CodesScalar(x[i..], offset, inverse, thresholds, codes[i..]);
    }

    /// <summary>
    /// Writes <c>levels[code] · scale (+ offset when <paramref name="addOffset"/>)</c> for each code of one block.
    /// Every code must be below <paramref name="levels"/>.Length (true for unpacked b-bit codes and a 2^b code book).
    /// </summary>
    internal static void Lookup(ReadOnlySpan<byte> codes, ReadOnlySpan<float> levels, float scale, float offset, bool addOffset, Span<float> destination)
    {
        if (levels.Length <= SmallCodeBook && UseVector512)
        {
            LookupVector512(codes, levels, scale, offset, addOffset, destination);
        }
        else if (levels.Length <= SmallCodeBook && Avx2.IsSupported)
        {
            LookupAvx2(codes, levels, scale, offset, addOffset, destination);
        }
        else if (Avx2.IsSupported)
        {
            LookupGatherAvx2(codes, levels, scale, offset, addOffset, destination);
        }
        else
        {
            LookupScalar(codes, levels, scale, offset, addOffset, destination);
        }
    }

    /// <summary>
    /// Broadcast thresholds and levels for <see cref="TrySquaredError"/>, built once per code book; null when the
    /// fused path does not apply (more than 16 levels, or no Vector256).
    /// </summary>
    internal static (Vector256<float>[] Thresholds, Vector256<float>[] Levels)? SquaredErrorTables(ReadOnlySpan<float> thresholds, ReadOnlySpan<float> levels)
    {
        if (thresholds.Length >= SmallCodeBook || !Vector256.IsHardwareAccelerated)
        {
            return null;
        }

        var tv = new Vector256<float>[thresholds.Length];
        var lv = new Vector256<float>[levels.Length];
        for (int k = 0; k < tv.Length; k++)
        {
            tv[k] = Vector256.Create(thresholds[k]);
        }

        for (int k = 0; k < lv.Length; k++)
        {
            lv[k] = Vector256.Create(levels[k]);
        }

        return (tv, lv);
    }

    /// <summary>
    /// Σ weight·(x − deq(code(x)))² of coding <paramref name="x"/> with <paramref name="scale"/> and
    /// <paramref name="offset"/> (weights all 1 when <paramref name="weights"/> is empty), without storing codes: the
    /// scale search's inner loop. Each lane selects its level by the same threshold compares as <see cref="Codes"/>
    /// and dequantizes as <see cref="LookupScalar"/> (level·scale, plus the offset when asymmetric). False when the
    /// inverse scale overflows (the caller then codes and looks up).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static bool TrySquaredError(
        ReadOnlySpan<float> x, float offset, float scale, float inverse, Vector256<float>[] thresholds, Vector256<float>[] levels,
        bool addOffset, ReadOnlySpan<float> weights, out double error)
    {
        error = 0;
        if (float.IsInfinity(inverse))
        {
            return false;
        }

        int nt = thresholds.Length;
        var off = Vector256.Create(offset);
        var inv = Vector256.Create(inverse);
        var sc = Vector256.Create(scale);
        Vector256<float> acc = Vector256<float>.Zero;
        ref float src = ref MemoryMarshal.GetReference(x);
        ref float wts = ref MemoryMarshal.GetReference(weights);
        ref Vector256<float> t0 = ref MemoryMarshal.GetArrayDataReference(thresholds);
        ref Vector256<float> l0 = ref MemoryMarshal.GetArrayDataReference(levels);
        bool weighted = !weights.IsEmpty;
        int n = x.Length, i = 0;
        for (; i <= n - 8; i += 8)
        {
            Vector256<float> v = Vector256.LoadUnsafe(ref src, (nuint)i);
            Vector256<float> r = (v - off) * inv;
            Vector256<float> q = l0;
            for (int k = 0; k < nt; k++)
            {
                q = Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(r, Unsafe.Add(ref t0, k)), Unsafe.Add(ref l0, k + 1), q);
            }

            q *= sc;
            Vector256<float> e = v - (addOffset ? q + off : q);
            e *= e;
            acc += weighted ? e * Vector256.LoadUnsafe(ref wts, (nuint)i) : e;
        }

        double sum = Vector256.Sum(acc);
        for (; i < n; i++)
        {
            float r = (x[i] - offset) * inverse;
            int code = 0;
            for (int k = 0; k < nt; k++)
            {
                code += r >= thresholds[k][0] ? 1 : 0;
            }

            float level = levels[code][0] * scale;
            float e = x[i] - (addOffset ? level + offset : level);
            sum += (double)e * e * (weighted ? weights[i] : 1f);
        }

        error = sum;
        return true;
    }

    /// <summary>Scalar form of <see cref="Lookup"/> (the definition the SIMD forms match bit for bit).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void LookupScalar(ReadOnlySpan<byte> codes, ReadOnlySpan<float> levels, float scale, float offset, bool addOffset, Span<float> destination)
    {
        ref float table = ref MemoryMarshal.GetReference(levels);
        for (int i = 0; i < codes.Length; i++)
        {
            float v = Unsafe.Add(ref table, codes[i]) * scale;
            destination[i] = addOffset ? v + offset : v;
        }
    }

    /// <summary>Vector512 form: a 16-entry table scaled once per block, then one permute per 16 codes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void LookupVector512(ReadOnlySpan<byte> codes, ReadOnlySpan<float> levels, float scale, float offset, bool addOffset, Span<float> destination)
    {
        Vector512<float> table = ScaledTable512(levels, scale, offset, addOffset);
        ref byte src = ref MemoryMarshal.GetReference(codes);
        ref float dst = ref MemoryMarshal.GetReference(destination);
        int n = codes.Length;
        int i = 0;
        for (; i <= n - 64; i += 64)
        {
            Vector512<byte> c = Vector512.LoadUnsafe(ref src, (nuint)i);
            Avx512F.PermuteVar16x32(table, Avx512F.ConvertToVector512Int32(c.GetLower().GetLower())).StoreUnsafe(ref dst, (nuint)i);
            Avx512F.PermuteVar16x32(table, Avx512F.ConvertToVector512Int32(c.GetLower().GetUpper())).StoreUnsafe(ref dst, (nuint)(i + 16));
            Avx512F.PermuteVar16x32(table, Avx512F.ConvertToVector512Int32(c.GetUpper().GetLower())).StoreUnsafe(ref dst, (nuint)(i + 32));
            Avx512F.PermuteVar16x32(table, Avx512F.ConvertToVector512Int32(c.GetUpper().GetUpper())).StoreUnsafe(ref dst, (nuint)(i + 48));
        }

        for (; i <= n - 16; i += 16)
        {
            Avx512F.PermuteVar16x32(table, Avx512F.ConvertToVector512Int32(Vector128.LoadUnsafe(ref src, (nuint)i))).StoreUnsafe(ref dst, (nuint)i);
        }

        LookupScalar(codes[i..], levels, scale, offset, addOffset, destination[i..]);
    }

    /// <summary>AVX2 form: two 8-entry permutes blended on code ≥ 8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void LookupAvx2(ReadOnlySpan<byte> codes, ReadOnlySpan<float> levels, float scale, float offset, bool addOffset, Span<float> destination)
    {
        Span<float> padded = stackalloc float[SmallCodeBook];
        padded.Clear();
        levels.CopyTo(padded);
        var s = Vector256.Create(scale);
        var o = Vector256.Create(offset);
        Vector256<float> lo = Vector256.Create(padded[..8]) * s;
        Vector256<float> hi = Vector256.Create(padded[8..]) * s;
        if (addOffset)
        {
            lo += o;
            hi += o;
        }

        ref byte src = ref MemoryMarshal.GetReference(codes);
        ref float dst = ref MemoryMarshal.GetReference(destination);
        var seven = Vector256.Create(7);
        int n = codes.Length;
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            Vector256<int> c = Avx2.ConvertToVector256Int32(Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref src, i))).AsByte());
            Vector256<float> a = Avx2.PermuteVar8x32(lo, c);
            Vector256<float> b = Avx2.PermuteVar8x32(hi, c);
            Avx.BlendVariable(a, b, Vector256.GreaterThan(c, seven).AsSingle()).StoreUnsafe(ref dst, (nuint)i);
        }

        LookupScalar(codes[i..], levels, scale, offset, addOffset, destination[i..]);
    }

    /// <summary>AVX2 gather form for any code book (used for 5..8 bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void LookupGatherAvx2(ReadOnlySpan<byte> codes, ReadOnlySpan<float> levels, float scale, float offset, bool addOffset, Span<float> destination)
    {
        ref byte src = ref MemoryMarshal.GetReference(codes);
        ref float dst = ref MemoryMarshal.GetReference(destination);
        var s = Vector256.Create(scale);
        var o = Vector256.Create(offset);
        int n = codes.Length;
        int i = 0;
        fixed (float* table = levels)
        {
            for (; i <= n - 8; i += 8)
            {
                Vector256<int> c = Avx2.ConvertToVector256Int32(Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref src, i))).AsByte());
                Vector256<float> v = Avx2.GatherVector256(table, c, 4) * s;
                (addOffset ? v + o : v).StoreUnsafe(ref dst, (nuint)i);
            }
        }

        LookupScalar(codes[i..], levels, scale, offset, addOffset, destination[i..]);
    }

    private static Vector512<float> ScaledTable512(ReadOnlySpan<float> levels, float scale, float offset, bool addOffset)
    {
        Span<float> padded = stackalloc float[SmallCodeBook];
        padded.Clear();
        levels.CopyTo(padded);
        Vector512<float> table = Vector512.Create((ReadOnlySpan<float>)padded) * Vector512.Create(scale);
        return addOffset ? table + Vector512.Create(offset) : table;
    }

    /// <summary>
    /// Fused AVX-512 kernel over whole blocks (block size a multiple of 16): per block, one pass for the absmax (or
    /// min/max) with a finiteness check, one pass computing codes (and, when <paramref name="dequantized"/> is not
    /// empty and the code book has ≤ 16 levels, the dequantized values by a permute of the scaled code book).
    /// Code books of 32..256 levels use a two-level count: a coarse count over every 16th threshold picks the
    /// group, then 15 permuted compares count within it. Stops at the first block that needs the careful scalar
    /// path (a non-finite value, an overflowing range, or a subnormal scale) and returns its index; returns
    /// <paramref name="blockCount"/> when all blocks were done. Dequantized values of larger code books are left
    /// to the caller.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static int QuantizeBlocksVector512(
        ReadOnlySpan<float> x, int blockSize, int blockCount, bool asymmetric, ReadOnlySpan<float> levels, ReadOnlySpan<float> thresholds,
        Span<float> scales, Span<float> offsets, Span<byte> codes, Span<float> dequantized, ReadOnlySpan<int> bucketBases = default, float bucketLow = 0f, float bucketsPerUnit = 0f)
    {
        bool bucketed = bucketBases.Length == BucketCount && thresholds.Length < SmallCodeBook;
        Vector512<int> basesLo = default, basesHi = default;
        Vector512<float> tLo = default, tHi = Vector512.Create(float.PositiveInfinity);
        Vector512<float> bucketOrigin = Vector512.Create(bucketLow), bucketScale = Vector512.Create(bucketsPerUnit);
        if (bucketed)
        {
            basesLo = Vector512.Create(bucketBases[..16]);
            basesHi = Vector512.Create(bucketBases[16..]);
            Span<float> padded = stackalloc float[SmallCodeBook];
            padded.Fill(float.PositiveInfinity);
            thresholds.CopyTo(padded);
            tLo = Vector512.Create((ReadOnlySpan<float>)padded);
        }

        var lastBucket = Vector512.Create(BucketCount - 1);

        int nt = thresholds.Length;
        bool large = nt >= SmallCodeBook;
        Span<Vector512<float>> tv = stackalloc Vector512<float>[2 * SmallCodeBook];
        int coarse = 0;
        if (!large)
        {
            for (int k = 0; k < nt; k++)
            {
                tv[k] = Vector512.Create(thresholds[k]);
            }
        }
        else
        {
            int groups = (nt + 1) / SmallCodeBook;
            coarse = groups - 1;
            for (int m = 0; m < coarse; m++)
            {
                tv[m] = Vector512.Create(thresholds[(SmallCodeBook * m) + SmallCodeBook - 1]);
            }

            Span<float> lanes = stackalloc float[SmallCodeBook];
            for (int j = 0; j < SmallCodeBook - 1; j++)
            {
                lanes.Fill(float.PositiveInfinity);
                for (int h = 0; h < groups; h++)
                {
                    lanes[h] = thresholds[(SmallCodeBook * h) + j];
                }

                tv[SmallCodeBook + j] = Vector512.Create((ReadOnlySpan<float>)lanes);
            }
        }

        Vector512<float> levelVector = Vector512<float>.Zero;
        bool fused = !dequantized.IsEmpty && !large;
        if (fused)
        {
            Span<float> padded = stackalloc float[SmallCodeBook];
            padded.Clear();
            levels.CopyTo(padded);
            levelVector = Vector512.Create((ReadOnlySpan<float>)padded);
        }

        ref float src = ref MemoryMarshal.GetReference(x);
        ref byte dst = ref MemoryMarshal.GetReference(codes);
        ref float deq = ref MemoryMarshal.GetReference(dequantized);
        ref Vector512<float> t0 = ref MemoryMarshal.GetReference(tv);
        var maxFinite = Vector512.Create(float.MaxValue);
        for (int b = 0; b < blockCount; b++)
        {
            int start = b * blockSize;
            int end = start + blockSize;
            float scale, offset;
            if (!asymmetric)
            {
                Vector512<float> vmax = Vector512<float>.Zero;
                Vector512<float> ok = Vector512<float>.AllBitsSet;
                for (int i = start; i < end; i += 16)
                {
                    Vector512<float> a = Vector512.Abs(Vector512.LoadUnsafe(ref src, (nuint)i));
                    vmax = Vector512.MaxNative(vmax, a);
                    ok &= Vector512.LessThanOrEqual(a, maxFinite);
                }

                if (!Vector512.EqualsAll(ok.AsInt32(), Vector512<int>.AllBitsSet))
                {
                    return b;
                }

                Vector256<float> m8 = Vector256.MaxNative(vmax.GetLower(), vmax.GetUpper());
                Vector128<float> m4 = Vector128.MaxNative(m8.GetLower(), m8.GetUpper());
                scale = Math.Max(Math.Max(m4[0], m4[1]), Math.Max(m4[2], m4[3]));
                offset = 0f;
            }
            else
            {
                Vector512<float> vmin = Vector512.Create(float.PositiveInfinity);
                Vector512<float> vmax = Vector512.Create(float.NegativeInfinity);
                Vector512<float> ok = Vector512<float>.AllBitsSet;
                for (int i = start; i < end; i += 16)
                {
                    Vector512<float> v = Vector512.LoadUnsafe(ref src, (nuint)i);
                    vmin = Vector512.Min(vmin, v);
                    vmax = Vector512.Max(vmax, v);
                    ok &= Vector512.LessThanOrEqual(Vector512.Abs(v), maxFinite);
                }

                if (!Vector512.EqualsAll(ok.AsInt32(), Vector512<int>.AllBitsSet))
                {
                    return b;
                }

                // IEEE min/max (−0 below +0) all the way down, like Math.Min/Math.Max in the scalar reference.
                Vector128<float> lo4 = Vector128.Min(Vector256.Min(vmin.GetLower(), vmin.GetUpper()).GetLower(), Vector256.Min(vmin.GetLower(), vmin.GetUpper()).GetUpper());
                Vector128<float> hi4 = Vector128.Max(Vector256.Max(vmax.GetLower(), vmax.GetUpper()).GetLower(), Vector256.Max(vmax.GetLower(), vmax.GetUpper()).GetUpper());
                float min = Math.Min(Math.Min(lo4[0], lo4[1]), Math.Min(lo4[2], lo4[3]));
                float max = Math.Max(Math.Max(hi4[0], hi4[1]), Math.Max(hi4[2], hi4[3]));

                scale = max - min;
                offset = min;
                if (!float.IsFinite(scale))
                {
                    return b;
                }
            }

            float inverse = scale > 0f ? 1f / scale : 0f;
            if (float.IsInfinity(inverse))
            {
                return b;
            }

            scales[b] = scale;
            if (asymmetric)
            {
                offsets[b] = offset;
            }

            var off = Vector512.Create(offset);
            var inv = Vector512.Create(inverse);
            Vector512<float> table = levelVector * Vector512.Create(scale);
            if (asymmetric)
            {
                table += off;
            }

            for (int i = start; i < end; i += 16)
            {
                Vector512<float> r = (Vector512.LoadUnsafe(ref src, (nuint)i) - off) * inv;
                Vector512<int> c = Vector512<int>.Zero;
                if (bucketed)
                {
                    Vector512<int> j = Vector512.ConvertToInt32((r - bucketOrigin) * bucketScale);
                    j = Vector512.Max(Vector512.Min(j, lastBucket), Vector512<int>.Zero);
                    Vector512<int> b0 = Avx512F.PermuteVar16x32x2(basesLo, j, basesHi);
                    Vector512<float> t1 = Avx512F.PermuteVar16x32x2(tLo, b0, tHi);
                    Vector512<float> t2 = Avx512F.PermuteVar16x32x2(tLo, b0 + Vector512<int>.One, tHi);
                    c = b0 - Vector512.GreaterThanOrEqual(r, t1).AsInt32() - Vector512.GreaterThanOrEqual(r, t2).AsInt32();
                }
                else if (!large)
                {
                    for (int k = 0; k < nt; k++)
                    {
                        c -= Vector512.GreaterThanOrEqual(r, Unsafe.Add(ref t0, k)).AsInt32();
                    }
                }
                else
                {
                    Vector512<int> h = Vector512<int>.Zero;
                    for (int m = 0; m < coarse; m++)
                    {
                        h -= Vector512.GreaterThanOrEqual(r, Unsafe.Add(ref t0, m)).AsInt32();
                    }

                    for (int j = 0; j < SmallCodeBook - 1; j++)
                    {
                        c -= Vector512.GreaterThanOrEqual(r, Avx512F.PermuteVar16x32(Unsafe.Add(ref t0, SmallCodeBook + j), h)).AsInt32();
                    }

                    c += h << 4;
                }

                Avx512F.ConvertToVector128Byte(c).StoreUnsafe(ref dst, (nuint)i);
                if (fused)
                {
                    Avx512F.PermuteVar16x32(table, c).StoreUnsafe(ref deq, (nuint)i);
                }
            }
        }

        return blockCount;
    }
}
