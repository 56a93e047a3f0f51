// Loads and stores of the kernels' element types (max_pool.cu, lrn.cu, conv.cu): bf16 is
// widened to f32 for arithmetic and rounded back on store; f32 and f64 pass through.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float *p, float v) { *p = v; }
__device__ __forceinline__ void store(double *p, double v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }
