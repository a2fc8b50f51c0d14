"""lme4's toolbox on a fitted model: ``refit``, ``simulate`` and ``drop1``.

* :func:`refit` -- the same model (designs, groups, random and residual
  structure, REML or ML) fitted to a new response (lme4's ``refit``);
* :func:`simulate` -- responses drawn from the fitted model (lme4's
  ``simulate``): new random effects and errors for every simulation, or only
  new errors given the BLUPs;
* :func:`drop1` -- for every fixed-effects term that can be dropped
  respecting marginality, the likelihood-ratio test of dropping it (lme4's
  ``drop1(fit, test = "Chisq")``) or the F test with Satterthwaite df
  (lmerTest's ``drop1``).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from .inference_base import refit_response
from .terms import droppable_terms, fixed_terms

if TYPE_CHECKING:
    from .model import HLM
    from .results import HLMResults

__all__ = ["refit", "simulate", "drop1", "model_with_fixed_columns"]

_FORMULA_ATTRS = ("formula", "parsed_formula", "fixed_design_info", "re_specs", "levels",
                  "row_index")


def _unwrap(results: Any) -> "HLMResults":
    return getattr(results, "_results", results)


def model_with_fixed_columns(model: "HLM", keep: np.ndarray | None = None,
                             endog: np.ndarray | None = None) -> "HLM":
    """A new model with the same random part, groups and residual structure.

    ``keep``: the fixed-effects columns to keep (all by default); ``endog``:
    a new response (the model's by default).  Formula information (formula,
    designs for new data) is carried over when all columns are kept.
    """
    from .crosslevel import Level2InRandomWarning
    HLM = type(model)        # the model's own class (no import of the model layer)

    if model.exog is None:
        raise ValueError("the data were removed (remove_data()): refitting needs them")
    cols = np.arange(model.k_fe) if keep is None else np.asarray(keep)
    names = [str(model.exog_names[i]) for i in cols]
    labels = model.data.row_labels
    index = labels if labels is not None else pd.RangeIndex(len(model.endog))
    y = pd.Series(model.endog if endog is None else endog, index=index,
                  name=str(model.endog_names))
    X = pd.DataFrame(model.exog[:, cols], index=index, columns=names)
    Z = pd.DataFrame(model.exog_re, index=index, columns=list(model.exog_re_names))
    g = pd.Series(np.asarray(model.groups), index=index, name=model.group_name)
    with warnings.catch_warnings():
        # the warning about group-level variables was given with the original model
        warnings.simplefilter("ignore", Level2InRandomWarning)
        survey = getattr(model, "survey", None)
        new = HLM(y, X, g, Z, re_terms=list(model.re_design.terms), missing="none",
                  residual=model.residual, weights=getattr(model, "weights", None),
                  survey_weights=None if survey is None else [
                      pd.Series(a, name=nm) for a, nm in zip(survey.raw, survey.names)],
                  weight_scaling=getattr(model, "weight_scaling", None) or "size")
    if keep is None:
        for a in _FORMULA_ATTRS:
            if hasattr(model, a):
                setattr(new, a, getattr(model, a))
    return new


def refit(results: Any, endog: Any) -> Any:
    """The model of ``results`` fitted to the response ``endog`` (lme4's ``refit``).

    Parameters
    ----------
    endog : array_like, shape (nobs,)
        New response values in the row order of the fitted data (e.g. one
        column of :func:`simulate`).

    Returns
    -------
    HLMResultsWrapper
        Fitted by REML or ML as ``results`` was, started at its theta.
    """
    res = _unwrap(results)
    model = res.model
    y = refit_response(endog, int(res.nobs))
    new = model_with_fixed_columns(model, endog=y)
    start = np.concatenate([np.asarray(res.theta, float),
                            np.asarray(res.fit_result.residual_free, float)])
    return new.fit(start_params=start, reml=bool(res.reml))


def _psd_factor(S: np.ndarray) -> np.ndarray:
    """F with F F' = S for a positive semi-definite S (singular fits included)."""
    w, V = np.linalg.eigh(S)
    return V * np.sqrt(np.clip(w, 0.0, None))


def simulate(results: Any, nsim: int = 1, *, seed: Any = None,
             use_u: bool = False) -> pd.DataFrame:
    """Responses simulated from the fitted model (lme4's ``simulate``).

    Parameters
    ----------
    nsim
        Number of simulated responses.
    seed
        Seed or ``numpy.random.Generator``; the same seed gives the same
        draws.
    use_u
        False (lme4's default): new random effects b_j ~ N(0, Psi) for every
        simulation; True: the random effects are held at their BLUPs (lme4's
        ``use.u = TRUE``) and only the errors are new.

    Returns
    -------
    DataFrame
        One column per simulation (``sim_1``, ``sim_2``...), one row per
        observation in the row order (and labels) of the fitted data.

    Notes
    -----
    ``y* = X beta + Z_j b*_j + e*`` with ``e*_j ~ N(0, sigma^2 R_j)`` at the
    estimates (R_j = I for independent errors; with a residual structure the
    group's correlation and variances, drawn through a Cholesky factor of
    each group's covariance, batched over groups).  The random effects are
    drawn from a symmetric square root of Psi, so singular fits are
    simulated too.
    """
    res = _unwrap(results)
    model = res.model
    if model.exog is None:
        raise ValueError("the data were removed (remove_data()): simulate needs the designs")
    nsim = int(nsim)
    if nsim < 1:
        raise ValueError(f"nsim must be at least 1, got {nsim}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    fit = res.fit_result
    n, q, m = len(model.endog), model.k_re, model.n_groups
    eta = model.exog @ fit.fe_params
    sims = np.repeat(eta[:, None], nsim, axis=1)
    if q:
        if use_u:
            b = np.repeat(fit.blups[:, :, None], nsim, axis=2)               # (m, q, nsim)
        else:
            F = _psd_factor(np.asarray(fit.cov_re, float))
            b = np.einsum("ab,mbs->mas", F, rng.standard_normal((m, q, nsim)))
        sims += np.einsum("iq,iqs->is", model.exog_re, b[model.group_codes])
    if getattr(model, "_residual_kernel", None) is None:
        # precision weights: residual variance sigma^2 / w_i
        w = getattr(model, "weights", None)
        sd = np.sqrt(fit.scale) if w is None else np.sqrt(fit.scale / w)[:, None]
        sims += sd * rng.standard_normal((n, nsim))
    else:
        sims += _structured_errors(res, nsim, rng)
    labels = model.data.row_labels
    return pd.DataFrame(sims, index=labels if labels is not None else None,
                        columns=[f"sim_{i + 1}" for i in range(nsim)])


def _structured_errors(res: "HLMResults", nsim: int, rng: np.random.Generator) -> np.ndarray:
    """Errors e_j ~ N(0, sigma^2 S_j R_j S_j), all groups at once (padded to the largest)."""
    from .residual_results import padded_residual_cov

    rows, inside, S = padded_residual_cov(res)
    L = np.linalg.cholesky(S)
    draws = L @ rng.standard_normal((rows.shape[0], rows.shape[1], nsim))   # (m, k, nsim)
    out = np.empty((len(res.model.endog), nsim))
    out[rows[inside]] = draws[inside]
    return out


def drop1(results: Any, *, test: str = "Chisq") -> pd.DataFrame:
    """Tests of dropping each fixed-effects term that marginality allows to drop.

    Parameters
    ----------
    test
        ``"Chisq"`` (default): refit without the term by maximum likelihood
        and report lme4's ``drop1(fit, test = "Chisq")`` table; ``"F"``:
        lmerTest's ``drop1``, the F test of the term's coefficients with
        Satterthwaite denominator df (no refits); ``"none"``: AIC only.

    Returns
    -------
    DataFrame
        ``"Chisq"``/``"none"``: rows ``<none>`` and one per droppable term,
        columns ``npar`` (parameters removed), ``AIC`` and, for ``"Chisq"``,
        ``LRT`` and ``Pr(Chi)``.  ``"F"``: one row per droppable term with
        ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``, ``F value``,
        ``Pr(>F)``.

    Notes
    -----
    A term can be dropped when no other term contains all of its factors
    (R's ``drop.scope``): with ``flp*ses`` only ``flp:ses`` is tested, a
    factor is dropped as a whole.  AIC and the likelihood ratio
    :math:`2(\\ell - \\ell_{-t})` use ML fits, as lme4 (a REML fit is
    refitted by ML first).  The F statistic is
    :math:`\\hat\\beta_t' C_t^{-1} \\hat\\beta_t / r_t` for the term's
    :math:`r_t` coefficients and their covariance :math:`C_t`, with
    Satterthwaite df as :func:`sm_hlm.inference.contest`; ``Sum Sq`` is
    :math:`F r_t \\sigma^2` and ``Mean Sq`` :math:`F \\sigma^2`, as lmerTest.
    """
    res = _unwrap(results)
    model = res.model
    if test not in ("Chisq", "F", "none"):
        raise ValueError(f"test must be 'Chisq', 'F' or 'none', got {test!r}")
    terms = fixed_terms(model)
    scope = droppable_terms(terms)
    if test == "F":
        from .inference import contest
        rows = {}
        for t in scope:
            L = np.eye(model.k_fe)[list(t.columns)]
            c = contest(res, L).iloc[0]
            if len(t.columns) == 1:       # contest gives the t test: F = t^2
                F, r, ddf, p = float(c["t value"]) ** 2, 1, float(c["df"]), float(c["Pr(>|t|)"])
            else:
                F, r, ddf, p = (float(c["F value"]), int(c["NumDF"]), float(c["DenDF"]),
                                float(c["Pr(>F)"]))
            rows[t.name] = {"Sum Sq": F * r * res.scale, "Mean Sq": F * res.scale,
                            "NumDF": r, "DenDF": ddf, "F value": F, "Pr(>F)": p}
        return pd.DataFrame.from_dict(rows, orient="index",
                                      columns=["Sum Sq", "Mean Sq", "NumDF", "DenDF",
                                               "F value", "Pr(>F)"])
    full = res if not res.reml else _unwrap(model.fit(
        start_params=np.concatenate([res.theta, res.fit_result.residual_free]), reml=False))
    start = np.concatenate([full.theta, full.fit_result.residual_free])
    npar = [full.n_params]
    llf = [full.llf]
    for t in scope:
        keep = np.setdiff1d(np.arange(model.k_fe), t.columns)
        sub = model_with_fixed_columns(model, keep)
        r = _unwrap(sub.fit(start_params=start, reml=False))
        npar.append(r.n_params)
        llf.append(r.llf)
    npar_a, llf_a = np.asarray(npar, float), np.asarray(llf, float)
    out = pd.DataFrame({"npar": pd.array([pd.NA] + [int(npar_a[0] - k) for k in npar_a[1:]],
                                         dtype="Int64"),
                        "AIC": -2 * llf_a + 2 * npar_a},
                       index=["<none>"] + [t.name for t in scope])
    if test == "Chisq":
        lrt = 2 * (llf_a[0] - llf_a)
        lrt[0] = np.nan
        df = npar_a[0] - npar_a
        p = np.full(len(lrt), np.nan)
        p[1:] = stats.chi2.sf(lrt[1:], df[1:])
        out["LRT"] = lrt
        out["Pr(Chi)"] = p
    out.attrs["refitted_ml"] = bool(res.reml)
    return out
