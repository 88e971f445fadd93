"""Biases-only baseline: r_hat = mu + b_i + c_j with ridge-regularised biases.

It is the rank-0 case of the biased MF model, fitted by the same closed-form ALS updates
    b_i = sum_j (r_ij - c_j - mu) / (|Psi_i| + lam_bias),  c_j likewise,
so it shares every code path (encoding, solves, prediction) with `fit_als`.
"""

from __future__ import annotations

from probmf.data.ratings import Ratings
from probmf.fitters.als import ALSResult, fit_als

# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (ALSResult,)


def fit_baseline(rng_key, train: Ratings, *, lam_bias: float = 3.0, num_sweeps: int = 10) -> ALSResult:
    """Fit global mean + user/item biases (rank 0); see `fit_als` for the result."""
    return fit_als(rng_key, train, rank=0, lam=0.0, lam_bias=lam_bias, num_sweeps=num_sweeps)
