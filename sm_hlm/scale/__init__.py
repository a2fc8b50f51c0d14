"""Fits from summed per-group statistics: data beyond memory.

Only per-group sufficient statistics (Z_j'Z_j, Z_j'[X_j y_j]) and W'W enter the
profiled deviance, and they add up over chunks of rows.  This package computes
them chunk by chunk and fits on the client:

* :mod:`sm_hlm.scale.stats` -- the fixed design of every chunk, the two passes
  (moments for the working coordinates, then the statistics) and the model
  fitted from the summed statistics (:class:`SummedHLM`);
* :mod:`sm_hlm.scale.dask` -- the same passes on a Dask DataFrame (workers
  compute; buckets of whole groups, each summed by a tree reduction, reduced to
  the per-group roots and kept on the cluster; BLUPs, fitted values and
  residuals are lazy Dask collections); ``HLM.from_formula(formula,
  data=dask_dataframe)`` lands here;
* :mod:`sm_hlm.scale.parquet` -- out of core on one machine from a parquet file
  or directory (pyarrow record batches, a tqdm progress bar);
* :mod:`sm_hlm.scale.cells` -- several grouping factors (nested or crossed):
  per-cell Gram matrices turned into pseudo-rows fitted by the in-memory
  blocked engine with the true number of observations (:class:`CellHLM`),
  for both of the above.
"""
from __future__ import annotations

from .stats import ChunkDesign, SummedHLM, SummedHLMResults

__all__ = ["ChunkDesign", "SummedHLM", "SummedHLMResults", "from_parquet"]


def from_parquet(*args, **kwargs) -> SummedHLM:
    """See :func:`sm_hlm.scale.parquet.from_parquet`."""
    from .parquet import from_parquet as _fp
    return _fp(*args, **kwargs)
