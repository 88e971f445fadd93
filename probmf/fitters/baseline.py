"""Biases-only baseline: r_hat = mu + b_i + c_j with ridge-regularised biases.

It is the rank-0 case of the biased MF model, fitted by the same closed-form ALS updates
    b_i = sum_j (r_ij - c_j - mu) / (|Psi_i| + lam_bias),  c_j likewise,
so it shares every code path (encoding, solves, prediction) with `fit_als`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from probmf.data.ratings import Ratings
from probmf.fitters.als import ALSConfig, ALSResult, prepare_als
from probmf.program import DEFAULT_RUN, Program, RunOptions, run_program

if TYPE_CHECKING:
    import jax

# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (ALSResult,)


class BaselineConfig(NamedTuple):
    """lam_bias: the biases' ridge; num_sweeps: ALS sweeps."""

    lam_bias: float = 3.0
    num_sweeps: int = 10

    def als(self) -> ALSConfig:
        """The rank-0 `ALSConfig` this baseline is."""
        return ALSConfig(rank=0, lam=0.0, lam_bias=self.lam_bias, num_sweeps=self.num_sweeps)

    def validate(self, run: RunOptions = DEFAULT_RUN) -> BaselineConfig:
        """Self, or the ValueError of the ALS options it stands for."""
        self.als().validate(run)
        return self


def prepare_baseline(
    rng_key: jax.Array, train: Ratings, config: BaselineConfig, run: RunOptions = DEFAULT_RUN
) -> Program:
    """The rank-0 ALS `Program` (`prepare_als`)."""
    return prepare_als(rng_key, train, config.als(), run)


def fit_baseline(rng_key: jax.Array, train: Ratings, *, lam_bias: float = 3.0, num_sweeps: int = 10) -> ALSResult:
    """Fit global mean + user/item biases (rank 0); see `fit_als` for the result."""
    return run_program(prepare_baseline(rng_key, train, BaselineConfig(lam_bias, num_sweeps).validate()))
