"""One entry point for every fitter: ``probmf.fit(model, train, **config) -> FitResult``.

A `FitResult`'s predictor answers the same two questions whatever fitted it:
``predict(users, items) -> (n,)`` and ``predictive(users, items) -> (mean, sd)``, in dense
indices of the training `Ratings` (-1: unknown). A posterior is its own predictor; a point
estimate is wrapped as a posterior with one draw and a plug-in noise, N(r_hat, s^2) with s
the RMS of its clipped training residuals, the sd ``probmf evaluate`` scores it with.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from probmf.checkpoint import show_progress
from probmf.data.io import to_ratings
from probmf.data.ratings import Ratings
from probmf.evaluate import fitted_of, run_fitter
from probmf.metrics import plugin_sd


class PointPredictor(NamedTuple):
    """A point estimate as a one-draw posterior: fitted is `MFParams` or a result with
    ``predict(users, items)``; noise_sd the plug-in sd (ratings' units)."""

    fitted: Any
    noise_sd: float

    @property
    def rank(self) -> int:
        return self.fitted.rank

    def predict(self, users, items) -> jax.Array:
        """Predicted means (n,); unknown rows (-1) from biases and mu."""
        return self.fitted.predict(users, items)

    def predictive(self, users, items) -> tuple[jax.Array, jax.Array]:
        """(mean (n,), sd (n,)): the point prediction and the plug-in sd."""
        mean = self.predict(users, items)
        return mean, jnp.full(mean.shape, self.noise_sd, mean.dtype)


class FitResult(NamedTuple):
    """predictor: ``predict`` and ``predictive`` for every fitter (module docstring); info:
    the fitter's own result (traces, diagnostics, the draws); config: the options it ran
    with, defaults filled in; seconds: wall time of the fit."""

    predictor: Any
    info: Any
    config: dict
    seconds: float


def fit(model: str, train, *, rng_key=None, seed: int = 0, progress: bool | None = None, **config) -> FitResult:
    """Fit ``model`` (a name in ``probmf.FITTERS``) on ``train`` (`Ratings`, or a pandas
    DataFrame checked by `probmf.data.io.read_dataframe`) with the fitter's options
    ``config`` (unknown ones are an error). ``rng_key`` (or ``seed``) seeds it.
    ``progress``: a progress bar over the sweeps or epochs (None: in interactive sessions;
    `probmf.checkpoint.show_progress`)."""
    train: Ratings = to_ratings(train)
    key = jax.random.PRNGKey(seed) if rng_key is None else rng_key
    with show_progress(progress):
        result, options, seconds = run_fitter(model, train, options=config, rng_key=key)
    fitted = fitted_of(result)
    if not hasattr(fitted, "predictive"):
        scale = (float(train.values.min()), float(train.values.max()))
        fitted = PointPredictor(fitted, plugin_sd(fitted, train, scale))
    return FitResult(fitted, result, options, seconds)
