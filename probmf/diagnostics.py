"""Convergence diagnostics of posterior draws, on predictions (never on raw factors).

MF factors are identified only up to rotation and sign (W Q, U Q for any orthogonal Q give
the same predictions), so chains that agree on every prediction may disagree on every
factor. R-hat and ESS are therefore computed on the predicted means r_hat_s(i, j) at a set
of pairs (and on hyper-parameters where a fitter keeps them), with ArviZ's default
definitions (Vehtari, Gelman, Simpson, Carpenter & Buerkner 2021, "Rank-normalization,
folding, and localization"), computed here in numpy so that arviz stays optional:

    z = Phi^-1((rank - 3/8) / (S + 1/4))      ranks of all S draws pooled (ties averaged)
    R-hat(x) = sqrt(((n - 1)/n W + B/n) / W)  over the split chains (each cut in two halves
                                              of n draws; BDA3 eq. 11.4)
    rank R-hat = max(R-hat(z(x)), R-hat(z(|x - median x|)))   bulk and tail (folded)
    bulk ESS = ESS(z(x)) over the split chains, Geyer's initial monotone sequence, the
               integrated autocorrelation time floored at 1 / log10(S)
    tail ESS = min(ESS(1[x <= q_0.05]), ESS(1[x <= q_0.95])) over the split chains, q_p
               the p-quantile of all S draws (R's type 7): how well the 90% interval's ends
               are known

i.e. ``az.rhat(..., method="rank")``, ``az.ess(..., method="bulk")`` and
``az.ess(..., method="tail")`` (arviz >= 1: with ``prob=0.95``; its default is the 0.89
interval), to float rounding (tested against ArviZ 0.23 and 1.3). The one difference: one
chain gets an R-hat here (its two halves), where ArviZ returns NaN for fewer than two chains.

A `Posterior` from C chains holds their draws chain-major (S = C x draws per chain).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy.special import ndtri

from probmf.posterior import Posterior, draw_offsets, draw_predictive

if TYPE_CHECKING:
    from probmf.data.ratings import Ratings

__all__ = ["bulk_ess", "prediction_diagnostics", "prediction_draws", "rank_rhat", "tail_ess", "to_inference_data"]


def prediction_draws(
    posterior: Posterior, users: ArrayLike, items: ArrayLike, *, num_chains: int = 1, times: ArrayLike | None = None
) -> np.ndarray:
    """Predicted means of every draw, float64 (num_chains, S / num_chains, P), for the P
    pairs (users[p], items[p]) at ``times`` (seconds; with time effects, None: "now")."""
    S = posterior.num_samples
    if int(num_chains) != num_chains or num_chains < 1 or S % num_chains:
        raise ValueError(f"num_chains={num_chains!r} must be a positive divisor of the {S} draws")
    users, items = jnp.asarray(users), jnp.asarray(items)
    # A loaded model holds numpy arrays: as device arrays they can be indexed by traced ids.
    seen, features, time = jax.tree.map(jnp.asarray, (posterior.seen, posterior.features, posterior.time))
    offset = draw_offsets(posterior, users, items, times)

    def means(draw: tuple) -> jax.Array:
        params, tau, priors, time = draw
        return draw_predictive(params, tau, users, items, priors, seen, features=features, offset=offset(time))[0]

    preds = jax.lax.map(means, (posterior.draws, posterior.tau, posterior.priors, time))
    return np.asarray(preds, np.float64).reshape(num_chains, S // num_chains, -1)


def prediction_diagnostics(
    posterior: Posterior, users: ArrayLike, items: ArrayLike, *, num_chains: int = 1, times: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat and bulk ESS (each float64 (P,)) of the predicted means
    at P pairs (module docstring: ArviZ's ``rhat`` and ``ess`` defaults).

    The draws are read as ``num_chains`` chains, chain-major; each chain is split in halves,
    so one chain gives a (split) R-hat too. Needs >= 4 draws per chain. A pair predicted
    identically by every draw (e.g. a cold pair without row priors) has R-hat NaN and ESS S.
    ``times``: the pairs' timestamps (seconds) with time effects; None: "now".
    """
    x = prediction_draws(posterior, users, items, num_chains=num_chains, times=times)
    if x.shape[1] < 4:
        raise ValueError(f"need >= 4 draws per chain for split R-hat, got {x.shape[1]}")
    return rank_rhat(x), bulk_ess(x)


def rank_rhat(x: ArrayLike) -> np.ndarray:
    """Rank-normalised split R-hat, bulk and tail (module docstring), of draws ``x``
    (chains, draws, ...): float64 of shape ``x.shape[2:]``; NaN where it is undefined (a
    constant quantity, NaN draws, fewer than 4 draws per chain)."""

    def rhat(chains: np.ndarray) -> float:
        split = _split_chains(chains)
        return max(_rhat(_z_scale(split)), _rhat(_z_scale(np.abs(split - np.median(split)))))

    return _each_quantity(x, rhat)


def bulk_ess(x: ArrayLike) -> np.ndarray:
    """Bulk effective sample size (module docstring) of draws ``x`` (chains, draws, ...):
    float64 of shape ``x.shape[2:]``; S for a constant quantity, NaN with NaN draws or fewer
    than 4 draws per chain."""
    return _each_quantity(x, lambda chains: _ess(_z_scale(_split_chains(chains))))


def tail_ess(x: ArrayLike) -> np.ndarray:
    """Tail effective sample size (module docstring: the smaller of the ESS of the indicators
    of the 5% and 95% quantiles) of draws ``x`` (chains, draws, ...): float64 of shape
    ``x.shape[2:]``; S for a constant quantity, NaN with NaN draws or fewer than 4 draws per
    chain."""

    def ess(chains: np.ndarray) -> float:
        low, high = np.quantile(chains, [0.05, 0.95])
        return min(_ess(_split_chains(chains <= low).astype(float)), _ess(_split_chains(chains <= high).astype(float)))

    return _each_quantity(x, ess)


def _each_quantity(x: ArrayLike, statistic: Callable[[np.ndarray], float]) -> np.ndarray:
    """``statistic`` of the chains (chains, draws) of each quantity of draws ``x`` (chains,
    draws, ...), float64 of shape ``x.shape[2:]``; NaN for a quantity with a NaN draw, and
    everywhere with fewer than 4 draws per chain."""
    x = np.asarray(x, np.float64)
    out = np.full(x.shape[2:], np.nan)
    if x.shape[1] < 4:
        return out
    for index in np.ndindex(*x.shape[2:]):
        chains = x[(slice(None), slice(None)) + index]
        if not np.isnan(chains).any():
            with np.errstate(divide="ignore", invalid="ignore"):
                out[index] = statistic(chains)
    return out


def _split_chains(x: np.ndarray) -> np.ndarray:
    """(2C, n // 2): each chain's first and last halves (the middle draw of an odd n is left out)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]])


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks (ties averaged): Phi^-1((rank - 3/8) / (S + 1/4))."""
    flat = x.ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], flat.size]
    ranks = np.empty(flat.size)
    ranks[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(first) - 1]  # mean of ranks starts+1 .. ends
    return ndtri((ranks - 0.375) / (flat.size + 0.25)).reshape(x.shape)


def _rhat(x: np.ndarray) -> float:
    """sqrt((B / W + n - 1) / n) of chains x (m, n): B = n var(chain means), W = mean chain variance."""
    n = x.shape[1]
    between = n * np.var(x.mean(axis=1), ddof=1)
    within = np.mean(np.var(x, axis=1, ddof=1))
    return float(np.sqrt((between / within + n - 1) / n))


def _ess(x: np.ndarray) -> float:
    """ESS of chains x (m, n) (Vehtari et al. 2021, eq. 10; Geyer's initial monotone sequence):
    S / tau with tau = -1 + 2 sum_t rho_t, rho_t the combined autocorrelation at lag t
    (1 - (W - mean_c acov_c(t)) / var_plus), floored at 1 / log10(S)."""
    m, n = x.shape
    if np.ptp(x) < np.finfo(float).resolution:
        return float(x.size)
    # Autocovariances of every lag by FFT, zero-padded to 2n (no wrap-around).
    centred = x - x.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=2 * n, axis=1)
    acov = np.fft.irfft(spectrum * np.conjugate(spectrum), n=2 * n, axis=1)[:, :n] / n
    mean_var = np.mean(acov[:, 0]) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n + (np.var(x.mean(axis=1), ddof=1) if m > 1 else 0.0)
    rho = np.zeros(n)
    rho[0] = even = 1.0
    rho[1] = odd = 1.0 - (mean_var - np.mean(acov[:, 1])) / var_plus
    t = 1  # Geyer's initial positive sequence: pairs of lags while their sum stays positive
    while t < n - 3 and even + odd > 0.0:
        even = 1.0 - (mean_var - np.mean(acov[:, t + 1])) / var_plus
        odd = 1.0 - (mean_var - np.mean(acov[:, t + 2])) / var_plus
        if even + odd >= 0:
            rho[t + 1], rho[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        rho[max_t + 1] = even
    t = 1  # ... made monotone
    while t <= max_t - 2:
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
        t += 2
    tau = -1.0 + 2.0 * np.sum(rho[: max_t + 1]) + np.sum(rho[max_t + 1 : max_t + 2])
    tau = max(tau, 1.0 / np.log10(m * n))
    return float(np.nan if np.isnan(rho).any() else m * n / tau)


def to_inference_data(result: Any, test: Ratings | tuple | None = None, **options: Any) -> Any:
    """`probmf.inference_data.to_inference_data` (kept here, where it was first)."""
    from probmf.inference_data import to_inference_data as build

    return build(result, test, **options)
