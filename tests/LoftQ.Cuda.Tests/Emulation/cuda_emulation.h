// cuda_emulation.h — runs the CUDA C++ kernels of src/LoftQ.Cuda/Kernels on the CPU (g++ -std=c++20), so that
// tests can check them bit for bit against the CPU quantizers on a machine without a GPU.
//
// Model: the thread blocks of a launch run one after another; within a block every CUDA thread is a fiber
// (ucontext) with its own stack, scheduled cooperatively on the calling OS thread. A fiber runs until it reaches a
// synchronisation point (__syncthreads, __syncwarp, a __shfl_*_sync), where it waits for the other participants
// named by the block or the mask. This gives CUDA's semantics for everything these kernels use, deterministically:
//  * __shfl_*_sync(mask, ...) rendezvous the lanes in mask (per warp and per mask value); reading a lane outside the
//    mask, or calling from a lane not in the mask, is reported as an error (undefined behaviour on a GPU);
//  * a full pass over the block's fibers without progress is reported as a deadlock (e.g. a divergent
//    __syncthreads or a shuffle some lane of the mask never reaches);
//  * __shared__ variables are function statics: shared by the block's threads, reused by the next block (the
//    kernels must not assume their initial contents, as on a GPU);
//  * float intrinsics (__fadd_rn, ...) are the plain IEEE operations (build with -ffp-contract=off so that g++
//    never fuses them; x86-64 SSE arithmetic rounds every float and double operation like the GPU's _rn forms).
// Atomics are plain read-modify-writes (one OS thread at a time runs a launch).
#pragma once

#include <ucontext.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace loftq_emu
{
struct Dim3
{
    unsigned x = 1, y = 1, z = 1;
};

// Rendezvous state of one mask value in one warp; slots are double-buffered by generation.
struct MaskState
{
    unsigned arrived = 0;
    unsigned long long generation = 0;
    unsigned long long slots[2][32] = {};
};

struct Fiber
{
    ucontext_t context{};
    std::unique_ptr<char[]> stack;
    Dim3 thread_idx;
    unsigned linear = 0;
    bool done = false;
};

struct Runtime
{
    static constexpr size_t StackBytes = 256 * 1024;

    Dim3 grid, block, block_idx;
    std::vector<Fiber> fibers;
    ucontext_t scheduler{};
    Fiber* current = nullptr;
    unsigned long long progress = 0;
    unsigned threads = 0;
    unsigned barrier_arrived = 0;
    unsigned long long barrier_generation = 0;
    std::vector<std::map<unsigned, MaskState>> warps;
    const std::function<void()>* body = nullptr;
    std::string error;
};

inline Runtime& runtime()
{
    static thread_local Runtime r;
    return r;
}

inline void yield()
{
    Runtime& r = runtime();
    swapcontext(&r.current->context, &r.scheduler);
}

// Records the first error and parks the fiber for good (the scheduler stops the launch).
[[noreturn]] inline void fail(const std::string& message)
{
    Runtime& r = runtime();
    if (r.error.empty())
    {
        r.error = message + " (block " + std::to_string(r.block_idx.x) + ", thread " + std::to_string(r.current->linear) + ")";
    }

    for (;;)
    {
        yield();
    }
}

inline void fiber_entry()
{
    Runtime& r = runtime();
    (*r.body)();
    r.current->done = true;
    r.progress++;
    // Returning resumes uc_link, the scheduler.
}

// Runs body() as every thread of every block of the grid; returns false (with error set) on a detected fault.
inline bool launch(Dim3 grid, Dim3 block, const std::function<void()>& body, std::string& error)
{
    Runtime& r = runtime();
    r.error.clear();
    r.grid = grid;
    r.block = block;
    r.body = &body;
    r.threads = block.x * block.y * block.z;
    if (r.threads == 0 || r.threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    {
        error = "invalid launch configuration";
        return false;
    }

    while (r.fibers.size() < r.threads)
    {
        r.fibers.emplace_back();
        r.fibers.back().stack.reset(new char[Runtime::StackBytes]); // not zeroed: pages stay lazy
    }

    for (unsigned bz = 0; bz < grid.z; ++bz)
    {
        for (unsigned by = 0; by < grid.y; ++by)
        {
            for (unsigned bx = 0; bx < grid.x; ++bx)
            {
                r.block_idx = Dim3{ bx, by, bz };
                r.barrier_arrived = 0;
                r.barrier_generation = 0;
                r.warps.assign((r.threads + 31) / 32, {});
                for (unsigned t = 0; t < r.threads; ++t)
                {
                    Fiber& f = r.fibers[t];
                    f.linear = t;
                    f.thread_idx = Dim3{ t % block.x, (t / block.x) % block.y, t / (block.x * block.y) };
                    f.done = false;
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack.get();
                    f.context.uc_stack.ss_size = Runtime::StackBytes;
                    f.context.uc_link = &r.scheduler;
                    makecontext(&f.context, fiber_entry, 0);
                }

                unsigned live = r.threads;
                while (live > 0)
                {
                    const unsigned long long before = r.progress;
                    for (unsigned t = 0; t < r.threads; ++t)
                    {
                        Fiber& f = r.fibers[t];
                        if (f.done)
                        {
                            continue;
                        }

                        r.current = &f;
                        swapcontext(&r.scheduler, &f.context);
                        r.current = nullptr;
                        if (!r.error.empty())
                        {
                            error = r.error;
                            return false;
                        }

                        if (f.done)
                        {
                            --live;
                        }
                    }

                    if (live > 0 && r.progress == before)
                    {
                        error = "deadlock: no thread of block " + std::to_string(bx) + " can make progress";
                        return false;
                    }
                }
            }
        }
    }

    return true;
}

inline unsigned lane_of(const Fiber& f)
{
    return f.linear & 31u;
}

// Deposits this lane's 8-byte payload for the next rendezvous of `mask` and waits for the whole mask; returns the
// slot array of that rendezvous (valid until this lane's next call with the same mask).
inline const unsigned long long* rendezvous(unsigned mask, unsigned long long payload, const char* what)
{
    Runtime& r = runtime();
    Fiber& f = *r.current;
    const unsigned lane = lane_of(f);
    if (((mask >> lane) & 1u) == 0)
    {
        fail(std::string(what) + ": calling lane is not in the mask");
    }

    for (unsigned l = 0; l < 32; ++l)
    {
        if (((mask >> l) & 1u) != 0 && (f.linear & ~31u) + l >= r.threads)
        {
            fail(std::string(what) + ": mask names a lane that does not exist");
        }
    }

    MaskState& s = r.warps[f.linear >> 5][mask];
    const unsigned long long generation = s.generation;
    const int parity = (int)(generation & 1u);
    s.slots[parity][lane] = payload;
    r.progress++;
    if (++s.arrived == (unsigned)std::popcount(mask))
    {
        s.arrived = 0;
        s.generation++;
    }
    else
    {
        while (s.generation == generation)
        {
            yield();
        }
    }

    return s.slots[parity];
}

template <class T>
unsigned long long to_bits(T v)
{
    static_assert(sizeof(T) <= 8, "shuffle payloads are at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}

template <class T>
T from_bits(unsigned long long bits)
{
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}

enum class ShuffleKind
{
    Index,
    Xor,
    Up,
    Down,
};

template <class T>
T shuffle(unsigned mask, T var, int arg, int width, ShuffleKind kind)
{
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    {
        fail("shuffle: width must be a power of two in 1..32");
    }

    const unsigned long long* slots = rendezvous(mask, to_bits(var), "shuffle");
    const int lane = (int)lane_of(*runtime().current);
    const int base = lane & ~(width - 1);
    int source = lane;
    switch (kind)
    {
        case ShuffleKind::Index:
            source = base + (arg & (width - 1));
            break;
        case ShuffleKind::Xor:
            source = lane ^ arg;
            if (source < base || source >= base + width)
            {
                source = lane;
            }

            break;
        case ShuffleKind::Up:
            source = lane - arg >= base ? lane - arg : lane;
            break;
        case ShuffleKind::Down:
            source = lane + arg < base + width ? lane + arg : lane;
            break;
    }

    if (source < 0 || source > 31 || ((mask >> source) & 1u) == 0)
    {
        fail("shuffle: source lane " + std::to_string(source) + " is not in the mask");
    }

    return from_bits<T>(slots[source]);
}
} // namespace loftq_emu

// ----- CUDA language surface ------------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

#define threadIdx (::loftq_emu::runtime().current->thread_idx)
#define blockIdx (::loftq_emu::runtime().block_idx)
#define blockDim (::loftq_emu::runtime().block)
#define gridDim (::loftq_emu::runtime().grid)

inline void __syncthreads()
{
    ::loftq_emu::Runtime& r = ::loftq_emu::runtime();
    const unsigned long long generation = r.barrier_generation;
    r.progress++;
    if (++r.barrier_arrived == r.threads)
    {
        r.barrier_arrived = 0;
        r.barrier_generation++;
    }
    else
    {
        while (r.barrier_generation == generation)
        {
            ::loftq_emu::yield();
        }
    }
}

inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    ::loftq_emu::rendezvous(mask, 0, "__syncwarp");
}

template <class T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32)
{
    return ::loftq_emu::shuffle(mask, var, srcLane, width, ::loftq_emu::ShuffleKind::Index);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32)
{
    return ::loftq_emu::shuffle(mask, var, laneMask, width, ::loftq_emu::ShuffleKind::Xor);
}

template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32)
{
    return ::loftq_emu::shuffle(mask, var, (int)delta, width, ::loftq_emu::ShuffleKind::Up);
}

template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32)
{
    return ::loftq_emu::shuffle(mask, var, (int)delta, width, ::loftq_emu::ShuffleKind::Down);
}

inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value)
{
    const unsigned long long old = *address;
    if (value < old)
    {
        *address = value;
    }

    return old;
}

inline double atomicAdd(double* address, double value)
{
    const double old = *address;
    *address = old + value;
    return old;
}

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
