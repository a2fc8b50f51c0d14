"""sm_hlm.plots: each plot renders to a valid PNG and draws one mark per group."""
from __future__ import annotations

import builtins
import sys
import warnings

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import sm_hlm  # noqa: E402
from sm_hlm import plots  # noqa: E402
from sm_hlm.simulate import simulate_mixed  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def slope_fit():
    df = simulate_mixed(n_groups=30, mean_group_size=8, fe_params={"Intercept": 1.0, "x": 0.5},
                        re_names=["Intercept", "x"], cov_re=[[1.0, 0.2], [0.2, 0.5]], scale=1.0,
                        seed=21, min_group_size=3)
    return sm_hlm.HLM.from_formula("y ~ x + (x | group)", df).fit(reml=False)


@pytest.fixture(scope="module")
def ri_fit():
    df = simulate_mixed(n_groups=20, mean_group_size=6, fe_params={"Intercept": 1.0, "x": 0.5},
                        cov_re=[[0.7]], scale=1.0, seed=22, min_group_size=2)
    return sm_hlm.HLM.from_formula("y ~ x + (1 | group)", df).fit(reml=False)


def _save(fig, path) -> bytes:
    fig.savefig(path, format="png", dpi=60)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
    return data


def _scatters(ax) -> list:
    from matplotlib.collections import PathCollection
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def _marker_lines(ax):
    return [ln for ln in ax.get_lines() if ln.get_marker() not in (None, "None", "", " ")]


def test_caterpillar(slope_fit, tmp_path):
    fig = slope_fit.plot_caterpillar()
    _save(fig, tmp_path / "cat.png")
    m = slope_fit.model.n_groups
    assert len(fig.axes) == 2
    re = slope_fit.ranef()
    for ax, name in zip(fig.axes, ["Intercept", "x"]):
        assert ax.get_title() == name
        (pts,) = _marker_lines(ax)
        x = np.asarray(pts.get_xdata())
        assert len(x) == m
        np.testing.assert_allclose(x, np.sort(re[name].to_numpy()))     # sorted BLUPs
        assert len(ax.get_yticklabels()) == m


def test_caterpillar_intervals(slope_fit):
    alpha = 0.1
    fig = plots.caterpillar(slope_fit, term="x", alpha=alpha, sort=False)
    (ax,) = fig.axes
    bars = [c for c in ax.collections if hasattr(c, "get_segments")][0]
    segs = np.array(bars.get_segments())                     # (m, 2, 2)
    half = (segs[:, 1, 0] - segs[:, 0, 0]) / 2
    sd = np.sqrt(slope_fit.fit_result.blup_cov[1, 1, :])
    from scipy import stats
    np.testing.assert_allclose(half, stats.norm.ppf(1 - alpha / 2) * sd, rtol=1e-10)
    np.testing.assert_allclose((segs[:, 1, 0] + segs[:, 0, 0]) / 2, slope_fit.ranef()["x"],
                               rtol=1e-10, atol=1e-12)


def test_caterpillar_given_axes_and_errors(slope_fit):
    fig, axs = plt.subplots(1, 2)
    assert plots.caterpillar(slope_fit, ax=axs) is fig
    fig1, ax1 = plt.subplots()
    assert plots.caterpillar(slope_fit, term="Intercept", ax=ax1) is fig1
    with pytest.raises(ValueError, match="2 Axes"):
        plots.caterpillar(slope_fit, ax=ax1)
    with pytest.raises(KeyError, match="unknown random effect"):
        plots.caterpillar(slope_fit, term="nope")
    with pytest.raises(ValueError, match="alpha"):
        plots.caterpillar(slope_fit, alpha=1.5)


def test_shrinkage_plot(slope_fit, tmp_path):
    fig = slope_fit.plot_shrinkage()
    _save(fig, tmp_path / "shrink.png")
    m = slope_fit.model.n_groups
    (ax,) = fig.axes
    # OLS points, BLUP points, the fixed-effect star
    offsets = [c.get_offsets() for c in _scatters(ax)]
    counts = sorted(len(o) for o in offsets)
    assert counts == [1, m, m]
    star = [o for o in offsets if len(o) == 1][0][0]
    np.testing.assert_allclose(star, slope_fit.fe_params[["Intercept", "x"]], rtol=1e-10)
    segs = [c for c in ax.collections if type(c).__name__ == "LineCollection"][0]
    segs = np.array(segs.get_segments())
    np.testing.assert_allclose(segs[:, 0, :], slope_fit.model.group_ols().to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(segs[:, 1, :], slope_fit.group_coefficients[["Intercept", "x"]],
                               rtol=1e-10)
    # sized by group size
    sizes = [c.get_sizes() for c in _scatters(ax) if len(c.get_offsets()) == m][0]
    order = np.argsort(slope_fit.model.group_sizes.to_numpy(), kind="stable")
    assert np.all(np.diff(sizes[order]) >= 0)


def test_shrinkage_plot_random_intercept(ri_fit, tmp_path):
    fig = plots.shrinkage_plot(ri_fit)
    _save(fig, tmp_path / "shrink_ri.png")
    (ax,) = fig.axes
    m = ri_fit.model.n_groups
    counts = sorted(len(c.get_offsets()) for c in _scatters(ax))
    assert counts == [m, m]
    assert ax.get_xscale() == "log"


def test_shrinkage_plot_drops_inestimable_groups(tmp_path):
    df = simulate_mixed(n_groups=25, mean_group_size=6, fe_params={"Intercept": 1.0, "x": 0.5},
                        re_names=["Intercept", "x"], cov_re=[[1.0, 0.0], [0.0, 0.5]], scale=1.0,
                        seed=23, min_group_size=3)
    df = df.drop(df.index[df["group"] == 4][1:]).reset_index(drop=True)    # one row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm_hlm.HLM.from_formula("y ~ x + (x | group)", df).fit(reml=False)
    fig = res.plot_shrinkage()
    _save(fig, tmp_path / "shrink_drop.png")
    (ax,) = fig.axes
    counts = sorted(len(c.get_offsets()) for c in _scatters(ax))
    assert counts == [1, 24, 24]
    assert "1 not estimable" in ax.get_legend().get_texts()[0].get_text()


def test_shrinkage_plot_no_estimable_group():
    """x constant within every group: no group's OLS slope exists, a clear error."""
    df = simulate_mixed(n_groups=20, mean_group_size=6, fe_params={"Intercept": 1.0, "x": 0.5},
                        cov_re=[[0.7]], scale=1.0, seed=24, min_group_size=3)
    df["x"] = df.groupby("group")["x"].transform("mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm_hlm.HLM.from_formula("y ~ x + (x | group)", df).fit(reml=False)
    assert res.model.group_ols()["x"].isna().all()
    with pytest.raises(ValueError, match="no group of 'group' has estimable OLS"):
        res.plot_shrinkage()


def test_residual_plots(slope_fit, tmp_path):
    fig = slope_fit.plot_residuals()
    _save(fig, tmp_path / "resid.png")
    assert len(fig.axes) == 4
    n, m = int(slope_fit.nobs), slope_fit.model.n_groups
    a_rf, a_qq, a_re, a_hist = fig.axes
    assert len(a_rf.collections[0].get_offsets()) == n
    qq = _marker_lines(a_qq)
    assert [len(ln.get_xdata()) for ln in qq] == [n]
    np.testing.assert_allclose(qq[0].get_ydata(), np.sort(np.asarray(slope_fit.resid_scaled)))
    assert a_qq.get_ylabel() == "scaled residuals"
    assert [len(ln.get_xdata()) for ln in _marker_lines(a_re)] == [m, m]
    assert len(a_hist.patches) > 5


def test_residual_plots_structured_residuals(tmp_path):
    """With a residual structure the QQ plot and histogram use the normalized
    residuals (N(0, 1) under the structure), not (y - fitted) / sigma."""
    from sm_hlm.simulate import simulate_panel

    d = simulate_panel(n_subjects=120, re_names=("Intercept",), cov_re=[[1.0]], seed=4)
    res = sm_hlm.HLM.from_formula(
        "y ~ wave + (1 | subject)", d,
        residual=sm_hlm.AR1(time="wave") * sm_hlm.Heteroscedastic(by="wave")).fit(reml=False)
    fig = res.plot_residuals()
    _save(fig, tmp_path / "resid_structured.png")
    a_qq, a_hist = fig.axes[1], fig.axes[3]
    (qq,) = _marker_lines(a_qq)
    normalized = np.sort(np.asarray(res.resid_normalized))
    np.testing.assert_allclose(qq.get_ydata(), normalized)
    assert not np.allclose(normalized, np.sort(np.asarray(res.resid_scaled)))
    assert a_qq.get_ylabel() == "normalized residuals"
    assert a_hist.get_xlabel() == "normalized residuals"


def test_missing_matplotlib_message(monkeypatch, slope_fit):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    for mod in [k for k in sys.modules if k == "matplotlib" or k.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    for f in (plots.caterpillar, plots.shrinkage_plot, plots.residual_plots):
        with pytest.raises(ImportError, match=r"pip install sm_hlm\[plot\]"):
            f(slope_fit)
