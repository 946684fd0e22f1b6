// Host harness: runs the kernels' per-item bodies from philox.cuh on the CPU.
#include <stdio.h>
#include <string.h>
#include <vector>
#include "philox.cuh"

typedef long long ll;
static zo_key read_key() { zo_key k; scanf("%u %u %u %u", &k.k0, &k.k1, &k.tensor_id, &k.generation); return k; }
template <typename V> static std::vector<V> read_vec(const char* fmt) {
    ll n; scanf("%lld", &n); std::vector<V> v(n);
    for (ll i = 0; i < n; ++i) scanf(fmt, &v[i]);
    return v;
}

template <int R> static void lowrank(const zo_key& key) {
    const int TILE = 8;
    ll members, rows, m, n; scanf("%lld %lld %lld %lld", &members, &rows, &m, &n);
    std::vector<zo_u32> pairs = read_vec<zo_u32>("%u");
    std::vector<float> scales = read_vec<float>("%f"), x = read_vec<float>("%f"), out = read_vec<float>("%f");
    for (ll i = 0; i < members; ++i)
        for (ll t0 = 0; t0 < rows; t0 += TILE) {
            const int tile = (int)(rows - t0 < TILE ? rows - t0 : TILE);
            float acc[TILE][R] = {};
            for (ll b = zo_rows_first_block(0, R); b < zo_rows_last_block(0, n, R); ++b)
                zo_lowrank_project_block<R, TILE>(acc, b, &x[(i * rows + t0) * n], tile, 0, n, pairs[i], key);
            float coeff[TILE][R];
            for (int t = 0; t < TILE; ++t) for (int c = 0; c < R; ++c) coeff[t][c] = acc[t][c] * scales[i];
            for (ll b = zo_rows_first_block(n, R); b < zo_rows_last_block(n, m, R); ++b)
                zo_lowrank_expand_block<R, TILE>(&out[(i * rows + t0) * m], b, coeff, tile, n, m, pairs[i], key);
        }
    for (size_t i = 0; i < out.size(); ++i) printf("%.9g ", out[i]);
}

int main() {
    char cmd[32];
    while (scanf("%31s", cmd) == 1) {
        if (!strcmp(cmd, "bits")) {
            zo_key key = read_key(); zo_u32 pair, block; scanf("%u %u", &pair, &block);
            zo_words w = zo_keyed_block(key, block, pair);
            printf("%u %u %u %u", w.x[0], w.x[1], w.x[2], w.x[3]);
        } else if (!strcmp(cmd, "normal") || !strcmp(cmd, "normal_bf16")) {
            zo_key key = read_key(); ll start, numel; int vec; scanf("%lld %lld %d", &start, &numel, &vec);
            std::vector<zo_u32> pairs = read_vec<zo_u32>("%u");
            const ll n_blocks = zo_blocks_per_row(start, numel);
            if (!strcmp(cmd, "normal")) {
                std::vector<float> out(pairs.size() * numel, 0.0f);
                for (size_t p = 0; p < pairs.size(); ++p)
                    for (ll b = 0; b < n_blocks; ++b) zo_normal_item(out.data(), p, b, pairs.data(), start, numel, vec, key);
                for (size_t i = 0; i < out.size(); ++i) printf("%.9g ", out[i]);
            } else {
                std::vector<zo_bf16> out(pairs.size() * numel, 0);
                for (size_t p = 0; p < pairs.size(); ++p)
                    for (ll b = 0; b < n_blocks; ++b) zo_normal_item(out.data(), p, b, pairs.data(), start, numel, vec, key);
                for (size_t i = 0; i < out.size(); ++i) printf("%u ", (unsigned)out[i]);
            }
        } else if (!strcmp(cmd, "int8")) {
            zo_key key = read_key(); ll start, numel; int clip; scanf("%lld %lld %d", &start, &numel, &clip);
            std::vector<zo_u32> table = read_vec<zo_u32>("%u"), pairs = read_vec<zo_u32>("%u");
            std::vector<signed char> out(pairs.size() * numel, 0);
            const ll n_blocks = zo_blocks_per_row(start, numel);
            for (size_t p = 0; p < pairs.size(); ++p)
                for (ll b = 0; b < n_blocks; ++b)
                    zo_int8_item(out.data(), p, b, pairs.data(), start, numel, table.data(), (int)table.size(), clip, key);
            for (size_t i = 0; i < out.size(); ++i) printf("%d ", (int)out[i]);
        } else if (!strcmp(cmd, "rot")) {
            zo_key key = read_key(); int d; scanf("%d", &d);
            std::vector<zo_u32> particles = read_vec<zo_u32>("%u");
            std::vector<float> q(d * d), w(d);
            for (size_t i = 0; i < particles.size(); ++i) {
                zo_haar_rotation(key, particles[i], d, q.data(), w.data());
                for (int e = 0; e < d * d; ++e) printf("%.9g ", q[e]);
            }
        } else if (!strcmp(cmd, "offsets")) {
            ll p; int v, d; float radius; scanf("%lld %d %d %f", &p, &v, &d, &radius);
            std::vector<float> rot = read_vec<float>("%f"), templ = read_vec<float>("%f"), out(p * v * d);
            for (ll idx = 0; idx < p * v * d; ++idx) zo_vertex_offset_item(out.data(), idx, rot.data(), templ.data(), v, d, radius);
            for (size_t i = 0; i < out.size(); ++i) printf("%.9g ", out[i]);
        } else if (!strcmp(cmd, "bf16")) {
            std::vector<float> vals = read_vec<float>("%f");
            for (size_t i = 0; i < vals.size(); ++i) printf("%u ", (unsigned)zo_float_to_bf16(vals[i]));
        } else if (!strcmp(cmd, "lowrank")) {
            zo_key key = read_key(); int r; scanf("%d", &r);
            if (r == 1) lowrank<1>(key); else if (r == 2) lowrank<2>(key); else lowrank<4>(key);
        } else {
            fprintf(stderr, "unknown command %s\n", cmd); return 2;
        }
        printf("\n");
        fflush(stdout);
    }
    return 0;
}
