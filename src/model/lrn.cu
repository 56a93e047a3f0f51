// CUDA kernels of local response normalisation across channels (lrn.rs), for contiguous
// (batch, channels, h, w) tensors, one thread per element:
//
//   s_i = k + alpha * sum_{j in W(i)} a_j^2,   b_i = a_i * s_i^-beta
//   dL/da_j = g_j s_j^-beta - 2 alpha beta a_j sum_{i in W(j)} g_i a_i s_i^(-beta-1)
//
// with W(i) = [i - n/2, i + n/2] clipped to the channels (paper: k = 2, n = 5,
// alpha = 1e-4 not divided by n, beta = 0.75). The backward recomputes the s_i of the
// n neighbours instead of keeping them from the forward: n^2 = 25 cached loads per
// element cost less than writing and re-reading a full-size tensor. bf16 is computed in
// f32, f64 in f64.
#include "float_io.cuh"

__device__ __forceinline__ float power(float b, float e) { return powf(b, e); }
__device__ __forceinline__ double power(double b, double e) { return pow(b, e); }

// k + alpha * (sum of squares over the window of channel ch), at one pixel of one image;
// `img` points at the image's channel 0 and `pix` is the offset within a plane.
template <typename T, typename A>
__device__ __forceinline__ A denominator(const T *img, uint32_t ch, uint32_t c, uint64_t hw,
                                         uint64_t pix, uint32_t half, A k, A alpha) {
    const uint32_t lo = ch < half ? 0 : ch - half;
    const uint32_t hi = min(ch + half, c - 1);
    A sum = 0;
    for (uint32_t j = lo; j <= hi; ++j) {
        const A v = widen(img[j * hw + pix]);
        sum += v * v;
    }
    return k + alpha * sum;
}

template <typename T, typename A>
__device__ void lrn_fwd(const T *x, T *y, uint32_t batch, uint32_t c, uint64_t hw, uint32_t half,
                        A k, A alpha, A beta) {
    const uint64_t n = (uint64_t)batch * c * hw;
    for (uint64_t e = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; e < n;
         e += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t pix = e % hw;
        const uint32_t ch = (e / hw) % c;
        const T *img = x + (e / (hw * c)) * c * hw;
        const A s = denominator<T, A>(img, ch, c, hw, pix, half, k, alpha);
        store(y + e, widen(x[e]) * power(s, -beta));
    }
}

template <typename T, typename A>
__device__ void lrn_bwd(const T *x, const T *g, T *gx, uint32_t batch, uint32_t c, uint64_t hw,
                        uint32_t half, A k, A alpha, A beta) {
    const uint64_t n = (uint64_t)batch * c * hw;
    for (uint64_t e = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; e < n;
         e += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t pix = e % hw;
        const uint32_t ch = (e / hw) % c;
        const uint64_t img_off = (e / (hw * c)) * c * hw;
        const T *img = x + img_off;
        const T *gimg = g + img_off;
        const uint32_t lo = ch < half ? 0 : ch - half;
        const uint32_t hi = min(ch + half, c - 1);
        A cross = 0; // sum_{i in W(ch)} g_i a_i s_i^(-beta-1)
        A own = 0;   // s_ch^-beta
        for (uint32_t i = lo; i <= hi; ++i) {
            const A s = denominator<T, A>(img, i, c, hw, pix, half, k, alpha);
            const A p = power(s, -beta);
            cross += widen(gimg[i * hw + pix]) * widen(img[i * hw + pix]) * p / s;
            if (i == ch) own = p;
        }
        store(gx + e, widen(g[e]) * own - 2 * alpha * beta * widen(x[e]) * cross);
    }
}

#define LRN_ARGS uint32_t batch, uint32_t c, uint64_t hw, uint32_t half
#define LRN_PASS batch, c, hw, half

#define LRN(SUFFIX, T, A)                                                                        \
    extern "C" __global__ void lrn_fwd_##SUFFIX(const T *x, T *y, LRN_ARGS, A k, A alpha, A beta) { \
        lrn_fwd<T, A>(x, y, LRN_PASS, k, alpha, beta);                                           \
    }                                                                                            \
    extern "C" __global__ void lrn_bwd_##SUFFIX(const T *x, const T *g, T *gx, LRN_ARGS, A k,    \
                                                A alpha, A beta) {                               \
        lrn_bwd<T, A>(x, g, gx, LRN_PASS, k, alpha, beta);                                       \
    }
LRN(f32, float, float)
LRN(f64, double, double)
LRN(bf16, __nv_bfloat16, float)
