/* Stochastic local search for unweighted MAX-SAT: probSAT and WalkSAT-SKC, the compiled peer of
 * zoopt's PolyStep in scripts/bench_maxsat.py (zoopt/walksat.py is the same two methods in Python).
 *
 *   maxsat_sls FILE.cnf METHOD SEED MAX_FLIPS SECONDS > out
 *
 * METHOD is probsat (Balint & Schoening 2012, poly break: flip u with probability proportional
 * to (eps + break_u)^-cb, cb = 2.06, eps = 0.9) or walksat (Selman, Kautz & Cohen 1994: a
 * zero-break variable if any, else with probability 0.567 a random one of the clause, else one
 * of minimal break). Each flip picks a uniformly random unsatisfied clause. The run stops after
 * MAX_FLIPS flips (0: no limit), SECONDS of wall time (0: no limit) or when every clause is
 * satisfied. Output: "c flips F", "c seconds S" (wall), "c cpu_seconds S", "o BEST" (unsatisfied
 * clauses of the best assignment seen) and "v" lines with that assignment.
 *
 * The best assignment is kept without copying all n values at each improvement: the variables
 * flipped since the last best are listed once each, and a new best copies only those.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

static uint64_t rng_state;
static inline uint64_t next_u64(void) {          /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline uint32_t below(uint32_t n) { return (uint32_t)(((next_u64() >> 32) * (uint64_t)n) >> 32); }
static inline double uniform(void) { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void die(const char *msg) { fprintf(stderr, "maxsat_sls: %s\n", msg); exit(2); }

/* a minimal DIMACS CNF reader: comments, one "p cnf n m" header, clauses ending in 0 */
static int read_int(FILE *f, long long *out) {
    int c = getc(f);
    for (;;) {
        while (c == ' ' || c == '\t' || c == '\n' || c == '\r') c = getc(f);
        if (c == 'c' || c == 'p' || c == '%') {   /* skip the line (the header is parsed separately) */
            if (c == '%') return 0;
            while (c != '\n' && c != EOF) c = getc(f);
            continue;
        }
        break;
    }
    if (c == EOF) return 0;
    int neg = 0;
    if (c == '-') { neg = 1; c = getc(f); }
    if (c < '0' || c > '9') die("malformed CNF (expected an integer)");
    long long v = 0;
    while (c >= '0' && c <= '9') { v = v * 10 + (c - '0'); if (v > 2147483647LL) die("literal out of range"); c = getc(f); }
    *out = neg ? -v : v;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 6) die("usage: maxsat_sls FILE.cnf probsat|walksat SEED MAX_FLIPS SECONDS");
    int probsat = strcmp(argv[2], "probsat") == 0;
    if (!probsat && strcmp(argv[2], "walksat") != 0) die("METHOD must be probsat or walksat");
    rng_state = strtoull(argv[3], NULL, 10) * 0x2545F4914F6CDD1DULL + 1;
    long long max_flips = atoll(argv[4]);
    double max_seconds = atof(argv[5]);
    FILE *f = fopen(argv[1], "r");
    if (!f) die("cannot open the CNF file");
    long long n = -1, m = -1;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == 'p') { if (sscanf(line, "p cnf %lld %lld", &n, &m) != 2) die("malformed header"); break; }
    }
    if (n < 0 || m < 0) die("no 'p cnf' header");
    int32_t *lits = NULL; int64_t *cstart = malloc((m + 1) * sizeof(int64_t));
    size_t cap = 3 * (size_t)m + 16, used = 0;
    lits = malloc(cap * sizeof(int32_t));
    if (!lits || !cstart) die("out of memory");
    long long x, c = 0;
    cstart[0] = 0;
    while (c < m && read_int(f, &x)) {
        if (x == 0) { cstart[++c] = (int64_t)used; continue; }
        if (x > n || -x > n) die("literal above the header's variable count");
        if (used == cap) { cap *= 2; lits = realloc(lits, cap * sizeof(int32_t)); if (!lits) die("out of memory"); }
        lits[used++] = (int32_t)x;
    }
    fclose(f);
    if (c != m) die("fewer clauses than the header declares");

    /* occurrence lists by literal: index 2v (positive) and 2v+1 (negative), v 0-based */
    int64_t *optr = calloc(2 * n + 1, sizeof(int64_t));
    int32_t *occ = malloc(used * sizeof(int32_t));
    if (!optr || !occ) die("out of memory");
    for (size_t i = 0; i < used; i++) { int32_t l = lits[i]; optr[2 * (llabs(l) - 1) + (l < 0) + 1]++; }
    for (long long i = 0; i < 2 * n; i++) optr[i + 1] += optr[i];
    int64_t *fill = malloc(2 * n * sizeof(int64_t));
    memcpy(fill, optr, 2 * n * sizeof(int64_t));
    for (long long cl = 0; cl < m; cl++)
        for (int64_t i = cstart[cl]; i < cstart[cl + 1]; i++) {
            int32_t l = lits[i];
            occ[fill[2 * (llabs(l) - 1) + (l < 0)]++] = (int32_t)cl;
        }
    free(fill);

    uint8_t *val = malloc(n), *best = malloc(n), *dirty = calloc(n, 1);
    int32_t *dirty_list = malloc(n * sizeof(int32_t)), *numtrue = calloc(m, sizeof(int32_t));
    int32_t *unsat = malloc(m * sizeof(int32_t)), *where = malloc(m * sizeof(int32_t));
    if (!val || !best || !dirty || !dirty_list || !numtrue || !unsat || !where) die("out of memory");
    for (long long v = 0; v < n; v++) val[v] = best[v] = (uint8_t)(next_u64() >> 63);
    long long n_unsat = 0, n_empty = 0, n_dirty = 0;
    for (long long cl = 0; cl < m; cl++) {
        for (int64_t i = cstart[cl]; i < cstart[cl + 1]; i++) {
            int32_t l = lits[i];
            numtrue[cl] += (val[llabs(l) - 1] == (l > 0));
        }
        if (cstart[cl + 1] == cstart[cl]) { n_empty++; where[cl] = -1; continue; }  /* never satisfiable */
        if (numtrue[cl] == 0) { where[cl] = (int32_t)n_unsat; unsat[n_unsat++] = (int32_t)cl; } else where[cl] = -1;
    }
    long long best_unsat = n_unsat;

    double prob_table[64];
    for (int b = 0; b < 64; b++) prob_table[b] = pow(0.9 + b, -2.06);
    int32_t cand[64]; double w[64]; int br[64];
    long long flips = 0;
    double t0 = now();
    clock_t c0 = clock();
    while (n_unsat > 0 && (max_flips == 0 || flips < max_flips)) {
        if ((flips & 0xFFFF) == 0 && max_seconds > 0 && now() - t0 >= max_seconds) break;
        int32_t cl = unsat[below((uint32_t)n_unsat)];
        int k = 0;
        for (int64_t i = cstart[cl]; i < cstart[cl + 1] && k < 64; i++) {
            int32_t v = llabs(lits[i]) - 1;
            int b = 0;
            int64_t base = 2 * (int64_t)v + (val[v] ? 0 : 1);    /* the literal of v that is true now */
            for (int64_t j = optr[base]; j < optr[base + 1]; j++) b += numtrue[occ[j]] == 1;
            cand[k] = v; br[k] = b; k++;
        }
        int32_t pick;
        if (probsat) {
            double total = 0;
            for (int i = 0; i < k; i++) { w[i] = br[i] < 64 ? prob_table[br[i]] : pow(0.9 + br[i], -2.06); total += w[i]; }
            double r = uniform() * total;
            pick = cand[k - 1];
            for (int i = 0; i < k; i++) { r -= w[i]; if (r <= 0) { pick = cand[i]; break; } }
        } else {
            int bmin = br[0], nmin = 0;
            for (int i = 1; i < k; i++) if (br[i] < bmin) bmin = br[i];
            int zero = -1;
            for (int i = 0; i < k; i++) if (br[i] == 0) { zero = i; break; }
            if (zero >= 0) pick = cand[zero];
            else if (uniform() < 0.567) pick = cand[below((uint32_t)k)];
            else {
                for (int i = 0; i < k; i++) if (br[i] == bmin) cand[nmin++] = cand[i];
                pick = cand[below((uint32_t)nmin)];
            }
        }
        /* flip: the true literal's clauses lose one, the other polarity's gain one */
        int64_t tb = 2 * (int64_t)pick + (val[pick] ? 0 : 1), fb = tb ^ 1;
        for (int64_t j = optr[tb]; j < optr[tb + 1]; j++) {
            int32_t o = occ[j];
            if (--numtrue[o] == 0) { where[o] = (int32_t)n_unsat; unsat[n_unsat++] = o; }
        }
        for (int64_t j = optr[fb]; j < optr[fb + 1]; j++) {
            int32_t o = occ[j];
            if (numtrue[o]++ == 0) {
                int32_t last = unsat[--n_unsat];
                unsat[where[o]] = last; where[last] = where[o]; where[o] = -1;
            }
        }
        val[pick] ^= 1;
        flips++;
        if (!dirty[pick]) { dirty[pick] = 1; dirty_list[n_dirty++] = pick; }
        if (n_unsat < best_unsat) {
            best_unsat = n_unsat;
            for (long long i = 0; i < n_dirty; i++) { int32_t v = dirty_list[i]; best[v] = val[v]; dirty[v] = 0; }
            n_dirty = 0;
        }
    }
    double seconds = now() - t0, cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
    printf("c flips %lld\nc seconds %.6f\nc cpu_seconds %.6f\no %lld\n", flips, seconds, cpu, best_unsat + n_empty);
    for (long long v = 0; v < n; v++) {
        if (v % 20 == 0) fputs(v ? "\nv" : "v", stdout);
        printf(" %lld", best[v] ? v + 1 : -(v + 1));
    }
    puts("\nv 0");
    return 0;
}
