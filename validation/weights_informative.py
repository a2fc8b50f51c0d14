"""Informative two-stage sampling: survey weights remove the bias of an unweighted fit.

    python -m validation.weights_informative [--reps 50] [--seed 1]

Population (each replication): 3000 schools of 40-160 students,

    y_ij = 1 + 0.5 x_ij + u_j + e_ij,   u_j ~ N(0, 1),   e_ij ~ N(0, 2).

Stage 1 samples schools with probability pi_j proportional to exp(0.8 u_j)
(Poisson sampling, about 200 schools): schools with high u_j are
over-represented.  Stage 2 samples students within a school with probability
pi_{i|j} = 0.1 + 0.4 * logistic(1.5 e_ij / sqrt(2)) (about 25%): students
with positive errors are over-represented.  Both stages are informative, so
the unweighted ML estimates of the intercept and of sigma^2 are biased
(tau^2 is not: selecting schools with probability proportional to
exp(0.8 u_j) shifts the normal u_j's mean, not its variance).  The weights
w_j = 1 / pi_j and w_{i|j} = 1 / pi_{i|j} are given to
``HLM(..., survey_weights=[w_{i|j}, w_j], weight_scaling=...)``.

The table shows the population value, the mean (and Monte Carlo SE) of each
estimator over the replications, and, for the weighted fixed effects, the
mean sandwich SE next to the empirical SD of the estimates and the coverage
of the 95% Wald interval.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd

from sm_hlm import HLM

TRUTH = {"Intercept": 1.0, "x": 0.5, "tau2": 1.0, "sigma2": 2.0}


def sample(rng: np.random.Generator) -> pd.DataFrame:
    M = 3000
    sizes = rng.integers(40, 161, M)
    u = rng.normal(0.0, 1.0, M)
    pi_j = np.minimum(1.0, 200 * np.exp(0.8 * u) / np.exp(0.8 * u).sum())
    take = rng.random(M) < pi_j
    schools = np.flatnonzero(take)
    rows = []
    for j in schools:              # simulating the design, not a hot path
        n = sizes[j]
        x = rng.normal(0.0, 1.0, n)
        e = rng.normal(0.0, np.sqrt(2.0), n)
        y = 1.0 + 0.5 * x + u[j] + e
        pi_i = 0.1 + 0.4 / (1.0 + np.exp(-1.5 * e / np.sqrt(2.0)))
        keep = rng.random(n) < pi_i
        if keep.sum() < 2:
            continue
        rows.append(pd.DataFrame({"school": j, "x": x[keep], "y": y[keep],
                                  "w1": 1.0 / pi_i[keep], "w2": 1.0 / pi_j[j]}))
    return pd.concat(rows, ignore_index=True)


def estimates(res) -> dict[str, float]:
    fe = res.fe_params
    return {"Intercept": fe["Intercept"], "x": fe["x"],
            "tau2": float(res.cov_re.iloc[0, 0]), "sigma2": float(res.scale)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    warnings.simplefilter("ignore")
    out: dict[str, list[dict[str, float]]] = {"unweighted": [], "size": [], "effective": []}
    se: list[np.ndarray] = []
    for _ in range(args.reps):
        d = sample(rng)
        out["unweighted"].append(estimates(
            HLM.from_formula("y ~ x + (1 | school)", d).fit(reml=False,
                                                           compute_vcomp_cov=False)))
        for sc in ("size", "effective"):
            res = HLM.from_formula("y ~ x + (1 | school)", d, survey_weights=["w1", "w2"],
                                   weight_scaling=sc).fit(reml=False, compute_vcomp_cov=False)
            out[sc].append(estimates(res))
            if sc == "size":
                se.append(res.bse_fe.to_numpy())
    rows = []
    for name, truth in TRUTH.items():
        row = {"parameter": name, "population": truth}
        for k, v in out.items():
            vals = np.array([e[name] for e in v])
            row[f"{k} mean"] = vals.mean()
            row[f"{k} MC SE"] = vals.std(ddof=1) / np.sqrt(len(vals))
        rows.append(row)
    tab = pd.DataFrame(rows).set_index("parameter")
    pd.set_option("display.width", 200)
    print(f"{args.reps} replications, about {len(d)} rows and {d['school'].nunique()} schools "
          "each (ML; survey weights by pseudo-ML)")
    print(tab.round(4).to_string())
    se_arr = np.array(se)
    est = np.array([[e["Intercept"], e["x"]] for e in out["size"]])
    cover = np.mean(np.abs(est - np.array([TRUTH["Intercept"], TRUTH["x"]])) <= 1.96 * se_arr,
                    axis=0)
    print("\nweighted (size) fixed effects: mean sandwich SE, empirical SD, 95% coverage")
    print(pd.DataFrame({"mean sandwich SE": se_arr.mean(axis=0), "empirical SD":
                        est.std(axis=0, ddof=1), "coverage": cover},
                       index=["Intercept", "x"]).round(4).to_string())


if __name__ == "__main__":
    main()
