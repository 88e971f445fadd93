"""Fitters: each maps (rng_key, train Ratings, **options) to a result of one of three kinds,
named here: a posterior (`POSTERIOR_FITTERS`: the result predicts by itself, with
``predictive(users, items) -> (mean, sd)``), a network (`NETWORK_FITTERS`: a point result
with ``predict(users, items)``), or a matrix factorisation (the rest: the result carries
``params``, an `MFParams`). `probmf.fitters.run.predictor_of` makes every one a `Predictor`,
so prediction, metrics and persistence never depend on the fitter.

The registry: `REGISTRY` names every fitter's three faces (`Fitter`): its ``fit_*`` function,
its ``Config`` and its ``prepare`` (`probmf.program`); `FITTERS` maps each name to the
function. A fitter's module lists in ``SAVED_TYPES`` the named tuples its saved models hold,
and `saved_types` collects them for `probmf.persistence`. A new fitter is its own module and
one entry here.
"""

import sys
from collections.abc import Callable
from typing import NamedTuple

from probmf.fitters.als import ALSConfig, ALSResult, als_run, als_sweep, fit_als, prepare_als
from probmf.fitters.autorec import (
    AutoRecConfig,
    AutoRecResult,
    fit_autorec,
    fit_autorec_i,
    fit_autorec_u,
    prepare_autorec,
)
from probmf.fitters.baseline import BaselineConfig, fit_baseline, prepare_baseline
from probmf.fitters.bayes_model import mf_model
from probmf.fitters.gibbs import GibbsConfig, GibbsResult, fit_gibbs, prepare_gibbs
from probmf.fitters.mlp import MLPConfig, MLPResult, fit_mlp, prepare_mlp
from probmf.fitters.nuts import NUTSConfig, NUTSResult, fit_nuts, prepare_nuts
from probmf.fitters.optax_mf import OptaxConfig, OptaxResult, fit_optax, prepare_optax
from probmf.fitters.residual import ResidualConfig, ResidualResult, fit_residual, prepare_residual
from probmf.fitters.svd import SVDConfig, SVDResult, fit_svd, prepare_svd, truncated_svd
from probmf.fitters.svi import SVIConfig, SVIResult, fit_svi, prepare_svi


class Fitter(NamedTuple):
    """A registered fitter: ``fit(rng_key, train, **options)``, whose keyword options are
    ``config``'s fields (then the `probmf.program.RunOptions` it takes); ``prepare(rng_key,
    train, config, run) -> Program``; ``fixed``: config fields the name sets (AutoRec-I and -U
    are one fitter, two configs)."""

    fit: Callable
    config: type
    prepare: Callable
    fixed: dict = {}


REGISTRY = {
    "baseline": Fitter(fit_baseline, BaselineConfig, prepare_baseline),
    "svd": Fitter(fit_svd, SVDConfig, prepare_svd),
    "als": Fitter(fit_als, ALSConfig, prepare_als),
    "autorec-i": Fitter(fit_autorec_i, AutoRecConfig, prepare_autorec, {"item_based": True}),
    "autorec-u": Fitter(fit_autorec_u, AutoRecConfig, prepare_autorec, {"item_based": False}),
    "optax": Fitter(fit_optax, OptaxConfig, prepare_optax),
    "gibbs": Fitter(fit_gibbs, GibbsConfig, prepare_gibbs),
    "mlp": Fitter(fit_mlp, MLPConfig, prepare_mlp),
    "residual": Fitter(fit_residual, ResidualConfig, prepare_residual),
    "nuts": Fitter(fit_nuts, NUTSConfig, prepare_nuts),
    "svi": Fitter(fit_svi, SVIConfig, prepare_svi),
}
FITTERS = {name: fitter.fit for name, fitter in REGISTRY.items()}

POSTERIOR_FITTERS = frozenset({"gibbs", "nuts", "svi"})
NETWORK_FITTERS = frozenset({"mlp", "residual", "autorec-i", "autorec-u"})
# The fitters that take a partitioned folder (`probmf.data.partitioned`), each process reading its own rows.
PARTITIONED_FITTERS = frozenset({"als", "gibbs"})


def saved_types() -> tuple[type, ...]:
    """Every named-tuple type a saved model of a registered fitter may hold (each fitter
    module's ``SAVED_TYPES``), without repeats."""
    found = (t for fit in FITTERS.values() for t in getattr(sys.modules[fit.__module__], "SAVED_TYPES", ()))
    return tuple(dict.fromkeys(found))


__all__ = [
    "FITTERS",
    "REGISTRY",
    "Fitter",
    "NETWORK_FITTERS",
    "PARTITIONED_FITTERS",
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
