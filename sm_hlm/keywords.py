"""Messages for keyword arguments sm_hlm does not use (statsmodels' and others)."""
from __future__ import annotations

from typing import Any

__all__ = ["_MIXEDLM_MODEL_KEYWORDS", "_MIXEDLM_FIT_KEYWORDS", "_unknown_keywords"]


#: statsmodels MixedLM keywords of the model that sm_hlm does not support (yet), with advice
_MIXEDLM_MODEL_KEYWORDS = {
    "freq_weights": "frequency weights are not supported yet: replicate the rows instead",
    "var_weights": "variance weights are not supported yet",
    "vc_formula": "nested variance components are a formula option: "
                  "HLM.from_formula(formula, data, groups=..., vc_formula={...})",
    "exog_vc": "give nested variance components as vc_formula= to HLM.from_formula, or "
               "as (1 | outer:inner) terms in the formula",
    "use_sqrt": "sm_hlm always optimises the relative covariance factor (lme4's theta)",
}
#: statsmodels (MixedLM) keywords of fit() that sm_hlm does not support
_MIXEDLM_FIT_KEYWORDS = {
    "niter_sa": "sm_hlm has no steepest-ascent phase: it optimises the profiled deviance",
    "do_cg": "use method='lbfgs' for a gradient-only fit",
    "fe_pen": "penalised fixed effects are not supported",
    "cov_pen": "penalised covariances are not supported",
    "free": "constrained covariance patterns: use (x || g) or separate terms",
    "full_output": "the optimiser record is always kept (results.optimizer)",
    "callback": "callbacks are not supported",
    "retall": "the optimiser record is always kept (results.optimizer)",
}


def _unknown_keywords(where: str, kwargs: dict[str, Any], known: dict[str, str]) -> str:
    """The TypeError message for keywords that are not used."""
    parts = []
    for k in sorted(kwargs):
        if k in known:
            parts.append(f"the statsmodels keyword {k!r} is not supported by sm_hlm: {known[k]}")
        else:
            parts.append(f"unexpected keyword argument {k!r}")
    return f"{where} got " + "; ".join(parts)
