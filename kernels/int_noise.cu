// Keyed small-integer noise for EGGROLL's int8 mode (reference: kernels/int_noise.py).
//
// Element e of pair p takes word (e % 4) of Philox block e / 4 (same counter layout as the
// normals) and maps its top 24 bits through an inverse-CDF table: value = #{t_j <= x >> 8}
// - clip. Integer-only, so the GPU reproduces the reference bit for bit.
#include "philox.cuh"

#define ZO_MAX_THRESHOLDS 256

extern "C" __global__ void keyed_int8(signed char* out, const zo_u32* pairs, long long n_pairs,
                                      long long start, long long numel,
                                      const zo_u32* thresholds, int n_thresholds, int clip,
                                      zo_u32 k0, zo_u32 k1, zo_u32 tensor_id, zo_u32 generation) {
    __shared__ zo_u32 table[ZO_MAX_THRESHOLDS];
    for (int i = threadIdx.x; i < n_thresholds; i += blockDim.x) table[i] = thresholds[i];
    __syncthreads();
    const zo_key key = {k0, k1, tensor_id, generation};
    const long long n_blocks = zo_blocks_per_row(start, numel);
    for (long long p = blockIdx.y; p < n_pairs; p += gridDim.y)
        for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < n_blocks;
             b += (long long)gridDim.x * blockDim.x)
            zo_int8_item(out, p, b, pairs, start, numel, table, n_thresholds, clip, key);
}
