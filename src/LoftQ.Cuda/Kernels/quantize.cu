// LoftQ.NET — blockwise quantization kernels of the GPU backend.
//
// Compiled at run time by NVRTC (no #include anywhere: NVRTC has no standard headers) and, unchanged, by the CPU
// emulation in tests/LoftQ.Cuda.Tests/Emulation, whose tests check every kernel bit for bit against the CPU
// quantizers (src/LoftQ/Quantization/BlockwiseCodec.cs and QuantizationKernels.cs are the reference).
//
// Exactness rules:
//  * Every float operation whose rounding must equal .NET's goes through __fadd_rn / __fsub_rn / __fmul_rn /
//    __fdiv_rn (or the __d*_rn forms): never contracted into an FMA, IEEE division whatever -prec-div says.
//    Subnormals matter (tiny blocks): never compile with -ftz=true or -use_fast_math.
//  * code = number of decision thresholds <= ratio (a branch-free binary search, as QuantizationKernels.CodeOf);
//    ratio = (x - offset) * (1 / scale), or (x - offset) / scale when 1 / scale overflows (subnormal scale).
//  * dequantized = levels[code] * scale, plus offset only when asymmetric (so -0 stays -0 when symmetric).
//  * Block minimum / maximum order -0 below +0 (IEEE 754-2019, like .NET's Math.Min and TensorPrimitives.Min).
//  * The scale search reproduces the CPU's float summation order of each candidate's squared error (see
//    loftq_error_fused and loftq_error_aggregate), so the chosen clip ratio is the CPU's, ties included.
//
// Host configuration (NVRTC -D options; KernelLaunch.CompileOptions sets them from the running process):
//  LOFTQ_CPU_SUM_LANES   float lanes of TensorPrimitives' aggregation on the host: 16 with Vector512 acceleration,
//                        8 with Vector256, 4 with Vector128 only. Orders the search's fallback error sum.
//  LOFTQ_CPU_FUSED_ERROR 1 when the host's Vector256 is accelerated, so that the CPU search uses
//                        QuantizationKernels.TrySquaredError (8 float lanes) for code books of <= 16 levels.

#ifndef LOFTQ_CPU_SUM_LANES
#define LOFTQ_CPU_SUM_LANES 8
#endif

#ifndef LOFTQ_CPU_FUSED_ERROR
#define LOFTQ_CPU_FUSED_ERROR 1
#endif

#if LOFTQ_CPU_SUM_LANES != 4 && LOFTQ_CPU_SUM_LANES != 8 && LOFTQ_CPU_SUM_LANES != 16
#error "LOFTQ_CPU_SUM_LANES must be 4, 8 or 16"
#endif

#define LOFTQ_MAX_LEVELS 256
#define LOFTQ_FULL_MASK 0xffffffffu
#define LOFTQ_NONE 0xffffffffffffffffull
// Plain path: vector rounds per lane kept in registers between the absmax pass and the coding pass.
#define LOFTQ_PLAIN_CACHE 4
// Search path: lanes per quantization block, and values per lane kept in registers (blocks of up to 64 values).
#define LOFTQ_SEARCH_LANES 4
#define LOFTQ_SEARCH_CACHE 16

struct alignas(16) loftq_float4
{
    float x, y, z, w;
};

struct alignas(4) loftq_byte4
{
    unsigned char x, y, z, w;
};

// ---------------------------------------------------------------------------------------------------------------
// Scalar helpers
// ---------------------------------------------------------------------------------------------------------------

__device__ __forceinline__ float loftq_infinity()
{
    return __uint_as_float(0x7f800000u);
}

__device__ __forceinline__ bool loftq_finite(float v)
{
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}

__device__ __forceinline__ float loftq_abs(float v)
{
    return __uint_as_float(__float_as_uint(v) & 0x7fffffffu);
}

__device__ __forceinline__ bool loftq_sign_bit(float v)
{
    return (__float_as_uint(v) & 0x80000000u) != 0u;
}

// IEEE 754-2019 minimum / maximum for non-NaN values (-0 below +0). NaN operands are ignored (the block then fails).
__device__ __forceinline__ float loftq_min(float a, float b)
{
    return (b < a || (b == a && loftq_sign_bit(b))) ? b : a;
}

__device__ __forceinline__ float loftq_max(float a, float b)
{
    return (b > a || (b == a && !loftq_sign_bit(b))) ? b : a;
}

__device__ __forceinline__ long long loftq_min_ll(long long a, long long b)
{
    return a < b ? a : b;
}

// BlockScaleSearch.Ratio(k) = 1f - (k * (1f - MinRatio) / Steps), in float.
__device__ __forceinline__ float loftq_clip_ratio(int k, int steps, float min_ratio)
{
    return __fsub_rn(1.0f, __fdiv_rn(__fmul_rn((float)k, __fsub_rn(1.0f, min_ratio)), (float)steps));
}

// QuantizationKernels.CodeOf: the number of thresholds <= r (thresholds ascending, level_count a power of two).
__device__ __forceinline__ int loftq_code(const float* thresholds, int level_count, float r)
{
    int index = 0;
    for (int step = level_count >> 1; step > 0; step >>= 1)
    {
        index += thresholds[index + step - 1] <= r ? step : 0;
    }

    return index;
}

// One block's coding rule: scale, offset, 1 / scale (or division when that overflows) and the code book.
struct loftq_coder
{
    const float* levels;
    const float* thresholds;
    int level_count;
    bool asymmetric;
    float scale;
    float offset;
    float inverse;
    bool divide;

    __device__ __forceinline__ int code(float v) const
    {
        const float d = __fsub_rn(v, offset);
        const float r = divide ? __fdiv_rn(d, scale) : __fmul_rn(d, inverse);
        return loftq_code(thresholds, level_count, r);
    }

    __device__ __forceinline__ float value(int code) const
    {
        const float v = __fmul_rn(levels[code], scale);
        return asymmetric ? __fadd_rn(v, offset) : v;
    }

    // x - dequantize(quantize(x)), as the CPU's error kernels compute it.
    __device__ __forceinline__ float error(float v) const
    {
        return __fsub_rn(v, value(code(v)));
    }
};

// The coder for final codes: inverse = scale > 0 ? 1 / scale : 0 (BlockwiseCodec.QuantizeChunk).
__device__ __forceinline__ loftq_coder loftq_make_coder(
    const float* levels, const float* thresholds, int level_count, bool asymmetric, float scale, float offset)
{
    loftq_coder c;
    c.levels = levels;
    c.thresholds = thresholds;
    c.level_count = level_count;
    c.asymmetric = asymmetric;
    c.scale = scale;
    c.offset = offset;
    c.inverse = scale > 0.0f ? __fdiv_rn(1.0f, scale) : 0.0f;
    c.divide = !loftq_finite(c.inverse);
    return c;
}

// Running block statistics of one lane: absmax (or min and max) and its first non-finite flat index.
struct loftq_stats
{
    float hi;
    float lo;
    unsigned long long first_bad;

    __device__ __forceinline__ void add(float v, bool asymmetric, unsigned long long index)
    {
        if (!loftq_finite(v) && first_bad == LOFTQ_NONE)
        {
            first_bad = index;
        }

        if (asymmetric)
        {
            lo = loftq_min(lo, v);
            hi = loftq_max(hi, v);
        }
        else
        {
            const float a = loftq_abs(v);
            hi = a > hi ? a : hi;
        }
    }
};

__device__ __forceinline__ loftq_stats loftq_make_stats(bool asymmetric)
{
    loftq_stats s;
    s.hi = asymmetric ? -loftq_infinity() : 0.0f;
    s.lo = loftq_infinity();
    s.first_bad = LOFTQ_NONE;
    return s;
}

// Combines the statistics of aligned groups of `lanes` lanes (a power of two <= 32) with butterfly shuffles over
// the whole warp (every lane of the warp must call it). Returns whether any lane of the group saw a non-finite value.
__device__ __forceinline__ bool loftq_reduce_stats(loftq_stats& s, bool asymmetric, int lanes)
{
    unsigned bad = s.first_bad != LOFTQ_NONE ? 1u : 0u;
    for (int o = 1; o < lanes; o <<= 1)
    {
        const float hi = __shfl_xor_sync(LOFTQ_FULL_MASK, s.hi, o);
        if (asymmetric)
        {
            const float lo = __shfl_xor_sync(LOFTQ_FULL_MASK, s.lo, o);
            s.lo = loftq_min(s.lo, lo);
            s.hi = loftq_max(s.hi, hi);
        }
        else
        {
            s.hi = hi > s.hi ? hi : s.hi;
        }

        bad |= __shfl_xor_sync(LOFTQ_FULL_MASK, bad, o);
    }

    return bad != 0u;
}

// Reports the block's failure as the CPU does (BlockwiseCodec.TryBlockParameters): each lane its first non-finite
// flat index; an asymmetric block of finite values whose range overflows, its first flat index. The smallest
// report over the grid is the CPU's (its earliest failing block reports first). Returns whether the block failed.
__device__ __forceinline__ bool loftq_report(
    const loftq_stats& s, bool any_bad, bool leader, bool active, long long start, float scale, unsigned long long* failure)
{
    if (s.first_bad != LOFTQ_NONE && failure != nullptr)
    {
        atomicMin(failure, s.first_bad);
    }

    const bool overflow = !any_bad && !loftq_finite(scale);
    if (active && leader && overflow && failure != nullptr)
    {
        atomicMin(failure, (unsigned long long)start);
    }

    return any_bad || overflow;
}

// ---------------------------------------------------------------------------------------------------------------
// Plain path (no scale search): bandwidth-bound. A group of `lanes` lanes (power of two, up to a warp) per block;
// lane gl handles the V-wide chunks gl, gl + lanes, ... (16-byte loads and stores when V = 4), so one warp
// instruction covers 32 * V consecutive values. The absmax / min-max is reduced with butterfly shuffles.
// ---------------------------------------------------------------------------------------------------------------

template <int V>
__device__ __forceinline__ void loftq_load(const float* __restrict__ p, int count, float (&v)[V])
{
    if constexpr (V == 4)
    {
        if (count >= 4)
        {
            const loftq_float4 q = *reinterpret_cast<const loftq_float4*>(p);
            v[0] = q.x;
            v[1] = q.y;
            v[2] = q.z;
            v[3] = q.w;
            return;
        }
    }

#pragma unroll
    for (int k = 0; k < V; ++k)
    {
        v[k] = k < count ? p[k] : 0.0f;
    }
}

// Stores the first `count` of V values at p: one vector store (Vec has members x, y, z, w) when all four are there.
template <int V, class Vec, class T>
__device__ __forceinline__ void loftq_store(T* __restrict__ p, int count, const T (&v)[V])
{
    if constexpr (V == 4)
    {
        if (count >= 4)
        {
            Vec q;
            q.x = v[0];
            q.y = v[1];
            q.z = v[2];
            q.w = v[3];
            *reinterpret_cast<Vec*>(p) = q;
            return;
        }
    }

#pragma unroll
    for (int k = 0; k < V; ++k)
    {
        if (k < count)
        {
            p[k] = v[k];
        }
    }
}

template <int V>
__device__ __forceinline__ void loftq_scan(const float (&v)[V], int count, long long index, bool asymmetric, loftq_stats& s)
{
#pragma unroll
    for (int k = 0; k < V; ++k)
    {
        if (k < count)
        {
            s.add(v[k], asymmetric, (unsigned long long)(index + k));
        }
    }
}

// Codes (and dequantized values, or w minus them) of one chunk of `count` (> 0) values at flat index `index`.
template <int V>
__device__ __forceinline__ void loftq_emit(
    const float (&v)[V], int count, long long index, const loftq_coder& coder,
    const float* __restrict__ w, float* __restrict__ out, unsigned char* __restrict__ codes)
{
    unsigned char c[V];
    float y[V];
#pragma unroll
    for (int k = 0; k < V; ++k)
    {
        const int code = coder.code(v[k]);
        c[k] = (unsigned char)code;
        y[k] = coder.value(code);
    }

    if (codes != nullptr)
    {
        loftq_store<V, loftq_byte4>(codes + index, count, c);
    }

    if (out != nullptr)
    {
        if (w != nullptr)
        {
            float wv[V];
            loftq_load<V>(w + index, count, wv);
#pragma unroll
            for (int k = 0; k < V; ++k)
            {
                y[k] = __fsub_rn(wv[k], y[k]);
            }
        }

        loftq_store<V, loftq_float4>(out + index, count, y);
    }
}

template <int V>
__device__ __forceinline__ void loftq_quantize_plain(
    const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out, unsigned char* __restrict__ codes,
    float* __restrict__ scales, float* __restrict__ offsets, long long n, int block_size,
    const float* levels, const float* thresholds, int level_count, bool asymmetric, unsigned long long* failure)
{
    const int chunks = (block_size + V - 1) / V;
    int lanes = 1;
    while (lanes < chunks && lanes < 32)
    {
        lanes <<= 1;
    }

    const int per_warp = 32 / lanes;
    const int lane = (int)(threadIdx.x & 31u);
    const int group = lane / lanes;
    const int gl = lane & (lanes - 1);
    const int rounds = (chunks + lanes - 1) / lanes;
    const long long blocks = (n + block_size - 1) / block_size;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;

    for (long long task = warp; task * per_warp < blocks; task += warps)
    {
        const long long b = task * per_warp + group;
        const bool active = b < blocks;
        const long long start = active ? b * block_size : 0;
        const int len = active ? (int)loftq_min_ll(block_size, n - start) : 0;
        const float* xb = x + start;

        // Pass 1: statistics; the first LOFTQ_PLAIN_CACHE rounds stay in registers for pass 2.
        loftq_stats s = loftq_make_stats(asymmetric);
        float cache[LOFTQ_PLAIN_CACHE][V];
#pragma unroll
        for (int r = 0; r < LOFTQ_PLAIN_CACHE; ++r)
        {
            const int e0 = ((r * lanes) + gl) * V;
            loftq_load<V>(xb + e0, r < rounds ? len - e0 : 0, cache[r]);
            loftq_scan<V>(cache[r], r < rounds ? len - e0 : 0, start + e0, asymmetric, s);
        }

        for (int r = LOFTQ_PLAIN_CACHE; r < rounds; ++r)
        {
            const int e0 = ((r * lanes) + gl) * V;
            float v[V];
            loftq_load<V>(xb + e0, len - e0, v);
            loftq_scan<V>(v, len - e0, start + e0, asymmetric, s);
        }

        const bool any_bad = loftq_reduce_stats(s, asymmetric, lanes);
        const float scale = asymmetric ? __fsub_rn(s.hi, s.lo) : s.hi;
        const float offset = asymmetric ? s.lo : 0.0f;
        loftq_report(s, any_bad, gl == 0, active, start, scale, failure);

        // Pass 2: codes and dequantized values (no shuffles below: groups may diverge).
        if (active)
        {
            if (gl == 0)
            {
                scales[b] = scale;
                if (asymmetric)
                {
                    offsets[b] = offset;
                }
            }

            const loftq_coder coder = loftq_make_coder(levels, thresholds, level_count, asymmetric, scale, offset);
#pragma unroll
            for (int r = 0; r < LOFTQ_PLAIN_CACHE; ++r)
            {
                const int e0 = ((r * lanes) + gl) * V;
                if (r < rounds && e0 < len)
                {
                    loftq_emit<V>(cache[r], len - e0, start + e0, coder, w, out, codes);
                }
            }

            for (int r = LOFTQ_PLAIN_CACHE; r < rounds; ++r)
            {
                const int e0 = ((r * lanes) + gl) * V;
                if (e0 < len)
                {
                    float v[V];
                    loftq_load<V>(xb + e0, len - e0, v);
                    loftq_emit<V>(v, len - e0, start + e0, coder, w, out, codes);
                }
            }
        }

        __syncwarp(LOFTQ_FULL_MASK);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Search path (BlockScaleSearch): compute-bound. LOFTQ_SEARCH_LANES = 4 lanes per block, lane gl owning the values
// gl + 4m (m = 0, 1, ...), so that the CPU's SIMD lane p = i mod C of value i (C = 4, 8 or 16) lives in lane p mod 4,
// "slot" p / 4 = m mod (C / 4): each CPU lane's float accumulation is a sequential chain inside one GPU lane, and the
// CPU's final horizontal sum is a butterfly over the 4 lanes plus an in-lane sum of the slots.
// ---------------------------------------------------------------------------------------------------------------

// Calls f(mb, s, v) for m = mb + s in [m_begin, m_end) in ascending order, in steps of S (m_begin, m_end multiples of
// S, S dividing LOFTQ_SEARCH_CACHE), with v the lane's value m (0 when m >= count). Values m < LOFTQ_SEARCH_CACHE come
// from registers, later ones from memory (x_lane = the block's first value + gl; value m at x_lane[4m]).
template <int S, class F>
__device__ __forceinline__ void loftq_for_rounds(
    const float (&cache)[LOFTQ_SEARCH_CACHE], const float* __restrict__ x_lane, int count, int m_begin, int m_end, F&& f)
{
#pragma unroll
    for (int mb = 0; mb < LOFTQ_SEARCH_CACHE; mb += S)
    {
        if (mb >= m_begin && mb < m_end)
        {
#pragma unroll
            for (int s = 0; s < S; ++s)
            {
                f(mb, s, cache[mb + s]);
            }
        }
    }

    for (int mb = m_begin > LOFTQ_SEARCH_CACHE ? m_begin : LOFTQ_SEARCH_CACHE; mb < m_end; mb += S)
    {
#pragma unroll
        for (int s = 0; s < S; ++s)
        {
            const int m = mb + s;
            f(mb, s, m < count ? x_lane[4 * m] : 0.0f);
        }
    }
}

// The horizontal float sum of the CPU's C = 4 * S lanes held as acc[slot] in the 4 lanes of the group:
// ((l0 + l1) + (l2 + l3)) per 4 lanes (Vector128.Sum), then the slots pairwise (Vector256.Sum, Vector512.Sum).
template <int S>
__device__ __forceinline__ float loftq_lanes_sum(const float (&acc)[S], unsigned gmask)
{
    float part[S];
#pragma unroll
    for (int s = 0; s < S; ++s)
    {
        float v = acc[s];
        v = __fadd_rn(v, __shfl_xor_sync(gmask, v, 1, LOFTQ_SEARCH_LANES));
        v = __fadd_rn(v, __shfl_xor_sync(gmask, v, 2, LOFTQ_SEARCH_LANES));
        part[s] = v;
    }

    if constexpr (S == 1)
    {
        return part[0];
    }
    else if constexpr (S == 2)
    {
        return __fadd_rn(part[0], part[1]);
    }
    else
    {
        return __fadd_rn(__fadd_rn(part[0], part[1]), __fadd_rn(part[2], part[3]));
    }
}

// QuantizationKernels.TrySquaredError (code books of <= 16 levels, finite 1 / scale): 8 float lanes over the first
// len & ~7 values (lane i mod 8, ascending), Vector256.Sum, then the remaining values added one by one in double.
__device__ __forceinline__ double loftq_error_fused(
    const float (&cache)[LOFTQ_SEARCH_CACHE], const float* __restrict__ x_lane, int count, int len, int gl,
    unsigned gmask, const loftq_coder& coder)
{
    float acc[2] = { 0.0f, 0.0f };
    const int n8 = len & ~7;
    loftq_for_rounds<2>(cache, x_lane, count, 0, n8 >> 2, [&](int, int s, float v) {
        const float e = coder.error(v);
        acc[s] = __fadd_rn(acc[s], __fmul_rn(e, e));
    });

    float tail[2] = { 0.0f, 0.0f };
    const int t8 = len - n8;
    if (t8 > 0)
    {
        loftq_for_rounds<2>(cache, x_lane, count, n8 >> 2, (n8 >> 2) + 2, [&](int, int s, float v) {
            tail[s] = (4 * s) + gl < t8 ? coder.error(v) : 0.0f;
        });
    }

    double sum = (double)loftq_lanes_sum<2>(acc, gmask);
    for (int u = 0; u < t8; ++u)
    {
        const float e = __shfl_sync(gmask, (u >> 2) != 0 ? tail[1] : tail[0], u & 3, LOFTQ_SEARCH_LANES);
        sum = __dadd_rn(sum, __dmul_rn((double)e, (double)e));
    }

    return sum;
}

// TensorPrimitives.SumOfSquares over x - dequantized (BlockError's fallback), for len >= C lanes of C = 4 * S:
// value i < H = len - len % C goes to lane i mod C, ascending, except that for len > 8C the first C values are
// added after the unrolled main loop over [C, C + 8C * floor((len - C) / 8C)); the last len % C values go to lanes
// C - len % C, ... (the masked end vector); then the horizontal sum. The result is float, widened to double.
template <int S>
__device__ __forceinline__ double loftq_error_aggregate_lanes(
    const float (&cache)[LOFTQ_SEARCH_CACHE], const float* __restrict__ x_lane, int count, int len, int gl,
    unsigned gmask, const loftq_coder& coder)
{
    constexpr int C = 4 * S;
    const int t = len % C;
    const int hq = (len - t) >> 2;
    const bool defer = len > 8 * C;
    const int main_end_q = defer ? (C + (8 * C * ((len - C) / (8 * C)))) >> 2 : 0;
    float acc[S];
    float deferred[S];
#pragma unroll
    for (int s = 0; s < S; ++s)
    {
        acc[s] = 0.0f;
        deferred[s] = 0.0f;
    }

    loftq_for_rounds<S>(cache, x_lane, count, 0, hq, [&](int mb, int s, float v) {
        if (defer && s == 0 && mb == main_end_q)
        {
#pragma unroll
            for (int j = 0; j < S; ++j)
            {
                acc[j] = __fadd_rn(acc[j], deferred[j]);
            }
        }

        const float e = coder.error(v);
        const float q = __fmul_rn(e, e);
        if (defer && mb == 0)
        {
            deferred[s] = q;
        }
        else
        {
            acc[s] = __fadd_rn(acc[s], q);
        }
    });

    if (defer && main_end_q == hq)
    {
#pragma unroll
        for (int j = 0; j < S; ++j)
        {
            acc[j] = __fadd_rn(acc[j], deferred[j]);
        }
    }

    if (t > 0)
    {
        // Tail value u (flat H + u) is in lane u mod 4, slot u / 4; it belongs to CPU lane C - t + u.
        float tail[S];
#pragma unroll
        for (int s = 0; s < S; ++s)
        {
            tail[s] = 0.0f;
        }

        loftq_for_rounds<S>(cache, x_lane, count, hq, hq + S, [&](int, int s, float v) {
            if ((4 * s) + gl < t)
            {
                const float e = coder.error(v);
                tail[s] = __fmul_rn(e, e);
            }
            else
            {
                tail[s] = 0.0f;
            }
        });

#pragma unroll
        for (int s = 0; s < S; ++s)
        {
            const int u = (4 * s) + gl - (C - t);
            float got = 0.0f;
#pragma unroll
            for (int j = 0; j < S; ++j)
            {
                const float g = __shfl_sync(gmask, tail[j], u & 3, LOFTQ_SEARCH_LANES);
                got = (u >> 2) == j ? g : got;
            }

            if (u >= 0)
            {
                acc[s] = __fadd_rn(acc[s], got);
            }
        }
    }

    return (double)loftq_lanes_sum<S>(acc, gmask);
}

// TensorPrimitives' aggregation for any length: the host's vector width when len reaches it, else the widest of
// Vector256 / Vector128 that fits (its small-input path), else (len <= 3) the values from last to first.
__device__ __forceinline__ double loftq_error_aggregate(
    const float (&cache)[LOFTQ_SEARCH_CACHE], const float* __restrict__ x_lane, int count, int len, int gl,
    unsigned gmask, const loftq_coder& coder)
{
    if (len >= LOFTQ_CPU_SUM_LANES)
    {
        return loftq_error_aggregate_lanes<LOFTQ_CPU_SUM_LANES / 4>(cache, x_lane, count, len, gl, gmask, coder);
    }

#if LOFTQ_CPU_SUM_LANES == 16
    if (len >= 8)
    {
        return loftq_error_aggregate_lanes<2>(cache, x_lane, count, len, gl, gmask, coder);
    }
#endif

    if (len >= 4)
    {
        return loftq_error_aggregate_lanes<1>(cache, x_lane, count, len, gl, gmask, coder);
    }

    float q = 0.0f;
    loftq_for_rounds<1>(cache, x_lane, count, 0, 1, [&](int, int, float v) {
        const float e = coder.error(v);
        q = gl < len ? __fmul_rn(e, e) : 0.0f;
    });

    float sum = 0.0f;
    for (int u = len - 1; u >= 0; --u)
    {
        sum = __fadd_rn(sum, __shfl_sync(gmask, q, u, LOFTQ_SEARCH_LANES));
    }

    return (double)sum;
}

// BlockwiseCodec.BlockError: the squared error of coding the block with (scale, offset) and 1 / scale.
__device__ __forceinline__ double loftq_block_error(
    const float (&cache)[LOFTQ_SEARCH_CACHE], const float* __restrict__ x_lane, int count, int len, int gl,
    unsigned gmask, const loftq_coder& coder)
{
#if LOFTQ_CPU_FUSED_ERROR
    if (coder.level_count <= 16 && !coder.divide)
    {
        return loftq_error_fused(cache, x_lane, count, len, gl, gmask, coder);
    }
#endif

    return loftq_error_aggregate(cache, x_lane, count, len, gl, gmask, coder);
}

__device__ __forceinline__ void loftq_quantize_search(
    const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out, unsigned char* __restrict__ codes,
    float* __restrict__ scales, float* __restrict__ offsets, long long n, int block_size,
    const float* levels, const float* thresholds, int level_count, bool asymmetric, int search_steps,
    float search_min_ratio, unsigned long long* failure)
{
    const int per_warp = 32 / LOFTQ_SEARCH_LANES;
    const int lane = (int)(threadIdx.x & 31u);
    const int group = lane / LOFTQ_SEARCH_LANES;
    const int gl = lane & (LOFTQ_SEARCH_LANES - 1);
    const unsigned gmask = 0xfu << (lane & ~(LOFTQ_SEARCH_LANES - 1));
    const long long blocks = (n + block_size - 1) / block_size;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;

    for (long long task = warp; task * per_warp < blocks; task += warps)
    {
        const long long b = task * per_warp + group;
        const bool active = b < blocks;
        const long long start = active ? b * block_size : 0;
        const int len = active ? (int)loftq_min_ll(block_size, n - start) : 0;
        const int count = len > gl ? (len - gl + LOFTQ_SEARCH_LANES - 1) / LOFTQ_SEARCH_LANES : 0;
        const float* x_lane = x + start + gl;

        loftq_stats st = loftq_make_stats(asymmetric);
        float cache[LOFTQ_SEARCH_CACHE];
#pragma unroll
        for (int m = 0; m < LOFTQ_SEARCH_CACHE; ++m)
        {
            cache[m] = m < count ? x_lane[LOFTQ_SEARCH_LANES * m] : 0.0f;
            if (m < count)
            {
                st.add(cache[m], asymmetric, (unsigned long long)(start + gl + (LOFTQ_SEARCH_LANES * m)));
            }
        }

        for (int m = LOFTQ_SEARCH_CACHE; m < count; ++m)
        {
            st.add(x_lane[LOFTQ_SEARCH_LANES * m], asymmetric, (unsigned long long)(start + gl + (LOFTQ_SEARCH_LANES * m)));
        }

        const bool any_bad = loftq_reduce_stats(st, asymmetric, LOFTQ_SEARCH_LANES);
        float scale = asymmetric ? __fsub_rn(st.hi, st.lo) : st.hi;
        float offset = asymmetric ? st.lo : 0.0f;
        const bool failed = loftq_report(st, any_bad, gl == 0, active, start, scale, failure);

        // From here on control flow is uniform per group only: shuffles use the group's mask.
        if (active)
        {
            if (!failed && scale > 0.0f)
            {
                // BlockwiseCodec.SearchScale: the first least error over the grid (ties keep the larger ratio).
                const float base_scale = scale;
                const float base_offset = offset;
                double best = loftq_infinity();
                for (int k = 0; k <= search_steps; ++k)
                {
                    const float c = loftq_clip_ratio(k, search_steps, search_min_ratio);
                    const float s = __fmul_rn(base_scale, c);
                    const float o = asymmetric ? __fadd_rn(base_offset, __fmul_rn(0.5f, __fsub_rn(base_scale, s))) : 0.0f;
                    if (!(s > 0.0f) || !loftq_finite(s))
                    {
                        continue;
                    }

                    loftq_coder coder;
                    coder.levels = levels;
                    coder.thresholds = thresholds;
                    coder.level_count = level_count;
                    coder.asymmetric = asymmetric;
                    coder.scale = s;
                    coder.offset = o;
                    coder.inverse = __fdiv_rn(1.0f, s);
                    coder.divide = !loftq_finite(coder.inverse);
                    const double error = loftq_block_error(cache, x_lane, count, len, gl, gmask, coder);
                    if (error < best)
                    {
                        best = error;
                        scale = s;
                        offset = o;
                    }
                }
            }

            if (gl == 0)
            {
                scales[b] = scale;
                if (asymmetric)
                {
                    offsets[b] = offset;
                }
            }

            const loftq_coder coder = loftq_make_coder(levels, thresholds, level_count, asymmetric, scale, offset);
            loftq_for_rounds<1>(cache, x_lane, count, 0, count, [&](int mb, int, float v) {
                const long long i = start + gl + ((long long)LOFTQ_SEARCH_LANES * mb);
                const int code = coder.code(v);
                if (codes != nullptr)
                {
                    codes[i] = (unsigned char)code;
                }

                if (out != nullptr)
                {
                    const float y = coder.value(code);
                    out[i] = w != nullptr ? __fsub_rn(w[i], y) : y;
                }
            });
        }

        __syncwarp(LOFTQ_FULL_MASK);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------------------------

// Blockwise quantization of x (row-major, blocks of block_size, the last one possibly partial): one code per value,
// one scale (and offset when asymmetric) per block, and, when out is not null, the dequantized values (w minus them
// when w is not null). search_steps > 0 searches each block's clip ratio on BlockScaleSearch's grid. The smallest
// flat index of a non-finite value (or the first index of an asymmetric block whose range overflows) is
// atomicMin'ed into *failure (the host initialises it to ULLONG_MAX); the outputs are then meaningless.
// Any grid works (grid-stride over warps); blockDim.x must be a multiple of 32.
extern "C" __global__ void loftq_quantize_blocks(
    const float* x, const float* w, float* out, unsigned char* codes, float* scales, float* offsets,
    long long n, int block_size,
    const float* levels, const float* thresholds, int level_count,
    int asymmetric, int search_steps, float search_min_ratio,
    unsigned long long* failure)
{
    __shared__ float s_levels[LOFTQ_MAX_LEVELS];
    __shared__ float s_thresholds[LOFTQ_MAX_LEVELS];
    if (n <= 0 || block_size < 1 || level_count < 2 || level_count > LOFTQ_MAX_LEVELS || (level_count & (level_count - 1)) != 0)
    {
        return;
    }

    for (int i = (int)threadIdx.x; i < level_count; i += (int)blockDim.x)
    {
        s_levels[i] = levels[i];
        s_thresholds[i] = i + 1 < level_count ? thresholds[i] : loftq_infinity();
    }

    __syncthreads();

    const bool asym = asymmetric != 0;
    if (search_steps > 0)
    {
        loftq_quantize_search(
            x, w, out, codes, scales, offsets, n, block_size, s_levels, s_thresholds, level_count, asym,
            search_steps, search_min_ratio, failure);
        return;
    }

    const unsigned long long addresses =
        reinterpret_cast<unsigned long long>(x) | reinterpret_cast<unsigned long long>(w) | reinterpret_cast<unsigned long long>(out);
    const bool vector = block_size % 4 == 0 && (addresses & 15ull) == 0 && (reinterpret_cast<unsigned long long>(codes) & 3ull) == 0;
    if (vector)
    {
        loftq_quantize_plain<4>(x, w, out, codes, scales, offsets, n, block_size, s_levels, s_thresholds, level_count, asym, failure);
    }
    else
    {
        loftq_quantize_plain<1>(x, w, out, codes, scales, offsets, n, block_size, s_levels, s_thresholds, level_count, asym, failure);
    }
}

// Packs n codes (one per byte) into a big-endian bit stream of `bits` bits each (BitPacking: code i at bits
// [i * bits, (i + 1) * bits) from the most significant bit of byte 0). Writes every one of the packed_length bytes;
// bits past the last code are 0. Codes are masked to `bits` bits. Any grid works (grid-stride over bytes).
extern "C" __global__ void loftq_pack_codes(const unsigned char* codes, long long n, int bits, unsigned char* packed, long long packed_length)
{
    if (bits < 1 || bits > 8)
    {
        return;
    }

    const unsigned mask = (1u << bits) - 1u;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long j = ((long long)blockIdx.x * blockDim.x) + threadIdx.x; j < packed_length; j += stride)
    {
        unsigned acc = 0u;
        int have = 0;
        if (8 % bits == 0)
        {
            // Whole codes per byte (1, 2, 4, 8 bits).
            const int per = 8 / bits;
            const long long i0 = j * per;
            for (int k = 0; k < per; ++k)
            {
                const long long i = i0 + k;
                acc = (acc << bits) | (i < n ? (codes[i] & mask) : 0u);
            }

            have = 8;
        }
        else
        {
            const long long bit0 = j * 8;
            long long i = bit0 / bits;
            const int used = (int)(bit0 - (i * bits));
            acc = (i < n ? (codes[i] & mask) : 0u) & ((1u << (bits - used)) - 1u);
            have = bits - used;
            for (++i; have < 8; ++i)
            {
                acc = (acc << bits) | (i < n ? (codes[i] & mask) : 0u);
                have += bits;
            }
        }

        packed[j] = (unsigned char)((acc >> (have - 8)) & 0xffu);
    }
}

// *result += sum over i of (a[i] - b[i])^2 (b null: a[i]^2), differences and squares in double. One atomicAdd per
// thread block (blockDim.x a multiple of 32, at most 1024); the host zeroes *result first. Any grid works.
extern "C" __global__ void loftq_sum_squares(const float* a, const float* b, long long n, double* result)
{
    __shared__ double s_partial[32];
    double acc = 0.0;
    const long long tid = ((long long)blockIdx.x * blockDim.x) + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long done = 0;
    const unsigned long long addresses = reinterpret_cast<unsigned long long>(a) | reinterpret_cast<unsigned long long>(b);
    if ((addresses & 15ull) == 0)
    {
        const long long quads = n >> 2;
        for (long long q = tid; q < quads; q += stride)
        {
            const loftq_float4 av = reinterpret_cast<const loftq_float4*>(a)[q];
            loftq_float4 bv;
            bv.x = bv.y = bv.z = bv.w = 0.0f;
            if (b != nullptr)
            {
                bv = reinterpret_cast<const loftq_float4*>(b)[q];
            }

            const double d0 = __dsub_rn((double)av.x, (double)bv.x);
            const double d1 = __dsub_rn((double)av.y, (double)bv.y);
            const double d2 = __dsub_rn((double)av.z, (double)bv.z);
            const double d3 = __dsub_rn((double)av.w, (double)bv.w);
            acc = __dadd_rn(acc, __dadd_rn(__dadd_rn(__dmul_rn(d0, d0), __dmul_rn(d1, d1)), __dadd_rn(__dmul_rn(d2, d2), __dmul_rn(d3, d3))));
        }

        done = quads << 2;
    }

    for (long long i = done + tid; i < n; i += stride)
    {
        const double d = __dsub_rn((double)a[i], b != nullptr ? (double)b[i] : 0.0);
        acc = __dadd_rn(acc, __dmul_rn(d, d));
    }

    for (int o = 16; o > 0; o >>= 1)
    {
        acc = __dadd_rn(acc, __shfl_xor_sync(LOFTQ_FULL_MASK, acc, o));
    }

    const int lane = (int)(threadIdx.x & 31u);
    const int warp = (int)(threadIdx.x >> 5);
    if (lane == 0)
    {
        s_partial[warp] = acc;
    }

    __syncthreads();
    if (warp == 0)
    {
        const int warps = (int)((blockDim.x + 31u) >> 5);
        double v = lane < warps ? s_partial[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1)
        {
            v = __dadd_rn(v, __shfl_xor_sync(LOFTQ_FULL_MASK, v, o));
        }

        if (lane == 0)
        {
            atomicAdd(result, v);
        }
    }
}
