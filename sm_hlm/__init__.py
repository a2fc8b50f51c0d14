"""sm_hlm: hierarchical linear (linear mixed-effects) models for statsmodels.

Fits y_j = X_j beta + Z_j b_j + e_j by ML or REML with lme4's profiled
deviance, lme4 ``(expr | group)`` formulas or statsmodels' ``groups=`` /
``re_formula=``, and statsmodels-style results.
"""
from __future__ import annotations

from .design import RandomEffectsDesign, RandomEffectsTerm
from .exceptions import (ConvergenceWarning, DroppedRowsWarning, FormulaSyntaxError,
                         IdentificationError, MissingDataError, SingularFitWarning)
from .model import HLM
from .results import HLMResults
from .multilevel import MultilevelHLM, MultilevelResults
from .compare import RefitMLWarning, compare, summary_table
from .levels import LevelSpecError
from .residual import (AR1, ContinuousAR1, Exchangeable, Heteroscedastic, Independence,
                       ResidualIdentificationWarning, ResidualStructure, Unstructured)

__version__ = "0.1.0"

__all__ = [
    "HLM",
    "HLMResults",
    "MultilevelHLM",
    "MultilevelResults",
    "compare",
    "summary_table",
    "RefitMLWarning",
    "LevelSpecError",
    "ResidualStructure",
    "Independence",
    "AR1",
    "ContinuousAR1",
    "Exchangeable",
    "Unstructured",
    "Heteroscedastic",
    "ResidualIdentificationWarning",
    "RandomEffectsDesign",
    "RandomEffectsTerm",
    "ConvergenceWarning",
    "DroppedRowsWarning",
    "FormulaSyntaxError",
    "IdentificationError",
    "MissingDataError",
    "SingularFitWarning",
]
