"""Exceptions and warnings raised by sm_hlm."""
from __future__ import annotations

from statsmodels.tools.sm_exceptions import ConvergenceWarning, MissingDataError

__all__ = [
    "ConvergenceWarning",
    "DroppedRowsWarning",
    "FormulaSyntaxError",
    "IdentificationError",
    "MissingDataError",
    "SingularFitWarning",
]


class FormulaSyntaxError(ValueError):
    """A model formula (including lme4 ``(expr | group)`` terms) is malformed."""


class IdentificationError(ValueError):
    """The data cannot identify the requested model (too few groups, aliased columns...)."""


class DroppedRowsWarning(UserWarning):
    """Rows with missing (NaN/inf) values were dropped (``missing='drop'``)."""


class SingularFitWarning(UserWarning):
    """A variance or correlation parameter converged to its boundary."""
