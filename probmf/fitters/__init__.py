"""Fitters: each maps (rng_key, train Ratings, **options) to a result whose ``params`` is
an `MFParams`, so prediction and metrics never depend on the fitter."""

from probmf.fitters.als import ALSResult, als_run, als_sweep, fit_als
from probmf.fitters.baseline import fit_baseline
from probmf.fitters.svd import SVDResult, fit_svd, truncated_svd

FITTERS = {
    "baseline": fit_baseline,
    "svd": fit_svd,
    "als": fit_als,
}

__all__ = [
    "FITTERS",
    "ALSResult",
    "SVDResult",
    "als_run",
    "als_sweep",
    "fit_als",
    "fit_baseline",
    "fit_svd",
    "truncated_svd",
]
