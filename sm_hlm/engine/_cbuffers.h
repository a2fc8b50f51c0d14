/*
 * Buffer-protocol helpers shared by sm_hlm's compiled kernels (_csmall.c, _crows.c):
 * checked access to float64 vectors and to the group starts, with errors that name
 * the argument.  Python's headers only (no numpy C API).
 */
#ifndef SM_HLM_CBUFFERS_H
#define SM_HLM_CBUFFERS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static int
is_double_format(const char *f)
{
    return f != NULL && (strcmp(f, "d") == 0 || strcmp(f, "<d") == 0 || strcmp(f, "=d") == 0);
}

/* A C-contiguous float64 buffer of exactly `len` entries (len < 0: any). */
static int
get_doubles(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t len, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != 8 || !is_double_format(view->format)) {
        PyErr_Format(PyExc_TypeError, "%s must be a float64 array", name);
        PyBuffer_Release(view);
        return -1;
    }
    if (len >= 0 && view->len / 8 != len) {
        PyErr_Format(PyExc_ValueError, "%s has %zd entries, %zd expected", name,
                     view->len / 8, len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The group starts: a contiguous int64 vector, 0 first, strictly increasing, below n. */
static int
get_starts(PyObject *obj, Py_buffer *view, Py_ssize_t n)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    const char *f = view->format, *g = f;
    if (g != NULL && (g[0] == '<' || g[0] == '=' || g[0] == '@'))
        g++;
    if (view->itemsize != 8 || g == NULL || !((g[0] == 'l' || g[0] == 'q') && g[1] == '\0')) {
        PyErr_SetString(PyExc_TypeError, "starts must be an int64 array");
        PyBuffer_Release(view);
        return -1;
    }
    const long long *s = view->buf;
    Py_ssize_t m = view->len / 8;
    if (m == 0 && n != 0) {
        PyErr_SetString(PyExc_ValueError, "starts is empty but there are rows");
        goto fail;
    }
    if (m > 0 && s[0] != 0) {
        PyErr_Format(PyExc_ValueError, "starts must begin at row 0, not %lld", s[0]);
        goto fail;
    }
    for (Py_ssize_t j = 1; j < m; j++)
        if (s[j] <= s[j - 1]) {
            PyErr_Format(PyExc_ValueError,
                         "starts must be strictly increasing (group %zd starts at row %lld, "
                         "after row %lld)", j, s[j], s[j - 1]);
            goto fail;
        }
    if (m > 0 && s[m - 1] >= n) {
        PyErr_Format(PyExc_ValueError, "the last group starts at row %lld, beyond the %zd rows",
                     s[m - 1], n);
        goto fail;
    }
    return 0;
fail:
    PyBuffer_Release(view);
    return -1;
}

/* Buffers taken one after another and released together (a function's arguments). */
typedef struct {
    Py_buffer view[12];
    int n;
} buffers_t;

static inline void
release_buffers(buffers_t *b)
{
    while (b->n > 0)
        PyBuffer_Release(&b->view[--b->n]);
}

/* get_doubles onto the stack b: the data, or NULL with an error set; the number of
 * entries in *got when got is not NULL. */
static inline double *
take_doubles(buffers_t *b, PyObject *obj, int writable, Py_ssize_t len, const char *name,
             Py_ssize_t *got)
{
    Py_buffer *v = &b->view[b->n];
    if (b->n >= (int)(sizeof b->view / sizeof b->view[0])) {
        PyErr_SetString(PyExc_RuntimeError, "too many buffers");
        return NULL;
    }
    if (get_doubles(obj, v, writable, len, name) < 0)
        return NULL;
    b->n++;
    if (got != NULL)
        *got = v->len / 8;
    return v->buf;
}

/* get_starts onto the stack b: the starts, or NULL with an error set; their number in *m. */
static inline const long long *
take_starts(buffers_t *b, PyObject *obj, Py_ssize_t n, Py_ssize_t *m)
{
    Py_buffer *v = &b->view[b->n];
    if (b->n >= (int)(sizeof b->view / sizeof b->view[0])) {
        PyErr_SetString(PyExc_RuntimeError, "too many buffers");
        return NULL;
    }
    if (get_starts(obj, v, n) < 0)
        return NULL;
    b->n++;
    *m = v->len / 8;
    return v->buf;
}

#endif
