// CUDA kernels of the max-pool op (max_pool.rs): square windows, no padding, floor mode.
//
// Forward: one thread per output; it writes the window's maximum and the position of the
// first maximum in row-major order within the input plane (PyTorch's rule; a NaN counts
// as the maximum), the same rule as the CPU op, so both devices route gradients alike.
//
// Backward: one thread per *input* element. It visits the (at most ceil(size/stride)^2)
// windows that contain it and adds the gradients of those whose recorded argmax is this
// element. Overlapping windows that share a maximum add up, as on the CPU, and with no
// atomics the sum is in a fixed order: the backward is deterministic, which keeps a GPU
// run reproducible from its checkpoints.
#include "float_io.cuh"


// planes = batch * channels; x is (planes, h, w); y and argmax are (planes, oh, ow).
template <typename T>
__device__ void pool_fwd(const T *x, T *y, uint32_t *argmax, uint32_t planes, uint32_t h,
                         uint32_t w, uint32_t oh, uint32_t ow, uint32_t size, uint32_t stride) {
    const uint64_t n = (uint64_t)planes * oh * ow;
    for (uint64_t o = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; o < n;
         o += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t ox = o % ow, oy = (o / ow) % oh;
        const uint64_t plane = o / ((uint64_t)oh * ow);
        const T *p = x + plane * h * w;
        const uint32_t y0 = oy * stride, x0 = ox * stride;
        uint32_t best = y0 * w + x0;
        auto m = widen(p[best]);
        bool nan = m != m;
        for (uint32_t dy = 0; dy < size && !nan; ++dy) {
            for (uint32_t dx = 0; dx < size; ++dx) {
                const uint32_t i = (y0 + dy) * w + x0 + dx;
                const auto v = widen(p[i]);
                if (v != v) { best = i; m = v; nan = true; break; }
                if (v > m) { best = i; m = v; }
            }
        }
        y[o] = p[best];
        argmax[o] = best;
    }
}

// gy and argmax are (planes, oh, ow); gx is (planes, h, w).
template <typename T>
__device__ void pool_bwd(const T *gy, const uint32_t *argmax, T *gx, uint32_t planes, uint32_t h,
                         uint32_t w, uint32_t oh, uint32_t ow, uint32_t size, uint32_t stride) {
    const uint64_t n = (uint64_t)planes * h * w;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t in_plane = i % ((uint64_t)h * w);
        const uint32_t ix = in_plane % w, iy = in_plane / w;
        const uint64_t base = (i / ((uint64_t)h * w)) * oh * ow;
        // Windows oy with oy*stride <= iy < oy*stride + size, clipped to the output.
        const uint32_t oy_lo = iy < size ? 0 : (iy - size) / stride + 1;
        const uint32_t ox_lo = ix < size ? 0 : (ix - size) / stride + 1;
        const uint32_t oy_hi = min(iy / stride, oh - 1), ox_hi = min(ix / stride, ow - 1);
        decltype(widen(gy[0])) acc = 0;
        for (uint32_t oy = oy_lo; oy <= oy_hi; ++oy) {
            for (uint32_t ox = ox_lo; ox <= ox_hi; ++ox) {
                const uint64_t o = base + oy * ow + ox;
                if (argmax[o] == in_plane) acc += widen(gy[o]);
            }
        }
        store(gx + i, acc);
    }
}

#define POOL_ARGS uint32_t planes, uint32_t h, uint32_t w, uint32_t oh, uint32_t ow, uint32_t size, uint32_t stride
#define POOL_PASS planes, h, w, oh, ow, size, stride

#define POOL_FWD(NAME, T)                                                                      \
    extern "C" __global__ void NAME(const T *x, T *y, uint32_t *argmax, POOL_ARGS) {            \
        pool_fwd<T>(x, y, argmax, POOL_PASS);                                                  \
    }
POOL_FWD(max_pool_fwd_f32, float)
POOL_FWD(max_pool_fwd_f64, double)
POOL_FWD(max_pool_fwd_bf16, __nv_bfloat16)

#define POOL_BWD(NAME, T)                                                                      \
    extern "C" __global__ void NAME(const T *gy, const uint32_t *argmax, T *gx, POOL_ARGS) {    \
        pool_bwd<T>(gy, argmax, gx, POOL_PASS);                                                \
    }
POOL_BWD(max_pool_bwd_f32, float)
POOL_BWD(max_pool_bwd_f64, double)
POOL_BWD(max_pool_bwd_bf16, __nv_bfloat16)
