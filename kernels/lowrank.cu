// Fused EGGROLL correction: out[i, t, :] += scales[i] * (x[i, t, :] . B_i) A_i^T for every
// member i, generating A_i (m x r) and B_i (n x r) from the keyed stream of pair pairs[i]
// on the fly; the factors never touch memory. Factor layout (kernels/lowrank.py): element
// e = row * r + c of the pair's stream, rows 0..n-1 are B, rows n..n+m-1 are A.
//
// Grid: x = member, y = tile of ZO_TILE_T rows of T; blockDim.x a multiple of 32, <= 1024.
// Each CTA regenerates the member's factors once per tile, so the fused path pays when T
// is small (one or a few tokens per member); kernels/lowrank.py uses the unfused factors
// + einsum otherwise. Per-block math: zo_lowrank_project_block / zo_lowrank_expand_block.
#include "philox.cuh"

#define ZO_TILE_T 8
#define ZO_MAX_WARPS 32

template <int R, typename T>
__device__ void lowrank_correction_impl(T* out, const T* x, const zo_u32* pairs, const float* scales,
                                        long long rows_per_member, long long m, long long n,
                                        const zo_key& key) {
    __shared__ float partial[ZO_MAX_WARPS][ZO_TILE_T][R];
    __shared__ float coeff[ZO_TILE_T][R];
    const long long member = blockIdx.x;
    const long long t0 = (long long)blockIdx.y * ZO_TILE_T;
    const long long left = rows_per_member - t0;
    const int tile = left < ZO_TILE_T ? (int)left : ZO_TILE_T;
    const zo_u32 pair = pairs[member];
    const T* x_tile = x + (member * rows_per_member + t0) * n;
    T* out_tile = out + (member * rows_per_member + t0) * m;

    // Phase 1: coeff[t][c] = scale * sum_j x[t, j] * B[j, c].
    float acc[ZO_TILE_T][R];
#pragma unroll
    for (int t = 0; t < ZO_TILE_T; ++t)
#pragma unroll
        for (int c = 0; c < R; ++c) acc[t][c] = 0.0f;
    const long long b_last = zo_rows_last_block(0, n, R);
    for (long long block = zo_rows_first_block(0, R) + threadIdx.x; block < b_last; block += blockDim.x)
        zo_lowrank_project_block<R, ZO_TILE_T>(acc, block, x_tile, tile, 0, n, pair, key);

    const int warp = threadIdx.x >> 5, lane_id = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < ZO_TILE_T; ++t)
#pragma unroll
        for (int c = 0; c < R; ++c) {
            float v = acc[t][c];
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
            if (lane_id == 0) partial[warp][t][c] = v;
        }
    __syncthreads();
    if (threadIdx.x < ZO_TILE_T * R) {
        const int t = threadIdx.x / R, c = threadIdx.x % R;
        float v = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) v += partial[w][t][c];
        coeff[t][c] = v * scales[member];
    }
    __syncthreads();

    // Phase 2: out[t, k] += sum_c coeff[t][c] * A[k, c].
    const long long a_last = zo_rows_last_block(n, m, R);
    for (long long block = zo_rows_first_block(n, R) + threadIdx.x; block < a_last; block += blockDim.x)
        zo_lowrank_expand_block<R, ZO_TILE_T>(out_tile, block, coeff, tile, n, m, pair, key);
}

#define ZO_LOWRANK_KERNEL(NAME, R, T)                                                              \
    extern "C" __global__ void NAME(T* out, const T* x, const zo_u32* pairs, const float* scales,   \
                                    long long rows_per_member, long long m, long long n,            \
                                    zo_u32 k0, zo_u32 k1, zo_u32 tensor_id, zo_u32 generation) {    \
        const zo_key key = {k0, k1, tensor_id, generation};                                         \
        lowrank_correction_impl<R, T>(out, x, pairs, scales, rows_per_member, m, n, key);           \
    }

ZO_LOWRANK_KERNEL(lowrank_correction_f32_r1, 1, float)
ZO_LOWRANK_KERNEL(lowrank_correction_f32_r2, 2, float)
ZO_LOWRANK_KERNEL(lowrank_correction_f32_r4, 4, float)
ZO_LOWRANK_KERNEL(lowrank_correction_bf16_r1, 1, zo_bf16)
ZO_LOWRANK_KERNEL(lowrank_correction_bf16_r2, 2, zo_bf16)
ZO_LOWRANK_KERNEL(lowrank_correction_bf16_r4, 4, zo_bf16)
