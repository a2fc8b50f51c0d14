/*
 * Compiled loops of the q <= 2 deviance kernel (sm_hlm.engine.small.SmallKernel).
 *
 * One pass over the groups per call, where the numpy form needs about fifteen
 * whole-array operations (each a pass, a temporary and a fixed call cost).  The
 * arithmetic is that of the numpy form (see small.py's notes); only the order of
 * the sums over groups differs.  The per-group inputs are group-major (each
 * group's numbers contiguous: one stream in, one out), and arrays come in through
 * the buffer protocol (C-contiguous float64), so that the module builds against
 * Python's headers alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <stdint.h>

#include "_cbuffers.h"

#if defined(__GNUC__) || defined(__clang__)
#define HOT static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define HOT static __forceinline
#else
#define HOT static inline
#endif

#if defined(__GNUC__) || defined(__clang__)
/* two doubles in one SSE2 register (GCC's and clang's vector extension) */
#define HAVE_V2D 1
typedef double v2d __attribute__((vector_size(16)));
#endif

/* The largest r = p + 1 with loops specialised for it (unrolled, sums in registers). */
#define MAX_UNROLLED_R 8
#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define UNROLL _Pragma("GCC unroll 8")
#else
#define UNROLL
#endif

/*
 * sum_j log x_j for positive x_j as log(prod of mantissas) + (sum of exponents) log 2:
 * four running products of mantissas in [1, 2), their exponents moved into an integer
 * count every 64 terms (exactly), one log per product at the end.
 */
typedef struct {
    double prod[4];
    long long exps;
    int bad;
} logsum_t;

HOT double
split_mantissa(double x, long long *e)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    *e += (long long)((u >> 52) & 0x7ff) - 1023;
    u = (u & 0x800fffffffffffffULL) | (1023ULL << 52);
    memcpy(&x, &u, 8);
    return x;
}

HOT void
logsum_init(logsum_t *ls)
{
    ls->prod[0] = ls->prod[1] = ls->prod[2] = ls->prod[3] = 1.0;
    ls->exps = 0;
    ls->bad = 0;
}

HOT void
logsum_add(logsum_t *ls, double x, Py_ssize_t j)
{
    /* x normal and positive: anything else leaves the sum undefined */
    ls->bad |= !(x >= 2.2250738585072014e-308 && x <= 1.7976931348623157e308);
    ls->prod[j & 3] *= split_mantissa(x, &ls->exps);
    if ((j & 63) == 63)
        for (int k = 0; k < 4; k++)
            ls->prod[k] = split_mantissa(ls->prod[k], &ls->exps);
}

static double
logsum_value(const logsum_t *ls)
{
    if (ls->bad)
        return NAN;
    double total = (double)ls->exps * 0.69314718055994530942;
    for (int k = 0; k < 4; k++)
        total += log(ls->prod[k]);
    return total;
}

/*
 * One pass over the groups, q = 2.  Per group j: fp[3j..] = (f0, f1, f2),
 * gp[2rj..] = (G_j0 (r), G_j1 (r)); out inv[3j..] = (a, b, d) of M_j^{-1} and the
 * upper triangle of sum_j G_j' M_j^{-1} G_j added to acc (row by row).
 */
HOT double
factor_q2_loop(const Py_ssize_t r, Py_ssize_t m, const double *gp, const double *fp,
               const double *s, double *inv, double *acc)
{
    const double s00 = s[0], s01 = s[1], s11 = s[2], dets = s[3];
    const double t01 = 2.0 * s01;
    logsum_t ls;
    logsum_init(&ls);
    Py_ssize_t j = 0;
#ifdef HAVE_V2D
    if (r <= MAX_UNROLLED_R) {
        /* two groups at a time, one in each lane: the same arithmetic per group (no
         * contraction), the pair sums kept per lane and added at the end */
        v2d acc2[MAX_UNROLLED_R * (MAX_UNROLLED_R + 1) / 2];
        v2d g0[MAX_UNROLLED_R], g1[MAX_UNROLLED_R];
        for (Py_ssize_t k = 0; k < r * (r + 1) / 2; k++)
            acc2[k] = (v2d){0.0, 0.0};
        for (; j + 1 < m; j += 2) {
            const double *fA = fp + 3 * j, *fB = fA + 3;
            v2d a0 = {fA[0], fB[0]}, a1 = {fA[1], fB[1]}, a2 = {fA[2], fB[2]};
            v2d p00 = a0 * a0, p01 = a0 * a1, p11 = a1 * a1, p02 = a0 * a2;
            v2d p12 = a1 * a2, p22 = a2 * a2;
            v2d quad = s00 * p00 + t01 * p01 + s11 * p11;
            v2d m11 = s11 * p22 + 1.0;
            v2d nm01 = -(s01 * p02 + s11 * p12);
            v2d m00 = quad + 1.0;
            v2d det = quad + s11 * p22 + dets * (p00 * p22) + 1.0;
            v2d rdet = 1.0 / det;
            v2d a = m11 * rdet, b = nm01 * rdet, d = m00 * rdet;
            double *iv = inv + 3 * j;
            iv[0] = a[0]; iv[1] = b[0]; iv[2] = d[0];
            iv[3] = a[1]; iv[4] = b[1]; iv[5] = d[1];
            logsum_add(&ls, det[0], j);
            logsum_add(&ls, det[1], j + 1);
            const double *gA = gp + 2 * r * j, *gB = gA + 2 * r;
            UNROLL
            for (Py_ssize_t x = 0; x < r; x++) {
                g0[x] = (v2d){gA[x], gB[x]};
                g1[x] = (v2d){gA[r + x], gB[r + x]};
            }
            UNROLL
            for (Py_ssize_t x = 0; x < r; x++) {
                v2d u0 = a * g0[x] + b * g1[x], u1 = b * g0[x] + d * g1[x];
                v2d *row = acc2 + x * r - x * (x - 1) / 2 - x;
                UNROLL
                for (Py_ssize_t y = x; y < r; y++)
                    row[y] += u0 * g0[y] + u1 * g1[y];
            }
        }
        for (Py_ssize_t k = 0; k < r * (r + 1) / 2; k++)
            acc[k] += acc2[k][0] + acc2[k][1];
    }
#endif
    for (; j < m; j++) {
        const double *f = fp + 3 * j, *g0 = gp + 2 * r * j, *g1 = g0 + r;
        double a0 = f[0], a1 = f[1], a2 = f[2];
        double p00 = a0 * a0, p01 = a0 * a1, p11 = a1 * a1, p02 = a0 * a2;
        double p12 = a1 * a2, p22 = a2 * a2;
        double quad = s00 * p00 + t01 * p01 + s11 * p11;
        double m11 = s11 * p22 + 1.0;
        double nm01 = -(s01 * p02 + s11 * p12);
        double m00 = quad + 1.0;
        /* a sum of non-negative terms: no cancellation */
        double det = quad + s11 * p22 + dets * (p00 * p22) + 1.0;
        double rdet = 1.0 / det;
        double a = m11 * rdet, b = nm01 * rdet, d = m00 * rdet;
        inv[3 * j] = a;
        inv[3 * j + 1] = b;
        inv[3 * j + 2] = d;
        logsum_add(&ls, det, j);
        UNROLL
        for (Py_ssize_t x = 0; x < r; x++) {
            /* row x of G_j M_j^{-1}: (a g0x + b g1x, b g0x + d g1x) */
            double u0 = a * g0[x] + b * g1[x], u1 = b * g0[x] + d * g1[x];
            double *row = acc + x * r - x * (x - 1) / 2 - x;      /* row x's pairs (x, y >= x) */
            UNROLL
            for (Py_ssize_t y = x; y < r; y++)
                row[y] += u0 * g0[y] + u1 * g1[y];
        }
    }
    return logsum_value(&ls);
}

/* The same for q = 1: fp[j] = f0, gp[rj..] = G_j0, inv[j] = 1 / M_j. */
HOT double
factor_q1_loop(const Py_ssize_t r, Py_ssize_t m, const double *gp, const double *fp,
               const double *s, double *inv, double *acc)
{
    const double s00 = s[0];
    logsum_t ls;
    logsum_init(&ls);
    for (Py_ssize_t j = 0; j < m; j++) {
        const double *g0 = gp + r * j;
        double det = 1.0 + s00 * (fp[j] * fp[j]);
        double a = 1.0 / det;
        inv[j] = a;
        logsum_add(&ls, det, j);
        UNROLL
        for (Py_ssize_t x = 0; x < r; x++) {
            double ax = a * g0[x];
            double *row = acc + x * r - x * (x - 1) / 2 - x;
            UNROLL
            for (Py_ssize_t y = x; y < r; y++)
                row[y] += ax * g0[y];
        }
    }
    return logsum_value(&ls);
}

/* The loops with r a compile-time constant (1..8), one function each. */
typedef double (*factor_loop_t)(Py_ssize_t, const double *, const double *,
                                const double *, double *, double *);
#define DEFINE_UNROLLED(R) \
    static double factor_q2_r##R(Py_ssize_t m, const double *gp, const double *fp, \
                                 const double *s, double *inv, double *acc) \
    { \
        double a_[R * (R + 1) / 2] = {0}; \
        double ld = factor_q2_loop(R, m, gp, fp, s, inv, a_); \
        for (int k = 0; k < R * (R + 1) / 2; k++) \
            acc[k] = a_[k]; \
        return ld; \
    } \
    static double factor_q1_r##R(Py_ssize_t m, const double *gp, const double *fp, \
                                 const double *s, double *inv, double *acc) \
    { \
        double a_[R * (R + 1) / 2] = {0}; \
        double ld = factor_q1_loop(R, m, gp, fp, s, inv, a_); \
        for (int k = 0; k < R * (R + 1) / 2; k++) \
            acc[k] = a_[k]; \
        return ld; \
    }
DEFINE_UNROLLED(1) DEFINE_UNROLLED(2) DEFINE_UNROLLED(3) DEFINE_UNROLLED(4)
DEFINE_UNROLLED(5) DEFINE_UNROLLED(6) DEFINE_UNROLLED(7) DEFINE_UNROLLED(8)
static const factor_loop_t q2_unrolled[MAX_UNROLLED_R + 1] = {
    NULL, factor_q2_r1, factor_q2_r2, factor_q2_r3, factor_q2_r4, factor_q2_r5,
    factor_q2_r6, factor_q2_r7, factor_q2_r8};
static const factor_loop_t q1_unrolled[MAX_UNROLLED_R + 1] = {
    NULL, factor_q1_r1, factor_q1_r2, factor_q1_r3, factor_q1_r4, factor_q1_r5,
    factor_q1_r6, factor_q1_r7, factor_q1_r8};

/*
 * The gradient's sums over the groups, into sums[9]: (t00, t01, t11) of
 * sum_j R_j' M_j^{-1} R_j, (v00, v01, v11) of sum_j v_j v_j' and (y00, y01, y11) of
 * sum_j K_j K_j' (REML: p = r - 1; zero for ML).  R is the (r, r) lower factor of A
 * (R_X its leading block, rdiag 1 / its diagonal), u = (-beta, 1), k a workspace of
 * 2 r numbers.
 */
HOT void
grad_q2_loop(const Py_ssize_t r, const int reml, Py_ssize_t m, const double *gp,
             const double *fp, const double *inv, const double *u, const double *R,
             const double *rdiag, double *k, double *sums)
{
    const Py_ssize_t p = reml ? r - 1 : 0;
    double *k0 = k, *k1 = k + r;
    double t00 = 0.0, t01 = 0.0, t11 = 0.0, v00 = 0.0, v01 = 0.0, v11 = 0.0;
    double y00 = 0.0, y01 = 0.0, y11 = 0.0;
    Py_ssize_t j = 0;
#ifdef HAVE_V2D
    if (r <= MAX_UNROLLED_R) {
        /* two groups at a time, one in each lane (the same arithmetic per group) */
        v2d T00 = {0.0, 0.0}, T01 = T00, T11 = T00, V00 = T00, V01 = T00, V11 = T00;
        v2d Y00 = T00, Y01 = T00, Y11 = T00;
        v2d K0[MAX_UNROLLED_R], K1[MAX_UNROLLED_R];
        for (; j + 1 < m; j += 2) {
            const double *fA = fp + 3 * j, *fB = fA + 3;
            const double *gA = gp + 2 * r * j, *gB = gA + 2 * r;
            const double *iA = inv + 3 * j, *iB = iA + 3;
            v2d a = {iA[0], iB[0]}, b = {iA[1], iB[1]}, d = {iA[2], iB[2]};
            v2d a0 = {fA[0], fB[0]}, a1 = {fA[1], fB[1]}, a2 = {fA[2], fB[2]};
            v2d h0 = {0.0, 0.0}, h1 = {0.0, 0.0};
            UNROLL
            for (Py_ssize_t x = 0; x < r; x++) {
                h0 += u[x] * (v2d){gA[x], gB[x]};
                h1 += u[x] * (v2d){gA[r + x], gB[r + x]};
            }
            v2d w0 = a * h0 + b * h1, w1 = b * h0 + d * h1;
            v2d v0 = a0 * w0, v1 = a1 * w0 + a2 * w1;
            V00 += v0 * v0;
            V01 += v0 * v1;
            V11 += v1 * v1;
            T00 += a * (a0 * a0);
            T01 += a * (a0 * a1) + b * (a0 * a2);
            T11 += a * (a1 * a1) + 2.0 * b * (a1 * a2) + d * (a2 * a2);
            UNROLL
            for (Py_ssize_t x = 0; x < p; x++) {
                v2d g0x = {gA[x], gB[x]}, g1x = {gA[r + x], gB[r + x]};
                v2d e0 = g0x * a + g1x * b, e1 = g0x * b + g1x * d;
                v2d s0 = e0 * a0, s1 = e0 * a1 + e1 * a2;
                UNROLL
                for (Py_ssize_t y = 0; y < x; y++) {
                    s0 -= R[x * r + y] * K0[y];
                    s1 -= R[x * r + y] * K1[y];
                }
                K0[x] = s0 * rdiag[x];
                K1[x] = s1 * rdiag[x];
                Y00 += K0[x] * K0[x];
                Y01 += K0[x] * K1[x];
                Y11 += K1[x] * K1[x];
            }
        }
        t00 = T00[0] + T00[1]; t01 = T01[0] + T01[1]; t11 = T11[0] + T11[1];
        v00 = V00[0] + V00[1]; v01 = V01[0] + V01[1]; v11 = V11[0] + V11[1];
        y00 = Y00[0] + Y00[1]; y01 = Y01[0] + Y01[1]; y11 = Y11[0] + Y11[1];
    }
#endif
    for (; j < m; j++) {
        const double *f = fp + 3 * j, *g0 = gp + 2 * r * j, *g1 = g0 + r;
        const double *iv = inv + 3 * j;
        double a = iv[0], b = iv[1], d = iv[2];
        double a0 = f[0], a1 = f[1], a2 = f[2];
        double h0 = 0.0, h1 = 0.0;
        UNROLL
        for (Py_ssize_t x = 0; x < r; x++) {
            h0 += u[x] * g0[x];
            h1 += u[x] * g1[x];
        }
        double w0 = a * h0 + b * h1, w1 = b * h0 + d * h1;     /* M_j^{-1} g_j */
        double v0 = a0 * w0, v1 = a1 * w0 + a2 * w1;           /* R_j' M_j^{-1} g_j */
        v00 += v0 * v0;
        v01 += v0 * v1;
        v11 += v1 * v1;
        /* R_j' M_j^{-1} R_j with R_j = [[f0, f1], [0, f2]] */
        t00 += a * (a0 * a0);
        t01 += a * (a0 * a1) + b * (a0 * a2);
        t11 += a * (a1 * a1) + 2.0 * b * (a1 * a2) + d * (a2 * a2);
        UNROLL
        for (Py_ssize_t x = 0; x < p; x++) {             /* K_j = R_X^{-1} G_jx' M_j^-1 R_j */
            double e0 = g0[x] * a + g1[x] * b, e1 = g0[x] * b + g1[x] * d;
            double s0 = e0 * a0, s1 = e0 * a1 + e1 * a2;
            UNROLL
            for (Py_ssize_t y = 0; y < x; y++) {
                s0 -= R[x * r + y] * k0[y];
                s1 -= R[x * r + y] * k1[y];
            }
            k0[x] = s0 * rdiag[x];
            k1[x] = s1 * rdiag[x];
            y00 += k0[x] * k0[x];
            y01 += k0[x] * k1[x];
            y11 += k1[x] * k1[x];
        }
    }
    sums[0] = t00; sums[1] = t01; sums[2] = t11;
    sums[3] = v00; sums[4] = v01; sums[5] = v11;
    sums[6] = y00; sums[7] = y01; sums[8] = y11;
}

/* The same for q = 1 (sums[0], [3], [6]). */
HOT void
grad_q1_loop(const Py_ssize_t r, const int reml, Py_ssize_t m, const double *gp,
             const double *fp, const double *inv, const double *u, const double *R,
             const double *rdiag, double *k, double *sums)
{
    const Py_ssize_t p = reml ? r - 1 : 0;
    double t00 = 0.0, vv = 0.0, kk = 0.0;
    for (Py_ssize_t j = 0; j < m; j++) {
        const double *g0 = gp + r * j;
        double a = inv[j], f = fp[j];
        double h = 0.0;
        UNROLL
        for (Py_ssize_t x = 0; x < r; x++)
            h += u[x] * g0[x];
        double v = f * (a * h);
        t00 += a * (f * f);
        vv += v * v;
        double af = a * f;
        UNROLL
        for (Py_ssize_t x = 0; x < p; x++) {             /* k = R_X^{-1} G_jx a f */
            double t = g0[x] * af;
            UNROLL
            for (Py_ssize_t y = 0; y < x; y++)
                t -= R[x * r + y] * k[y];
            k[x] = t * rdiag[x];
            kk += k[x] * k[x];
        }
    }
    sums[0] = t00; sums[3] = vv; sums[6] = kk;
}

typedef void (*grad_loop_t)(Py_ssize_t, Py_ssize_t, const double *, const double *,
                            const double *, const double *, const double *, const double *,
                            double *, double *);
#define DEFINE_GRAD(Q, KIND, REML, R) \
    static void grad_q##Q##_##KIND##_r##R(Py_ssize_t r, Py_ssize_t m, const double *gp, \
            const double *fp, const double *inv, const double *u, const double *Rf, \
            const double *rdiag, double *k, double *sums) \
    { \
        (void)r; \
        grad_q##Q##_loop(R, REML, m, gp, fp, inv, u, Rf, rdiag, k, sums); \
    }
#define DEFINE_GRADS(R) \
    DEFINE_GRAD(1, ml, 0, R) DEFINE_GRAD(1, reml, 1, R) \
    DEFINE_GRAD(2, ml, 0, R) DEFINE_GRAD(2, reml, 1, R)
DEFINE_GRADS(1) DEFINE_GRADS(2) DEFINE_GRADS(3) DEFINE_GRADS(4)
DEFINE_GRADS(5) DEFINE_GRADS(6) DEFINE_GRADS(7) DEFINE_GRADS(8)
#define DEFINE_GRAD_ANY(Q, KIND, REML) \
    static void grad_q##Q##_##KIND##_any(Py_ssize_t r, Py_ssize_t m, const double *gp, \
            const double *fp, const double *inv, const double *u, const double *Rf, \
            const double *rdiag, double *k, double *sums) \
    { \
        grad_q##Q##_loop(r, REML, m, gp, fp, inv, u, Rf, rdiag, k, sums); \
    }
DEFINE_GRAD_ANY(1, ml, 0) DEFINE_GRAD_ANY(1, reml, 1)
DEFINE_GRAD_ANY(2, ml, 0) DEFINE_GRAD_ANY(2, reml, 1)
#define GRAD_TABLE(Q, KIND) \
    static const grad_loop_t q##Q##_##KIND[MAX_UNROLLED_R + 1] = { \
        NULL, grad_q##Q##_##KIND##_r1, grad_q##Q##_##KIND##_r2, grad_q##Q##_##KIND##_r3, \
        grad_q##Q##_##KIND##_r4, grad_q##Q##_##KIND##_r5, grad_q##Q##_##KIND##_r6, \
        grad_q##Q##_##KIND##_r7, grad_q##Q##_##KIND##_r8};
GRAD_TABLE(1, ml) GRAD_TABLE(1, reml) GRAD_TABLE(2, ml) GRAD_TABLE(2, reml)

/* Lower Cholesky factor of the symmetric r x r A in place (row-major, upper part zeroed);
 * 0, or k + 1 when the leading minor of order k + 1 is not positive definite. */
static int
cholesky_lower(double *A, Py_ssize_t r)
{
    for (Py_ssize_t k = 0; k < r; k++) {
        double d = A[k * r + k];
        for (Py_ssize_t i = 0; i < k; i++)
            d -= A[k * r + i] * A[k * r + i];
        if (!(d > 0.0) || !isfinite(d))
            return (int)k + 1;
        d = sqrt(d);
        A[k * r + k] = d;
        for (Py_ssize_t i = k + 1; i < r; i++) {
            double t = A[i * r + k];
            for (Py_ssize_t l = 0; l < k; l++)
                t -= A[i * r + l] * A[k * r + l];
            A[i * r + k] = t / d;
        }
        for (Py_ssize_t i = k + 1; i < r; i++)
            A[k * r + i] = 0.0;
    }
    return 0;
}

/* q must be 1 or 2: 0, or -1 with the error set. */
static int
check_q(int q)
{
    if (q == 1 || q == 2)
        return 0;
    PyErr_SetString(PyExc_ValueError, "q must be 1 or 2");
    return -1;
}

/* The order of a square matrix of len entries (at least 1), or -1 with an error naming it. */
static Py_ssize_t
square_order(Py_ssize_t len, const char *name)
{
    Py_ssize_t r = (Py_ssize_t)(sqrt((double)len) + 0.5);
    if (r * r == len && r >= 1)
        return r;
    PyErr_Format(PyExc_ValueError, "%s must be square", name);
    return -1;
}

/* The per-group inputs onto the stack b: fp (m, 3) (q = 1: (m,)) and gp (m, q r),
 * the number of groups m from fp.  0, or -1 with the error set. */
static int
take_groups(buffers_t *b, int q, PyObject *og, PyObject *of, Py_ssize_t r,
            const double **gp, const double **fp, Py_ssize_t *m)
{
    const Py_ssize_t nf = q == 2 ? 3 : 1;
    Py_ssize_t len;
    if ((*fp = take_doubles(b, of, 0, -1, "fp", &len)) == NULL)
        return -1;
    *m = len / nf;
    if (*m * nf != len) {
        PyErr_Format(PyExc_ValueError, "fp must hold %zd numbers per group", nf);
        return -1;
    }
    if ((*gp = take_doubles(b, og, 0, *m * q * r, "gp", NULL)) == NULL)
        return -1;
    return 0;
}

/*
 * factor(q, gp, fp, s, A, inv) -> (log|L|^2, info)
 *
 * gp   (m, q r)  per group [G_j0 | G_j1] (G_j's columns, each of length r)
 * fp   (m, 3)    per group (f0, f1, f2) of F_j = [[f0, 0], [f1, f2]]  (q = 1: (m,), f0)
 * s    (4)       s00, s01, s11, det(S) of S = Lambda~ Lambda~'  (q = 1: (1,), lambda^2)
 * A    (r, r)    in: sum_j E_j'E_j; out: the lower Cholesky factor of
 *                A = in + sum_j G_j' M_j^{-1} G_j (upper part zero)
 * inv  (m, 3)    out: (a, b, d) of M_j^{-1} = [[a, b], [b, d]]  (q = 1: (m,), a)
 *
 * log|L|^2 = sum_j log det M_j is NaN where a det M_j is not positive and finite;
 * info is 0, or k + 1 where A's leading minor of order k + 1 is not positive definite.
 */
static PyObject *
small_factor(PyObject *self, PyObject *args)
{
    int q;
    PyObject *og, *of, *os, *oA, *oinv;
    if (!PyArg_ParseTuple(args, "iOOOOO", &q, &og, &of, &os, &oA, &oinv) || check_q(q) < 0)
        return NULL;
    buffers_t b = {.n = 0};
    const double *gp, *fp, *s;
    double *A, *inv;
    Py_ssize_t len, r, m;
    if ((A = take_doubles(&b, oA, 1, -1, "A", &len)) == NULL
            || (r = square_order(len, "A")) < 0
            || take_groups(&b, q, og, of, r, &gp, &fp, &m) < 0
            || (s = take_doubles(&b, os, 0, q == 2 ? 4 : 1, "s", NULL)) == NULL
            || (inv = take_doubles(&b, oinv, 1, m * (q == 2 ? 3 : 1), "inv", NULL)) == NULL)
        goto fail;
    Py_ssize_t npair = r * (r + 1) / 2;
    double *acc = PyMem_Calloc(npair + 1, sizeof(double));
    if (acc == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    double logdet;
    if (q == 1)
        logdet = (r >= 1 && r <= MAX_UNROLLED_R)
            ? q1_unrolled[r](m, gp, fp, s, inv, acc)
            : factor_q1_loop(r, m, gp, fp, s, inv, acc);
    else
        logdet = (r >= 1 && r <= MAX_UNROLLED_R)
            ? q2_unrolled[r](m, gp, fp, s, inv, acc)
            : factor_q2_loop(r, m, gp, fp, s, inv, acc);
    Py_ssize_t k = 0;
    for (Py_ssize_t x = 0; x < r; x++)
        for (Py_ssize_t y = x; y < r; y++, k++) {
            A[x * r + y] += acc[k];
            A[y * r + x] = A[x * r + y];
        }
    PyMem_Free(acc);
    int info = cholesky_lower(A, r);
    release_buffers(&b);
    return Py_BuildValue("(di)", logdet, info);

fail:
    release_buffers(&b);
    return NULL;
}

/*
 * gradient(q, gp, fp, inv, R, c, reml, out)
 *
 * The q x q matrix B of the gradient (small.py's notes), into out (q, q):
 *   B = sum_j R_j' M_j^{-1} R_j - c sum_j v_j v_j' - sum_j K_j K_j',
 *   v_j = R_j' M_j^{-1} G_j u,  K_j = R_X^{-1} G_jx' M_j^{-1} R_j  (the last term for
 * REML), with R (r, r) the lower Cholesky factor of A from factor, R_X its leading
 * p x p block (p = r - 1), u = (-beta, 1) and R_X' beta = R[p, :p]; G_jx the first p
 * rows of G_j.  gp, fp and inv as for factor.
 */
static PyObject *
small_gradient(PyObject *self, PyObject *args)
{
    int q, reml;
    double c;
    PyObject *og, *of, *oinv, *oR, *oout;
    if (!PyArg_ParseTuple(args, "iOOOOdpO", &q, &og, &of, &oinv, &oR, &c, &reml, &oout)
            || check_q(q) < 0)
        return NULL;
    buffers_t b = {.n = 0};
    const double *gp, *fp, *inv, *R;
    double *out;
    Py_ssize_t len, r, m;
    if ((R = take_doubles(&b, oR, 0, -1, "R", &len)) == NULL
            || (r = square_order(len, "R")) < 0
            || take_groups(&b, q, og, of, r, &gp, &fp, &m) < 0
            || (inv = take_doubles(&b, oinv, 0, m * (q == 2 ? 3 : 1), "inv", NULL)) == NULL
            || (out = take_doubles(&b, oout, 1, (Py_ssize_t)q * q, "out", NULL)) == NULL)
        goto fail;
    /* u, then 1 / R_X's diagonal and K_j's two columns */
    double *u = PyMem_Malloc((r + 3 * (r + 1)) * sizeof(double));
    if (u == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    double *rdiag = u + r, *k0 = rdiag + r + 1;
    /* R_X' beta = R[r-1, :r-1] (R_X' upper triangular: back substitution); u = (-beta, 1) */
    for (Py_ssize_t i = r - 2; i >= 0; i--) {
        double t = R[(r - 1) * r + i];
        for (Py_ssize_t k = i + 1; k < r - 1; k++)
            t += R[k * r + i] * u[k];                  /* u[k] = -beta_k */
        u[i] = -t / R[i * r + i];
    }
    u[r - 1] = 1.0;
    for (Py_ssize_t i = 0; i < r - 1; i++)
        rdiag[i] = 1.0 / R[i * r + i];
    double sums[9];
    if (q == 1)
        (r <= MAX_UNROLLED_R ? (reml ? q1_reml[r] : q1_ml[r]) : (reml ? grad_q1_reml_any
                                                                     : grad_q1_ml_any))(
            r, m, gp, fp, inv, u, R, rdiag, k0, sums);
    else
        (r <= MAX_UNROLLED_R ? (reml ? q2_reml[r] : q2_ml[r]) : (reml ? grad_q2_reml_any
                                                                     : grad_q2_ml_any))(
            r, m, gp, fp, inv, u, R, rdiag, k0, sums);
    if (q == 1)
        out[0] = sums[0] - c * sums[3] - sums[6];
    else {
        out[0] = sums[0] - c * sums[3] - sums[6];
        out[1] = out[2] = sums[1] - c * sums[4] - sums[7];
        out[3] = sums[2] - c * sums[5] - sums[8];
    }
    PyMem_Free(u);
    release_buffers(&b);
    Py_RETURN_NONE;

fail:
    release_buffers(&b);
    return NULL;
}

/*
 * quadratic(q, r, Qt, starts, F, lam) -> (r'V^{-1}r, log|V|)
 *
 * For row residuals r (n) sorted by group, V = I + Z Lambda Lambda' Z', q = 1 or 2:
 * Qt (q, n) the per-group orthonormal Q_j' (rows of Q', each contiguous), starts (m)
 * each group's first row (increasing, starts[0] = 0), F (q, q, m) the per-group
 * lower roots (R_j = F_j', Z_j = Q_j R_j) and lam (q, q) Lambda, row-major.
 * As the numpy form (deviance.residual_quadratic): per group g_j = Q_j'r_j, the
 * within-group residual sum of squares |r_j - Q_j g_j|^2 from the rows, and
 * |L_j^{-1} g_j|^2 with L_j the closed-form Cholesky factor of
 * M_j = I + R_j Lambda Lambda' R_j'; log|V| = sum_j log|M_j|.
 */
static PyObject *
small_quadratic(PyObject *self, PyObject *args)
{
    int q;
    PyObject *or_, *oQ, *ost, *oF, *olam;
    if (!PyArg_ParseTuple(args, "iOOOOO", &q, &or_, &oQ, &ost, &oF, &olam) || check_q(q) < 0)
        return NULL;
    buffers_t b = {.n = 0};
    const double *r, *Q0, *F, *lam;
    const long long *st;
    Py_ssize_t n, len, m, ms;
    if ((r = take_doubles(&b, or_, 0, -1, "r", &n)) == NULL
            || (F = take_doubles(&b, oF, 0, -1, "F", &len)) == NULL)
        goto fail;
    m = len / (q * q);
    if (m * q * q != len) {
        PyErr_SetString(PyExc_ValueError, "F must be (q, q, m)");
        goto fail;
    }
    if ((Q0 = take_doubles(&b, oQ, 0, q * n, "Qt", NULL)) == NULL
            || (st = take_starts(&b, ost, n, &ms)) == NULL
            || (lam = take_doubles(&b, olam, 0, q * q, "lam", NULL)) == NULL)
        goto fail;
    if (ms != m) {
        PyErr_Format(PyExc_ValueError, "starts has %zd entries, %zd groups in F", ms, m);
        goto fail;
    }
    const double *Q1 = Q0 + (q == 2 ? n : 0);
    double quad = 0.0;
    logsum_t ls;
    logsum_init(&ls);
    for (Py_ssize_t j = 0; j < m; j++) {
        Py_ssize_t a = (Py_ssize_t)st[j], b = j + 1 < m ? (Py_ssize_t)st[j + 1] : n;
        double g0 = 0.0, g1 = 0.0, e2 = 0.0, h0, h1 = 0.0, l00, l11 = 1.0;
        if (q == 1) {
            for (Py_ssize_t i = a; i < b; i++)
                g0 += Q0[i] * r[i];
            for (Py_ssize_t i = a; i < b; i++) {
                double e = r[i] - Q0[i] * g0;
                e2 += e * e;
            }
            double k = F[j] * lam[0];
            l00 = sqrt(1.0 + k * k);
            h0 = g0 / l00;
        }
        else {
            for (Py_ssize_t i = a; i < b; i++) {
                g0 += Q0[i] * r[i];
                g1 += Q1[i] * r[i];
            }
            for (Py_ssize_t i = a; i < b; i++) {
                double e = r[i] - Q0[i] * g0 - Q1[i] * g1;
                e2 += e * e;
            }
            /* K_j = R_j Lambda with R_j = [[f0, f1], [0, f2]] */
            double f0 = F[j], f1 = F[2 * m + j], f2 = F[3 * m + j];
            double k00 = f0 * lam[0] + f1 * lam[2], k01 = f0 * lam[1] + f1 * lam[3];
            double k10 = f2 * lam[2], k11 = f2 * lam[3];
            l00 = sqrt(1.0 + k00 * k00 + k01 * k01);
            double l10 = (k00 * k10 + k01 * k11) / l00;
            l11 = sqrt(1.0 + k10 * k10 + k11 * k11 - l10 * l10);
            h0 = g0 / l00;
            h1 = (g1 - l10 * h0) / l11;
        }
        quad += e2 + h0 * h0 + h1 * h1;
        double dj = l00 * l11;
        logsum_add(&ls, dj * dj, j);
    }
    release_buffers(&b);
    return Py_BuildValue("(dd)", quad, logsum_value(&ls));

fail:
    release_buffers(&b);
    return NULL;
}

/*
 * moments(q, gp, fp, u) -> (n_full, rank, var_b (q-tuple), mean_sinv (q-tuple))
 *
 * The method-of-moments pieces of the start (deviance.moment_start): per group
 * with a full-rank Z_j (its roots f0, f2 > 0) the OLS coefficients b_j = R_j^{-1} G_j u
 * of the residuals on Z_j and diag((Z_j'Z_j)^{-1}); over those n_full groups the
 * variance of b_j (about its mean, divided by n_full: two passes) and the mean of the
 * diagonal; rank the number of positive roots over all groups.  gp, fp as for factor.
 */
static PyObject *
small_moments(PyObject *self, PyObject *args)
{
    int q;
    PyObject *og, *of, *ou;
    if (!PyArg_ParseTuple(args, "iOOO", &q, &og, &of, &ou) || check_q(q) < 0)
        return NULL;
    const Py_ssize_t nf = q == 2 ? 3 : 1;
    buffers_t b = {.n = 0};
    const double *gp, *fp, *u;
    Py_ssize_t r, m;
    if ((u = take_doubles(&b, ou, 0, -1, "u", &r)) == NULL
            || take_groups(&b, q, og, of, r, &gp, &fp, &m) < 0) {
        release_buffers(&b);
        return NULL;
    }
    Py_ssize_t n_full = 0, rank = 0;
    double sb[2] = {0.0, 0.0}, ss[2] = {0.0, 0.0}, vb[2] = {0.0, 0.0};
    for (int pass = 0; pass < 2; pass++) {
        double mean0 = pass ? sb[0] / (double)n_full : 0.0;
        double mean1 = pass ? sb[1] / (double)n_full : 0.0;
        for (Py_ssize_t j = 0; j < m; j++) {
            const double *g0 = gp + q * r * j, *g1 = g0 + r;
            double f0 = fp[nf * j], f1 = q == 2 ? fp[nf * j + 1] : 0.0;
            double f2 = q == 2 ? fp[nf * j + 2] : 1.0;
            int ok0 = f0 > 0.0, ok2 = f2 > 0.0;
            if (pass == 0)
                rank += ok0 + (q == 2 ? ok2 : 0);
            if (!(ok0 && ok2))
                continue;
            double h0 = 0.0, h1 = 0.0;
            for (Py_ssize_t x = 0; x < r; x++)
                h0 += u[x] * g0[x];
            if (q == 2)
                for (Py_ssize_t x = 0; x < r; x++)
                    h1 += u[x] * g1[x];
            double b1 = q == 2 ? h1 / f2 : 0.0;                /* R_j b_j = g_j */
            double b0 = (h0 - f1 * b1) / f0;
            if (pass == 0) {
                n_full++;
                sb[0] += b0;
                sb[1] += b1;
                double s1 = 1.0 / (f2 * f2);
                ss[0] += (1.0 + f1 * f1 * s1) / (f0 * f0);     /* diag((F_j F_j')^{-1}) */
                ss[1] += s1;
            }
            else {
                vb[0] += (b0 - mean0) * (b0 - mean0);
                vb[1] += (b1 - mean1) * (b1 - mean1);
            }
        }
        if (n_full == 0)
            break;
    }
    release_buffers(&b);
    double nfd = n_full > 0 ? (double)n_full : NAN;
    if (q == 1)
        return Py_BuildValue("(nn(d)(d))", n_full, rank, vb[0] / nfd, ss[0] / nfd);
    return Py_BuildValue("(nn(dd)(dd))", n_full, rank, vb[0] / nfd, vb[1] / nfd,
                         ss[0] / nfd, ss[1] / nfd);
}

/*
 * blups(q, gp, fp, u, lam, TL, scale, b, cov)
 *
 * The conditional modes and their covariances (deviance.conditional_modes) for
 * q = 1 or 2: per group g_j = G_j u, y_j = Lambda~' R_j' g_j,
 * K_j = I + Lambda~' R_j'R_j Lambda~ (det K_j = det M_j as a sum of non-negative
 * terms), b_j = scale TL K_j^{-1} y_j into b (m, q) and TL K_j^{-1} TL' into cov
 * (q, q, m), TL = T Lambda~ (q, q).  gp, fp as for factor; u (r); lam (q, q).
 */
static PyObject *
small_blups(PyObject *self, PyObject *args)
{
    int q;
    double scale;
    PyObject *og, *of, *ou, *olam, *oTL, *ob, *ocov;
    if (!PyArg_ParseTuple(args, "iOOOOOdOO", &q, &og, &of, &ou, &olam, &oTL, &scale, &ob,
                          &ocov) || check_q(q) < 0)
        return NULL;
    buffers_t bufs = {.n = 0};
    const double *gp, *fp, *u, *L, *TL;
    double *b, *cov;
    Py_ssize_t r, m;
    if ((u = take_doubles(&bufs, ou, 0, -1, "u", &r)) == NULL
            || take_groups(&bufs, q, og, of, r, &gp, &fp, &m) < 0
            || (L = take_doubles(&bufs, olam, 0, q * q, "lam", NULL)) == NULL
            || (TL = take_doubles(&bufs, oTL, 0, q * q, "TL", NULL)) == NULL
            || (b = take_doubles(&bufs, ob, 1, m * q, "b", NULL)) == NULL
            || (cov = take_doubles(&bufs, ocov, 1, q * q * m, "cov", NULL)) == NULL) {
        release_buffers(&bufs);
        return NULL;
    }
    if (q == 1) {
        const double l = L[0], t = TL[0];
        for (Py_ssize_t j = 0; j < m; j++) {
            const double *g0 = gp + r * j;
            double h = 0.0;
            for (Py_ssize_t x = 0; x < r; x++)
                h += u[x] * g0[x];
            double y = fp[j] * h * l, k = 1.0 + (fp[j] * l) * (fp[j] * l);
            b[j] = scale * (t * (y / k));
            cov[j] = t * t / k;
        }
    }
    else {
        const double l00 = L[0], l01 = L[1], l10 = L[2], l11 = L[3];
        const double a0 = TL[0], a1 = TL[1], c0 = TL[2], c1 = TL[3];
        const double dl = l00 * l11 - l01 * l10, dl2 = dl * dl;
        for (Py_ssize_t j = 0; j < m; j++) {
            const double *f = fp + 3 * j, *g0 = gp + 2 * r * j, *g1 = g0 + r;
            double f0 = f[0], f1 = f[1], f2 = f[2];
            double h0 = 0.0, h1 = 0.0;
            for (Py_ssize_t x = 0; x < r; x++) {
                h0 += u[x] * g0[x];
                h1 += u[x] * g1[x];
            }
            double w0 = f0 * h0, w1 = f1 * h0 + f2 * h1;         /* R_j' g_j = F_j g_j */
            double y0 = l00 * w0 + l10 * w1, y1 = l01 * w0 + l11 * w1;   /* Lambda~' R_j' g_j */
            /* Y = R_j Lambda~ (R_j = [[f0, f1], [0, f2]]); K = I + Y'Y */
            double y00 = f0 * l00 + f1 * l10, y01 = f0 * l01 + f1 * l11;
            double y10 = f2 * l10, y11 = f2 * l11;
            double e00 = y00 * y00 + y10 * y10, e11 = y01 * y01 + y11 * y11;
            double k01 = y00 * y01 + y10 * y11;
            double det = 1.0 + e00 + e11 + dl2 * (f0 * f0) * (f2 * f2);
            double i00 = (1.0 + e11) / det, i01 = -k01 / det, i11 = (1.0 + e00) / det;
            double z0 = i00 * y0 + i01 * y1, z1 = i01 * y0 + i11 * y1;
            b[2 * j] = scale * (a0 * z0 + a1 * z1);
            b[2 * j + 1] = scale * (c0 * z0 + c1 * z1);
            double v00 = a0 * a0 * i00 + 2.0 * a0 * a1 * i01 + a1 * a1 * i11;
            double v01 = a0 * c0 * i00 + (a0 * c1 + a1 * c0) * i01 + a1 * c1 * i11;
            double v11 = c0 * c0 * i00 + 2.0 * c0 * c1 * i01 + c1 * c1 * i11;
            cov[j] = v00;
            cov[m + j] = v01;
            cov[2 * m + j] = v01;
            cov[3 * m + j] = v11;
        }
    }
    release_buffers(&bufs);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"factor", small_factor, METH_VARARGS,
     "factor(q, gp, fp, s, A, inv) -> (sum_j log det M_j, info): A <- chol(A + "
     "sum_j G_j' M_j^-1 G_j), inv <- the entries of the M_j^-1"},
    {"gradient", small_gradient, METH_VARARGS,
     "gradient(q, gp, fp, inv, R, c, reml, out): the gradient's inner matrix B into out"},
    {"quadratic", small_quadratic, METH_VARARGS,
     "quadratic(q, r, Qt, starts, F, lam) -> (r'V^-1 r, log|V|) from the row residuals"},
    {"moments", small_moments, METH_VARARGS,
     "moments(q, gp, fp, u) -> (n_full, rank, var_b, mean_sinv): the moment start's pieces"},
    {"blups", small_blups, METH_VARARGS,
     "blups(q, gp, fp, u, lam, TL, scale, b, cov): conditional modes and their covariances"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_csmall",
    "Compiled loops of sm_hlm.engine.small.SmallKernel (one pass over the groups).",
    -1, methods
};

PyMODINIT_FUNC
PyInit__csmall(void)
{
    return PyModule_Create(&module);
}
