"""The numbers the course notes print for the NELS fits (lme4), as printed.

Transcribed from ``shared/reference/NELS.md``.  Values are strings so that
the printed precision (number of decimals) travels with each number: a
value of ours matches when it rounds to the printed one.
"""
from __future__ import annotations

FORMULAS = {
    "fit.0": "mscore ~ 1 + (1 | school)",
    "fit.1": "mscore ~ ses + (ses | school)",
    "fit.2": "mscore ~ flp + ses + flp*ses + (ses | school)",
}

#: per fit: quantity -> printed value
FITS: dict[str, dict[str, str]] = {
    "fit.0": {
        "AIC": "93919.3", "BIC": "93941.7", "logLik": "-46956.6", "deviance": "93913.3",
        "df.resid": "12971",
        "resid Min": "-3.8112", "resid 1Q": "-0.6534", "resid Median": "0.0093",
        "resid 3Q": "0.6732", "resid Max": "4.6999",
        "Var (Intercept)": "23.63", "SD (Intercept)": "4.861",
        "Var Residual": "73.71", "SD Residual": "8.585",
        "nobs": "12974", "groups": "684",
        "Estimate (Intercept)": "50.9391", "SE (Intercept)": "0.2026", "t (Intercept)": "251.4",
    },
    "fit.1": {
        "AIC": "92553.1", "BIC": "92597.9", "logLik": "-46270.5", "deviance": "92541.1",
        "df.resid": "12968",
        "resid Min": "-3.8910", "resid 1Q": "-0.6382", "resid Median": "0.0179",
        "resid 3Q": "0.6669", "resid Max": "4.4613",
        "Var (Intercept)": "12.223", "SD (Intercept)": "3.496",
        "Var ses": "1.515", "SD ses": "1.231", "Corr ses,(Intercept)": "0.11",
        "Var Residual": "67.345", "SD Residual": "8.206",
        "nobs": "12974", "groups": "684",
        "Estimate (Intercept)": "50.6767", "SE (Intercept)": "0.1551", "t (Intercept)": "326.70",
        "Estimate ses": "4.3594", "SE ses": "0.1231", "t ses": "35.41",
        "corr.fe ses,(Intercept)": "0.007",
        "fixef (Intercept)": "50.676702", "fixef ses": "4.359396",
        "vcov (Intercept),(Intercept)": "0.0240607576", "vcov ses,(Intercept)": "0.0001310263",
        "vcov ses,ses": "0.0151611175",
        "SE* (Intercept)": "0.1551153", "SE* ses": "0.1231305",
        "t* (Intercept)": "326.70343", "t* ses": "35.40469",
        "VarCorr (Intercept),(Intercept)": "12.2232568", "VarCorr ses,(Intercept)": "0.4888068",
        "VarCorr ses,ses": "1.5148390",
        "stddev (Intercept)": "3.496177", "stddev ses": "1.230788",
        "correlation ses,(Intercept)": "0.1135954",
    },
    "fit.2": {
        "AIC": "92396.3", "BIC": "92456.0", "logLik": "-46190.1", "deviance": "92380.3",
        "df.resid": "12966",
        "resid Min": "-3.9773", "resid 1Q": "-0.6417", "resid Median": "0.0201",
        "resid 3Q": "0.6659", "resid Max": "4.5202",
        "Var (Intercept)": "9.012", "SD (Intercept)": "3.002",
        "Var ses": "1.571", "SD ses": "1.254", "Corr ses,(Intercept)": "0.06",
        "Var Residual": "67.260", "SD Residual": "8.201",
        "nobs": "12974", "groups": "684",
        "Estimate (Intercept)": "55.3975", "SE (Intercept)": "0.3860", "t (Intercept)": "143.524",
        "Estimate flp": "-2.4062", "SE flp": "0.1819", "t flp": "-13.230",
        "Estimate ses": "4.4909", "SE ses": "0.3326", "t ses": "13.500",
        "Estimate flp:ses": "-0.1931", "SE flp:ses": "0.1587", "t flp:ses": "-1.216",
        "corr.fe flp,(Intercept)": "-0.930", "corr.fe ses,(Intercept)": "-0.158",
        "corr.fe ses,flp": "0.088", "corr.fe flp:ses,(Intercept)": "0.086",
        "corr.fe flp:ses,flp": "-0.007", "corr.fe flp:ses,ses": "-0.926",
    },
}

#: ad-hoc estimates from the per-school OLS fits (BETA.OLS) and schools by flp
ADHOC: dict[str, str] = {
    "BETA.OLS mean (Intercept)": "50.618228", "BETA.OLS mean ses": "3.672483",
    "BETA.OLS cov (Intercept),(Intercept)": "26.795851", "BETA.OLS cov ses,(Intercept)": "1.001585",
    "BETA.OLS cov ses,ses": "15.818939",
    "schools with flp 1": "226", "schools with flp 2": "257", "schools with flp 3": "201",
}
