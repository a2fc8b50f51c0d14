"""Tests of sm_hlm.crosslevel (group-level variables, centering, Mundlak)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sm_hlm import crosslevel
from sm_hlm.crosslevel import (
    Level2Error,
    Level2InRandomWarning,
    add_within_between,
    center,
    check_constant_within,
    group_aggregate,
    is_constant_within,
    level2_columns,
    warn_level2_in_random,
    within_between,
)


@pytest.fixture
def df() -> pd.DataFrame:
    """Unbalanced (3, 1, 2 rows), unsorted rows, string ids, custom index."""
    return pd.DataFrame(
        {
            "school": ["b", "a", "b", "c", "a", "b"],
            "flp": [1.0, 3.0, 2.0, 2.0, 5.0, 6.0],
            "ses": [0.5, -1.0, 1.5, 2.0, 0.0, -0.5],
            "size": [30, 10, 30, 25, 10, 30],
            "sector": ["pub", "priv", "pub", "pub", "priv", "pub"],
        },
        index=pd.Index([105, 17, 3, 250, 42, 8], name="student"),
    )


# hand computations for df: a = rows (17, 42), b = (105, 3, 8), c = (250,)
FLP_MEAN = {"a": 4.0, "b": 3.0, "c": 2.0}


# ---------------------------------------------------------------------------
# group_aggregate
# ---------------------------------------------------------------------------

def test_all_exported():
    for name in crosslevel.__all__:
        assert hasattr(crosslevel, name)
    assert {"group_aggregate", "center", "within_between", "add_within_between",
            "is_constant_within", "check_constant_within", "level2_columns",
            "warn_level2_in_random", "Level2Error",
            "Level2InRandomWarning"} <= set(crosslevel.__all__)
    assert issubclass(Level2Error, ValueError)
    assert issubclass(Level2InRandomWarning, UserWarning)


def test_group_mean_by_group(df):
    out = group_aggregate(df, "flp", "school")
    assert isinstance(out, pd.Series)
    assert out.name == "flp_mean"
    assert out.index.name == "school"
    assert list(out.index) == ["a", "b", "c"]
    assert out.to_dict() == pytest.approx(FLP_MEAN)


@pytest.mark.parametrize(
    "func, expected",
    [
        ("mean", {"a": 4.0, "b": 3.0, "c": 2.0}),
        ("sum", {"a": 8.0, "b": 9.0, "c": 2.0}),
        ("median", {"a": 4.0, "b": 2.0, "c": 2.0}),
        ("min", {"a": 3.0, "b": 1.0, "c": 2.0}),
        ("max", {"a": 5.0, "b": 6.0, "c": 2.0}),
        ("count", {"a": 2, "b": 3, "c": 1}),
    ],
)
def test_builtin_funcs(df, func, expected):
    out = group_aggregate(df, "flp", "school", func=func)
    assert out.name == f"flp_{func}"
    assert out.to_dict() == pytest.approx(expected)


def test_std_is_sample_sd(df):
    out = group_aggregate(df, "flp", "school", func="std")
    assert out["a"] == pytest.approx(np.sqrt(2.0))  # sd(c(3, 5))
    assert out["b"] == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1))
    assert np.isnan(out["c"])  # a single value has no sample SD


def test_callable_func(df):
    def spread(s: pd.Series) -> float:
        return float(s.max() - s.min())

    out = group_aggregate(df, "flp", "school", func=spread)
    assert out.name == "flp_spread"
    assert out.to_dict() == pytest.approx({"a": 2.0, "b": 5.0, "c": 0.0})
    lam = group_aggregate(df, "flp", "school", func=lambda s: s.iloc[0])
    assert lam.name == "flp_agg"


def test_broadcast_keeps_index_and_order(df):
    out = group_aggregate(df, "flp", "school", broadcast=True)
    assert out.index.equals(df.index)
    assert out.name == "flp_mean"
    assert out.tolist() == pytest.approx([FLP_MEAN[s] for s in df["school"]])
    # R: flp.school[school] after tapply
    assert out.loc[250] == 2.0 and out.loc[8] == 3.0


def test_broadcast_matches_aggregate_lookup(df):
    agg = group_aggregate(df, "ses", "school", func="max")
    bc = group_aggregate(df, "ses", "school", func="max", broadcast=True)
    np.testing.assert_array_equal(bc.to_numpy(), agg.loc[df["school"]].to_numpy())


def test_multiple_columns_give_dataframe(df):
    out = group_aggregate(df, ["flp", "ses"], "school")
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["flp_mean", "ses_mean"]
    assert out.loc["a", "ses_mean"] == pytest.approx(-0.5)
    assert out.loc["b", "ses_mean"] == pytest.approx(0.5)
    bc = group_aggregate(df, ["flp", "ses"], "school", broadcast=True, name=["m1", "m2"])
    assert list(bc.columns) == ["m1", "m2"]
    assert bc.index.equals(df.index)


def test_custom_name(df):
    out = group_aggregate(df, "flp", "school", name="flp.school")
    assert out.name == "flp.school"


def test_integer_ids_sorted_and_array_groups(df):
    ids = np.array([20, 3, 20, 100, 3, 20])
    out = group_aggregate(df, "flp", ids)
    assert list(out.index) == [3, 20, 100]
    assert out.tolist() == pytest.approx([4.0, 3.0, 2.0])
    as_list = group_aggregate(df, "flp", ids.tolist())
    pd.testing.assert_series_equal(as_list, out)
    named = group_aggregate(df, "flp", pd.Series(ids, index=df.index, name="sch"))
    assert named.index.name == "sch"


def test_series_groups_aligned_on_index(df):
    groups = df["school"].iloc[::-1]  # same labels, other order
    out = group_aggregate(df, "flp", groups, broadcast=True)
    expected = group_aggregate(df, "flp", "school", broadcast=True)
    np.testing.assert_array_equal(out.to_numpy(), expected.to_numpy())


def test_categorical_groups(df):
    groups = pd.Categorical(df["school"], categories=["c", "b", "a"])
    out = group_aggregate(df, "flp", groups)
    assert out.to_dict() == pytest.approx(FLP_MEAN)


def test_nan_ignored_like_na_rm():
    d = pd.DataFrame({"g": [1, 1, 2, 2, 3], "x": [1.0, np.nan, 4.0, 6.0, np.nan]})
    mean = group_aggregate(d, "x", "g")
    assert mean[1] == 1.0 and mean[2] == 5.0 and np.isnan(mean[3])
    assert group_aggregate(d, "x", "g", func="count").tolist() == [1, 2, 0]
    assert group_aggregate(d, "x", "g", func="sum").tolist() == [1.0, 10.0, 0.0]
    assert group_aggregate(d, "x", "g", func="median")[2] == 5.0
    calls = group_aggregate(d, "x", "g", func=lambda s: float(s.isna().sum()))
    assert calls[1] == 0.0 and calls[2] == 0.0  # callables never see NaN
    bc = group_aggregate(d, "x", "g", broadcast=True)
    assert len(bc) == len(d)  # no rows dropped
    assert bc.tolist()[:4] == [1.0, 1.0, 5.0, 5.0]


def test_nullable_integer_column():
    d = pd.DataFrame({"g": [1, 1, 2], "x": pd.array([1, None, 4], dtype="Int64")})
    assert group_aggregate(d, "x", "g").tolist() == [1.0, 4.0]


def test_duplicate_index_labels():
    d = pd.DataFrame({"g": ["x", "y", "x"], "v": [1.0, 10.0, 3.0]}, index=[0, 0, 1])
    out = group_aggregate(d, "v", "g", broadcast=True)
    assert out.tolist() == [2.0, 10.0, 2.0]
    assert list(out.index) == [0, 0, 1]


def test_min_max_count_on_strings(df):
    assert group_aggregate(df, "sector", "school", func="min")["b"] == "pub"
    assert group_aggregate(df, "sector", "school", func="count")["b"] == 3


# ---------------------------------------------------------------------------
# center
# ---------------------------------------------------------------------------

def test_group_centering_by_hand(df):
    out = center(df, "flp", groups="school")
    assert out.name == "flp_cwc"
    assert out.index.equals(df.index)
    expected = [1 - 3, 3 - 4, 2 - 3, 2 - 2, 5 - 4, 6 - 3]
    assert out.tolist() == pytest.approx(expected)


def test_grand_centering_by_hand(df):
    out = center(df, "flp", how="grand")
    assert out.name == "flp_cgm"
    grand = 19.0 / 6.0  # mean over rows, not the mean of group means
    assert out.tolist() == pytest.approx([v - grand for v in df["flp"]])
    assert out.index.equals(df.index)


def test_center_with_nan_and_name():
    d = pd.DataFrame({"g": [1, 1, 1], "x": [1.0, np.nan, 3.0]}, index=list("pqr"))
    out = center(d, "x", groups="g", name="xc")
    assert out.name == "xc"
    assert out["p"] == -1.0 and np.isnan(out["q"]) and out["r"] == 1.0
    grand = center(d, "x", how="grand")
    assert grand["p"] == -1.0 and np.isnan(grand["q"])


def test_center_list_of_columns(df):
    out = center(df, ["flp", "ses"], groups="school")
    assert list(out.columns) == ["flp_cwc", "ses_cwc"]
    pd.testing.assert_series_equal(out["ses_cwc"], center(df, "ses", groups="school"))


def test_center_group_requires_groups(df):
    with pytest.raises(TypeError, match="needs groups"):
        center(df, "flp")


def test_center_bad_how(df):
    with pytest.raises(ValueError, match="how must be 'group' or 'grand'.*'cluster'"):
        center(df, "flp", groups="school", how="cluster")


def test_center_non_numeric(df):
    with pytest.raises(TypeError, match="'sector' must be numeric"):
        center(df, "sector", groups="school")


# ---------------------------------------------------------------------------
# within / between
# ---------------------------------------------------------------------------

def test_within_between_by_hand(df):
    out = within_between(df, "flp", "school")
    assert list(out.columns) == ["flp_within", "flp_between"]
    assert out.index.equals(df.index)
    assert out["flp_between"].tolist() == pytest.approx([3, 4, 3, 2, 4, 3])
    assert out["flp_within"].tolist() == pytest.approx([-2, -1, -1, 0, 1, 3])
    np.testing.assert_allclose(out.sum(axis=1), df["flp"])


def test_within_between_multiple_and_suffixes(df):
    out = within_between(df, ["flp", "ses"], "school", suffixes=("_w", "_b"))
    assert list(out.columns) == ["flp_w", "flp_b", "ses_w", "ses_b"]
    np.testing.assert_allclose(out["ses_w"] + out["ses_b"], df["ses"])
    pd.testing.assert_series_equal(
        out["ses_b"], group_aggregate(df, "ses", "school", broadcast=True),
        check_names=False)


def test_within_between_nan():
    d = pd.DataFrame({"g": ["u", "u", "v"], "x": [2.0, np.nan, 5.0]})
    out = within_between(d, "x", "g")
    assert np.isnan(out.loc[1, "x_within"])
    assert out.loc[1, "x_between"] == 2.0  # group mean of the observed values
    assert out["x_within"].tolist()[::2] == [0.0, 0.0]


def test_within_between_colliding_names_rejected():
    # x's between part and x_b's within part would both be 'x_b': one was lost
    d = pd.DataFrame({"g": [1, 1, 2], "x": [1.0, 2.0, 3.0], "x_b": [5.0, 6.0, 8.0]})
    with pytest.raises(ValueError, match="'x_b'.*suffixes"):
        within_between(d, ["x", "x_b"], "g", suffixes=("", "_b"))
    with pytest.raises(ValueError, match="'x_b'"):
        add_within_between(d, ["x", "x_b"], "g", suffixes=("", "_b"), overwrite=True)


def test_group_aggregate_colliding_default_names_rejected():
    d = pd.DataFrame({"g": [1, 1, 2], 1: [1.0, 2.0, 3.0], "1": [5.0, 6.0, 8.0]})
    with pytest.raises(ValueError, match="'1_mean'.*name="):
        group_aggregate(d, [1, "1"], "g")
    out = group_aggregate(d, [1, "1"], "g", name=["a", "b"])
    assert out.to_dict("list") == {"a": [1.5, 3.0], "b": [5.5, 8.0]}
    with pytest.raises(ValueError, match="'a'"):
        group_aggregate(d, [1, "1"], "g", name=["a", "a"])


@pytest.mark.parametrize("suffixes", [("_a", "_a"), ("_a",), "ab", ("_a", 1)])
def test_within_between_bad_suffixes(df, suffixes):
    with pytest.raises(ValueError, match="suffixes"):
        within_between(df, "flp", "school", suffixes=suffixes)


def test_add_within_between(df):
    original = df.copy()
    out = add_within_between(df, ["flp", "ses"], "school")
    pd.testing.assert_frame_equal(df, original)  # input untouched
    assert list(out.columns) == list(df.columns) + [
        "flp_within", "flp_between", "ses_within", "ses_between"]
    assert out.index.equals(df.index)
    pd.testing.assert_frame_equal(out[df.columns], df)
    np.testing.assert_allclose(out["flp_within"] + out["flp_between"], df["flp"])


def test_add_within_between_refuses_to_overwrite(df):
    once = add_within_between(df, "flp", "school")
    with pytest.raises(ValueError, match="flp_within"):
        add_within_between(once, "flp", "school")
    twice = add_within_between(once, "flp", "school", overwrite=True)
    pd.testing.assert_frame_equal(twice, once)


# ---------------------------------------------------------------------------
# constancy checks
# ---------------------------------------------------------------------------

def test_is_constant_within(df):
    assert is_constant_within(df, "size", "school")
    assert is_constant_within(df, "sector", "school")
    assert not is_constant_within(df, "flp", "school")
    assert is_constant_within(df, "school", "school")


def test_is_constant_within_tolerances():
    d = pd.DataFrame({"g": [1, 1, 2, 2], "x": [1.0, 1.0 + 1e-12, 1e6, 1e6 + 1e-3]})
    assert not is_constant_within(d, "x", "g")
    assert is_constant_within(d, "x", "g", rtol=1e-8)
    assert is_constant_within(d, "x", "g", atol=1e-2)
    with pytest.raises(ValueError, match="non-negative"):
        is_constant_within(d, "x", "g", atol=-1.0)


def test_nan_rules_for_constancy():
    all_nan = pd.DataFrame({"g": [1, 1, 2, 2], "x": [np.nan, np.nan, 3.0, 3.0]})
    assert is_constant_within(all_nan, "x", "g")
    mixed = pd.DataFrame({"g": [1, 1, 2, 2], "x": [np.nan, 2.0, 3.0, 3.0]})
    assert not is_constant_within(mixed, "x", "g")
    with pytest.raises(Level2Error, match=r"group ids 1\b"):
        check_constant_within(mixed, "x", "g")
    strings = pd.DataFrame({"g": [1, 1, 2], "s": ["a", None, "b"]})
    assert not is_constant_within(strings, "s", "g")


def test_infinite_values_vary_next_to_finite_ones():
    # max - min is inf and the tolerance atol + 0 * inf is NaN: this used to count as constant
    d = pd.DataFrame({"g": [1, 1, 2, 2, 3, 3],
                      "x": [1.0, np.inf, 3.0, 3.0, -np.inf, -np.inf],
                      "y": [-np.inf, np.inf, 3.0, 3.0, 1.0, 1.0]})
    assert not is_constant_within(d, "x", "g")
    assert not is_constant_within(d, "y", "g", rtol=1e-8)
    with pytest.raises(Level2Error, match=r"within 1 of 3 groups, group ids 1$"):
        check_constant_within(d, "x", "g")
    assert is_constant_within(d.iloc[2:], "x", "g")     # equal infinities are constant


def test_check_constant_within_passes(df):
    assert check_constant_within(df, "size", "school") is None


def test_check_constant_within_names_groups(df):
    with pytest.raises(Level2Error) as info:
        check_constant_within(df, "flp", "school")
    msg = str(info.value)
    assert "'flp'" in msg and "'school'" in msg
    assert "2 of 3 groups" in msg
    assert "'a', 'b'" in msg and "'c'" not in msg
    assert info.value.group_ids == ["a", "b"]
    assert info.value.column == "flp"
    assert isinstance(info.value, ValueError)


def test_check_constant_within_truncates_to_ten():
    g = np.repeat(np.arange(1, 16), 2)
    x = np.arange(30, dtype=float)  # varies in all 15 groups
    d = pd.DataFrame({"g": g, "x": x})
    with pytest.raises(Level2Error) as info:
        check_constant_within(d, "x", "g")
    msg = str(info.value)
    assert "15 of 15 groups" in msg
    assert "1, 2, 3, 4, 5, 6, 7, 8, 9, 10" in msg
    assert "11" not in msg.split("group ids")[1].split("(")[0]
    assert "and 5 more" in msg
    assert info.value.group_ids == list(range(1, 16))


def test_level2_columns(df):
    assert level2_columns(df, "school") == ["size", "sector"]
    assert level2_columns(df, "school", columns=["flp", "sector"]) == ["sector"]
    assert level2_columns(df, df["school"].to_numpy()) == ["school", "size", "sector"]
    with pytest.raises(KeyError, match="'nope'"):
        level2_columns(df, "school", columns=["nope"])


# ---------------------------------------------------------------------------
# warn_level2_in_random
# ---------------------------------------------------------------------------

def test_warns_for_level2_column(df):
    with pytest.warns(Level2InRandomWarning, match="'size'.*fixed part X_j") as record:
        flagged = warn_level2_in_random(df, ["size", "ses"], "school")
    assert flagged == ["size"]
    assert len([w for w in record if issubclass(w.category, Level2InRandomWarning)]) == 1
    msg = str(record[0].message)
    assert "Z_j" in msg and "random-intercept" in msg and "not identified" in msg
    assert record[0].filename == __file__  # stacklevel points to the caller


def test_warns_once_per_column(df):
    with pytest.warns(Level2InRandomWarning) as record:
        flagged = warn_level2_in_random(df, ["size", "sector", "flp"], "school")
    assert flagged == ["size", "sector"]
    assert len(record) == 2


def test_no_warning_for_level1_columns(df):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_level2_in_random(df, ["ses", "flp"], "school") == []
        assert warn_level2_in_random(df, ["Intercept", "ses"], "school") == []
        assert warn_level2_in_random(df, "ses", "school") == []


def test_warn_level2_unknown_column(df):
    with pytest.raises(KeyError, match="'ses2'"):
        warn_level2_in_random(df, ["ses2"], "school")


# ---------------------------------------------------------------------------
# error cases
# ---------------------------------------------------------------------------

ALL_CALLS = {
    "group_aggregate": lambda d, col, g: group_aggregate(d, col, g),
    "center": lambda d, col, g: center(d, col, groups=g),
    "within_between": lambda d, col, g: within_between(d, col, g),
    "add_within_between": lambda d, col, g: add_within_between(d, col, g),
    "is_constant_within": lambda d, col, g: is_constant_within(d, col, g),
    "check_constant_within": lambda d, col, g: check_constant_within(d, col, g),
    "level2_columns": lambda d, col, g: level2_columns(d, g, columns=[col]),
    "warn_level2_in_random": lambda d, col, g: warn_level2_in_random(d, [col], g),
}


@pytest.mark.parametrize("call", ALL_CALLS.values(), ids=ALL_CALLS.keys())
def test_missing_column_names_available(df, call):
    with pytest.raises(KeyError) as info:
        call(df, "mscore", "school")
    msg = str(info.value)
    assert "'mscore'" in msg and "available columns" in msg and "'flp'" in msg


@pytest.mark.parametrize("call", ALL_CALLS.values(), ids=ALL_CALLS.keys())
def test_missing_groups_column(df, call):
    with pytest.raises(KeyError, match="groups column 'district'.*available columns"):
        call(df, "flp", "district")


@pytest.mark.parametrize("call", ALL_CALLS.values(), ids=ALL_CALLS.keys())
def test_groups_wrong_length(df, call):
    with pytest.raises(ValueError, match="length 4 but data has 6 rows"):
        call(df, "flp", [1, 1, 2, 2])


@pytest.mark.parametrize("call", ALL_CALLS.values(), ids=ALL_CALLS.keys())
def test_nan_in_groups_column(df, call):
    bad = df.copy()
    bad.loc[[17, 250], "school"] = np.nan
    with pytest.raises(ValueError, match="'school' has missing group ids in 2 of 6 rows"):
        call(bad, "flp", "school")


@pytest.mark.parametrize("call", ALL_CALLS.values(), ids=ALL_CALLS.keys())
def test_not_a_dataframe(df, call):
    with pytest.raises(TypeError, match="DataFrame"):
        call(df.to_dict(), "flp", "school")


def test_nan_in_groups_array(df):
    with pytest.raises(ValueError, match="groups array has missing group ids in 1 of 6"):
        group_aggregate(df, "flp", [1.0, 2.0, np.nan, 1.0, 2.0, 1.0])


def test_groups_2d(df):
    with pytest.raises(ValueError, match="1-dimensional"):
        group_aggregate(df, "flp", np.ones((6, 2)))
    with pytest.raises(TypeError, match="DataFrame"):
        group_aggregate(df, "flp", df[["school"]])


def test_groups_series_with_other_index(df):
    with pytest.raises(ValueError, match="index does not match data.index"):
        group_aggregate(df, "flp", df["school"].reset_index(drop=True))


def test_bad_func(df):
    with pytest.raises(ValueError, match="unknown func 'avg'"):
        group_aggregate(df, "flp", "school", func="avg")
    with pytest.raises(TypeError, match="func must be"):
        group_aggregate(df, "flp", "school", func=3)
    with pytest.raises(ValueError, match="scalar"):
        group_aggregate(df, "flp", "school", func=lambda s: s.to_numpy())


def test_numeric_func_on_strings(df):
    with pytest.raises(TypeError, match="'sector' must be numeric.*'mean'"):
        group_aggregate(df, "sector", "school")
    with pytest.raises(TypeError, match="'sector' must be numeric.*'std'"):
        group_aggregate(df, "sector", "school", func="std")


def test_bad_column_specs(df):
    with pytest.raises(ValueError, match="empty"):
        group_aggregate(df, [], "school")
    with pytest.raises(ValueError, match="more than once.*'flp'"):
        within_between(df, ["flp", "flp"], "school")
    with pytest.raises(TypeError, match="single column"):
        is_constant_within(df, ["flp"], "school")
    with pytest.raises(ValueError, match="one new name per column"):
        group_aggregate(df, ["flp", "ses"], "school", name="m")
    with pytest.raises(TypeError, match="single label"):
        group_aggregate(df, "flp", "school", name=["a", "b"])
    with pytest.raises(TypeError, match="broadcast"):
        group_aggregate(df, "flp", "school", broadcast="yes")


def test_duplicated_column_label(df):
    dup = pd.concat([df, df[["flp"]]], axis=1)
    with pytest.raises(ValueError, match="'flp' is duplicated"):
        group_aggregate(dup, "flp", "school")


# ---------------------------------------------------------------------------
# property-based
# ---------------------------------------------------------------------------

@st.composite
def two_level_frames(draw):
    n = draw(st.integers(min_value=1, max_value=40))
    n_groups = draw(st.integers(min_value=1, max_value=8))
    g = draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n))
    x = draw(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
                      min_size=n, max_size=n))
    ids = draw(st.sampled_from(["int", "str"]))
    labels = [f"s{v}" for v in g] if ids == "str" else [v * 7 - 3 for v in g]
    index = draw(st.permutations(list(range(100, 100 + n))))
    return pd.DataFrame({"g": labels, "x": x}, index=pd.Index(index))


@settings(max_examples=150, deadline=None)
@given(two_level_frames())
def test_property_centering_and_reconstruction(d):
    tol = 1e-9 * (1.0 + float(np.abs(d["x"]).max()))
    centered = center(d, "x", groups="g")
    assert centered.index.equals(d.index)
    group_means = centered.groupby(d["g"]).mean()
    assert np.all(np.abs(group_means.to_numpy()) <= tol)

    wb = within_between(d, "x", "g")
    assert wb.index.equals(d.index)
    np.testing.assert_allclose(wb["x_within"] + wb["x_between"], d["x"], rtol=0, atol=tol)
    np.testing.assert_allclose(wb["x_within"], centered, rtol=0, atol=tol)
    # the between part is constant within groups and equals the pandas mean
    assert is_constant_within(wb, "x_between", d["g"].to_numpy(), atol=tol)
    expected = d.groupby("g")["x"].transform("mean")
    np.testing.assert_allclose(wb["x_between"], expected, rtol=0, atol=tol)

    agg = group_aggregate(d, "x", "g")
    assert list(agg.index) == sorted(set(d["g"]))
    assert "g" in level2_columns(wb.assign(g=d["g"]), d["g"].to_numpy())


@settings(max_examples=100, deadline=None)
@given(two_level_frames(), st.sampled_from(["sum", "min", "max", "count", "median"]))
def test_property_matches_pandas_groupby(d, func):
    ours = group_aggregate(d, "x", "g", func=func)
    theirs = getattr(d.groupby("g")["x"], func)()
    np.testing.assert_allclose(ours.to_numpy(dtype=float), theirs.to_numpy(dtype=float),
                               rtol=1e-12, atol=1e-9)
    bc = group_aggregate(d, "x", "g", func=func, broadcast=True)
    np.testing.assert_allclose(bc.to_numpy(dtype=float),
                               d.groupby("g")["x"].transform(func).to_numpy(dtype=float),
                               rtol=1e-12, atol=1e-9)
