// harness.cpp — the CUDA kernels of src/LoftQ.Cuda/Kernels compiled for the CPU through cuda_emulation.h, with one
// extern "C" launch function per kernel for the C# tests (KernelEmulationTests) to call through P/Invoke.
//
// Build (the tests do this): g++ -O2 -std=c++20 -shared -fPIC -pthread -ffp-contract=off -fno-strict-aliasing
//   [-DLOFTQ_KERNEL_SOURCE='"/path/quantize.cu"'] [-DLOFTQ_CPU_SUM_LANES=8 -DLOFTQ_CPU_FUSED_ERROR=1] harness.cpp
// Without LOFTQ_KERNEL_SOURCE the kernel source is taken from the source tree relative to this file.
#include "cuda_emulation.h"

#ifdef LOFTQ_KERNEL_SOURCE
#include LOFTQ_KERNEL_SOURCE
#else
#include "../../../src/LoftQ.Cuda/Kernels/quantize.cu"
#endif

#include <mutex>

namespace
{
std::mutex g_lock;
std::string g_error;

int run(unsigned grid, unsigned block, const std::function<void()>& body)
{
    std::string error;
    const bool ok = ::loftq_emu::launch(::loftq_emu::Dim3{ grid, 1, 1 }, ::loftq_emu::Dim3{ block, 1, 1 }, body, error);
    g_error = ok ? std::string() : error;
    return ok ? 0 : 1;
}
} // namespace

extern "C"
{
// The message of the last failed launch ("" after a successful one).
const char* loftq_emu_last_error()
{
    return g_error.c_str();
}

// The host configuration the kernels were compiled for: LOFTQ_CPU_SUM_LANES * 10 + LOFTQ_CPU_FUSED_ERROR.
int loftq_emu_configuration()
{
    return (LOFTQ_CPU_SUM_LANES * 10) + LOFTQ_CPU_FUSED_ERROR;
}

// Each launch function returns 0 on success, 1 when the emulator detected a fault (see loftq_emu_last_error).
// shared_bytes is the dynamic shared memory of the launch; the kernels use static shared memory only.
int loftq_emu_quantize_blocks(
    unsigned grid, unsigned block, unsigned shared_bytes,
    const float* x, const float* w, float* out, unsigned char* codes, float* scales, float* offsets,
    long long n, int block_size, const float* levels, const float* thresholds, int level_count,
    int asymmetric, int search_steps, float search_min_ratio, unsigned long long* failure)
{
    (void)shared_bytes;
    std::lock_guard<std::mutex> lock(g_lock);
    return run(grid, block, [=] {
        loftq_quantize_blocks(
            x, w, out, codes, scales, offsets, n, block_size, levels, thresholds, level_count, asymmetric,
            search_steps, search_min_ratio, failure);
    });
}

int loftq_emu_pack_codes(
    unsigned grid, unsigned block, unsigned shared_bytes,
    const unsigned char* codes, long long n, int bits, unsigned char* packed, long long packed_length)
{
    (void)shared_bytes;
    std::lock_guard<std::mutex> lock(g_lock);
    return run(grid, block, [=] { loftq_pack_codes(codes, n, bits, packed, packed_length); });
}

int loftq_emu_sum_squares(
    unsigned grid, unsigned block, unsigned shared_bytes, const float* a, const float* b, long long n, double* result)
{
    (void)shared_bytes;
    std::lock_guard<std::mutex> lock(g_lock);
    return run(grid, block, [=] { loftq_sum_squares(a, b, n, result); });
}
}
