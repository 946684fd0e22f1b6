// Philox-4x32-10 and the keyed-noise transforms shared by every zoopt CUDA kernel.
//
// Every function here is __host__ __device__: the kernels call them per thread on the
// GPU, and tests/test_kernels_compile.py compiles a host harness that calls the same
// functions on the CPU and compares them with the numpy reference (kernels/noise.py).
//
// Keyed layout (identical to kernels/noise.py): key = 64-bit run seed split (lo, hi);
// counter = (element / 4, tensor_id, generation, pair); the four words give elements
// 4b .. 4b+3. Uniform u = ((x >> 8) + 0.5) / 2^24; Box-Muller on lanes (0, 1), (2, 3):
// radius from the even lane, angle from the odd lane.
#ifndef ZOOPT_PHILOX_CUH
#define ZOOPT_PHILOX_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define ZO_HD __host__ __device__ __forceinline__
#else
#define ZO_HD inline
#endif

#if !defined(__CUDACC_RTC__)
#include <math.h>
#include <string.h>
#endif

typedef unsigned int zo_u32;
typedef unsigned long long zo_u64;
typedef unsigned short zo_bf16;  // raw bfloat16 bits (no cuda_bf16.h needed under NVRTC)

#define ZO_MUL0 0xD2511F53u
#define ZO_MUL1 0xCD9E8D57u
#define ZO_BUMP0 0x9E3779B9u
#define ZO_BUMP1 0xBB67AE85u
#define ZO_INV_2_24 5.9604644775390625e-08f  // 2^-24, exact

struct zo_key {
    zo_u32 k0, k1;          // run seed lo, hi
    zo_u32 tensor_id, generation;
};

struct zo_words {
    zo_u32 x[4];
};

ZO_HD zo_u32 zo_mulhi(zo_u32 a, zo_u32 b) {
#if defined(__CUDA_ARCH__)
    return __umulhi(a, b);
#else
    return (zo_u32)(((zo_u64)a * (zo_u64)b) >> 32);
#endif
}

// Philox-4x32 with 10 rounds on counter (c0, c1, c2, c3) and key (k0, k1).
ZO_HD zo_words zo_philox(zo_u32 c0, zo_u32 c1, zo_u32 c2, zo_u32 c3, zo_u32 k0, zo_u32 k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        const zo_u32 hi0 = zo_mulhi(c0, ZO_MUL0), lo0 = c0 * ZO_MUL0;
        const zo_u32 hi1 = zo_mulhi(c2, ZO_MUL1), lo1 = c2 * ZO_MUL1;
        const zo_u32 n0 = hi1 ^ c1 ^ k0;
        const zo_u32 n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
        k0 += ZO_BUMP0; k1 += ZO_BUMP1;
    }
    zo_words w;
    w.x[0] = c0; w.x[1] = c1; w.x[2] = c2; w.x[3] = c3;
    return w;
}

// The four words of Philox block `block` for `pair` under `key`.
ZO_HD zo_words zo_keyed_block(const zo_key& key, zo_u32 block, zo_u32 pair) {
    return zo_philox(block, key.tensor_id, key.generation, pair, key.k0, key.k1);
}

// log(u) for u = ((x >> 8) + 0.5) / 2^24, accurate near u = 1 too: ((x >> 8) + 0.5)
// needs 25 bits once x >> 8 >= 2^23, so there we use 1 - u, which is exact in float.
ZO_HD float zo_log_uniform(zo_u32 word) {
    const zo_u32 k = word >> 8;
    if (k < (1u << 23)) return logf(((float)k + 0.5f) * ZO_INV_2_24);
    const float one_minus_u = ((float)((1u << 24) - k) - 0.5f) * ZO_INV_2_24;
    return log1pf(-one_minus_u);
}

// cos and sin of 2*pi*u for the same u, through the exact min(u, 1 - u).
ZO_HD void zo_cos_sin_2pi_uniform(zo_u32 word, float* c, float* s) {
    const zo_u32 k = word >> 8;
    const bool upper = k >= (1u << 23);
    const float w = upper ? ((float)((1u << 24) - k) - 0.5f) * ZO_INV_2_24
                          : ((float)k + 0.5f) * ZO_INV_2_24;
#if defined(__CUDA_ARCH__)
    float sv, cv;
    sincospif(2.0f * w, &sv, &cv);
#else
    const double angle = 6.283185307179586476925286766559 * (double)w;
    const float sv = (float)sin(angle), cv = (float)cos(angle);
#endif
    *c = cv;
    *s = upper ? -sv : sv;
}

// Four standard normals from one Philox block (elements 4b .. 4b+3).
ZO_HD void zo_box_muller4(const zo_words& w, float z[4]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const float radius = sqrtf(-2.0f * zo_log_uniform(w.x[2 * half]));
        float c, s;
        zo_cos_sin_2pi_uniform(w.x[2 * half + 1], &c, &s);
        z[2 * half] = radius * c;
        z[2 * half + 1] = radius * s;
    }
}

// Small-integer noise from one word by inverse CDF: the number of ascending
// thresholds <= (x >> 8), minus `clip` (numpy: searchsorted(t, x >> 8, "right") - clip).
ZO_HD int zo_int_from_word(zo_u32 word, const zo_u32* thresholds, int n_thresholds, int clip) {
    const zo_u32 u = word >> 8;
    int lo = 0, hi = n_thresholds;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (thresholds[mid] <= u) lo = mid + 1; else hi = mid;
    }
    return lo - clip;
}

// Scans consecutive keyed normals of one pair, one Philox block at a time.
struct zo_normal_stream {
    zo_key key;
    zo_u32 pair;
    long long cached_block;
    float z[4];

    ZO_HD float at(long long element) {
        const long long block = element >> 2;
        if (block != cached_block) {
            zo_box_muller4(zo_keyed_block(key, (zo_u32)block, pair), z);
            cached_block = block;
        }
        return z[element & 3];
    }
};

ZO_HD zo_normal_stream zo_make_stream(const zo_key& key, zo_u32 pair) {
    zo_normal_stream s;
    s.key = key;
    s.pair = pair;
    s.cached_block = -1;
    return s;
}

ZO_HD float zo_bf16_to_float(zo_bf16 h) {
    const zo_u32 bits = ((zo_u32)h) << 16;
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
#endif
}

// Round to nearest even, like torch's float32 -> bfloat16 cast; NaN stays NaN.
ZO_HD zo_bf16 zo_float_to_bf16(float f) {
#if defined(__CUDA_ARCH__)
    zo_u32 bits = __float_as_uint(f);
#else
    zo_u32 bits;
    memcpy(&bits, &f, sizeof(bits));
#endif
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (zo_bf16)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (zo_bf16)(bits >> 16);
}

// Haar rotation in SO(d), written row-major into q[d*d] (scratch w[d]).
// Subgroup algorithm: start from diag(1, .., 1, (-1)^(d-1)) so the product has det +1,
// then for k = 2 .. d reflect the trailing k x k block by H_k = I - 2 w w^T / |w|^2,
// w = e_1 - g/|g|, g = keyed normals (elements k(k-1)/2 - 1 .. + k of this particle's
// stream). H_k maps e_1 onto a uniform unit vector, so the product is Haar on SO(d).
// 1 - g_0/|g| is formed without cancellation (kernels/rotations.py does the same).
ZO_HD void zo_haar_rotation(const zo_key& key, zo_u32 particle, int d, float* q, float* w) {
    for (int i = 0; i < d * d; ++i) q[i] = 0.0f;
    for (int i = 0; i < d; ++i) q[i * d + i] = 1.0f;
    if (d % 2 == 0) q[d * d - 1] = -1.0f;
    zo_normal_stream stream = zo_make_stream(key, particle);
    for (int k = 2; k <= d; ++k) {
        const long long offset = (long long)k * (k - 1) / 2 - 1;
        float tail = 0.0f;  // sum of g_i^2, i >= 1
        for (int i = 0; i < k; ++i) {
            w[i] = stream.at(offset + i);
            if (i > 0) tail += w[i] * w[i];
        }
        const float g0 = w[0];
        const float norm = sqrtf(g0 * g0 + tail);
        const float w0 = g0 > 0.0f ? tail / (norm * (norm + g0)) : 1.0f - g0 / norm;
        w[0] = w0;
        for (int i = 1; i < k; ++i) w[i] = -w[i] / norm;
        float wsq = w0 * w0 + tail / (norm * norm);
        if (!(wsq > 1e-30f)) {  // g parallel to e_1: reflect along e_1
            w[0] = 1.0f;
            for (int i = 1; i < k; ++i) w[i] = 0.0f;
            wsq = 1.0f;
        }
        const float factor = 2.0f / wsq;
        const int base = d - k;
        for (int col = base; col < d; ++col) {
            float dot = 0.0f;
            for (int i = 0; i < k; ++i) dot += w[i] * q[(base + i) * d + col];
            dot *= factor;
            for (int i = 0; i < k; ++i) q[(base + i) * d + col] -= dot * w[i];
        }
    }
}


// ---- per-work-item bodies of the kernels (host-callable, so the CPU harness checks them) ----

ZO_HD void zo_store(float* p, float v) { *p = v; }
ZO_HD void zo_store(zo_bf16* p, float v) { *p = zo_float_to_bf16(v); }
ZO_HD float zo_load(const float* p) { return *p; }
ZO_HD float zo_load(const zo_bf16* p) { return zo_bf16_to_float(*p); }

ZO_HD void zo_store4(float* p, const float z[4]) {
#if defined(__CUDA_ARCH__)
    float4 v;
    v.x = z[0]; v.y = z[1]; v.z = z[2]; v.w = z[3];
    *reinterpret_cast<float4*>(p) = v;
#else
    for (int lane = 0; lane < 4; ++lane) p[lane] = z[lane];
#endif
}

ZO_HD void zo_store4(zo_bf16* p, const float z[4]) {
#if defined(__CUDA_ARCH__)
    uint2 v;
    v.x = (zo_u32)zo_float_to_bf16(z[0]) | ((zo_u32)zo_float_to_bf16(z[1]) << 16);
    v.y = (zo_u32)zo_float_to_bf16(z[2]) | ((zo_u32)zo_float_to_bf16(z[3]) << 16);
    *reinterpret_cast<uint2*>(p) = v;
#else
    for (int lane = 0; lane < 4; ++lane) p[lane] = zo_float_to_bf16(z[lane]);
#endif
}

// Elements start .. start+numel-1 of each pair: the number of Philox blocks per row.
ZO_HD long long zo_blocks_per_row(long long start, long long numel) {
    return ((start + numel + 3) >> 2) - (start >> 2);
}

// Work item (p, local) of [n_pairs, blocks_per_row]: Philox block (start / 4) + local of pair
// pairs[p] gives out[p, e] = normal (start + e). `vector_ok` (host-checked: start % 4 == 0,
// numel % 4 == 0, aligned base) allows one wide store.
template <typename T>
ZO_HD void zo_normal_item(T* out, long long p, long long local, const zo_u32* pairs, long long start,
                          long long numel, int vector_ok, const zo_key& key) {
    const long long block = (start >> 2) + local;
    float z[4];
    zo_box_muller4(zo_keyed_block(key, (zo_u32)block, pairs[p]), z);
    const long long e0 = 4 * block - start;  // column of lane 0 in row p
    if (vector_ok) {
        zo_store4(out + p * numel + e0, z);
        return;
    }
    for (int lane = 0; lane < 4; ++lane) {
        const long long e = e0 + lane;
        if (e >= 0 && e < numel) zo_store(out + p * numel + e, z[lane]);
    }
}

// Same indexing for integer noise (thresholds: see kernels/int_noise.py).
ZO_HD void zo_int8_item(signed char* out, long long p, long long local, const zo_u32* pairs, long long start,
                        long long numel, const zo_u32* thresholds, int n_thresholds, int clip, const zo_key& key) {
    const long long block = (start >> 2) + local;
    const zo_words w = zo_keyed_block(key, (zo_u32)block, pairs[p]);
    const long long e0 = 4 * block - start;
    for (int lane = 0; lane < 4; ++lane) {
        const long long e = e0 + lane;
        if (e >= 0 && e < numel)
            out[p * numel + e] = (signed char)zo_int_from_word(w.x[lane], thresholds, n_thresholds, clip);
    }
}

// offsets[i, v, a] = radius * sum_b rotations[i, a, b] * templ[v, b] for flat idx of [P, V, d].
ZO_HD void zo_vertex_offset_item(float* offsets, long long idx, const float* rotations, const float* templ,
                                 int n_vertices, int d, float radius) {
    const long long i = idx / ((long long)n_vertices * d);
    const int rest = (int)(idx - i * n_vertices * d);
    const int v = rest / d, a = rest - v * d;
    const float* row = rotations + (i * d + a) * d;
    const float* u = templ + (long long)v * d;
    float acc = 0.0f;
    for (int b = 0; b < d; ++b) acc += row[b] * u[b];
    offsets[idx] = radius * acc;
}

// Low-rank factors of one pair (kernels/lowrank.py, zoopt/eggroll/noise.py): the stream read
// row-major as [n + m, R]; rows 0..n-1 are B (input side), rows n..n+m-1 are A (output side).
// A factor whose first row is row0 holds elements (row0 + i) * R + c. R divides 4, so lane l
// of any Philox block is column l % R.

// Philox blocks covering rows row0 .. row0+rows-1: [first, last).
ZO_HD long long zo_rows_first_block(long long row0, int r) { return (row0 * r) >> 2; }
ZO_HD long long zo_rows_last_block(long long row0, long long rows, int r) { return ((row0 + rows) * r + 3) >> 2; }

// Phase 1, one Philox block of B (rows row0 .. row0+n-1): acc[t][c] += x[t, j] * B[j, c], t < tile.
template <int R, int TILE, typename T>
ZO_HD void zo_lowrank_project_block(float acc[TILE][R], long long block, const T* x_tile, int tile,
                                    long long row0, long long n, zo_u32 pair, const zo_key& key) {
    float z[4];
    zo_box_muller4(zo_keyed_block(key, (zo_u32)block, pair), z);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
        const long long j = (4 * block + lane) / R - row0;
        if (j < 0 || j >= n) continue;
#pragma unroll
        for (int t = 0; t < TILE; ++t)
            if (t < tile) acc[t][lane % R] += zo_load(x_tile + t * n + j) * z[lane];
    }
}

// Phase 2, one Philox block of A (rows row0 .. row0+m-1): out[t, k] += sum_c coeff[t][c] * A[k, c].
template <int R, int TILE, typename T>
ZO_HD void zo_lowrank_expand_block(T* out_tile, long long block, const float coeff[TILE][R], int tile,
                                   long long row0, long long m, zo_u32 pair, const zo_key& key) {
    float z[4];
    zo_box_muller4(zo_keyed_block(key, (zo_u32)block, pair), z);
#pragma unroll
    for (int q = 0; q < 4 / R; ++q) {
        const long long k = 4 * block / R + q - row0;
        if (k < 0 || k >= m) continue;
        for (int t = 0; t < tile; ++t) {
            float v = 0.0f;
#pragma unroll
            for (int c = 0; c < R; ++c) v += coeff[t][c] * z[q * R + c];
            zo_store(out_tile + t * m + k, zo_load(out_tile + t * m + k) + v);
        }
    }
}

#endif  // ZOOPT_PHILOX_CUH
