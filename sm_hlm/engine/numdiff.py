"""Numerical derivatives by Richardson extrapolation (as R's numDeriv).

Used for the observed information of the covariance parameters and for the
Satterthwaite degrees of freedom, where plain finite differences of a
deviance of order 1e4-1e7 are too noisy.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["hessian_richardson", "jacobian_richardson"]


def _steps(x: np.ndarray, d: float, eps: float) -> np.ndarray:
    zero_tol = math.sqrt(np.finfo(float).eps / 7e-7)
    return np.abs(d * x) + eps * (np.abs(x) < zero_tol)


def _richardson(approx: np.ndarray, v: float = 2.0) -> np.ndarray:
    """Richardson extrapolation of central differences at steps h, h/v, h/v^2..."""
    a = np.array(approx, dtype=float)
    r = a.shape[0]
    for m in range(1, r):
        fac = (v * v) ** m
        a = (a[1:] * fac - a[:-1]) / (fac - 1.0)
    return a[0]


def jacobian_richardson(fun: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *,
                        d: float = 1e-4, eps: float = 1e-4, r: int = 4,
                        v: float = 2.0) -> np.ndarray:
    """Jacobian of a vector function by Richardson-extrapolated central differences.

    Returns an array of shape ``fun(x).shape + (len(x),)``.

    Notes
    -----
    For each coordinate i, central differences
    D(h) = (f(x + h e_i) - f(x - h e_i)) / (2h) at h_0 = d|x_i| (eps where
    x_i is near zero) and h_0 / v^k, k < r, are combined by Richardson
    extrapolation, which removes the O(h^2), O(h^4), ... error terms
    (numDeriv's ``jacobian`` defaults).
    """
    x = np.asarray(x, dtype=float)
    h0 = _steps(x, d, eps)
    f0 = np.asarray(fun(x), dtype=float)
    out = np.empty(f0.shape + (len(x),))
    for i in range(len(x)):
        approx = []
        h = h0[i]
        for _ in range(r):
            e = np.zeros_like(x)
            e[i] = h
            approx.append((np.asarray(fun(x + e)) - np.asarray(fun(x - e))) / (2 * h))
            h /= v
        out[..., i] = _richardson(np.array(approx), v)
    return out


def hessian_richardson(fun: Callable[[np.ndarray], float], x: np.ndarray, *, d: float = 0.1,
                       eps: float = 1e-4, r: int = 4, v: float = 2.0) -> np.ndarray:
    """Hessian of a scalar function by Richardson-extrapolated differences.

    Notes
    -----
    numDeriv's ``hessian`` (``genD``) scheme: the diagonal from
    (f(x + h e_i) - 2 f(x) + f(x - h e_i)) / h^2, the off-diagonal from
    (f(x + h e_i + h e_j) - 2 f(x) + f(x - h e_i - h e_j)
    - H_ii h_i^2 - H_jj h_j^2) / (2 h_i h_j), each extrapolated over the
    steps h_0 / v^k (k < r) with h_0 = d|x| (eps near zero).
    """
    x = np.asarray(x, dtype=float)
    k = len(x)
    h0 = _steps(x, d, eps)
    f0 = float(fun(x))
    H = np.empty((k, k))
    for i in range(k):
        approx = []
        h = h0.copy()
        for _ in range(r):
            e = np.zeros(k)
            e[i] = h[i]
            approx.append((fun(x + e) - 2 * f0 + fun(x - e)) / h[i] ** 2)
            h = h / v
        H[i, i] = _richardson(np.array(approx), v)
    for i in range(k):
        for j in range(i):
            approx = []
            h = h0.copy()
            for _ in range(r):
                e = np.zeros(k)
                e[i] = h[i]
                e[j] = h[j]
                approx.append((fun(x + e) - 2 * f0 + fun(x - e) - H[i, i] * h[i] ** 2
                               - H[j, j] * h[j] ** 2) / (2 * h[i] * h[j]))
                h = h / v
            H[i, j] = H[j, i] = _richardson(np.array(approx), v)
    return H
