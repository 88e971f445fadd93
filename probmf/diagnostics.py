"""Convergence diagnostics of posterior draws, on predictions (never on raw factors).

MF factors are identified only up to rotation and sign (W Q, U Q for any orthogonal Q give
the same predictions), so chains that agree on every prediction may disagree on every
factor. R-hat and ESS are therefore computed on the predicted means r_hat_s(i, j) at a set
of pairs (and on hyper-parameters where a fitter keeps them):

    split R-hat = sqrt(((n - 1)/n W + B/n) / W)      (Gelman et al., BDA3 eq. 11.4, each
                                                     chain cut in two halves)

A `Posterior` from C chains holds their draws chain-major (S = C x draws per chain).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

from probmf.posterior import Posterior, draw_predictive

__all__ = ["prediction_diagnostics", "prediction_draws", "to_inference_data"]


def prediction_draws(posterior: Posterior, users, items, *, num_chains: int = 1) -> np.ndarray:
    """Predicted means of every draw, float64 (num_chains, S / num_chains, P), for the P
    pairs (users[p], items[p])."""
    S = posterior.num_samples
    if int(num_chains) != num_chains or num_chains < 1 or S % num_chains:
        raise ValueError(f"num_chains={num_chains!r} must be a positive divisor of the {S} draws")
    users, items = jnp.asarray(users), jnp.asarray(items)

    def means(draw):
        params, tau, priors = draw
        return draw_predictive(params, tau, users, items, priors, posterior.seen, features=posterior.features)[0]

    preds = jax.lax.map(means, (posterior.draws, posterior.tau, posterior.priors))
    return np.asarray(preds, np.float64).reshape(num_chains, S // num_chains, -1)


def prediction_diagnostics(posterior: Posterior, users, items, *, num_chains: int = 1):
    """Split R-hat and ESS (each float64 (P,)) of the predicted means at P pairs.

    The draws are read as ``num_chains`` chains, chain-major; each chain is split in halves
    for R-hat, so one chain gives a (split) R-hat too. Needs >= 4 draws per chain. ESS is
    inf (or negative) where the draws' autocorrelations sum to 1/2 (or less): anti-correlated
    draws, such as a variational posterior's antithetic pairs.
    """
    x = prediction_draws(posterior, users, items, num_chains=num_chains)
    if x.shape[1] < 4:
        raise ValueError(f"need >= 4 draws per chain for split R-hat, got {x.shape[1]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(split_gelman_rubin(x)), np.asarray(effective_sample_size(x))


def to_inference_data(posterior: Posterior, *, num_chains: int = 1, users=None, items=None, observed=None):
    """ArviZ ``InferenceData`` of a `Posterior`: tau, and the predicted means at the given
    pairs ("r_hat", dims (chain, draw, pair)); raw factors are left out on purpose
    (see the module docstring). ``observed`` (P,) adds the observed ratings of those pairs.

    Needs arviz (not a probmf dependency): raises ImportError without it.
    """
    try:
        import arviz as az
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("to_inference_data needs arviz: pip install arviz") from err
    S = posterior.num_samples
    if int(num_chains) != num_chains or num_chains < 1 or S % num_chains:
        raise ValueError(f"num_chains={num_chains!r} must be a positive divisor of the {S} draws")
    draws = {"tau": np.asarray(posterior.tau, np.float64).reshape(num_chains, -1)}
    dims = {}
    if users is not None:
        draws["r_hat"] = prediction_draws(posterior, users, items, num_chains=num_chains)
        dims["r_hat"] = ["pair"]
    kwargs = {}
    if observed is not None:
        kwargs["observed_data"] = {"r": np.asarray(observed)}
        dims["r"] = ["pair"]
    return az.from_dict(posterior=draws, dims=dims, **kwargs)
