"""What every fitted model answers, whatever fitted it: a `Predictor`.

``predict(users, items) -> (n,)`` and ``predictive(users, items) -> (mean, sd)``, in dense
indices of the training `Ratings` (-1: unknown), plus ``rank``, ``num_samples``,
``num_chains`` and ``posterior`` (its draws, None when it keeps none). A posterior result is
its own predictor; a point estimate is a posterior with one draw and a plug-in noise,
N(r_hat, s^2) with s the RMS of its clipped training residuals (`PointPredictor`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from probmf.model import MFParams
from probmf.posterior import Posterior


class Predictor(Protocol):
    """What every fitted model answers (indices are dense; -1 is unknown)."""

    # Read-only properties: NamedTuple results answer them with fields or properties.
    @property
    def rank(self) -> int: ...
    @property
    def num_samples(self) -> int: ...  # draws behind the predictive (1 for a point estimate)
    @property
    def num_chains(self) -> int: ...
    @property
    def posterior(self) -> Posterior | None: ...  # the kept draws; None for point fits and summary-only runs

    def predict(self, users: ArrayLike, items: ArrayLike) -> jax.Array: ...
    def predictive(self, users: ArrayLike, items: ArrayLike) -> tuple[jax.Array, jax.Array]: ...


class PointPredictor(NamedTuple):
    """A point estimate as a one-draw posterior: fitted is `MFParams` or a result with
    ``predict(users, items)``; noise_sd the plug-in sd (ratings' units; NaN when unknown,
    as for a model saved before it was kept)."""

    fitted: Any
    noise_sd: float

    # Properties, not class attributes: a NamedTuple's annotated class attributes are fields.
    @property
    def num_samples(self) -> int:
        return 1

    @property
    def num_chains(self) -> int:
        return 1

    @property
    def posterior(self) -> None:
        return None

    @property
    def rank(self) -> int:
        return self.fitted.rank

    @property
    def params(self) -> MFParams | None:
        """The factors and biases when the fit is a matrix factorisation (fold-in solves
        against them), else None (neural fitters)."""
        return self.fitted if isinstance(self.fitted, MFParams) else None

    def predict(self, users: ArrayLike, items: ArrayLike) -> jax.Array:
        """Predicted means (n,); unknown rows (-1) from biases and mu."""
        return self.fitted.predict(users, items)

    def predictive(self, users: ArrayLike, items: ArrayLike) -> tuple[jax.Array, jax.Array]:
        """(mean (n,), sd (n,)): the point prediction and the plug-in sd."""
        mean = self.predict(users, items)
        return mean, jnp.full(mean.shape, self.noise_sd, mean.dtype)
