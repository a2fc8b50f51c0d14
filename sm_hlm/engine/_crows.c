/*
 * Compiled row loops of the construction path (sm_hlm.engine.deviance.working_stats).
 *
 * intercept_qr: the closed-form per-group QR of a random intercept (and slope)
 * with the projections G_j and the within-group residual cross product, in one
 * loop over the groups (rows sorted by group, a group's rows contiguous), where
 * the numpy form (_intercept_qr_stats) needs a dozen whole-array passes
 * (reduceat / repeat per column).  The arithmetic is the numpy form's, step by
 * step (see its notes); only the order of the sums differs.
 *
 * centred_gram: the means and the Gram matrix of the centred columns of
 * [X y] (_fixed_map), in two passes over the rows.
 *
 * constant_columns: which columns are constant and nonzero (a loop that stops at
 * a column's first differing entry).
 *
 * Arrays come in through the buffer protocol (float64; 2-d arrays with
 * contiguous rows, any row stride), so that the module builds against Python's
 * headers alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#include "_cbuffers.h"

#if defined(__GNUC__) && !defined(__clang__)
/* GCC's loop vectoriser turns these row loops (a few columns, short groups) into
 * shuffles through the stack: two to three times slower than the scalar loops. */
#pragma GCC optimize("no-tree-loop-vectorize")
#endif

#if defined(__GNUC__) || defined(__clang__)
#define INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define INLINE static __forceinline
#define restrict __restrict
#else
#define INLINE static inline
#endif


/*
 * A 2-d float64 buffer whose rows are contiguous (any row stride, e.g. the
 * transpose of a column-major block): shape in *rows, *cols, row stride (in
 * entries) in *ld.  cols >= 0: the number of columns required.
 */
static int
get_rows(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t cols, const char *name,
         Py_ssize_t *rows_out, Py_ssize_t *cols_out, Py_ssize_t *ld)
{
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != 8 || !is_double_format(view->format)) {
        PyErr_Format(PyExc_TypeError, "%s must be a float64 array", name);
        goto fail;
    }
    if (view->ndim != 2) {
        PyErr_Format(PyExc_ValueError, "%s must be 2-dimensional, not %d-dimensional", name,
                     view->ndim);
        goto fail;
    }
    Py_ssize_t nr = view->shape[0], nc = view->shape[1];
    Py_ssize_t s0 = view->strides[0], s1 = view->strides[1];
    if ((nc > 1 && s1 != 8) || (nr > 1 && (s0 % 8 != 0 || s0 / 8 < nc))) {
        PyErr_Format(PyExc_ValueError, "%s must have contiguous, non-overlapping rows", name);
        goto fail;
    }
    if (cols >= 0 && nc != cols) {
        PyErr_Format(PyExc_ValueError, "%s has %zd columns, %zd expected", name, nc, cols);
        goto fail;
    }
    *rows_out = nr;
    *cols_out = nc;
    *ld = nr > 1 ? s0 / 8 : nc;
    return 0;
fail:
    PyBuffer_Release(view);
    return -1;
}


/* The arrays and constants of one intercept_qr call. */
typedef struct {
    const long long *st;
    Py_ssize_t m, n, ldw, gld;
    double *z0, *z1;          /* Zt's rows (z1: NULL for q = 1) */
    double *W;                /* the rows of Wt after a constant first one, ldw apart */
    double *F, *G;            /* F (q, q, m) C order; G: G_j's entry (x, i) at G[x gld + i m + j] */
    double tol, sign, absc;
    int q, within;
} qr_args;

/*
 * The loop over the groups for the r columns of W that are not constant.
 *
 * Within a group the rows are visited in a few passes, each over all columns
 * at once (a short group costs a few loop exits rather than a few per column).
 * The sums run over two rows at a time into two partial sums: a loop that adds
 * into one accumulator per row waits for the previous addition, and these loops
 * are bound by that latency, not by their arithmetic.  The steps of the numpy
 * form (z centred twice, then scaled; W centred, then its projection on Q_j1
 * subtracted) are repeated where their results are needed rather than stored
 * between passes: the same roundings.
 *
 * The caller's mean, g1 (2 r each) and acc are local arrays of a constant r
 * where the call is inlined with one (the accumulators then live in registers).
 * acc (the r (r + 1) / 2 pairs x <= y of E'E) is added to.
 */
/* acc += the pairs x <= y of e e' for the row e (entries ld apart, just stored: read
 * back one by one, as packing them into a local array invites vector loads of two
 * scalar stores). */
INLINE void
add_pairs(const double *e, const Py_ssize_t ld, const Py_ssize_t r, double *restrict acc)
{
    Py_ssize_t k = 0;
    for (Py_ssize_t x = 0; x < r; x++) {
        const double ex = e[x * ld];
        for (Py_ssize_t y = x; y < r; y++, k++)
            acc[k] += ex * e[y * ld];
    }
}

INLINE void
qr_groups(const qr_args *A, const Py_ssize_t r, double *restrict mean, double *restrict g1,
          double *restrict acc)
{
    const Py_ssize_t m = A->m, n = A->n, ldw = A->ldw, gld = A->gld;
    const int q = A->q, within = A->within;
    const long long *st = A->st;
    double *restrict W = A->W, *restrict F = A->F, *restrict G = A->G;
    double *restrict z0 = A->z0, *restrict z1 = A->z1;
    const double sign = A->sign, absc = A->absc, tol = A->tol;
    double *restrict mean2 = mean + r, *restrict g2 = g1 + r;
    for (Py_ssize_t j = 0; j < m; j++) {
        const Py_ssize_t a = (Py_ssize_t)st[j], b = j + 1 < m ? (Py_ssize_t)st[j + 1] : n;
        const Py_ssize_t b2 = a + ((b - a) & ~(Py_ssize_t)1);      /* pairs of rows end */
        const double nj = (double)(b - a), root_n = sqrt(nj), sr = sign / root_n;
        F[j] = absc * root_n;
        /* the first column of Q_j: the group sums (and Z's second column's) */
        for (Py_ssize_t i = 0; i < r; i++)
            mean[i] = mean2[i] = 0.0;
        double s1 = 0.0, s1b = 0.0;
        for (Py_ssize_t t = a; t < b2; t += 2) {
            for (Py_ssize_t i = 0; i < r; i++) {
                mean[i] += W[i * ldw + t];
                mean2[i] += W[i * ldw + t + 1];
            }
            if (q == 2) {
                s1 += z1[t];
                s1b += z1[t + 1];
            }
        }
        if (b2 < b) {
            for (Py_ssize_t i = 0; i < r; i++)
                mean[i] += W[i * ldw + b2];
            if (q == 2)
                s1 += z1[b2];
        }
        s1 += s1b;
        for (Py_ssize_t i = 0; i < r; i++) {
            double sum = mean[i] + mean2[i];
            G[i * m + j] = sum * sr;
            mean[i] = sum / nj;
        }
        if (q == 2) {
            /* the second column, centred twice (Gram-Schmidt, one reorthogonalisation) */
            const double mu1 = s1 / nj;
            double s2 = 0.0, s2b = 0.0;
            for (Py_ssize_t t = a; t < b2; t += 2) {
                s2 += z1[t] - mu1;
                s2b += z1[t + 1] - mu1;
            }
            if (b2 < b)
                s2 += z1[b2] - mu1;
            s2 += s2b;
            const double mu2 = s2 / nj;
            double nk2 = 0.0, nk2b = 0.0;
            for (Py_ssize_t t = a; t < b2; t += 2) {
                double v = (z1[t] - mu1) - mu2, u = (z1[t + 1] - mu1) - mu2;
                nk2 += v * v;
                nk2b += u * u;
            }
            if (b2 < b) {
                double v = (z1[b2] - mu1) - mu2;
                nk2 += v * v;
            }
            nk2 += nk2b;
            F[2 * m + j] = (s1 + s2) * sr;                          /* F_10 */
            F[m + j] = 0.0;                                         /* F_01 */
            const double nk = sqrt(nk2);
            const int ok = nk > tol * sqrt(nk2 + s1 * s1 / nj);
            F[3 * m + j] = ok ? nk : 0.0;
            const double inv = ok ? 1.0 / nk : 0.0;
            /* Q_j1 and G_j1 = Q_j1'(W_j - 1 mean_j) */
            for (Py_ssize_t i = 0; i < r; i++)
                g1[i] = g2[i] = 0.0;
            for (Py_ssize_t t = a; t < b2; t += 2) {
                double qt = ((z1[t] - mu1) - mu2) * inv;
                double qu = ((z1[t + 1] - mu1) - mu2) * inv;
                z1[t] = qt;
                z1[t + 1] = qu;
                for (Py_ssize_t i = 0; i < r; i++) {
                    g1[i] += (W[i * ldw + t] - mean[i]) * qt;
                    g2[i] += (W[i * ldw + t + 1] - mean[i]) * qu;
                }
            }
            if (b2 < b) {
                double qt = ((z1[b2] - mu1) - mu2) * inv;
                z1[b2] = qt;
                for (Py_ssize_t i = 0; i < r; i++)
                    g1[i] += (W[i * ldw + b2] - mean[i]) * qt;
            }
            for (Py_ssize_t i = 0; i < r; i++) {
                g1[i] += g2[i];
                G[gld + i * m + j] = g1[i];
            }
            /* Q_j0 and the residuals E_j = W_j - 1 mean_j - Q_j1 G_j1 (in Wt) */
            for (Py_ssize_t t = a; t < b; t++) {
                const double qt = z1[t];
                z0[t] = sr;
                for (Py_ssize_t i = 0; i < r; i++)
                    W[i * ldw + t] = (W[i * ldw + t] - mean[i]) - g1[i] * qt;
                if (within)
                    add_pairs(W + t, ldw, r, acc);
            }
        }
        else {
            for (Py_ssize_t t = a; t < b; t++) {
                z0[t] = sr;
                for (Py_ssize_t i = 0; i < r; i++)
                    W[i * ldw + t] -= mean[i];
                if (within)
                    add_pairs(W + t, ldw, r, acc);
            }
        }
    }
}

/* qr_groups with a constant r (local accumulators), adding its pairs to out. */
#define QR_FIXED(R)                                                                  \
    static void qr_groups_##R(const qr_args *A, double *out)                         \
    {                                                                                \
        double mean[2 * (R)], g1[2 * (R)], acc[(R) * ((R) + 1) / 2];                \
        for (int k = 0; k < (R) * ((R) + 1) / 2; k++)                                \
            acc[k] = 0.0;                                                            \
        qr_groups(A, R, mean, g1, acc);                                              \
        for (int k = 0; k < (R) * ((R) + 1) / 2; k++)                                \
            out[k] += acc[k];                                                        \
    }
QR_FIXED(1)
QR_FIXED(2)
QR_FIXED(3)
QR_FIXED(4)
QR_FIXED(5)
QR_FIXED(6)
QR_FIXED(7)
QR_FIXED(8)

/*
 * intercept_qr(Zt, Wt, starts, tol, const_first, F, G, within)
 *
 * Zt     (q, n)     q = 1 or 2 rows of Z' (Z's columns), Zt[0] constant and nonzero;
 *                   overwritten by Q'.
 * Wt     (r, n)     the rows of W' (W's columns); overwritten by E' (the within-group
 *                   residuals; zero in row 0 with const_first).
 * starts (m,)       int64, first row of each group (0 first, increasing).
 * tol               the aliasing tolerance of Z's second column.
 * const_first       whether Wt[0] is constant (its residuals zero, its projections
 *                   closed-form).
 * F      (q, q, m)  out (C order): the per-group roots, F_j = R_j'.
 * G      (q, r, m)  out (C order): G_j = Q_j'W_j.
 * within (r, r)     out: sum_j E_j'E_j, or None (then only E' is formed, in Wt).
 */
static PyObject *
crows_intercept_qr(PyObject *self, PyObject *args)
{
    PyObject *oZ, *oW, *ost, *oF, *oG, *oE;
    double tol;
    int const_first;
    if (!PyArg_ParseTuple(args, "OOOdpOOO", &oZ, &oW, &ost, &tol, &const_first, &oF, &oG, &oE))
        return NULL;
    Py_buffer bZ, bW, bst, bF, bG, bE;
    Py_ssize_t q, n, ldz, r, ldw, rows;
    if (get_rows(oZ, &bZ, 1, -1, "Zt", &q, &n, &ldz) < 0)
        return NULL;
    if (q != 1 && q != 2) {
        PyErr_Format(PyExc_ValueError, "Zt must have 1 or 2 rows, not %zd", q);
        goto fail0;
    }
    if (get_rows(oW, &bW, 1, n, "Wt", &r, &rows, &ldw) < 0)
        goto fail0;
    if (get_starts(ost, &bst, n) < 0)
        goto fail1;
    Py_ssize_t m = bst.len / 8;
    if (get_doubles(oF, &bF, 1, q * q * m, "F") < 0)
        goto fail2;
    if (get_doubles(oG, &bG, 1, q * r * m, "G") < 0)
        goto fail3;
    int want_within = oE != Py_None;
    if (want_within && get_doubles(oE, &bE, 1, r * r, "within") < 0)
        goto fail4;
    if (const_first && r == 0) {
        PyErr_SetString(PyExc_ValueError, "const_first needs a column of W");
        goto fail5;
    }
    if (m > 0 && ((double *)bZ.buf)[0] == 0.0) {
        PyErr_SetString(PyExc_ValueError, "Z's first column must be constant and nonzero");
        goto fail5;
    }

    /* the columns after a constant first one, and their pairs x <= y */
    const Py_ssize_t first = const_first ? 1 : 0, rr = r - first, npair = rr * (rr + 1) / 2;
    double *work = PyMem_Calloc(4 * (rr > 0 ? rr : 1) + (npair > 0 ? npair : 1),
                                sizeof(double));
    if (work == NULL) {
        PyErr_NoMemory();
        goto fail5;
    }
    double *acc = work + 4 * (rr > 0 ? rr : 1);
    const long long *st = bst.buf;
    double *Z = bZ.buf, *W = bW.buf, *F = bF.buf, *G = bG.buf;
    const double c = m > 0 ? Z[0] : 1.0, sign = c > 0 ? 1.0 : -1.0;
    qr_args args_ = {
        .st = st, .m = m, .n = n, .ldw = ldw, .gld = r * m, .z0 = Z,
        .z1 = q == 2 ? Z + ldz : NULL, .W = W + first * ldw, .F = F, .G = G + first * m,
        .tol = tol, .sign = sign, .absc = fabs(c), .q = (int)q, .within = want_within,
    };
    Py_BEGIN_ALLOW_THREADS
    if (const_first) {
        /* W's constant column: projection s c_w sqrt(n_j) on Q_j0, residuals zero */
        const double w00 = W[0];
        for (Py_ssize_t j = 0; j < m; j++) {
            const Py_ssize_t a = (Py_ssize_t)st[j], b = j + 1 < m ? (Py_ssize_t)st[j + 1] : n;
            G[j] = (sign * w00) * sqrt((double)(b - a));
            if (q == 2)
                G[r * m + j] = 0.0;
        }
        memset(W, 0, n * sizeof(double));
    }
    switch (rr) {             /* a constant r: accumulators in registers */
    case 1: qr_groups_1(&args_, acc); break;
    case 2: qr_groups_2(&args_, acc); break;
    case 3: qr_groups_3(&args_, acc); break;
    case 4: qr_groups_4(&args_, acc); break;
    case 5: qr_groups_5(&args_, acc); break;
    case 6: qr_groups_6(&args_, acc); break;
    case 7: qr_groups_7(&args_, acc); break;
    case 8: qr_groups_8(&args_, acc); break;
    default: qr_groups(&args_, rr, work, work + 2 * rr, acc); break;
    }
    Py_END_ALLOW_THREADS

    if (want_within) {
        double *E = bE.buf;
        Py_ssize_t k = 0;
        for (Py_ssize_t x = 0; x < r; x++)
            for (Py_ssize_t y = x; y < r; y++)
                E[x * r + y] = E[y * r + x] = x >= first ? acc[k++] : 0.0;
        PyBuffer_Release(&bE);
    }
    PyMem_Free(work);
    PyBuffer_Release(&bG);
    PyBuffer_Release(&bF);
    PyBuffer_Release(&bst);
    PyBuffer_Release(&bW);
    PyBuffer_Release(&bZ);
    Py_RETURN_NONE;

fail5: if (want_within) PyBuffer_Release(&bE);
fail4: PyBuffer_Release(&bG);
fail3: PyBuffer_Release(&bF);
fail2: PyBuffer_Release(&bst);
fail1: PyBuffer_Release(&bW);
fail0: PyBuffer_Release(&bZ);
    return NULL;
}

/*
 * centred_gram(Xt, y, j0, mu, gram)
 *
 * Xt    (p, n)        the rows of X' (X's columns); y (n,).
 * j0                  X's centring column (constant), or -1: the columns after it and
 *                     y are centred by their means, the others not.
 * mu    (p + 1,)      out: the means subtracted (zero where not centred).
 * gram  (p + 1, p+1)  out: C'C with C = [X y] - 1 mu'.
 *
 * Two passes over the rows (the means, then the products of the centred row with
 * itself), summed in blocks of CG_BLOCK rows into partial sums, and the blocks'
 * sums added with compensation (Neumaier): the rounding error of a sum of n terms
 * grows with CG_BLOCK, not n.  p + 1 <= CG_MAX_K.
 */
#define CG_MAX_K 6
#define CG_BLOCK 256

/* s + c += x, compensated (Neumaier): c collects the rounding errors of the sums. */
INLINE void
add_compensated(double *s, double *c, const double x)
{
    const double t = *s + x;
    *c += fabs(*s) >= fabs(x) ? (*s - t) + x : (x - t) + *s;
    *s = t;
}

INLINE void
cg_rows(const double *restrict X, Py_ssize_t ldx, const double *restrict y, Py_ssize_t n,
        const Py_ssize_t k, const double *restrict mu, double *restrict total)
{
    const Py_ssize_t p = k - 1;
    double part[CG_MAX_K * (CG_MAX_K + 1) / 2], comp[CG_MAX_K * (CG_MAX_K + 1) / 2];
    const Py_ssize_t npair = k * (k + 1) / 2;
    for (Py_ssize_t u = 0; u < npair; u++)
        comp[u] = 0.0;
    for (Py_ssize_t a = 0; a < n; a += CG_BLOCK) {
        const Py_ssize_t b = a + CG_BLOCK < n ? a + CG_BLOCK : n;
        for (Py_ssize_t u = 0; u < npair; u++)
            part[u] = 0.0;
        for (Py_ssize_t t = a; t < b; t++) {
            double c[CG_MAX_K];
            for (Py_ssize_t i = 0; i < p; i++)
                c[i] = X[i * ldx + t] - mu[i];
            c[p] = y[t] - mu[p];
            Py_ssize_t u = 0;
            for (Py_ssize_t x = 0; x < k; x++)
                for (Py_ssize_t z = x; z < k; z++, u++)
                    part[u] += c[x] * c[z];
        }
        for (Py_ssize_t u = 0; u < npair; u++)
            add_compensated(total + u, comp + u, part[u]);
    }
    for (Py_ssize_t u = 0; u < npair; u++)
        total[u] += comp[u];
}

#define CG_FIXED(K)                                                                  \
    static void cg_rows_##K(const double *X, Py_ssize_t ldx, const double *y,         \
                            Py_ssize_t n, const double *mu, double *total)            \
    {                                                                                \
        cg_rows(X, ldx, y, n, K, mu, total);                                         \
    }
CG_FIXED(1)
CG_FIXED(2)
CG_FIXED(3)
CG_FIXED(4)
CG_FIXED(5)
CG_FIXED(6)

static PyObject *
crows_centred_gram(PyObject *self, PyObject *args)
{
    PyObject *oX, *oy, *omu, *og;
    Py_ssize_t j0;
    if (!PyArg_ParseTuple(args, "OOnOO", &oX, &oy, &j0, &omu, &og))
        return NULL;
    Py_buffer bX, by, bmu, bg;
    Py_ssize_t p, n, ldx;
    if (get_rows(oX, &bX, 0, -1, "Xt", &p, &n, &ldx) < 0)
        return NULL;
    const Py_ssize_t k = p + 1;
    if (k > CG_MAX_K) {
        PyErr_Format(PyExc_ValueError, "centred_gram takes at most %d columns of X, not %zd",
                     CG_MAX_K - 1, p);
        goto fail0;
    }
    if (j0 < -1 || j0 >= p) {
        PyErr_Format(PyExc_ValueError, "j0 must lie in [-1, %zd), not %zd", p, j0);
        goto fail0;
    }
    if (get_doubles(oy, &by, 0, n, "y") < 0)
        goto fail0;
    if (get_doubles(omu, &bmu, 1, k, "mu") < 0)
        goto fail1;
    if (get_doubles(og, &bg, 1, k * k, "gram") < 0)
        goto fail2;
    const double *X = bX.buf, *y = by.buf;
    double *mu = bmu.buf, *gram = bg.buf;
    double total[CG_MAX_K * (CG_MAX_K + 1) / 2] = {0.0};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < k; i++)
        mu[i] = 0.0;
    if (j0 >= 0 && n > 0) {
        /* the means of the columns after j0 and of y, in blocks */
        double sum[CG_MAX_K] = {0.0}, comp[CG_MAX_K] = {0.0};
        for (Py_ssize_t a = 0; a < n; a += CG_BLOCK) {
            const Py_ssize_t b = a + CG_BLOCK < n ? a + CG_BLOCK : n;
            for (Py_ssize_t i = j0 + 1; i < k; i++) {
                const double *col = i < p ? X + i * ldx : y;
                double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
                Py_ssize_t t = a;
                for (; t + 4 <= b; t += 4) {
                    s0 += col[t];
                    s1 += col[t + 1];
                    s2 += col[t + 2];
                    s3 += col[t + 3];
                }
                for (; t < b; t++)
                    s0 += col[t];
                add_compensated(sum + i, comp + i, (s0 + s1) + (s2 + s3));
            }
        }
        for (Py_ssize_t i = j0 + 1; i < k; i++)
            mu[i] = (sum[i] + comp[i]) / (double)n;
    }
    switch (k) {
    case 1: cg_rows_1(X, ldx, y, n, mu, total); break;
    case 2: cg_rows_2(X, ldx, y, n, mu, total); break;
    case 3: cg_rows_3(X, ldx, y, n, mu, total); break;
    case 4: cg_rows_4(X, ldx, y, n, mu, total); break;
    case 5: cg_rows_5(X, ldx, y, n, mu, total); break;
    default: cg_rows_6(X, ldx, y, n, mu, total); break;
    }
    Py_ssize_t u = 0;
    for (Py_ssize_t x = 0; x < k; x++)
        for (Py_ssize_t z = x; z < k; z++, u++)
            gram[x * k + z] = gram[z * k + x] = total[u];
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&bg);
    PyBuffer_Release(&bmu);
    PyBuffer_Release(&by);
    PyBuffer_Release(&bX);
    Py_RETURN_NONE;

fail2: PyBuffer_Release(&bmu);
fail1: PyBuffer_Release(&by);
fail0: PyBuffer_Release(&bX);
    return NULL;
}

/*
 * constant_columns(At, out)
 *
 * At   (k, n)  the rows of A' (A's columns).
 * out  (k,)    out (bool, one byte each): whether column i is constant and nonzero
 *              (n > 0, A[0, i] != 0 and every entry equal to it; NaN is never equal).
 *
 * A varying column usually differs in its first few rows: the loop stops there.
 */
static PyObject *
crows_constant_columns(PyObject *self, PyObject *args)
{
    PyObject *oA, *oout;
    if (!PyArg_ParseTuple(args, "OO", &oA, &oout))
        return NULL;
    Py_buffer bA, bout;
    Py_ssize_t k, n, lda;
    if (get_rows(oA, &bA, 0, -1, "At", &k, &n, &lda) < 0)
        return NULL;
    if (PyObject_GetBuffer(oout, &bout, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        goto fail0;
    if (bout.itemsize != 1 || bout.format == NULL || strcmp(bout.format, "?") != 0) {
        PyErr_SetString(PyExc_TypeError, "out must be a bool array");
        goto fail1;
    }
    if (bout.len != k) {
        PyErr_Format(PyExc_ValueError, "out has %zd entries, %zd expected", bout.len, k);
        goto fail1;
    }
    const double *A = bA.buf;
    unsigned char *out = bout.buf;
    for (Py_ssize_t i = 0; i < k; i++) {
        const double *x = A + i * lda;
        int constant = n > 0 && x[0] != 0.0;
        if (constant) {
            const double x0 = x[0];
            for (Py_ssize_t t = 0; t < n; t++)          /* from 0: a NaN is not constant */
                if (x[t] != x0) {
                    constant = 0;
                    break;
                }
        }
        out[i] = (unsigned char)constant;
    }
    PyBuffer_Release(&bout);
    PyBuffer_Release(&bA);
    Py_RETURN_NONE;

fail1: PyBuffer_Release(&bout);
fail0: PyBuffer_Release(&bA);
    return NULL;
}

static PyMethodDef methods[] = {
    {"intercept_qr", crows_intercept_qr, METH_VARARGS,
     "intercept_qr(Zt, Wt, starts, tol, const_first, F, G, within): the closed-form "
     "per-group QR of a constant first column of Z (and a second), G_j and sum_j E_j'E_j"},
    {"centred_gram", crows_centred_gram, METH_VARARGS,
     "centred_gram(Xt, y, j0, mu, gram): the means of [X y]'s columns after j0 (into mu) "
     "and the Gram matrix of the centred columns"},
    {"constant_columns", crows_constant_columns, METH_VARARGS,
     "constant_columns(At, out): whether each column of A is constant and nonzero"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_crows",
    "Compiled row loops of sm_hlm.engine.deviance.working_stats (one pass over the groups).",
    -1, methods
};

PyMODINIT_FUNC
PyInit__crows(void)
{
    return PyModule_Create(&module);
}
