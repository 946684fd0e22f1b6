// PolyStep geometry for one step: per-particle Haar rotations in SO(d) and the rotated
// vertex offsets radius * R_i u_v (reference: kernels/rotations.py).
#include "philox.cuh"

#define ZO_MAX_ROTATION_DIM 64

// rotations[i] (row-major d x d) for particle particles[i]; one thread per particle.
extern "C" __global__ void haar_rotations_f32(float* rotations, const zo_u32* particles, long long n_particles,
                                              int d, zo_u32 k0, zo_u32 k1, zo_u32 tensor_id,
                                              zo_u32 generation) {
    const zo_key key = {k0, k1, tensor_id, generation};
    float w[ZO_MAX_ROTATION_DIM];
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_particles;
         i += (long long)gridDim.x * blockDim.x) {
        zo_haar_rotation(key, particles[i], d, rotations + i * (long long)d * d, w);
    }
}

// offsets[i, v, a] = radius * sum_b rotations[i, a, b] * templ[v, b].
extern "C" __global__ void vertex_offsets_f32(float* offsets, const float* rotations, const float* templ,
                                              long long n_particles, int n_vertices, int d, float radius) {
    const long long total = n_particles * n_vertices * d;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x)
        zo_vertex_offset_item(offsets, idx, rotations, templ, n_vertices, d, radius);
}
