"""The Bayesian biased MF model as one NumPyro model, and the `Posterior` its draws make.

    r_ij ~ N(w_i . u_j + b_i + c_j + mu, 1/tau),   tau ~ Gamma(a_tau, b_tau),
    b_i ~ N(0, 1/lam_b),  c_j ~ N(0, 1/lam_c),  mu fixed at the training mean,

with the factor priors chosen by ``hyper``:

  "fixed"    w_i ~ N(0, I/lam), u_j ~ N(0, I/lam), lam_b = lam_c = lam_bias: the PMF-MAP
             priors of `probmf.objectives` (log density = -map_loss + const at fixed tau);
  "gamma"    w_i ~ N(0, diag(lam_w)^-1), lam_w[d] ~ Gamma(a_lam, b_lam) per dimension (ARD),
             u_j likewise with lam_u; lam_b, lam_c ~ Gamma(a_bias, b_bias);
  "wishart"  BPMF's (mu_w, Lam_w) ~ Normal-Wishart(0, beta0, I, k), w_i ~ N(mu_w, Lam_w^-1),
             u_j likewise, as `probmf.fitters.gibbs` samples it; lam_b, lam_c as "gamma".

The constants are `probmf.objectives.Hyperpriors`, the Gibbs sampler's.

The ratings plate takes a minibatch: the model is called with B ratings and
``num_ratings = n``, and their log-likelihood is scaled by n / B (an unbiased estimate of
the full-data term). The indices are shuffled on the host; NumPyro's own
``plate(subsample_size=)`` would draw them on the device at every step.

Factors are identified only up to rotation and sign, so diagnostics (R-hat, ESS) are of
predictions and hyper-parameters, never of raw factors. NUTS (`probmf.fitters.nuts`) and SVI
(`probmf.fitters.svi`) fit this model and return their draws as a `Posterior`
(`_posterior_from_samples`), so ``predict``/``predictive`` are those of the Gibbs sampler.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.typing import ArrayLike
from numpyro.infer.initialization import init_to_median

from probmf.data.ratings import Ratings
from probmf.model import MFParams, predict
from probmf.objectives import Hyperpriors
from probmf.posterior import Posterior, RowPrior

HYPERS = ("fixed", "gamma", "wishart")


DEFAULT_PRIORS = Hyperpriors()  # the Gibbs sampler's too: one set of constants


def mf_model(
    users: jax.Array,
    items: jax.Array,
    ratings: jax.Array | None = None,
    *,
    num_users: int,
    num_items: int,
    rank: int,
    mu: ArrayLike,
    hyper: str = "gamma",
    num_ratings: int | None = None,
    hyperpriors: Hyperpriors = DEFAULT_PRIORS,
) -> None:
    """The Bayesian biased MF model (module docstring) over one minibatch of ratings.

    Args:
      users: int (B,) dense user indices of the minibatch.
      items: int (B,) dense item indices of the minibatch.
      ratings: float (B,) observed ratings, or None to sample them.
      num_users: N.
      num_items: M.
      rank: k.
      mu: the fixed global offset (a float or a () array).
      hyper: "fixed", "gamma" or "wishart" (factor and bias priors).
      num_ratings: n, the size of the full data; the likelihood is scaled by n / B
        (None: the batch is all the data).
      hyperpriors: `Hyperpriors` constants (`probmf.objectives`).

    Sites: W (N, k), U (M, k), b (N,), c (M,), tau (); hyper-parameters lam_w, lam_u (k,),
    lam_b, lam_c () for "gamma"; mu_w, Lam_w, mu_u, Lam_u, lam_b, lam_c for "wishart";
    observed r (B,).
    """
    p = hyperpriors
    if hyper == "fixed":
        lam_w = lam_u = jnp.full((rank,), p.lam)
        lam_b = lam_c = p.lam_bias
    elif hyper == "gamma":
        lam_w = numpyro.sample("lam_w", dist.Gamma(p.a_lam, p.b_lam).expand([rank]).to_event(1))
        lam_u = numpyro.sample("lam_u", dist.Gamma(p.a_lam, p.b_lam).expand([rank]).to_event(1))
        lam_b = numpyro.sample("lam_b", dist.Gamma(p.a_bias, p.b_bias))
        lam_c = numpyro.sample("lam_c", dist.Gamma(p.a_bias, p.b_bias))
    elif hyper == "wishart":
        lam_b = numpyro.sample("lam_b", dist.Gamma(p.a_bias, p.b_bias))
        lam_c = numpyro.sample("lam_c", dist.Gamma(p.a_bias, p.b_bias))
    else:
        raise ValueError(f"hyper must be one of {HYPERS}, got {hyper!r}")

    def factor_prior(side: str, lam_diag: jax.Array | None) -> Any:
        if hyper != "wishart":
            assert lam_diag is not None, "diagonal priors have their precisions"
            return dist.Normal(jnp.zeros(rank), lam_diag**-0.5).to_event(1)
        # (m, Lam) ~ NW(0, beta0, I, nu0): Lam ~ Wishart(nu0, I), m ~ N(0, (beta0 Lam)^-1).
        nu0 = float(rank + p.nu0_extra)
        lam = numpyro.sample(f"Lam_{side}", dist.Wishart(nu0, scale_matrix=jnp.eye(rank)))
        m = numpyro.sample(f"mu_{side}", dist.MultivariateNormal(jnp.zeros(rank), precision_matrix=p.beta0 * lam))
        return dist.MultivariateNormal(m, precision_matrix=lam)

    w_prior = factor_prior("w", lam_w if hyper != "wishart" else None)
    u_prior = factor_prior("u", lam_u if hyper != "wishart" else None)
    with numpyro.plate("users", num_users):
        W = numpyro.sample("W", w_prior)
        b = numpyro.sample("b", dist.Normal(0.0, lam_b**-0.5))
    with numpyro.plate("items", num_items):
        U = numpyro.sample("U", u_prior)
        c = numpyro.sample("c", dist.Normal(0.0, lam_c**-0.5))
    tau = numpyro.sample("tau", dist.Gamma(p.a_tau, p.b_tau))

    batch = users.shape[0]
    mean = predict(MFParams(W, U, b, c, jnp.asarray(mu)), users, items)
    scale = 1.0 if num_ratings is None else num_ratings / batch
    with numpyro.handlers.scale(scale=scale), numpyro.plate("ratings", batch):
        numpyro.sample("r", dist.Normal(mean, tau**-0.5), obs=ratings)


def init_small_factors(site: dict | None = None, *, scale: float = 0.1) -> Any:
    """Init strategy: W, U ~ N(0, scale^2) (so no factor starts at the saddle W = U = 0),
    every other site at its prior median."""
    if site is None:
        return functools.partial(init_small_factors, scale=scale)
    if site["type"] == "sample" and not site["is_observed"] and site["name"] in ("W", "U"):
        shape = site["kwargs"].get("sample_shape", ()) + site["fn"].shape()
        return scale * jax.random.normal(site["kwargs"]["rng_key"], shape)
    return init_to_median(site)


def _posterior_from_samples(
    samples: dict, mu: float, hyper: str, seen: tuple, hyperpriors: Hyperpriors = DEFAULT_PRIORS
) -> Posterior:
    """`Posterior` from the model's sites, each with a leading sample axis: W, U, b, c, tau,
    and the hyper-parameters that give each draw's prior of a row with no training rating
    (``seen``: (users (N,), items (M,)) bool rows with training ratings)."""
    tau = jnp.asarray(samples["tau"], jnp.float32)
    S, k = tau.shape[0], samples["W"].shape[-1]
    mus = jnp.full(tau.shape, mu, jnp.float32)

    def row_prior(side: str, bias: str) -> RowPrior:
        if hyper == "wishart":
            mean, cov = samples[f"mu_{side}"], jnp.linalg.inv(samples[f"Lam_{side}"])
        else:
            lam = jnp.broadcast_to(samples[f"lam_{side}"] if hyper == "gamma" else hyperpriors.lam, (S, k))
            mean, cov = jnp.zeros((S, k)), jax.vmap(jnp.diag)(1.0 / lam)
        lam_bias = samples[bias] if hyper != "fixed" else jnp.full((S,), hyperpriors.lam_bias)
        return RowPrior(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32), 1.0 / lam_bias)

    draws = MFParams(samples["W"], samples["U"], samples["b"], samples["c"], mus)
    return Posterior(draws, tau, priors=(row_prior("w", "lam_b"), row_prior("u", "lam_c")), seen=seen)


def _check_common(rank: int, hyper: str, **positive: int | None) -> None:
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if hyper not in HYPERS:
        raise ValueError(f"hyper must be one of {HYPERS}, got {hyper!r}")
    for name, v in positive.items():
        if v is None or int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def _device_data(train: Ratings) -> tuple[jax.Array, jax.Array, jax.Array]:
    if len(train) == 0:
        raise ValueError(f"{train.source or 'training ratings'}: no ratings to fit")
    if not np.all(train.known):
        raise ValueError("training ratings must have every user and item known (no -1 index)")
    return jnp.asarray(train.users), jnp.asarray(train.items), jnp.asarray(train.values, jnp.float32)
