"""Models with several grouping factors: nested (three-level and deeper) and crossed.

=================  ==========================================================
module             role
=================  ==========================================================
``factors``        grouping factors from columns and interactions, checks
``model``          :class:`MultilevelHLM`: design, working coordinates, fit
``results``        :class:`MultilevelResults`: per-factor outputs
``prediction``     predictions with new levels at any level
``summary``        lme4-style summary
=================  ==========================================================

The numerical work is the blocked Cholesky of :mod:`sm_hlm.engine`.
:meth:`sm_hlm.HLM.from_formula` returns a :class:`MultilevelHLM` for a
formula with more than one grouping factor.
"""
from __future__ import annotations

from .model import MultilevelHLM, specs_from_vc_formula
from .results import MultilevelResults, MultilevelResultsWrapper

__all__ = ["MultilevelHLM", "MultilevelResults", "MultilevelResultsWrapper",
           "specs_from_vc_formula"]
