// Keyed noise kernels: raw Philox words and standard normals for a slice of pairs.
//
// Output layout: row p holds elements start .. start+numel-1 of pair pairs[p], so a
// whole population's low-rank factors [pairs, m+n, r] are one launch with start = 0,
// numel = (m+n)*r (kernels/lowrank.py), and full-rank noise for a slice of members is
// the same launch with their pairs. One thread computes one Philox block (4 elements);
// the per-item body lives in philox.cuh (zo_normal_item). Grid: x strides over the blocks
// of a row, y over pairs (no 64-bit division per item).
#include "philox.cuh"

// words[p, i, lane] for blocks[i]: what tests compare with raw_bits_numpy.
extern "C" __global__ void keyed_raw_bits(zo_u32* words, const zo_u32* pairs, const zo_u32* blocks,
                                          long long n_pairs, long long n_blocks,
                                          zo_u32 k0, zo_u32 k1, zo_u32 tensor_id, zo_u32 generation) {
    const zo_key key = {k0, k1, tensor_id, generation};
    const long long total = n_pairs * n_blocks;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long p = idx / n_blocks, i = idx - p * n_blocks;
        const zo_words w = zo_keyed_block(key, blocks[i], pairs[p]);
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) words[idx * 4 + lane] = w.x[lane];
    }
}

template <typename T>
__device__ void keyed_normal_loop(T* out, const zo_u32* pairs, long long n_pairs, long long start,
                                  long long numel, int vector_ok, const zo_key& key) {
    const long long n_blocks = zo_blocks_per_row(start, numel);
    for (long long p = blockIdx.y; p < n_pairs; p += gridDim.y)
        for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < n_blocks;
             b += (long long)gridDim.x * blockDim.x)
            zo_normal_item(out, p, b, pairs, start, numel, vector_ok, key);
}

extern "C" __global__ void keyed_normal_f32(float* out, const zo_u32* pairs, long long n_pairs,
                                            long long start, long long numel, int vector_ok,
                                            zo_u32 k0, zo_u32 k1, zo_u32 tensor_id, zo_u32 generation) {
    const zo_key key = {k0, k1, tensor_id, generation};
    keyed_normal_loop(out, pairs, n_pairs, start, numel, vector_ok, key);
}

extern "C" __global__ void keyed_normal_bf16(zo_bf16* out, const zo_u32* pairs, long long n_pairs,
                                             long long start, long long numel, int vector_ok,
                                             zo_u32 k0, zo_u32 k1, zo_u32 tensor_id, zo_u32 generation) {
    const zo_key key = {k0, k1, tensor_id, generation};
    keyed_normal_loop(out, pairs, n_pairs, start, numel, vector_ok, key);
}
