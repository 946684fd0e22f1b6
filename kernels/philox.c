#include <stdint.h>
#define MUL0 0xD2511F53u
#define MUL1 0xCD9E8D57u
#define BUMP0 0x9E3779B9u
#define BUMP1 0xBB67AE85u
#define TILE 16

/* Runtime-dispatched SIMD clones where the compiler supports them: the resolver picks one for
   the CPU that loads the library, so a shared cache never runs foreign instructions. */
#ifdef ZOOPT_CLONES
#define VECTORIZED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTORIZED
#endif

/* Philox words of TILE consecutive blocks, rounds outermost so the lanes vectorize */
static inline void philox_tile(uint32_t c0[TILE], uint32_t c1[TILE], uint32_t c2[TILE], uint32_t c3[TILE],
                               int64_t block, uint32_t tid, uint32_t gen, uint32_t pair,
                               uint32_t k0, uint32_t k1) {
    for (int j = 0; j < TILE; ++j) {
        c0[j] = (uint32_t)(block + j); c1[j] = tid; c2[j] = gen; c3[j] = pair;
    }
    for (int r = 0; r < 10; ++r) {
        for (int j = 0; j < TILE; ++j) {
            uint64_t p0 = (uint64_t)c0[j] * MUL0;
            uint64_t p1 = (uint64_t)c2[j] * MUL1;
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[j] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[j] ^ k1;
            c1[j] = (uint32_t)p1;
            c3[j] = (uint32_t)p0;
            c0[j] = n0;
            c2[j] = n2;
        }
        k0 += BUMP0;
        k1 += BUMP1;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ZOOPT_X86 1

/* The same rounds on 16 (AVX-512) or 8 (AVX2) blocks per vector, UNROLL independent vectors at a
   time (a round's multiply -> xor chain is latency-bound): 32x32 -> 64-bit products of the even and
   the odd lanes, then the low and high words blended back into place. */
#define UNROLL 4
#define PHILOX_SIMD(NAME, TARGET, VEC, LANES, SET1, MULU, SRL64, SLL64, SRL32, BLEND, XOR, ADD32, LOADI, CVT, \
                    ADDF, MULF, SET1F, STOREF)                                                                  \
__attribute__((target(TARGET)))                                                                             \
static int64_t NAME(float *row, int64_t plane, int64_t first, int64_t nblocks, uint32_t tid, uint32_t gen,  \
                    uint32_t pair, uint32_t k0_in, uint32_t k1_in, const int32_t *order, const float *mult) { \
    const VEC m0 = SET1((int)MUL0), m1 = SET1((int)MUL1);                                                   \
    int32_t lane[LANES];                                                                                     \
    for (int j = 0; j < LANES; ++j) lane[j] = j;                                                             \
    const VEC offsets = LOADI(lane);                                                                         \
    int64_t b0 = 0;                                                                                          \
    for (; b0 + UNROLL * LANES <= nblocks; b0 += UNROLL * LANES) {                                          \
        VEC c[UNROLL][4];                                                                                    \
        for (int v = 0; v < UNROLL; ++v) {                                                                   \
            c[v][0] = ADD32(SET1((int)(uint32_t)(first + b0 + v * LANES)), offsets);                         \
            c[v][1] = SET1((int)tid); c[v][2] = SET1((int)gen); c[v][3] = SET1((int)pair);                   \
        }                                                                                                    \
        uint32_t k0 = k0_in, k1 = k1_in;                                                                     \
        for (int r = 0; r < 10; ++r) {                                                                       \
            const VEC kk0 = SET1((int)k0), kk1 = SET1((int)k1);                                              \
            for (int v = 0; v < UNROLL; ++v) {                                                               \
                VEC pe0 = MULU(c[v][0], m0), po0 = MULU(SRL64(c[v][0], 32), m0);                             \
                VEC pe1 = MULU(c[v][2], m1), po1 = MULU(SRL64(c[v][2], 32), m1);                             \
                VEC lo0 = BLEND(pe0, SLL64(po0, 32)), hi0 = BLEND(SRL64(pe0, 32), po0);                      \
                VEC lo1 = BLEND(pe1, SLL64(po1, 32)), hi1 = BLEND(SRL64(pe1, 32), po1);                      \
                VEC n0 = XOR(XOR(hi1, c[v][1]), kk0);                                                        \
                VEC n2 = XOR(XOR(hi0, c[v][3]), kk1);                                                        \
                c[v][1] = lo1; c[v][3] = lo0; c[v][0] = n0; c[v][2] = n2;                                    \
            }                                                                                                \
            k0 += BUMP0; k1 += BUMP1;                                                                        \
        }                                                                                                    \
        for (int w = 0; w < 4; ++w) {                                                                        \
            for (int v = 0; v < UNROLL; ++v) {                                                               \
                VEC x = c[v][order[w]];                                                                      \
                __typeof__(CVT(x)) u = MULF(ADDF(CVT(SRL32(x, 8)), SET1F(0.5f)), SET1F(1.0f / 16777216.0f)); \
                if (mult[w] != 1.0f) u = MULF(u, SET1F(mult[w]));                                            \
                STOREF(row + w * plane + b0 + v * LANES, u);                                                 \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    return b0;                                                                                               \
}

#define BLEND512(a, b) _mm512_mask_blend_epi32((__mmask16)0xAAAA, (a), (b))
#define BLEND256(a, b) _mm256_blend_epi32((a), (b), 0xAA)
PHILOX_SIMD(philox_row_avx512, "avx512f", __m512i, 16, _mm512_set1_epi32, _mm512_mul_epu32, _mm512_srli_epi64,
            _mm512_slli_epi64, _mm512_srli_epi32, BLEND512, _mm512_xor_si512, _mm512_add_epi32,
            _mm512_loadu_si512, _mm512_cvtepi32_ps, _mm512_add_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_storeu_ps)
#define LOAD256(p) _mm256_loadu_si256((const __m256i *)(p))
PHILOX_SIMD(philox_row_avx2, "avx2", __m256i, 8, _mm256_set1_epi32, _mm256_mul_epu32, _mm256_srli_epi64,
            _mm256_slli_epi64, _mm256_srli_epi32, BLEND256, _mm256_xor_si256, _mm256_add_epi32,
            LOAD256, _mm256_cvtepi32_ps, _mm256_add_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_storeu_ps)

static int simd_cap = -1;   /* what the CPU supports: 2 AVX-512F, 1 AVX2, 0 neither; asked once */
static int simd_use = 2;    /* the highest level to use (tests lower it to check every path) */

static int simd_level(void) {
    if (simd_cap < 0) {
        __builtin_cpu_init();
        simd_cap = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return simd_cap < simd_use ? simd_cap : simd_use;
}
#endif

/* Cap the SIMD level (2, 1 or 0) and return the level now in use; -1 only reports it. */
int philox_simd(int cap) {
#ifdef ZOOPT_X86
    if (cap >= 0) simd_use = cap;
    return simd_level();
#else
    (void)cap;
    return 0;
#endif
}

/* Planes out[w] (each npairs x nblocks, row p = pairs[p], column b = block first + b) of the words of
   philox(counter = (block, tid, gen, pair), key = (k0, k1)) as floats ((x >> 8) + 0.5) / 2^24, each
   times mult[w] (1 or a float32 constant; one rounded product, as torch's scalar multiply).
   Plane w takes word order[w]. Planar, so the float math that follows runs on contiguous memory.
   The SIMD paths (chosen at run time for the CPU at hand) do the same integer and IEEE steps. */
void philox_planes(float *out, const int64_t *pairs, int64_t npairs, int64_t first, int64_t nblocks,
                   uint32_t tid, uint32_t gen, uint32_t k0, uint32_t k1, const int32_t *order,
                   const float *mult) {
    const float scale = 1.0f / 16777216.0f;
    const int64_t plane = npairs * nblocks;
    uint32_t c[4][TILE];
    for (int64_t p = 0; p < npairs; ++p) {
        float *row = out + p * nblocks;
        int64_t start = 0;
#ifdef ZOOPT_X86
        int level = simd_level();
        if (level == 2)
            start = philox_row_avx512(row, plane, first, nblocks, tid, gen, (uint32_t)pairs[p], k0, k1, order, mult);
        else if (level == 1)
            start = philox_row_avx2(row, plane, first, nblocks, tid, gen, (uint32_t)pairs[p], k0, k1, order, mult);
#endif
        for (int64_t b0 = start; b0 < nblocks; b0 += TILE) {
            int64_t n = nblocks - b0 < TILE ? nblocks - b0 : TILE;
            philox_tile(c[0], c[1], c[2], c[3], first + b0, tid, gen, (uint32_t)pairs[p], k0, k1);
            for (int w = 0; w < 4; ++w) {
                const uint32_t *x = c[order[w]];
                float *dst = row + w * plane + b0;
                const float m = mult[w];
                if (m == 1.0f) {
                    for (int64_t j = 0; j < n; ++j) dst[j] = ((float)(x[j] >> 8) + 0.5f) * scale;
                } else {
                    for (int64_t j = 0; j < n; ++j) dst[j] = (((float)(x[j] >> 8) + 0.5f) * scale) * m;
                }
            }
        }
    }
}

/* The last Box-Muller step of a tile, in one pass: z[p, b, 2j + k] = radius[j][p, b] * cs[k][j][p, b]
   (planes [npairs, nblocks], z rows row_stride floats apart): one exact IEEE product per element,
   the same bits as torch's multiply, interleaved without four strided passes. */
VECTORIZED
void polar_interleave(float *z, int64_t row_stride, const float *radius, const float *cs, int64_t npairs,
                      int64_t nblocks) {
    const int64_t plane = npairs * nblocks;
    for (int64_t p = 0; p < npairs; ++p) {
        const float *r0 = radius + p * nblocks, *r1 = r0 + plane;
        const float *c0 = cs + p * nblocks, *c1 = c0 + plane, *s0 = c0 + 2 * plane, *s1 = c0 + 3 * plane;
        float *row = z + p * row_stride;
        for (int64_t b = 0; b < nblocks; ++b) {
            row[4 * b] = r0[b] * c0[b];
            row[4 * b + 1] = r0[b] * s0[b];
            row[4 * b + 2] = r1[b] * c1[b];
            row[4 * b + 3] = r1[b] * s1[b];
        }
    }
}

/* Keyed int8 noise (zoopt/kernels/int_noise.py): element e of row p is word e % 4 of block e / 4,
   mapped through the ascending thresholds: value = #{j : table[j] <= x >> 8} - clip. Integers only,
   so it equals the numpy reference bit for bit. out is [npairs, numel] int8. */
void philox_int8(int8_t *out, const int64_t *pairs, int64_t npairs, int64_t start, int64_t numel,
                 uint32_t tid, uint32_t gen, uint32_t k0, uint32_t k1, const uint32_t *table, int ntable,
                 int clip) {
    uint32_t c[4][TILE];
    static __thread uint8_t below[1 << 16];   /* below[h] = #{j : table[j] <= h << 8}: a start for the count */
    for (int h = 0, j = 0; h < (1 << 16); ++h) {
        while (j < ntable && table[j] <= ((uint32_t)h << 8)) ++j;
        below[h] = (uint8_t)j;
    }
    const int64_t first = start / 4, last = (start + numel + 3) / 4;
    for (int64_t p = 0; p < npairs; ++p) {
        int8_t *row = out + p * numel;
        for (int64_t b0 = first; b0 < last; b0 += TILE) {
            int64_t n = last - b0 < TILE ? last - b0 : TILE;
            philox_tile(c[0], c[1], c[2], c[3], b0, tid, gen, (uint32_t)pairs[p], k0, k1);
            for (int64_t j = 0; j < n; ++j) {
                for (int w = 0; w < 4; ++w) {
                    int64_t e = 4 * (b0 + j) + w - start;
                    if (e < 0 || e >= numel) continue;
                    uint32_t y = c[w][j] >> 8;
                    int count = below[y >> 8];   /* thresholds in (h << 8, y] are few: count them on */
                    while (count < ntable && table[count] <= y) ++count;
                    row[e] = (int8_t)(count - clip);
                }
            }
        }
    }
}
