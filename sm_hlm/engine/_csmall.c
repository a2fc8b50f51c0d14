/*
 * Compiled loops of the q <= 2 deviance kernel (sm_hlm.engine.small.SmallKernel).
 *
 * One pass over the groups per call, where the numpy form needs about fifteen
 * whole-array operations (each a pass, a temporary and a fixed call cost).  The
 * arithmetic is that of the numpy form (see small.py's notes); only the order of
 * the sums over groups differs.  Arrays come in through the buffer protocol
 * (C-contiguous float64), so that the module builds against Python's headers
 * alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <stdint.h>

/* A C-contiguous float64 buffer of at least `len` entries (len < 0: any). */
static int
get_doubles(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t len,
            const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != 8 || view->format == NULL
            || !(strcmp(view->format, "d") == 0 || strcmp(view->format, "<d") == 0
                 || strcmp(view->format, "=d") == 0)) {
        PyErr_Format(PyExc_TypeError, "%s must be a float64 array", name);
        PyBuffer_Release(view);
        return -1;
    }
    if (len >= 0 && view->len / 8 < len) {
        PyErr_Format(PyExc_ValueError, "%s has %zd entries, %zd needed", name,
                     view->len / 8, len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

#if defined(__GNUC__) || defined(__clang__)
#define HOT static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define HOT static __forceinline
#else
#define HOT static inline
#endif

/* The largest r = p + 1 with loops specialised for it (fully unrolled, sums in registers). */
#define MAX_UNROLLED_R 8

/*
 * sum_j log x_j for positive x_j as log(prod of mantissas) + (sum of exponents) log 2:
 * four running products of mantissas in [1, 2), their exponents moved into an integer
 * count every 64 terms (exact), one log per product at the end.
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
    /* x in [DBL_MIN, DBL_MAX] (normal, positive): anything else makes the sum undefined */
    ls->bad |= !(x >= 2.2250738585072014e-308 && x <= 1.7976931348623157e308);
    ls->prod[j & 3] *= split_mantissa(x, &ls->exps);
    if ((j & 63) == 63)
        for (int k = 0; k < 4; k++)
            ls->prod[k] = split_mantissa(ls->prod[k], &ls->exps);
}

static double
logsum_value(logsum_t *ls)
{
    if (ls->bad)
        return NAN;
    double total = (double)ls->exps * 0.69314718055994530942;
    for (int k = 0; k < 4; k++)
        total += log(ls->prod[k]);
    return total;
}

/* One pass over the groups, q = 2: inv's rows and sum_j G_j' M_j^{-1} G_j's upper triangle. */
HOT double
factor_q2_loop(const Py_ssize_t r, Py_ssize_t m, const double *G, const double *f0,
               const double *f1, const double *f2, const double *s, double *inv,
               double *acc, double *g0, double *g1)
{
    const double s00 = s[0], s01 = s[1], s11 = s[2], dets = s[3];
    const double t01 = 2.0 * s01;
    double *ia = inv, *ib = inv + m, *id = inv + 2 * m;
    const Py_ssize_t ldg = 2 * m;
    logsum_t ls;
    logsum_init(&ls);
    for (Py_ssize_t j = 0; j < m; j++) {
        double a0 = f0[j], a1 = f1[j], a2 = f2[j];
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
        ia[j] = a;
        ib[j] = b;
        id[j] = d;
        logsum_add(&ls, det, j);
        for (Py_ssize_t x = 0; x < r; x++) {
            g0[x] = G[x * ldg + j];
            g1[x] = G[x * ldg + m + j];
        }
        Py_ssize_t k = 0;
        for (Py_ssize_t x = 0; x < r; x++) {
            /* row x of G_j M_j^{-1}: (a g0x + b g1x, b g0x + d g1x) */
            double u0 = a * g0[x] + b * g1[x], u1 = b * g0[x] + d * g1[x];
            for (Py_ssize_t y = x; y < r; y++)
                acc[k++] += u0 * g0[y] + u1 * g1[y];
        }
    }
    return logsum_value(&ls);
}

/* The same for q = 1. */
HOT double
factor_q1_loop(const Py_ssize_t r, Py_ssize_t m, const double *G, const double *f0,
               const double *s, double *inv, double *acc, double *g0)
{
    const double s00 = s[0];
    logsum_t ls;
    logsum_init(&ls);
    for (Py_ssize_t j = 0; j < m; j++) {
        double det = 1.0 + s00 * (f0[j] * f0[j]);
        double a = 1.0 / det;
        inv[j] = a;
        logsum_add(&ls, det, j);
        for (Py_ssize_t x = 0; x < r; x++)
            g0[x] = G[x * m + j];
        Py_ssize_t k = 0;
        for (Py_ssize_t x = 0; x < r; x++) {
            double ax = a * g0[x];
            for (Py_ssize_t y = x; y < r; y++)
                acc[k++] += ax * g0[y];
        }
    }
    return logsum_value(&ls);
}

/* The loops with r a compile-time constant (1..8), the pair sums a local array. */
#define UNROLLED_Q2(R) \
    case R: { \
        double a_[R * (R + 1) / 2] = {0}, g_[2 * R]; \
        logdet = factor_q2_loop(R, m, G, f0, f1, f2, s, inv, a_, g_, g_ + R); \
        memcpy(acc, a_, sizeof a_); \
        break; }
#define UNROLLED_Q1(R) \
    case R: { \
        double a_[R * (R + 1) / 2] = {0}, g_[R]; \
        logdet = factor_q1_loop(R, m, G, f0, s, inv, a_, g_); \
        memcpy(acc, a_, sizeof a_); \
        break; }

/*
 * factor(q, Gc, f0, f1, f2, s, A, inv) -> log|L|^2 = sum_j log det M_j
 *
 * Gc   (r, q m)  [G_j0 | G_j1] for all groups, row a holding G's row a
 * f0, f1, f2 (m) the per-group roots F_j = [[f0, 0], [f1, f2]] (f1, f2 unused for q = 1)
 * s    (4)       s00, s01, s11, det(S) of S = Lambda~ Lambda~' (q = 1: s[0] = lambda^2)
 * A    (r, r)    in: sum_j E_j'E_j; out: A = in + sum_j G_j' M_j^{-1} G_j (symmetric)
 * inv  (3, m)    out: the rows a, b, d of M_j^{-1} = [[a, b], [b, d]] (q = 1: (m) rows a)
 *
 * Returns NaN where a det M_j is not positive and finite.
 */
static PyObject *
small_factor(PyObject *self, PyObject *args)
{
    int q;
    PyObject *oG, *o0, *o1, *o2, *os, *oA, *oinv;
    if (!PyArg_ParseTuple(args, "iOOOOOOO", &q, &oG, &o0, &o1, &o2, &os, &oA, &oinv))
        return NULL;
    if (q != 1 && q != 2) {
        PyErr_SetString(PyExc_ValueError, "q must be 1 or 2");
        return NULL;
    }
    Py_buffer bG, b0, b1, b2, bs, bA, binv;
    if (get_doubles(o0, &b0, 0, -1, "f0") < 0)
        return NULL;
    Py_ssize_t m = b0.len / 8;
    if (get_doubles(o1, &b1, 0, q == 2 ? m : 0, "f1") < 0)
        goto fail0;
    if (get_doubles(o2, &b2, 0, q == 2 ? m : 0, "f2") < 0)
        goto fail1;
    if (get_doubles(os, &bs, 0, q == 2 ? 4 : 1, "s") < 0)
        goto fail2;
    if (get_doubles(oA, &bA, 1, -1, "A") < 0)
        goto fail3;
    Py_ssize_t r = (Py_ssize_t)(sqrt((double)(bA.len / 8)) + 0.5);
    if (r * r != bA.len / 8) {
        PyErr_SetString(PyExc_ValueError, "A must be square");
        goto fail4;
    }
    if (get_doubles(oG, &bG, 0, r * q * m, "Gc") < 0)
        goto fail4;
    if (get_doubles(oinv, &binv, 1, (q == 2 ? 3 : 1) * m, "inv") < 0)
        goto fail5;

    const double *f0 = b0.buf, *f1 = b1.buf, *f2 = b2.buf, *s = bs.buf, *G = bG.buf;
    double *A = bA.buf, *inv = binv.buf;
    Py_ssize_t npair = r * (r + 1) / 2;
    /* the pair sums, then room for a group's rows of G (the loops for large r) */
    double *acc = PyMem_Calloc(npair + 2 * r + 1, sizeof(double));
    if (acc == NULL) {
        PyErr_NoMemory();
        goto fail6;
    }
    double logdet;
    if (q == 1) {
        switch (r) {
            UNROLLED_Q1(1) UNROLLED_Q1(2) UNROLLED_Q1(3) UNROLLED_Q1(4)
            UNROLLED_Q1(5) UNROLLED_Q1(6) UNROLLED_Q1(7) UNROLLED_Q1(8)
            default:
                logdet = factor_q1_loop(r, m, G, f0, s, inv, acc, acc + npair);
        }
    }
    else {
        switch (r) {
            UNROLLED_Q2(1) UNROLLED_Q2(2) UNROLLED_Q2(3) UNROLLED_Q2(4)
            UNROLLED_Q2(5) UNROLLED_Q2(6) UNROLLED_Q2(7) UNROLLED_Q2(8)
            default:
                logdet = factor_q2_loop(r, m, G, f0, f1, f2, s, inv, acc, acc + npair,
                                        acc + npair + r);
        }
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t x = 0; x < r; x++)
        for (Py_ssize_t y = x; y < r; y++, k++) {
            A[x * r + y] += acc[k];
            if (y != x)
                A[y * r + x] = A[x * r + y];
        }
    PyMem_Free(acc);
    PyBuffer_Release(&binv);
    PyBuffer_Release(&bG);
    PyBuffer_Release(&bA);
    PyBuffer_Release(&bs);
    PyBuffer_Release(&b2);
    PyBuffer_Release(&b1);
    PyBuffer_Release(&b0);
    return PyFloat_FromDouble(logdet);

fail6: PyBuffer_Release(&binv);
fail5: PyBuffer_Release(&bG);
fail4: PyBuffer_Release(&bA);
fail3: PyBuffer_Release(&bs);
fail2: PyBuffer_Release(&b2);
fail1: PyBuffer_Release(&b1);
fail0: PyBuffer_Release(&b0);
    return NULL;
}

/*
 * gradient(q, Gc, f0, f1, f2, inv, u, c, RX, p, out)
 *
 * The q x q matrix B of the gradient (small.py's notes), into out (q, q):
 *   B = sum_j R_j' M_j^{-1} R_j - c sum_j v_j v_j' - sum_j K_j K_j',
 *   v_j = R_j' M_j^{-1} G_j u,  K_j = R_X^{-1} G_jx' M_j^{-1} R_j  (when RX is given:
 *   (p, p) lower triangular, the first p rows of G being G_jx').
 */
static PyObject *
small_gradient(PyObject *self, PyObject *args)
{
    int q, p;
    double c;
    PyObject *oG, *o0, *o1, *o2, *oinv, *ou, *oR, *oout;
    if (!PyArg_ParseTuple(args, "iOOOOOOdOiO", &q, &oG, &o0, &o1, &o2, &oinv, &ou, &c,
                          &oR, &p, &oout))
        return NULL;
    if (q != 1 && q != 2) {
        PyErr_SetString(PyExc_ValueError, "q must be 1 or 2");
        return NULL;
    }
    int reml = oR != Py_None && p > 0;
    Py_buffer bG, b0, b1, b2, binv, bu, bR, bout;
    if (get_doubles(o0, &b0, 0, -1, "f0") < 0)
        return NULL;
    Py_ssize_t m = b0.len / 8;
    if (get_doubles(o1, &b1, 0, q == 2 ? m : 0, "f1") < 0)
        goto fail0;
    if (get_doubles(o2, &b2, 0, q == 2 ? m : 0, "f2") < 0)
        goto fail1;
    if (get_doubles(oinv, &binv, 0, (q == 2 ? 3 : 1) * m, "inv") < 0)
        goto fail2;
    if (get_doubles(ou, &bu, 0, -1, "u") < 0)
        goto fail3;
    Py_ssize_t r = bu.len / 8;
    if (p < 0 || p > r - 1) {
        PyErr_SetString(PyExc_ValueError, "p must lie in [0, r - 1]");
        goto fail4;
    }
    if (get_doubles(oG, &bG, 0, r * q * m, "Gc") < 0)
        goto fail4;
    if (reml) {
        if (get_doubles(oR, &bR, 0, (Py_ssize_t)p * p, "RX") < 0)
            goto fail5;
    }
    if (get_doubles(oout, &bout, 1, (Py_ssize_t)q * q, "out") < 0)
        goto fail6;

    const double *f0 = b0.buf, *f1 = b1.buf, *f2 = b2.buf, *inv = binv.buf;
    const double *u = bu.buf, *G = bG.buf, *RX = reml ? bR.buf : NULL;
    double *out = bout.buf;
    Py_ssize_t ldg = q * m;
    double *work = PyMem_Malloc((2 * r + 2 * (p > 0 ? p : 1)) * sizeof(double) + 8);
    if (work == NULL) {
        PyErr_NoMemory();
        goto fail7;
    }
    double *g0 = work, *g1 = work + r, *k0 = work + 2 * r, *k1 = k0 + (p > 0 ? p : 1);
    if (q == 1) {
        double t00 = 0.0, vv = 0.0, kk = 0.0;
        for (Py_ssize_t j = 0; j < m; j++) {
            double a = inv[j], f = f0[j];
            double h = 0.0;
            for (Py_ssize_t x = 0; x < r; x++) {
                g0[x] = G[x * ldg + j];
                h += u[x] * g0[x];
            }
            double v = f * (a * h);
            t00 += a * (f * f);
            vv += v * v;
            if (reml) {
                double af = a * f;
                for (Py_ssize_t x = 0; x < p; x++) {       /* k = RX^{-1} (G_jx a f) */
                    double t = g0[x] * af;
                    for (Py_ssize_t y = 0; y < x; y++)
                        t -= RX[x * p + y] * k0[y];
                    k0[x] = t / RX[x * p + x];
                    kk += k0[x] * k0[x];
                }
            }
        }
        out[0] = t00 - c * vv - kk;
    }
    else {
        const double *ia = inv, *ib = inv + m, *id = inv + 2 * m;
        double t00 = 0.0, t01 = 0.0, t11 = 0.0, v00 = 0.0, v01 = 0.0, v11 = 0.0;
        double y00 = 0.0, y01 = 0.0, y11 = 0.0;
        for (Py_ssize_t j = 0; j < m; j++) {
            double a = ia[j], b = ib[j], d = id[j];
            double a0 = f0[j], a1 = f1[j], a2 = f2[j];
            double h0 = 0.0, h1 = 0.0;
            for (Py_ssize_t x = 0; x < r; x++) {
                g0[x] = G[x * ldg + j];
                g1[x] = G[x * ldg + m + j];
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
            if (reml) {
                for (Py_ssize_t x = 0; x < p; x++) {
                    double e0 = g0[x] * a + g1[x] * b, e1 = g0[x] * b + g1[x] * d;
                    double s0 = e0 * a0, s1 = e0 * a1 + e1 * a2;    /* G_jx' M^-1 R_j */
                    for (Py_ssize_t y = 0; y < x; y++) {
                        s0 -= RX[x * p + y] * k0[y];
                        s1 -= RX[x * p + y] * k1[y];
                    }
                    k0[x] = s0 / RX[x * p + x];
                    k1[x] = s1 / RX[x * p + x];
                    y00 += k0[x] * k0[x];
                    y01 += k0[x] * k1[x];
                    y11 += k1[x] * k1[x];
                }
            }
        }
        out[0] = t00 - c * v00 - y00;
        out[1] = out[2] = t01 - c * v01 - y01;
        out[3] = t11 - c * v11 - y11;
    }
    PyMem_Free(work);
    PyBuffer_Release(&bout);
    if (reml)
        PyBuffer_Release(&bR);
    PyBuffer_Release(&bG);
    PyBuffer_Release(&bu);
    PyBuffer_Release(&binv);
    PyBuffer_Release(&b2);
    PyBuffer_Release(&b1);
    PyBuffer_Release(&b0);
    Py_RETURN_NONE;

fail7: PyBuffer_Release(&bout);
fail6: if (reml) PyBuffer_Release(&bR);
fail5: PyBuffer_Release(&bG);
fail4: PyBuffer_Release(&bu);
fail3: PyBuffer_Release(&binv);
fail2: PyBuffer_Release(&b2);
fail1: PyBuffer_Release(&b1);
fail0: PyBuffer_Release(&b0);
    return NULL;
}

static PyMethodDef methods[] = {
    {"factor", small_factor, METH_VARARGS,
     "factor(q, Gc, f0, f1, f2, s, A, inv) -> sum_j log det M_j; A += sum_j G_j' M_j^-1 G_j"},
    {"gradient", small_gradient, METH_VARARGS,
     "gradient(q, Gc, f0, f1, f2, inv, u, c, RX, p, out): the gradient's inner matrix B"},
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
