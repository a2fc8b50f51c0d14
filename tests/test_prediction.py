"""get_prediction (statsmodels PredictionResults) and predict's missing-data policy."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, stats

import sm_hlm
from sm_hlm import AR1, HLM
from sm_hlm.simulate import simulate_nels

from .conftest import load_csv

COLUMNS = ["mean", "mean_se", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower", "obs_ci_upper"]


def _quiet_fit(model_fn, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_fn().fit(**kw)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return simulate_nels(n_schools=25, mean_size=12, seed=8)


@pytest.fixture(scope="module")
def fit(data):
    return _quiet_fit(lambda: HLM.from_formula("mscore ~ flp * ses + (ses | school)", data))


def _dense_pev(X, Zs, codes, m, psi, R, scale_R=True):
    """Henderson: sigma-free PEV of (beta, b) from the full mixed-model equations.

    ``R`` is the (n, n) error covariance; returns Cinv with
    Cinv = [[X'R^-1X, X'R^-1Z], [Z'R^-1X, Z'R^-1Z + G^-1]]^-1.
    """
    n, q = Zs.shape
    Z = np.zeros((n, m * q))
    for i in range(n):
        Z[i, codes[i] * q:(codes[i] + 1) * q] = Zs[i]
    G = linalg.block_diag(*([psi] * m))
    Ri = np.linalg.inv(R)
    top = np.hstack([X.T @ Ri @ X, X.T @ Ri @ Z])
    bot = np.hstack([Z.T @ Ri @ X, Z.T @ Ri @ Z + np.linalg.inv(G)])
    return np.linalg.inv(np.vstack([top, bot]))


def _rows(new):
    X = np.column_stack([np.ones(len(new)), new.flp, new.ses, new.flp * new.ses])
    Z = np.column_stack([np.ones(len(new)), new.ses])
    return X, Z


def test_conditional_prediction_matches_henderson(fit, data):
    model = fit.model
    new = data.iloc[[0, 7, 50, 120, 200]].copy()
    new.loc[new.index[-1], "school"] = -1                     # a school not in the fit
    pr = fit.get_prediction(new)
    sf = pr.summary_frame(alpha=0.1)
    assert list(sf.columns) == COLUMNS and list(sf.index) == list(new.index)
    np.testing.assert_allclose(sf["mean"], fit.predict(new), rtol=1e-13)
    X, Z = _rows(new)
    psi = fit.cov_re.to_numpy()
    Cinv = _dense_pev(model.exog, model.exog_re, model.group_codes, model.n_groups, psi,
                      fit.scale * np.eye(int(fit.nobs)))
    p, q = model.k_fe, model.k_re
    H = fit.cov_fe.to_numpy()
    np.testing.assert_allclose(Cinv[:p, :p], H, rtol=1e-7)
    for i, g in enumerate(new.school):
        code = model.group_labels.get_indexer([g])[0]
        if code >= 0:
            lvec = np.zeros(Cinv.shape[0])
            lvec[:p] = X[i]
            lvec[p + code * q:p + (code + 1) * q] = Z[i]
            want = lvec @ Cinv @ lvec
        else:
            want = X[i] @ H @ X[i] + Z[i] @ psi @ Z[i]
        assert sf["mean_se"].iloc[i] ** 2 == pytest.approx(want, rel=1e-7)
    zq = stats.norm.ppf(0.95)
    obs_se = np.sqrt(sf["mean_se"] ** 2 + fit.scale)
    np.testing.assert_allclose(sf["obs_ci_upper"], sf["mean"] + zq * obs_se, rtol=1e-12)
    np.testing.assert_allclose(sf["mean_ci_lower"], sf["mean"] - zq * sf["mean_se"],
                               rtol=1e-12)
    # the fitted rows (exog=None) are the fitted values with the same standard errors
    full = fit.get_prediction().summary_frame()
    np.testing.assert_allclose(full["mean"], fit.fittedvalues, rtol=1e-13)
    np.testing.assert_allclose(full.loc[new.index[:-1], "mean_se"], sf["mean_se"].iloc[:-1],
                               rtol=1e-12)


def test_marginal_prediction(fit, data):
    new = data.iloc[:6].drop(columns="school")              # no grouping column needed
    pr = fit.get_prediction(new, random=False)
    sf = pr.summary_frame()
    X, Z = _rows(new)
    H, psi = fit.cov_fe.to_numpy(), fit.cov_re.to_numpy()
    np.testing.assert_allclose(sf["mean"], X @ fit.fe_params.to_numpy(), rtol=1e-13)
    np.testing.assert_allclose(sf["mean_se"] ** 2, np.einsum("ij,jk,ik->i", X, H, X),
                               rtol=1e-12)
    var_obs = np.einsum("ij,jk,ik->i", X, H, X) + np.einsum("ij,jk,ik->i", Z, psi, Z) \
        + fit.scale
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(sf["obs_ci_lower"], sf["mean"] - z * np.sqrt(var_obs),
                               rtol=1e-12)
    np.testing.assert_allclose(fit.predict(new, random=False), sf["mean"], rtol=1e-13)
    # the fitted rows: the same as passing the data
    all_rows = fit.get_prediction(random=False).summary_frame()
    np.testing.assert_allclose(all_rows["mean_se"].iloc[:6], sf["mean_se"], rtol=1e-12)


def test_array_prediction_and_errors(fit, data):
    new = data.iloc[:4]
    X, Z = _rows(new)
    a = fit.get_prediction(X, exog_re=Z, groups=new.school.to_numpy()).summary_frame()
    b = fit.get_prediction(new).summary_frame()
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-12)
    m = fit.get_prediction(X, exog_re=Z, random=False).summary_frame()
    np.testing.assert_allclose(m.to_numpy(),
                               fit.get_prediction(new, random=False).summary_frame().to_numpy(),
                               rtol=1e-12)
    with pytest.raises(TypeError, match="random=False"):
        fit.predict(X, exog_re=Z)
    with pytest.raises(KeyError, match="grouping column 'school'.*random=False"):
        fit.predict(new.drop(columns="school"))


def test_missing_values_policy(fit, data):
    new = data.iloc[:5].copy()
    new.loc[new.index[2], "ses"] = np.nan
    with pytest.raises(sm_hlm.MissingDataError, match=r"'ses' \(1 rows\).*missing='nan'"):
        fit.predict(new)
    with pytest.raises(ValueError, match="missing must be"):
        fit.predict(new, missing="drop")
    pred = fit.predict(new, missing="nan")
    assert np.isnan(pred.iloc[2]) and list(pred.index) == list(new.index)
    ok = new.drop(index=new.index[2])
    np.testing.assert_allclose(pred.drop(index=new.index[2]), fit.predict(ok), rtol=1e-13)
    sf = fit.get_prediction(new, missing="nan").summary_frame()
    assert sf.iloc[2].isna().all() and sf.drop(index=new.index[2]).notna().all().all()
    # a missing group label with random=True is missing data too
    g = new.assign(ses=data.ses.iloc[:5].to_numpy()).astype({"school": float})
    g.loc[g.index[1], "school"] = np.nan
    with pytest.raises(sm_hlm.MissingDataError, match="school"):
        fit.predict(g)
    assert np.isfinite(fit.predict(g, random=False)).all()


def test_structured_conditional_prediction_matches_henderson():
    d = load_csv("panel_ri_ar1.csv")
    d = d[d.subject <= 40].reset_index(drop=True)
    res = _quiet_fit(lambda: HLM.from_formula("y ~ wave*trt + (1 | subject)", d,
                                              residual=AR1(time="wave")))
    model = res.model
    n = int(res.nobs)
    R = np.zeros((n, n))
    for g in model.group_labels:
        rows = np.flatnonzero(model.group_codes == model.group_labels.get_loc(g))
        R[np.ix_(rows, rows)] = res.residual_cov(g).to_numpy()
    psi = res.cov_re.to_numpy()
    Cinv = _dense_pev(model.exog, model.exog_re, model.group_codes, model.n_groups, psi, R)
    new = d.iloc[[0, 3, 9]]
    sf = res.get_prediction(new).summary_frame()
    p = model.k_fe
    X = np.column_stack([np.ones(3), new.wave, new.trt, new.wave * new.trt])
    for i, g in enumerate(new.subject):
        code = model.group_labels.get_indexer([g])[0]
        lvec = np.zeros(Cinv.shape[0])
        lvec[:p] = X[i]
        lvec[p + code] = 1.0
        assert sf["mean_se"].iloc[i] ** 2 == pytest.approx(lvec @ Cinv @ lvec, rel=1e-6)
    np.testing.assert_allclose(sf["mean"], res.predict(new, correlated=False), rtol=1e-13)
