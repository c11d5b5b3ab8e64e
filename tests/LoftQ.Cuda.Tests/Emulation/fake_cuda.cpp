// fake_cuda.cpp — a CPU stand-in for the parts of the CUDA driver, cuBLAS, cuSOLVER, cuRAND and NVRTC that
// LoftQ.Cuda binds, with the real libraries' C signatures and documented semantics: column-major BLAS and LAPACK
// (Householder QR as LAPACK's geqr2/org2r), normals that cuRAND only makes in pairs, device memory that is host memory
// whose every access is checked against its allocation, and cuLaunchKernel running the real kernel source through
// cuda_emulation.h. One shared library is copied under each CUDA file name (libcuda.so.1, libcublas.so.13, ...), so the
// managed resolver, the bindings, CudaContext, CudaOps and the device LoftQ loop all run unchanged on a machine without
// a GPU (FakeCudaStackTests). It checks the managed side's calls; the real libraries' speed and numerics stay for the
// GPU checks (benchmarks/gpu/run.sh).
//
// Build: g++ -O2 -std=c++20 -shared -fPIC -pthread -ffp-contract=off -fno-strict-aliasing
//          -DLOFTQ_KERNEL_SOURCE='"/path/quantize.cu"' -DLOFTQ_CPU_SUM_LANES=8 -DLOFTQ_CPU_FUSED_ERROR=1 fake_cuda.cpp
#include "cuda_emulation.h"

#ifdef LOFTQ_KERNEL_SOURCE
#include LOFTQ_KERNEL_SOURCE
#else
#include "../../../src/LoftQ.Cuda/Kernels/quantize.cu"
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace
{
std::mutex g_memory_lock;
std::map<unsigned long long, size_t> g_allocations; // device "address" -> bytes

// Whether [address, address + bytes) lies inside one live allocation.
bool inside(unsigned long long address, size_t bytes)
{
    std::lock_guard<std::mutex> lock(g_memory_lock);
    auto it = g_allocations.upper_bound(address);
    if (it == g_allocations.begin())
    {
        return false;
    }

    --it;
    return address >= it->first && address + bytes <= it->first + it->second;
}

bool inside(const void* pointer, size_t bytes)
{
    return inside(reinterpret_cast<unsigned long long>(pointer), bytes);
}

// Elements a column-major rows x columns matrix with leading dimension ld spans.
size_t extent(int rows, int columns, int ld)
{
    return rows == 0 || columns == 0 ? 0 : static_cast<size_t>(ld) * (columns - 1) + rows;
}

// FAKE_CUDA_FAIL=<function name> makes that function fail (fault injection for the error-path tests).
bool injected(const char* function)
{
    const char* fail = std::getenv("FAKE_CUDA_FAIL");
    return fail != nullptr && std::strcmp(fail, function) == 0;
}

struct Event
{
    std::chrono::steady_clock::time_point at;
};

struct Function
{
    int kernel;
};

Function g_quantize{ 1 }, g_pack{ 2 }, g_sum{ 3 };
int g_context = 1, g_stream_token = 2, g_module = 3, g_blas = 4, g_solver = 5;

struct Generator
{
    unsigned long long seed = 0, offset = 0;
};

unsigned long long mix(unsigned long long z)
{
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

double uniform(unsigned long long seed, unsigned long long index)
{
    return (static_cast<double>(mix(seed * 0x632BE59BD9B4E019ULL + index) >> 11) + 0.5) * 0x1.0p-53;
}

struct Program
{
    std::string name;
    bool compiled = false;
    std::string log;
};

std::mutex g_launch_lock; // the emulated kernels' __shared__ variables are statics: one launch at a time

int emulate(unsigned grid, unsigned block, const std::function<void()>& body)
{
    std::lock_guard<std::mutex> lock(g_launch_lock);
    std::string error;
    if (!::loftq_emu::launch(::loftq_emu::Dim3{ grid, 1, 1 }, ::loftq_emu::Dim3{ block, 1, 1 }, body, error))
    {
        std::fprintf(stderr, "fake_cuda: kernel fault: %s\n", error.c_str());
        return 719; // CUDA_ERROR_LAUNCH_FAILED
    }

    return 0;
}

template <class T>
T arg(void** params, int i)
{
    return *static_cast<T*>(params[i]);
}

// LAPACK's Householder reflector (dlarfg): on return alpha is beta, x holds v(2:n), the result is tau.
float reflector(int n, float& alpha, float* x)
{
    double norm = 0;
    for (int i = 0; i < n - 1; i++)
    {
        norm += static_cast<double>(x[i]) * x[i];
    }

    norm = std::sqrt(norm);
    if (norm == 0)
    {
        return 0;
    }

    double beta = -std::copysign(std::hypot(static_cast<double>(alpha), norm), static_cast<double>(alpha));
    double tau = (beta - alpha) / beta;
    double scale = 1.0 / (alpha - beta);
    for (int i = 0; i < n - 1; i++)
    {
        x[i] = static_cast<float>(x[i] * scale);
    }

    alpha = static_cast<float>(beta);
    return static_cast<float>(tau);
}

// A(r0:m, c0:n) -= tau * v * (v' * A(r0:m, c0:n)), v = [1; A(r0+1:m, vc)] (dlarf from the left).
void apply_reflector(float* a, int lda, int m, int n, int r0, int c0, int vc, float tau)
{
    if (tau == 0)
    {
        return;
    }

    for (int j = c0; j < n; j++)
    {
        double w = a[r0 + static_cast<size_t>(j) * lda];
        for (int i = r0 + 1; i < m; i++)
        {
            w += static_cast<double>(a[i + static_cast<size_t>(vc) * lda]) * a[i + static_cast<size_t>(j) * lda];
        }

        a[r0 + static_cast<size_t>(j) * lda] -= static_cast<float>(tau * w);
        for (int i = r0 + 1; i < m; i++)
        {
            a[i + static_cast<size_t>(j) * lda] -= static_cast<float>(tau * a[i + static_cast<size_t>(vc) * lda] * w);
        }
    }
}
} // namespace

extern "C"
{
// ---- driver -------------------------------------------------------------------------------------------------------
int cuInit(unsigned flags) { return flags == 0 ? 0 : 1; }
int cuDriverGetVersion(int* v) { *v = 13000; return 0; }
int cuDeviceGetCount(int* c) { *c = 1; return 0; }
int cuDeviceGet(int* d, int ordinal) { if (ordinal != 0) return 101; *d = 0; return 0; } // CUDA_ERROR_INVALID_DEVICE
int cuDeviceGetName(char* name, int len, int dev)
{
    if (dev != 0) return 101;
    std::snprintf(name, static_cast<size_t>(len), "%s", "Emulated GPU (fake_cuda on the CPU)");
    return 0;
}
int cuDeviceTotalMem_v2(size_t* bytes, int dev) { if (dev != 0) return 101; *bytes = 8ULL << 30; return 0; }
int cuDeviceGetAttribute(int* value, int attribute, int dev)
{
    if (dev != 0) return 101;
    switch (attribute)
    {
    case 16: *value = 4; return 0;  // multiprocessors
    case 75: *value = 9; return 0;  // compute capability major
    case 76: *value = 0; return 0;  // minor
    default: return 1;              // CUDA_ERROR_INVALID_VALUE
    }
}
int cuDevicePrimaryCtxRetain(void** ctx, int dev) { if (dev != 0) return 101; *ctx = &g_context; return 0; }
int cuDevicePrimaryCtxRelease_v2(int dev) { return dev == 0 ? 0 : 101; }
int cuCtxSetCurrent(void* ctx) { return ctx == &g_context || ctx == nullptr ? 0 : 201; } // CUDA_ERROR_INVALID_CONTEXT
int cuCtxSynchronize() { return 0; }
int cuMemGetInfo_v2(size_t* free_bytes, size_t* total) { *free_bytes = 6ULL << 30; *total = 8ULL << 30; return 0; }
int cuStreamCreate(void** stream, unsigned flags) { (void)flags; *stream = &g_stream_token; return 0; }
int cuStreamDestroy_v2(void* stream) { return stream == &g_stream_token ? 0 : 400; } // CUDA_ERROR_INVALID_HANDLE
int cuStreamSynchronize(void* stream) { return stream == &g_stream_token ? 0 : 400; }
int cuEventCreate(void** evt, unsigned flags) { (void)flags; *evt = new Event(); return 0; }
int cuEventDestroy_v2(void* evt) { delete static_cast<Event*>(evt); return 0; }
int cuEventRecord(void* evt, void* stream) { (void)stream; static_cast<Event*>(evt)->at = std::chrono::steady_clock::now(); return 0; }
int cuEventSynchronize(void* evt) { (void)evt; return 0; }
int cuEventElapsedTime(float* ms, void* start, void* end)
{
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(end)->at - static_cast<Event*>(start)->at).count();
    return 0;
}
int cuStreamWaitEvent(void* stream, void* evt, unsigned flags) { (void)stream; (void)evt; (void)flags; return 0; }

int cuMemAlloc_v2(unsigned long long* pointer, size_t bytes)
{
    if (injected("cuMemAlloc_v2")) return 2; // CUDA_ERROR_OUT_OF_MEMORY
    if (bytes == 0) return 1;
    void* p = std::aligned_alloc(256, (bytes + 255) & ~static_cast<size_t>(255));
    if (p == nullptr) return 2; // CUDA_ERROR_OUT_OF_MEMORY
    std::memset(p, 0xA5, bytes); // uninitialised device memory is not zero
    *pointer = reinterpret_cast<unsigned long long>(p);
    std::lock_guard<std::mutex> lock(g_memory_lock);
    g_allocations[*pointer] = bytes;
    return 0;
}
int cuMemFree_v2(unsigned long long pointer)
{
    {
        std::lock_guard<std::mutex> lock(g_memory_lock);
        if (g_allocations.erase(pointer) == 0) return 1;
    }
    std::free(reinterpret_cast<void*>(pointer));
    return 0;
}
int cuMemAllocHost_v2(void** pointer, size_t bytes) { *pointer = std::malloc(bytes); return *pointer ? 0 : 2; }
int cuMemFreeHost(void* pointer) { std::free(pointer); return 0; }
int cuMemcpyHtoDAsync_v2(unsigned long long dst, const void* src, size_t bytes, void* stream)
{
    (void)stream;
    if (!inside(dst, bytes)) return 1;
    std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
    return 0;
}
int cuMemcpyDtoHAsync_v2(void* dst, unsigned long long src, size_t bytes, void* stream)
{
    (void)stream;
    if (!inside(src, bytes)) return 1;
    std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    return 0;
}
int cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t bytes, void* stream)
{
    (void)stream;
    if (!inside(dst, bytes) || !inside(src, bytes)) return 1;
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    return 0;
}
int cuMemsetD8Async(unsigned long long dst, unsigned char value, size_t count, void* stream)
{
    (void)stream;
    if (!inside(dst, count)) return 1;
    std::memset(reinterpret_cast<void*>(dst), value, count);
    return 0;
}
int cuMemsetD32Async(unsigned long long dst, unsigned value, size_t count, void* stream)
{
    (void)stream;
    if (dst % 4 != 0 || !inside(dst, count * 4)) return 1;
    auto* p = reinterpret_cast<unsigned*>(dst);
    for (size_t i = 0; i < count; i++) p[i] = value;
    return 0;
}
int cuModuleLoadData(void** module, const void* image)
{
    if (image == nullptr || std::memcmp(image, "FAKECUBIN", 9) != 0) return 200; // CUDA_ERROR_INVALID_IMAGE
    *module = &g_module;
    return 0;
}
int cuModuleUnload(void* module) { return module == &g_module ? 0 : 400; }
int cuModuleGetFunction(void** function, void* module, const char* name)
{
    if (module != &g_module) return 400;
    std::string n(name);
    if (n == "loftq_quantize_blocks") *function = &g_quantize;
    else if (n == "loftq_pack_codes") *function = &g_pack;
    else if (n == "loftq_sum_squares") *function = &g_sum;
    else return 500; // CUDA_ERROR_NOT_FOUND
    return 0;
}
int cuLaunchKernel(
    void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
    unsigned shared_bytes, void* stream, void** params, void** extra)
{
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || extra != nullptr || stream != &g_stream_token) return 1;
    if (gx == 0 || bx == 0 || bx > 1024 || shared_bytes > 48 * 1024) return 1;
    int kernel = static_cast<Function*>(function)->kernel;
    if (kernel == 1)
    {
        auto x = arg<const float*>(params, 0);
        auto w = arg<const float*>(params, 1);
        auto out = arg<float*>(params, 2);
        auto codes = arg<unsigned char*>(params, 3);
        auto scales = arg<float*>(params, 4);
        auto offsets = arg<float*>(params, 5);
        auto n = arg<long long>(params, 6);
        auto block_size = arg<int>(params, 7);
        auto levels = arg<const float*>(params, 8);
        auto thresholds = arg<const float*>(params, 9);
        auto level_count = arg<int>(params, 10);
        auto asymmetric = arg<int>(params, 11);
        auto steps = arg<int>(params, 12);
        auto min_ratio = arg<float>(params, 13);
        auto failure = arg<unsigned long long*>(params, 14);
        size_t blocks = static_cast<size_t>((n + block_size - 1) / block_size);
        if (!inside(x, n * 4) || (w && !inside(w, n * 4)) || (out && !inside(out, n * 4)) || !inside(codes, n)
            || !inside(scales, blocks * 4) || (offsets && !inside(offsets, blocks * 4)) || !inside(levels, level_count * 4)
            || !inside(thresholds, (level_count - 1) * 4) || !inside(failure, 8))
        {
            return 1;
        }

        return emulate(gx, bx, [=] {
            loftq_quantize_blocks(x, w, out, codes, scales, offsets, n, block_size, levels, thresholds, level_count, asymmetric, steps, min_ratio, failure);
        });
    }

    if (kernel == 2)
    {
        auto codes = arg<const unsigned char*>(params, 0);
        auto n = arg<long long>(params, 1);
        auto bits = arg<int>(params, 2);
        auto packed = arg<unsigned char*>(params, 3);
        auto length = arg<long long>(params, 4);
        if (!inside(codes, n) || !inside(packed, length)) return 1;
        return emulate(gx, bx, [=] { loftq_pack_codes(codes, n, bits, packed, length); });
    }

    if (kernel == 3)
    {
        auto a = arg<const float*>(params, 0);
        auto b = arg<const float*>(params, 1);
        auto n = arg<long long>(params, 2);
        auto result = arg<double*>(params, 3);
        if (!inside(a, n * 4) || (b && !inside(b, n * 4)) || !inside(result, 8)) return 1;
        return emulate(gx, bx, [=] { loftq_sum_squares(a, b, n, result); });
    }

    return 400;
}
int cuGetErrorName(int status, const char** name)
{
    switch (status)
    {
    case 0: *name = "CUDA_SUCCESS"; return 0;
    case 1: *name = "CUDA_ERROR_INVALID_VALUE"; return 0;
    case 2: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return 0;
    case 400: *name = "CUDA_ERROR_INVALID_HANDLE"; return 0;
    case 500: *name = "CUDA_ERROR_NOT_FOUND"; return 0;
    case 719: *name = "CUDA_ERROR_LAUNCH_FAILED"; return 0;
    default: *name = nullptr; return 1;
    }
}
int cuGetErrorString(int status, const char** text)
{
    const char* name = nullptr;
    int r = cuGetErrorName(status, &name);
    *text = r == 0 ? "reported by fake_cuda" : nullptr;
    return r;
}

// ---- cuBLAS -------------------------------------------------------------------------------------------------------
int cublasCreate_v2(void** handle) { *handle = &g_blas; return 0; }
int cublasDestroy_v2(void* handle) { return handle == &g_blas ? 0 : 1; }
int cublasSetStream_v2(void* handle, void* stream) { return handle == &g_blas && stream == &g_stream_token ? 0 : 7; }
int cublasGetVersion_v2(void* handle, int* version) { (void)handle; *version = 130000; return 0; }
int cublasSgemm_v2(
    void* handle, int transa, int transb, int m, int n, int k, const float* alpha, const float* a, int lda,
    const float* b, int ldb, const float* beta, float* c, int ldc)
{
    if (handle != &g_blas) return 1;
    if (injected("cublasSgemm_v2")) return 13; // CUBLAS_STATUS_EXECUTION_FAILED
    bool ta = transa == 1, tb = transb == 1;
    if ((transa != 0 && transa != 1) || (transb != 0 && transb != 1) || m < 0 || n < 0 || k < 0) return 7;
    if (lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m)) return 7;
    if (!inside(a, extent(ta ? k : m, ta ? m : k, lda) * 4) || !inside(b, extent(tb ? n : k, tb ? k : n, ldb) * 4)
        || !inside(c, extent(m, n, ldc) * 4))
    {
        return 14; // CUBLAS_STATUS_INTERNAL_ERROR stands in for the memory fault a GPU would report
    }

    for (int j = 0; j < n; j++)
    {
        for (int i = 0; i < m; i++)
        {
            double sum = 0;
            for (int p = 0; p < k; p++)
            {
                float x = ta ? a[p + static_cast<size_t>(i) * lda] : a[i + static_cast<size_t>(p) * lda];
                float y = tb ? b[j + static_cast<size_t>(p) * ldb] : b[p + static_cast<size_t>(j) * ldb];
                sum += static_cast<double>(x) * y;
            }

            float& out = c[i + static_cast<size_t>(j) * ldc];
            out = static_cast<float>(*alpha * sum + (*beta == 0 ? 0.0 : static_cast<double>(*beta) * out));
        }
    }

    return 0;
}

// ---- cuSOLVER -----------------------------------------------------------------------------------------------------
int cusolverDnCreate(void** handle) { *handle = &g_solver; return 0; }
int cusolverDnDestroy(void* handle) { return handle == &g_solver ? 0 : 1; }
int cusolverDnSetStream(void* handle, void* stream) { return handle == &g_solver && stream == &g_stream_token ? 0 : 3; }
int cusolverGetVersion(int* version) { *version = 12000; return 0; }
int cusolverDnSgeqrf_bufferSize(void* handle, int m, int n, float* a, int lda, int* lwork)
{
    (void)a;
    if (handle != &g_solver || m < 0 || n < 0 || lda < std::max(1, m)) return 3;
    *lwork = std::max(1, n);
    return 0;
}
int cusolverDnSgeqrf(void* handle, int m, int n, float* a, int lda, float* tau, float* work, int lwork, int* info)
{
    if (handle != &g_solver || m < 0 || n < 0 || lda < std::max(1, m) || lwork < std::max(1, n)) return 3;
    if (!inside(a, extent(m, n, lda) * 4) || !inside(tau, static_cast<size_t>(std::min(m, n)) * 4)
        || !inside(work, static_cast<size_t>(lwork) * 4) || !inside(info, 4))
    {
        return 7;
    }

    for (int j = 0; j < std::min(m, n); j++)
    {
        float* column = a + static_cast<size_t>(j) * lda;
        tau[j] = reflector(m - j, column[j], column + j + 1);
        if (j + 1 < n)
        {
            float diagonal = column[j];
            column[j] = 1;
            apply_reflector(a, lda, m, n, j, j + 1, j, tau[j]);
            column[j] = diagonal;
        }
    }

    *info = 0;
    return 0;
}
int cusolverDnSorgqr_bufferSize(void* handle, int m, int n, int k, const float* a, int lda, const float* tau, int* lwork)
{
    (void)a;
    (void)tau;
    if (handle != &g_solver || m < 0 || n < 0 || n > m || k < 0 || k > n || lda < std::max(1, m)) return 3;
    *lwork = std::max(1, n);
    return 0;
}
int cusolverDnSorgqr(void* handle, int m, int n, int k, float* a, int lda, const float* tau, float* work, int lwork, int* info)
{
    if (handle != &g_solver || m < 0 || n < 0 || n > m || k < 0 || k > n || lda < std::max(1, m) || lwork < std::max(1, n)) return 3;
    if (!inside(a, extent(m, n, lda) * 4) || !inside(tau, static_cast<size_t>(k) * 4) || !inside(work, static_cast<size_t>(lwork) * 4) || !inside(info, 4))
    {
        return 7;
    }

    // LAPACK's org2r: columns k..n-1 start as unit vectors, then the reflectors are applied last to first.
    for (int j = k; j < n; j++)
    {
        for (int i = 0; i < m; i++) a[i + static_cast<size_t>(j) * lda] = i == j ? 1.0f : 0.0f;
    }

    for (int i = k - 1; i >= 0; i--)
    {
        float* column = a + static_cast<size_t>(i) * lda;
        if (i + 1 < n)
        {
            column[i] = 1;
            apply_reflector(a, lda, m, n, i, i + 1, i, tau[i]);
        }

        for (int r = i + 1; r < m; r++) column[r] *= -tau[i];
        column[i] = 1 - tau[i];
        for (int r = 0; r < i; r++) column[r] = 0;
    }

    *info = 0;
    return 0;
}

// ---- cuRAND -------------------------------------------------------------------------------------------------------
int curandCreateGenerator(void** generator, int type) { if (type != 161) return 103; *generator = new Generator(); return 0; }
int curandDestroyGenerator(void* generator) { delete static_cast<Generator*>(generator); return 0; }
int curandSetStream(void* generator, void* stream) { (void)generator; return stream == &g_stream_token ? 0 : 101; }
int curandSetPseudoRandomGeneratorSeed(void* generator, unsigned long long seed) { static_cast<Generator*>(generator)->seed = seed; return 0; }
int curandSetGeneratorOffset(void* generator, unsigned long long offset) { static_cast<Generator*>(generator)->offset = offset; return 0; }
int curandGenerateNormal(void* generator, float* output, size_t n, float mean, float stddev)
{
    if (n % 2 != 0) return 105; // CURAND_STATUS_LENGTH_NOT_MULTIPLE: normals come in pairs
    if (!inside(output, n * 4)) return 201;
    auto* g = static_cast<Generator*>(generator);
    for (size_t i = 0; i < n; i += 2)
    {
        double u1 = uniform(g->seed, g->offset + i), u2 = uniform(g->seed, g->offset + i + 1);
        double r = std::sqrt(-2.0 * std::log(u1)), t = 6.283185307179586 * u2;
        output[i] = static_cast<float>(mean + stddev * r * std::cos(t));
        output[i + 1] = static_cast<float>(mean + stddev * r * std::sin(t));
    }

    return 0;
}
int curandGetVersion(int* version) { *version = 10400; return 0; }

// ---- NVRTC --------------------------------------------------------------------------------------------------------
int nvrtcVersion(int* major, int* minor) { *major = 13; *minor = 0; return 0; }
int nvrtcCreateProgram(void** program, const char* source, const char* name, int headers, const char* const* h, const char* const* names)
{
    (void)h;
    (void)names;
    if (source == nullptr || headers != 0) return 3; // NVRTC_ERROR_INVALID_INPUT
    auto* p = new Program();
    p->name = name ? name : "";
    // The real source must be what this library was built from: its kernels' names must appear in it.
    std::string text(source);
    if (text.find("loftq_quantize_blocks") == std::string::npos) return 3;
    *program = p;
    return 0;
}
int nvrtcCompileProgram(void* program, int count, const char* const* options)
{
    auto* p = static_cast<Program*>(program);
    bool architecture = false, fmad = false;
    for (int i = 0; i < count; i++)
    {
        std::string o(options[i]);
        architecture |= o.rfind("--gpu-architecture=sm_", 0) == 0;
        fmad |= o == "--fmad=false";
    }

    if (!architecture || !fmad)
    {
        p->log = "fake_cuda: expected --gpu-architecture=sm_XY and --fmad=false";
        return 6; // NVRTC_ERROR_COMPILATION
    }

    p->compiled = true;
    return 0;
}
int nvrtcGetProgramLogSize(void* program, size_t* size) { *size = static_cast<Program*>(program)->log.size() + 1; return 0; }
int nvrtcGetProgramLog(void* program, char* log) { std::strcpy(log, static_cast<Program*>(program)->log.c_str()); return 0; }
int nvrtcGetCUBINSize(void* program, size_t* size) { if (!static_cast<Program*>(program)->compiled) return 7; *size = 16; return 0; }
int nvrtcGetCUBIN(void* program, char* cubin) { if (!static_cast<Program*>(program)->compiled) return 7; std::memcpy(cubin, "FAKECUBIN\0\0\0\0\0\0\0", 16); return 0; }
int nvrtcDestroyProgram(void** program) { delete static_cast<Program*>(*program); *program = nullptr; return 0; }
const char* nvrtcGetErrorString(int status) { return status == 0 ? "NVRTC_SUCCESS" : "NVRTC_ERROR (fake_cuda)"; }

// ---- for the tests ------------------------------------------------------------------------------------------------
// Live device allocations (a leak check after the accelerator is disposed).
long long fake_cuda_live_allocations()
{
    std::lock_guard<std::mutex> lock(g_memory_lock);
    return static_cast<long long>(g_allocations.size());
}
}
