"""One entry point for every fitter: ``probmf.fit(model, train, **config) -> FitResult``.

A `FitResult`'s predictor answers the same questions whatever fitted it
(`probmf.predictor.Predictor`): a posterior result is its own predictor, a point estimate is
wrapped as a one-draw posterior with a plug-in noise (`probmf.predictor.PointPredictor`),
the sd ``probmf evaluate`` scores it with. Which fitter gives which, the registry says
(`probmf.fitters.POSTERIOR_FITTERS`, `probmf.fitters.NETWORK_FITTERS`).
"""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import jax

from probmf.checkpoint import show_progress
from probmf.data.io import to_ratings
from probmf.data.partitioned import PartitionedRatings
from probmf.data.ratings import Ratings
from probmf.fitters import FITTERS, NETWORK_FITTERS, PARTITIONED_FITTERS, POSTERIOR_FITTERS, REGISTRY
from probmf.metrics import plugin_sd
from probmf.predictor import PointPredictor, Predictor
from probmf.program import RunOptions, run_program

if TYPE_CHECKING:
    import pandas as pd


class FitResult(NamedTuple):
    """predictor: a `Predictor`; info: the fitter's own result (traces, diagnostics, the
    draws); config: the options it ran with, defaults filled in; seconds: wall time of the fit."""

    predictor: Predictor
    info: Any
    config: dict
    seconds: float


def fitter_options(model: str) -> dict:
    """The keyword options of a fitter and their defaults."""
    sig = inspect.signature(FITTERS[model])
    return {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def resolve_options(model: str, given: dict) -> dict:
    """The fitter's defaults overridden by ``given``; an option the model lacks is an error."""
    if model not in FITTERS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(FITTERS)}")
    options = fitter_options(model)
    for name in given:
        if name not in options:
            raise ValueError(f"option {name!r} does not apply to model {model!r} (it takes {sorted(options)})")
    return {**options, **given}


def run_fitter(model: str, train: Ratings | PartitionedRatings, *, options: dict, rng_key: jax.Array) -> tuple:
    """Run the fitter ``model`` on ``train``: its ``Config`` from ``options`` (the rest are
    `RunOptions`), validated, its ``prepare``, and `probmf.program.run_program`, the loop every
    fitter shares (checkpoints, progress bar). Returns (its result, options used, seconds).
    ``train`` may be a partitioned folder for the `PARTITIONED_FITTERS`."""
    options = resolve_options(model, options)
    if isinstance(train, PartitionedRatings) and model not in PARTITIONED_FITTERS:
        raise ValueError(
            f"{train.path}: a partitioned folder is fitted by {' or '.join(sorted(PARTITIONED_FITTERS))} "
            f"(each process reads its own rows), not by {model}"
        )
    fitter = REGISTRY[model]
    run = RunOptions(**{k: v for k, v in options.items() if k in RunOptions._fields})
    config = fitter.config(**fitter.fixed, **{k: v for k, v in options.items() if k not in RunOptions._fields})
    t0 = time.perf_counter()
    program = fitter.prepare(rng_key, train, config.validate(run), run)
    result = jax.block_until_ready(run_program(program))
    return result, options, time.perf_counter() - t0


def predictor_of(
    model: str, result: Any, train: Ratings | PartitionedRatings, clip: bool | tuple[float, float] = True
) -> Predictor:
    """The `Predictor` of fitter ``model``'s ``result`` on ``train``: a posterior result as it
    is; a point fit (its ``params``, or the result when it predicts by itself) as a
    `PointPredictor` whose plug-in sd is over ``train`` with predictions clipped as ``clip``
    (True: to the training range; False: not; or a (low, high) pair)."""
    if model in POSTERIOR_FITTERS:
        return result
    fitted = result if model in NETWORK_FITTERS else result.params
    if clip is True:
        clip = (
            train.rating_range
            if isinstance(train, PartitionedRatings)
            else (float(train.values.min()), float(train.values.max()))
        )
    return PointPredictor(fitted, plugin_sd(fitted, train, clip or None))


def fit_model(
    model: str,
    train: Ratings | PartitionedRatings,
    *,
    options: dict,
    seed: int = 0,
    clip: bool | tuple[float, float] = True,
) -> tuple:
    """Fit ``model`` on ``train``: returns (its `Predictor` (`predictor_of`), options used, seconds)."""
    result, options, seconds = run_fitter(model, train, options=options, rng_key=jax.random.PRNGKey(seed))
    return predictor_of(model, result, train, clip), options, seconds


def fit(
    model: str,
    train: Ratings | pd.DataFrame,
    *,
    rng_key: jax.Array | None = None,
    seed: int = 0,
    progress: bool | None = None,
    **config: Any,
) -> FitResult:
    """Fit ``model`` (a name in ``probmf.FITTERS``) on ``train`` (`Ratings`, or a pandas
    DataFrame checked by `probmf.data.io.read_dataframe`) with the fitter's options
    ``config`` (unknown ones are an error). ``rng_key`` (or ``seed``) seeds it.
    ``progress``: a progress bar over the sweeps or epochs (None: in interactive sessions;
    `probmf.checkpoint.show_progress`)."""
    train = to_ratings(train)
    key = jax.random.PRNGKey(seed) if rng_key is None else rng_key
    with show_progress(progress):
        result, options, seconds = run_fitter(model, train, options=config, rng_key=key)
    return FitResult(predictor_of(model, result, train), result, options, seconds)
