/* Fused hard-LIF tail of the zoo SNN (problems/zoo/layers.py: LIFHidden then LIFReadout), per row:
   a static input current cur[H] drives H hidden LIF neurons for `steps` steps; their spikes go
   through the readout's linear map (weight [C, H], bias [C]) into C output LIF neurons whose spike
   counts are the output. Each LIF step rounds exactly as the torch forward does:
   m = mem * beta; m = m + current; spike = m >= thr; mem = spike ? m * 0 : m.
   The readout current of a row is (sum over h in increasing order of spike_h * w[c, h]) + bias[c].
   Rows are processed TILE at a time with the rows in the lanes of one vector (GCC/Clang vector
   extensions), so every operation is a vector operation and the working set stays in L1. Built
   without -ffast-math and with -ffp-contract=off: no fused multiply-add may change a rounding. */
#include <stdint.h>
#include <string.h>

#ifdef ZOOPT_CLONES
#define VECTORIZED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTORIZED
#endif
#define TILE 16

#define BCAST(x) {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x} /* TILE copies: one broadcast */

typedef float vf32 __attribute__((vector_size(TILE * sizeof(float))));
typedef int32_t vi32 __attribute__((vector_size(TILE * sizeof(int32_t))));
typedef double vf64 __attribute__((vector_size(TILE * sizeof(double))));
typedef int64_t vi64 __attribute__((vector_size(TILE * sizeof(int64_t))));

/* one LIF step on a vector of membranes: returns the spike mask (all ones where it fired) */
#define LIF_STEP(VT, VI, mem, current, beta, thr, spike_mask) do {                                  \
        VT m_ = (mem) * (beta);                                                                      \
        m_ = m_ + (current);                                                                         \
        VI s_ = (VI)(m_ >= (thr));                                                                   \
        VT z_ = m_ * (VT){0};                                                                        \
        (mem) = (VT)(((VI)z_ & s_) | ((VI)m_ & ~s_));                                                \
        (spike_mask) = s_;                                                                           \
    } while (0)

/* readout accumulators kept in registers at once: CB independent add chains hide the add latency */
#define CB 5

/* wt: the readout weight transposed and padded, [H][Cp] with Cp = C rounded up to CB (zeros past C);
   work: (2 H + 2 Cp) vectors of scratch, aligned to the vector size */
#define LIF_COUNTS(T, VT, VI, NAME)                                                                  \
VECTORIZED void NAME(const T *restrict cur, int64_t rows, int64_t H, const T *restrict wt,          \
                     const T *restrict bias, int64_t C, int64_t steps, T beta1, T thr1, T beta2,     \
                     T thr2, T *restrict out, VT *restrict work) {                                  \
    int64_t Cp = (C + CB - 1) / CB * CB;                                                             \
    VT *curT = work, *mem = curT + H, *mem2 = mem + H, *tot = mem2 + Cp;                             \
    const VT one = BCAST((T)1), vb1 = BCAST(beta1), vt1 = BCAST(thr1), vb2 = BCAST(beta2);           \
    const VT vt2 = BCAST(thr2);                                                                      \
    VI spk[H > 0 ? H : 1];                                                                           \
    for (int64_t r0 = 0; r0 < rows; r0 += TILE) {                                                    \
        int64_t n = rows - r0 < TILE ? rows - r0 : TILE;                                             \
        for (int64_t h = 0; h < H; ++h) {                                                            \
            VT v = (VT){0};                                                                          \
            for (int64_t l = 0; l < n; ++l) v[l] = cur[(r0 + l) * H + h];                            \
            curT[h] = v;                                                                             \
            mem[h] = (VT){0};                                                                        \
        }                                                                                            \
        for (int64_t c = 0; c < Cp; ++c) { mem2[c] = (VT){0}; tot[c] = (VT){0}; }                    \
        for (int64_t t = 0; t < steps; ++t) {                                                        \
            for (int64_t h = 0; h < H; ++h) LIF_STEP(VT, VI, mem[h], curT[h], vb1, vt1, spk[h]);     \
            for (int64_t c0 = 0; c0 < C; c0 += CB) {                                                 \
                VT acc[CB];                                                                          \
                for (int j = 0; j < CB; ++j) acc[j] = (VT){0};                                       \
                for (int64_t h = 0; h < H; ++h) {                                                    \
                    VI s = spk[h];                                                                   \
                    const T *wh = wt + h * Cp + c0;                                                  \
                    for (int j = 0; j < CB; ++j) {                                                   \
                        const T wj = wh[j];                                                          \
                        const VT wv = BCAST(wj);                                                     \
                        acc[j] = acc[j] + (VT)((VI)wv & s);                                          \
                    }                                                                                \
                }                                                                                    \
                for (int j = 0; j < CB && c0 + j < C; ++j) {                                         \
                    const T bj = bias[c0 + j];                                                       \
                    const VT bv = BCAST(bj);                                                         \
                    VI s2;                                                                           \
                    LIF_STEP(VT, VI, mem2[c0 + j], acc[j] + bv, vb2, vt2, s2);                       \
                    tot[c0 + j] = tot[c0 + j] + (VT)((VI)one & s2);                                  \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (int64_t l = 0; l < n; ++l)                                                              \
            for (int64_t c = 0; c < C; ++c) out[(r0 + l) * C + c] = tot[c][l];                       \
    }                                                                                                \
}

LIF_COUNTS(float, vf32, vi32, lif_counts_f32)
LIF_COUNTS(double, vf64, vi64, lif_counts_f64)

/* Cross-entropy of TILE rows from their logits lg[0..C) (float32): max, exp(l - max) summed, log,
   minus the label's logit, with exp and log evaluated by range reduction and polynomials to about
   one float32 rounding (torch's own exp and log are no closer). The losses of the first n lanes are
   added to *acc (a double: the mean over the rows stays as close as torch's float32 mean) in row order. */
static inline __attribute__((always_inline)) vf32 exp_nonpos_f32(vf32 x) { /* e^x for x <= 0 (0 below -87) */
    const vf32 lo = (vf32)BCAST(-87.0f), magic = (vf32)BCAST(12582912.0f), log2e = (vf32)BCAST(1.44269504f);
    const vf32 ln2hi = (vf32)BCAST(0.693145752f), ln2lo = (vf32)BCAST(1.42860677e-06f);
    vi32 tiny = (vi32)(x < lo);
    x = (vf32)(((vi32)x & ~tiny) | ((vi32)lo & tiny));
    vf32 nf = (x * log2e + magic) - magic;
    vf32 r = x - nf * ln2hi;
    r = r - nf * ln2lo;
    vf32 pl = (vf32)BCAST(1.0f / 5040.0f);
    pl = pl * r + (vf32)BCAST(1.0f / 720.0f);
    pl = pl * r + (vf32)BCAST(1.0f / 120.0f);
    pl = pl * r + (vf32)BCAST(1.0f / 24.0f);
    pl = pl * r + (vf32)BCAST(1.0f / 6.0f);
    pl = pl * r + (vf32)BCAST(0.5f);
    pl = pl * r + (vf32)BCAST(1.0f);
    pl = pl * r + (vf32)BCAST(1.0f);
    vi32 ni = __builtin_convertvector(nf, vi32);
    vf32 scale = (vf32)((ni + 127) << 23);
    return (vf32)((vi32)(pl * scale) & ~tiny);
}

static inline __attribute__((always_inline)) vf32 log_pos_f32(vf32 s) { /* log s for finite s > 0 */
    vi32 bits = (vi32)s;
    vi32 e = ((bits >> 23) & 0xff) - 127;
    vf32 mant = (vf32)((bits & 0x7fffff) | 0x3f800000);
    vi32 big = (vi32)(mant > (vf32)BCAST(1.41421356f));
    mant = (vf32)(((vi32)(mant * (vf32)BCAST(0.5f)) & big) | ((vi32)mant & ~big));
    e = e + (big & 1);
    vf32 t = (mant - (vf32)BCAST(1.0f)) / (mant + (vf32)BCAST(1.0f));
    vf32 t2 = t * t;
    vf32 q = (vf32)BCAST(1.0f / 11.0f);
    q = q * t2 + (vf32)BCAST(1.0f / 9.0f);
    q = q * t2 + (vf32)BCAST(1.0f / 7.0f);
    q = q * t2 + (vf32)BCAST(1.0f / 5.0f);
    q = q * t2 + (vf32)BCAST(1.0f / 3.0f);
    q = q * t2 + (vf32)BCAST(1.0f);
    return __builtin_convertvector(e, vf32) * (vf32)BCAST(0.693147181f) + (vf32)BCAST(2.0f) * t * q;
}

static inline __attribute__((always_inline)) void ce_tile_f32(const vf32 *lg, int64_t C, const int64_t *y, int64_t n,
                                                             double *acc) {
    vf32 top = lg[0];
    for (int64_t k = 1; k < C; ++k) {
        vi32 gt = (vi32)(lg[k] > top);
        top = (vf32)(((vi32)lg[k] & gt) | ((vi32)top & ~gt));
    }
    vf32 sum = (vf32)BCAST(0.0f), picked = (vf32)BCAST(0.0f);
    vi32 lab;
    for (int l = 0; l < TILE; ++l) lab[l] = l < n ? (int32_t)y[l] : 0;
    for (int64_t k = 0; k < C; ++k) {
        sum = sum + exp_nonpos_f32(lg[k] - top);
        vi32 hit = (vi32)(lab == (int32_t)k);
        picked = (vf32)(((vi32)lg[k] & hit) | ((vi32)picked & ~hit));
    }
    vf32 loss = (log_pos_f32(sum) + top) - picked;
    for (int64_t l = 0; l < n; ++l) *acc += (double)loss[l];
}

static inline __attribute__((always_inline)) void ce_tile_f64(const vf64 *lg, int64_t C, const int64_t *y, int64_t n, double *acc) {
    (void)lg; (void)C; (void)y; (void)n; (void)acc; /* float64 keeps the loss in torch */
}

/* The MLP tail after a perturbed first layer, feature-major (rows in the last axis, B rows): for
   particle p and combination i, change = sum_j U[p, i, j] resp[p, j] ([H][B]), and the candidates
   relu(pre + change) (and, with `antipodal`, relu(pre - change) as candidate m + i) go through the
   linear readout: out[p, cand, c, b] = sum_h wt[h, c] relu(...)[h, b] + bias[c]. The hidden
   activations never leave registers. The change is summed j = 0..d-1 and the readout h = 0..H-1 in
   order, with fused multiply-adds where the CPU has them (no hard threshold follows, so rounding may
   differ from torch's GEMM order, as any two GEMMs' do). CK readout units at once. */
#define CK 10


/* The responses are computed tile by tile instead of read from memory: the response of
   coordinate j of particle p to input row b is resp[p, j, h, b] = sum over k in CSR row
   (p d + j) H + h of vals[k] * xa[col[k], b], where xa [K, B] is the stage input transposed (a last
   row of ones serves bias coordinates). Rows are taken TILE at a time across all particles, so the
   input tile stays in L2 and the [P, d, H, B] responses never exist in memory. work: d H vectors. */
#define RELU_LINEAR_CSR(T, VT, VI, NAME, CE_TILE)                                                    \
VECTORIZED __attribute__((optimize("fp-contract=fast"))) void NAME(                                  \
        const T *restrict pre, const T *restrict xa, const int64_t *restrict crow,                   \
        const int64_t *restrict col, const T *restrict vals, const T *restrict U, int64_t P,         \
        int64_t m, int64_t d, int64_t H, int64_t B, int antipodal, int relu, const T *restrict wt,   \
        const T *restrict bias, int64_t C, T *restrict out, VT *restrict R, const int64_t *restrict y, \
        double *restrict loss) {                                                                     \
    int64_t Cp = (C + CK - 1) / CK * CK, per = antipodal ? 2 * m : m;                                 \
    const VT zero = BCAST((T)0);                                                                     \
    for (int64_t b0 = 0; b0 < B; b0 += TILE) {                                                       \
        int64_t n = B - b0 < TILE ? B - b0 : TILE;                                                   \
        for (int64_t p = 0; p < P; ++p) {                                                            \
            for (int64_t jh = 0; jh < d * H; ++jh) {                                                 \
                int64_t row = p * d * H + jh;                                                        \
                VT acc = zero;                                                                       \
                for (int64_t k = crow[row]; k < crow[row + 1]; ++k) {                                \
                    const T v = vals[k]; const VT vv = BCAST(v);                                     \
                    VT xv = zero;                                                                    \
                    if (n == TILE) memcpy(&xv, xa + col[k] * B + b0, sizeof(VT));                    \
                    else for (int64_t l = 0; l < n; ++l) xv[l] = xa[col[k] * B + b0 + l];            \
                    acc = acc + vv * xv;                                                             \
                }                                                                                    \
                R[jh] = acc;                                                                         \
            }                                                                                        \
            for (int64_t i = 0; i < m; ++i) {                                                        \
                const T *u = U + (p * m + i) * d;                                                    \
                T *op = out + (p * per + i) * C * B, *om = out + (p * per + m + i) * C * B;          \
                for (int64_t c0 = 0; c0 < C; c0 += CK) {                                             \
                    VT ap[CK], am[CK];                                                               \
                    for (int k = 0; k < CK; ++k) { ap[k] = zero; am[k] = zero; }                     \
                    for (int64_t h = 0; h < H; ++h) {                                                \
                        VT pv = zero, ch = zero;                                                     \
                        if (n == TILE) memcpy(&pv, pre + h * B + b0, sizeof(VT));                    \
                        else for (int64_t l = 0; l < n; ++l) pv[l] = pre[h * B + b0 + l];            \
                        if (d == 8) {                                                                \
                            VT c1 = zero;                                                            \
                            for (int j = 0; j < 8; j += 2) {                                         \
                                const T u0 = u[j], u1 = u[j + 1];                                    \
                                const VT v0 = BCAST(u0), v1 = BCAST(u1);                             \
                                ch = ch + v0 * R[j * H + h];                                         \
                                c1 = c1 + v1 * R[(j + 1) * H + h];                                   \
                            }                                                                        \
                            ch = ch + c1;                                                            \
                        } else {                                                                     \
                            for (int64_t j = 0; j < d; ++j) {                                        \
                                const T uj = u[j]; const VT uv = BCAST(uj);                          \
                                ch = ch + uv * R[j * H + h];                                         \
                            }                                                                        \
                        }                                                                            \
                        VT hp = pv + ch, hm = pv - ch;                                               \
                        if (relu) {                                                                  \
                            hp = (VT)((VI)hp & ~(VI)(hp < zero));                                    \
                            hm = (VT)((VI)hm & ~(VI)(hm < zero));                                    \
                        }                                                                            \
                        const T *w = wt + h * Cp + c0;                                               \
                        for (int k = 0; k < CK; ++k) {                                               \
                            const T wk = w[k]; const VT wv = BCAST(wk);                              \
                            ap[k] = ap[k] + wv * hp;                                                 \
                            if (antipodal) am[k] = am[k] + wv * hm;                                  \
                        }                                                                            \
                    }                                                                                \
                    for (int k = 0; k < CK && c0 + k < C; ++k) {                                     \
                        const T bk = bias[c0 + k]; const VT bv = BCAST(bk);                          \
                        ap[k] = ap[k] + bv; am[k] = am[k] + bv;                                      \
                        if (loss) continue;                                                          \
                        for (int64_t l = 0; l < n; ++l) {                                            \
                            op[(c0 + k) * B + b0 + l] = ap[k][l];                                    \
                            if (antipodal) om[(c0 + k) * B + b0 + l] = am[k][l];                     \
                        }                                                                            \
                    }                                                                                \
                    if (loss) { /* C <= CK: one block holds every logit */                           \
                        CE_TILE(ap, C, y + b0, n, loss + p * per + i);                               \
                        if (antipodal) CE_TILE(am, C, y + b0, n, loss + p * per + m + i);            \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
}

RELU_LINEAR_CSR(float, vf32, vi32, relu_linear_csr_f32, ce_tile_f32)
RELU_LINEAR_CSR(double, vf64, vi64, relu_linear_csr_f64, ce_tile_f64)

/* Responses of n subspace coordinates, row-major: out[j, b, o] = sum over k in CSR row j D + o of
   vals[k] * xa[col[k], b] (xa [K, B]: the stage input transposed plus a row of ones for bias
   coordinates), summed in CSR order; TILE rows b at a time, transposed on the way out. work: D vectors. */
#define CSR_RESPONSES(T, VT, NAME)                                                                   \
VECTORIZED __attribute__((optimize("fp-contract=fast"))) void NAME(                                  \
        const int64_t *restrict crow, const int64_t *restrict col, const T *restrict vals,           \
        int64_t n, int64_t D, const T *restrict xa, int64_t B, T *restrict out, VT *restrict acc) {  \
    const VT zero = BCAST((T)0);                                                                     \
    for (int64_t j = 0; j < n; ++j) {                                                                \
        for (int64_t b0 = 0; b0 < B; b0 += TILE) {                                                   \
            int64_t nb = B - b0 < TILE ? B - b0 : TILE;                                              \
            for (int64_t o = 0; o < D; ++o) {                                                        \
                int64_t row = j * D + o;                                                             \
                VT a = zero;                                                                         \
                for (int64_t k = crow[row]; k < crow[row + 1]; ++k) {                                \
                    const T v = vals[k]; const VT vv = BCAST(v);                                     \
                    VT xv = zero;                                                                    \
                    if (nb == TILE) memcpy(&xv, xa + col[k] * B + b0, sizeof(VT));                   \
                    else for (int64_t l = 0; l < nb; ++l) xv[l] = xa[col[k] * B + b0 + l];           \
                    a = a + vv * xv;                                                                 \
                }                                                                                    \
                acc[o] = a;                                                                          \
            }                                                                                        \
            for (int64_t l = 0; l < nb; ++l) {                                                       \
                T *dst = out + (j * B + b0 + l) * D;                                                 \
                for (int64_t o = 0; o < D; ++o) dst[o] = acc[o][l];                                  \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
}

CSR_RESPONSES(float, vf32, csr_responses_f32)
CSR_RESPONSES(double, vf64, csr_responses_f64)
