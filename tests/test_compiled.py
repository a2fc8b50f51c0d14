"""The optional compiled kernels (sm_hlm.engine.compiled) against their numpy forms.

The numpy forms stay in the package (used where an extension was not built, or
with SM_HLM_NUMPY_KERNELS set); each compiled loop must give the same numbers
up to rounding.  CI sets SM_HLM_REQUIRE_COMPILED=1, so that an extension that
failed to build (the build is optional) fails there instead of passing on the
numpy forms.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import sm_hlm.engine.small as small
from sm_hlm import HLM
from sm_hlm.engine import compiled
from sm_hlm.simulate import simulate_nels

csmall = compiled.csmall()
needs_csmall = pytest.mark.skipif(
    csmall is None, reason=f"the compiled small kernel is {compiled.status()['_csmall']}")


@pytest.mark.parametrize("name", sorted(compiled.status()))
def test_compiled_kernels_in_use_where_required(name) -> None:
    """With SM_HLM_REQUIRE_COMPILED set (CI), every extension is built and in use."""
    status = compiled.status()[name]
    assert status in ("in use", "disabled", "not built")
    if os.environ.get("SM_HLM_REQUIRE_COMPILED", "") not in ("", "0"):
        assert status == "in use", f"{name} is {status}"


def _kernel_inputs(q: int, r: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    F = np.zeros((q, q, m))
    F[0, 0] = rng.uniform(0.5, 4.0, m)
    if q == 2:
        F[1, 0] = rng.normal(size=m)
        F[1, 1] = rng.uniform(0.0, 3.0, m)
        F[1, 1, ::7] = 0.0                   # aliased slopes: a group with one distinct x
    Gt = rng.normal(size=(r, q, m))
    W = rng.normal(size=(r + 3, r))
    return F, Gt, W.T @ W


def _both(F, Gt, within, monkeypatch):
    monkeypatch.setattr(small, "COMPILED_MAX_R", 0)
    numpy_form = small.SmallKernel(F, Gt, within)
    monkeypatch.undo()
    compiled_form = small.SmallKernel(F, Gt, within)
    assert not numpy_form.compiled and compiled_form.compiled
    return compiled_form, numpy_form


@needs_csmall
@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("r", [1, 2, 5, 8, 9, 12])     # unrolled (<= 8) and general loops
@pytest.mark.parametrize("m", [1, 63, 64, 65, 700])    # the log-sum renormalises every 64
def test_compiled_factor_and_gradient_match_numpy(q, r, m, monkeypatch) -> None:
    F, Gt, within = _kernel_inputs(q, r, m, seed=100 * q + r + m)
    kc, kn = _both(F, Gt, within, monkeypatch)
    rng = np.random.default_rng(r + m)
    for lam in (np.tril(rng.normal(size=(q, q))), 0.01 * np.eye(q), 30.0 * np.eye(q)):
        Rc, ldc, invc = kc.factor(lam)
        Rn, ldn, invn = kn.factor(lam)
        np.testing.assert_allclose(Rc, Rn, rtol=1e-12, atol=1e-13 * np.abs(Rn).max())
        assert ldc == pytest.approx(ldn, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(invc, invn, rtol=1e-13, atol=1e-15)
        p = r - 1
        for reml in (False, True):
            gc = kc.gradient_inner(Rc, invc, p=p, dof=50.0, pwrss=2.5, reml=reml)
            gn = kn.gradient_inner(Rn, invn, p=p, dof=50.0, pwrss=2.5, reml=reml)
            np.testing.assert_allclose(gc, gn, rtol=1e-10, atol=1e-11 * np.abs(gn).max())


@needs_csmall
def test_compiled_log_determinant_over_a_wide_range(monkeypatch) -> None:
    """sum_j log det M_j from mantissa products and exponent counts, for det M_j from
    1 + 1e-18 to about 1e30 (the exponent bookkeeping, no overflow or underflow)."""
    q, r, m = 2, 3, 5000
    F, Gt, within = _kernel_inputs(q, r, m, seed=5)
    F[0, 0] = F[1, 1] = np.logspace(-9, 7, m)
    F[1, 0] = 0.0
    kc, _ = _both(F, Gt, within, monkeypatch)
    lam = np.array([[1.0, 0.0], [0.5, 2.0]])
    _, logdet, inv = kc.factor(lam)
    E = kc._entries(lam)
    assert E[3].min() < 1 + 1e-15 and E[3].max() > 1e28 and np.all(E[3] >= 1.0)
    assert logdet == pytest.approx(float(np.sum(np.log(E[3]))), rel=1e-13)


@needs_csmall
def test_compiled_factor_undefined_where_not_finite(monkeypatch) -> None:
    F, Gt, within = _kernel_inputs(2, 4, 30, seed=6)
    kc, kn = _both(F, Gt, within, monkeypatch)
    for lam in (np.array([[np.nan, 0.0], [0.0, 1.0]]), np.array([[1e200, 0.0], [0.0, 1e200]])):
        assert kc.factor(lam) is None
        assert kn.factor(lam) is None


@needs_csmall
def test_compiled_loops_reject_bad_buffers() -> None:
    m, r = 4, 3
    fp = np.ones((m, 3))
    gp = np.ones((m, 2 * r))
    s = np.array([1.0, 0.0, 1.0, 1.0])
    A, inv = np.eye(r), np.empty((m, 3))
    assert csmall.factor(2, gp, fp, s, A, inv)[1] == 0        # well formed
    with pytest.raises(TypeError, match="fp must be a float64 array"):
        csmall.factor(2, gp, fp.astype(np.float32), s, np.eye(r), inv)
    with pytest.raises(ValueError, match="gp has 12 entries, 24 expected"):
        csmall.factor(2, gp[:2].copy(), fp, s, np.eye(r), inv)
    with pytest.raises(ValueError, match="fp must hold 3 numbers per group"):
        csmall.factor(2, gp, np.ones(7), s, np.eye(r), inv)
    with pytest.raises(ValueError, match="A must be square"):
        csmall.factor(2, gp, fp, s, np.zeros(5), inv)
    with pytest.raises(ValueError, match="q must be 1 or 2"):
        csmall.factor(3, gp, fp, s, np.eye(r), inv)
    with pytest.raises(ValueError):                           # not contiguous
        csmall.factor(2, np.ones((m, 4 * r))[:, ::2], fp, s, np.eye(r), inv)
    A = np.eye(r)
    A.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):        # an output must be writable
        csmall.factor(2, gp, fp, s, A, inv)
    out = np.empty((2, 2))
    with pytest.raises(ValueError, match="R must be square"):
        csmall.gradient(2, gp, fp, inv, np.ones(r), 1.0, True, out)
    with pytest.raises(ValueError, match="gp has 24 entries, 32 expected"):
        csmall.gradient(2, gp, fp, inv, np.eye(r + 1), 1.0, True, out)
    # not positive definite: the leading minor that fails
    bad = np.diag([1.0, -1.0, 1.0])
    assert csmall.factor(2, np.zeros((m, 2 * r)), fp, s, bad, inv)[1] == 2


@needs_csmall
@pytest.mark.parametrize("formula", ["mscore ~ flp*ses + (ses|school)",
                                     "mscore ~ flp + (1|school)",
                                     "mscore ~ 0 + ses + (ses|school)"])
@pytest.mark.parametrize("reml", [False, True])
def test_fits_with_compiled_and_numpy_kernels_agree(formula, reml, monkeypatch) -> None:
    data = simulate_nels(n_schools=120, seed=31)
    fit_c = HLM.from_formula(formula, data).fit(reml=reml)
    monkeypatch.setattr(small, "COMPILED_MAX_R", 0)
    fit_n = HLM.from_formula(formula, data).fit(reml=reml)
    assert fit_c.llf == pytest.approx(fit_n.llf, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(fit_c.params, fit_n.params, rtol=1e-8, atol=1e-10)
    k = fit_c.k_fe
    np.testing.assert_allclose(fit_c.bse[:k], fit_n.bse[:k], rtol=1e-8)
    # the variance parameters' standard errors come from a finite-difference Hessian
    # (steps ~1e-4) at optima that agree to ~1e-8: agreement to ~1e-5 is all it carries
    np.testing.assert_allclose(fit_c.bse[k:], fit_n.bse[k:], rtol=1e-5)
    assert fit_c.converged and fit_n.converged


@needs_csmall
def test_compiled_quadratic_rejects_bad_starts() -> None:
    n, m = 10, 3
    r, Qt, F, lam = np.ones(n), np.ones((2, n)), np.ones((2, 2, m)), np.eye(2)
    csmall.quadratic(2, r, Qt, np.array([0, 4, 7]), F, lam)          # well formed
    for bad, message in (([1, 4, 7], "starts must begin at row 0"),
                         ([0, 7, 4], "starts must be strictly increasing"),
                         ([0, 4, 11], "the last group starts at row 11, beyond the 10 rows")):
        with pytest.raises(ValueError, match=message):
            csmall.quadratic(2, r, Qt, np.array(bad), F, lam)
    with pytest.raises(ValueError, match="starts has 2 entries, 3 groups in F"):
        csmall.quadratic(2, r, Qt, np.array([0, 4]), F, lam)
    with pytest.raises(TypeError, match="starts must be an int64 array"):
        csmall.quadratic(2, r, Qt, np.array([0.0, 4.0, 7.0]), F, lam)
    with pytest.raises(ValueError, match="Qt has 20 entries, 10 expected"):
        csmall.quadratic(1, r, Qt, np.array([0, 4, 7]), np.ones(m), np.eye(1))


@needs_csmall
def test_compiled_blups_reject_bad_buffers() -> None:
    m, r = 4, 3
    gp, fp, u = np.ones((m, 2 * r)), np.ones((m, 3)), np.ones(r)
    lam, TL = np.eye(2), np.eye(2)
    b, cov = np.empty((m, 2)), np.empty((2, 2, m))
    csmall.blups(2, gp, fp, u, lam, TL, 1.0, b, cov)               # well formed
    assert np.all(np.isfinite(b)) and np.all(cov[0, 1] == cov[1, 0])
    with pytest.raises(ValueError, match="cov has 12 entries, 16 expected"):
        csmall.blups(2, gp, fp, u, lam, TL, 1.0, b, np.empty((3, m)))
    with pytest.raises(ValueError, match="TL has 1 entries, 4 expected"):
        csmall.blups(2, gp, fp, u, lam, np.ones(1), 1.0, b, cov)
