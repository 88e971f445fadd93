"""Fitters: each maps (rng_key, train Ratings, **options) to a result of one of three kinds,
named here: a posterior (`POSTERIOR_FITTERS`: the result predicts by itself, with
``predictive(users, items) -> (mean, sd)``), a network (`NETWORK_FITTERS`: a point result
with ``predict(users, items)``), or a matrix factorisation (the rest: the result carries
``params``, an `MFParams`). `probmf.fitters.run.predictor_of` makes every one a `Predictor`,
so prediction, metrics and persistence never depend on the fitter.

The registry: `FITTERS` names every fitter; a fitter's module lists in ``SAVED_TYPES`` the
named tuples its saved models hold, and `saved_types` collects them for `probmf.persistence`.
A new fitter is its own module and one entry here.
"""

import sys

from probmf.fitters.als import ALSResult, als_run, als_sweep, fit_als
from probmf.fitters.autorec import AutoRecResult, fit_autorec, fit_autorec_i, fit_autorec_u
from probmf.fitters.baseline import fit_baseline
from probmf.fitters.bayes_model import mf_model
from probmf.fitters.gibbs import GibbsResult, fit_gibbs
from probmf.fitters.mlp import MLPResult, fit_mlp
from probmf.fitters.nuts import NUTSResult, fit_nuts
from probmf.fitters.optax_mf import OptaxResult, fit_optax
from probmf.fitters.residual import ResidualResult, fit_residual
from probmf.fitters.svd import SVDResult, fit_svd, truncated_svd
from probmf.fitters.svi import SVIResult, fit_svi

FITTERS = {
    "baseline": fit_baseline,
    "svd": fit_svd,
    "als": fit_als,
    "autorec-i": fit_autorec_i,
    "autorec-u": fit_autorec_u,
    "optax": fit_optax,
    "gibbs": fit_gibbs,
    "mlp": fit_mlp,
    "residual": fit_residual,
    "nuts": fit_nuts,
    "svi": fit_svi,
}

POSTERIOR_FITTERS = frozenset({"gibbs", "nuts", "svi"})
NETWORK_FITTERS = frozenset({"mlp", "residual", "autorec-i", "autorec-u"})


def saved_types() -> tuple[type, ...]:
    """Every named-tuple type a saved model of a registered fitter may hold (each fitter
    module's ``SAVED_TYPES``), without repeats."""
    found = (t for fit in FITTERS.values() for t in getattr(sys.modules[fit.__module__], "SAVED_TYPES", ()))
    return tuple(dict.fromkeys(found))


__all__ = [
    "FITTERS",
    "NETWORK_FITTERS",
    "POSTERIOR_FITTERS",
    "ALSResult",
    "AutoRecResult",
    "GibbsResult",
    "MLPResult",
    "NUTSResult",
    "OptaxResult",
    "ResidualResult",
    "SVIResult",
    "SVDResult",
    "als_run",
    "als_sweep",
    "fit_als",
    "fit_autorec",
    "fit_autorec_i",
    "fit_autorec_u",
    "fit_baseline",
    "fit_gibbs",
    "fit_mlp",
    "fit_nuts",
    "fit_optax",
    "fit_residual",
    "fit_svd",
    "fit_svi",
    "mf_model",
    "saved_types",
    "truncated_svd",
]
