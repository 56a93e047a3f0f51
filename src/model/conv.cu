// CUDA kernels around the cuDNN convolution (conv.rs, cudnn.rs): the bias and the ReLU
// that cuDNN's plain convolution leaves out, fused into one in-place pass, and the ReLU
// mask of the backward. Contiguous (batch, channels, h, w) tensors, one thread per element.
#include "float_io.cuh"


// y <- y + bias[channel], then max(., 0) when relu != 0.
template <typename T>
__device__ void bias_act(T *y, const T *bias, uint64_t n, uint32_t c, uint64_t hw, uint32_t relu) {
    for (uint64_t e = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; e < n;
         e += (uint64_t)gridDim.x * blockDim.x) {
        auto v = widen(y[e]) + widen(bias[(e / hw) % c]);
        if (relu && !(v > 0)) v = 0;
        store(y + e, v);
    }
}

// gx <- gy where y > 0, else 0 (the ReLU's backward given its output).
template <typename T>
__device__ void relu_mask(const T *gy, const T *y, T *gx, uint64_t n) {
    for (uint64_t e = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; e < n;
         e += (uint64_t)gridDim.x * blockDim.x) {
        gx[e] = widen(y[e]) > 0 ? gy[e] : T(0);
    }
}

#define CONV_KERNELS(SUFFIX, T)                                                                \
    extern "C" __global__ void bias_act_##SUFFIX(T *y, const T *bias, uint64_t n, uint32_t c,  \
                                                 uint64_t hw, uint32_t relu) {                 \
        bias_act<T>(y, bias, n, c, hw, relu);                                                  \
    }                                                                                          \
    extern "C" __global__ void relu_mask_##SUFFIX(const T *gy, const T *y, T *gx, uint64_t n) { \
        relu_mask<T>(gy, y, gx, n);                                                            \
    }
CONV_KERNELS(f32, float)
CONV_KERNELS(f64, double)
CONV_KERNELS(bf16, __nv_bfloat16)
