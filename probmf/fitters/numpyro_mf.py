"""The Bayesian biased MF model as one NumPyro model, fitted by NUTS or by SVI.

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
predictions and hyper-parameters, never of raw factors. Both fitters return their draws as
a `Posterior`, so ``predict``/``predictive`` are those of the Gibbs sampler.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_median

from probmf.checkpoint import check_every, fit_checkpoint, run_steps
from probmf.data.ratings import Ratings
from probmf.diagnostics import prediction_diagnostics
from probmf.model import MFParams, predict
from probmf.objectives import Hyperpriors
from probmf.posterior import Posterior, RowPrior, seen_rows
from probmf.sharding import check_devices, device_mesh, replicated, split_along

HYPERS = ("fixed", "gamma", "wishart")
GUIDES = ("normal", "lowrank")


DEFAULT_PRIORS = Hyperpriors()  # the Gibbs sampler's too: one set of constants


def mf_model(
    users,
    items,
    ratings=None,
    *,
    num_users: int,
    num_items: int,
    rank: int,
    mu,
    hyper: str = "gamma",
    num_ratings=None,
    priors: Hyperpriors = DEFAULT_PRIORS,
):
    """The Bayesian biased MF model (module docstring) over one minibatch of ratings.

    Args:
      users, items: int (B,) dense indices of the minibatch.
      ratings: float (B,) observed ratings, or None to sample them.
      num_users, num_items, rank: N, M, k.
      mu: the fixed global offset (a float or a () array).
      hyper: "fixed", "gamma" or "wishart" (factor and bias priors).
      num_ratings: n, the size of the full data; the likelihood is scaled by n / B
        (None: the batch is all the data).
      priors: `Hyperpriors` constants.

    Sites: W (N, k), U (M, k), b (N,), c (M,), tau (); hyper-parameters lam_w, lam_u (k,),
    lam_b, lam_c () for "gamma"; mu_w, Lam_w, mu_u, Lam_u, lam_b, lam_c for "wishart";
    observed r (B,).
    """
    p = priors
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

    def factor_prior(side, lam_diag):
        if hyper != "wishart":
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
    mean = predict(MFParams(W, U, b, c, mu), users, items)
    scale = 1.0 if num_ratings is None else num_ratings / batch
    with numpyro.handlers.scale(scale=scale), numpyro.plate("ratings", batch):
        numpyro.sample("r", dist.Normal(mean, tau**-0.5), obs=ratings)


def init_small_factors(site=None, *, scale: float = 0.1):
    """Init strategy: W, U ~ N(0, scale^2) (so no factor starts at the saddle W = U = 0),
    every other site at its prior median."""
    if site is None:
        return functools.partial(init_small_factors, scale=scale)
    if site["type"] == "sample" and not site["is_observed"] and site["name"] in ("W", "U"):
        shape = site["kwargs"].get("sample_shape", ()) + site["fn"].shape()
        return scale * jax.random.normal(site["kwargs"]["rng_key"], shape)
    return init_to_median(site)


def _posterior_from_samples(samples: dict, mu: float, hyper: str, seen: tuple, priors: Hyperpriors = DEFAULT_PRIORS):
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
            lam = jnp.broadcast_to(samples[f"lam_{side}"] if hyper == "gamma" else priors.lam, (S, k))
            mean, cov = jnp.zeros((S, k)), jax.vmap(jnp.diag)(1.0 / lam)
        lam_bias = samples[bias] if hyper != "fixed" else jnp.full((S,), priors.lam_bias)
        return RowPrior(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32), 1.0 / lam_bias)

    draws = MFParams(samples["W"], samples["U"], samples["b"], samples["c"], mus)
    return Posterior(draws, tau, priors=(row_prior("w", "lam_b"), row_prior("u", "lam_c")), seen=seen)


def _check_common(rank, hyper, **positive):
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if hyper not in HYPERS:
        raise ValueError(f"hyper must be one of {HYPERS}, got {hyper!r}")
    for name, v in positive.items():
        if v is None or int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def _device_data(train: Ratings):
    if len(train) == 0:
        raise ValueError(f"{train.source or 'training ratings'}: no ratings to fit")
    if not np.all(train.known):
        raise ValueError("training ratings must have every user and item known (no -1 index)")
    return jnp.asarray(train.users), jnp.asarray(train.items), jnp.asarray(train.values, jnp.float32)


# ----------------------------------------------------------------------------------- NUTS


class NUTSInfo(NamedTuple):
    """NUTS diagnostics.

    num_divergences: (C,) divergent transitions after warm-up, per chain.
    step_size: (C,) adapted step size per chain.
    mean_tree_depth: (C,) mean log2(leapfrog steps + 1) per chain.
    r_hat, ess: (P,) split R-hat and effective sample size of the predictions at the check
      pairs (all chains together).
    check_users, check_items: (P,) the training pairs the diagnostics are computed on.
    seconds: wall time of warm-up and sampling.
    """

    num_divergences: np.ndarray
    step_size: np.ndarray
    mean_tree_depth: np.ndarray
    r_hat: np.ndarray
    ess: np.ndarray
    check_users: np.ndarray
    check_items: np.ndarray
    seconds: float


class NUTSResult(NamedTuple):
    """``posterior``: the draws of every chain, chain-major (S = num_chains * num_samples);
    ``info``: `NUTSInfo`."""

    posterior: Posterior
    info: NUTSInfo

    @property
    def rank(self) -> int:
        return self.posterior.rank

    @property
    def num_samples(self) -> int:
        return int(self.posterior.num_samples)

    @property
    def num_chains(self) -> int:
        return len(self.info.step_size)

    @property
    def r_hat_max(self) -> float:
        return float(np.max(self.info.r_hat))

    @property
    def ess_min(self) -> float:
        return float(np.min(self.info.ess))

    def predict(self, users, items):
        return self.posterior.predict(users, items)

    def predictive(self, users, items):
        return self.posterior.predictive(users, items)


def subset_ratings(train: Ratings, *, max_users: int | None, max_items: int | None) -> np.ndarray:
    """bool (n,): the ratings among the ``max_users`` most active users and ``max_items`` most
    rated items (None: all of that side)."""
    keep = np.ones(len(train), bool)
    for idx, size, top in ((train.users, train.num_users, max_users), (train.items, train.num_items, max_items)):
        if top is not None and top < size:
            counts = np.bincount(idx, minlength=size)
            chosen = np.zeros(size, bool)
            chosen[np.argsort(-counts, kind="stable")[:top]] = True
            keep &= chosen[idx]
    return keep


def fit_nuts(
    rng_key,
    train: Ratings,
    *,
    rank: int = 3,
    hyper: str = "gamma",
    num_warmup: int = 200,
    num_samples: int = 200,
    num_chains: int = 2,
    max_tree_depth: int = 7,
    target_accept_prob: float = 0.8,
    init_scale: float = 0.1,
    max_users: int | None = None,
    max_items: int | None = None,
    num_check_pairs: int = 200,
) -> NUTSResult:
    """Sample the posterior of `mf_model` (every parameter jointly) by NUTS.

    Chains run one after another (``chain_method="sequential"``), each from its own small
    random factors; R-hat and ESS are those of the predicted means at ``num_check_pairs``
    training pairs (split R-hat, so one chain works too).

    Practical limits (2 shared CPU cores): a draw costs (leapfrog steps) x (one gradient over
    all n ratings). Measured on ML-100K u1 (80k ratings, rank 3, 15.7k parameters): 2 chains
    x (150 warm-up + 150 draws), trees of ~63 steps, took 212 s with no divergences, split
    R-hat <= 1.014 and ESS >= 130 on 200 predictions; the defaults take ~5 minutes there.
    Cost grows with n x rank x tree size, so ML-1M and up are out of reach: use
    ``max_users``/``max_items`` (the most active users and items; the others get zero
    factors and biases, i.e. they are predicted as cold), or SVI/Gibbs.

    Args:
      rng_key: PRNG key (initialisation and the chains).
      train: training `Ratings` (every id known).
      rank: k >= 1.
      hyper: "fixed", "gamma" or "wishart" (see `mf_model`).
      num_warmup, num_samples: per chain; num_chains: >= 1.
      max_tree_depth, target_accept_prob: NUTS settings.
      init_scale: sd of the initial factors.
      max_users, max_items: fit only the ratings among this many most active users/items.
      num_check_pairs: training pairs whose predictions get R-hat/ESS.

    Returns:
      `NUTSResult(posterior, info)`; ``r_hat_max``, ``ess_min`` summarise ``info``.
    """
    _check_common(
        rank, hyper, num_samples=num_samples, num_chains=num_chains, max_tree_depth=max_tree_depth,
        num_check_pairs=num_check_pairs, **{k: v for k, v in (("max_users", max_users),
                                                              ("max_items", max_items)) if v is not None},
    )  # fmt: skip
    if int(num_warmup) != num_warmup or num_warmup < 0:
        raise ValueError(f"num_warmup must be an integer >= 0, got {num_warmup!r}")
    if not 0.0 < target_accept_prob < 1.0 or not init_scale > 0:
        raise ValueError("need 0 < target_accept_prob < 1 and init_scale > 0")
    users, items, values = _device_data(train)
    keep = subset_ratings(train, max_users=max_users, max_items=max_items)
    if not keep.all():
        users, items, values = users[keep], items[keep], values[keep]
    mu = float(jnp.mean(values))
    key_check, key_run = jax.random.split(rng_key)
    check = np.asarray(jax.random.choice(key_check, users.shape[0], (min(num_check_pairs, users.shape[0]),), False))
    model = functools.partial(
        mf_model, num_users=train.num_users, num_items=train.num_items, rank=rank, mu=mu, hyper=hyper
    )
    kernel = NUTS(
        model,
        max_tree_depth=int(max_tree_depth),
        target_accept_prob=target_accept_prob,
        init_strategy=init_small_factors(scale=init_scale),
    )
    mcmc = MCMC(
        kernel,
        num_warmup=int(num_warmup),
        num_samples=int(num_samples),
        num_chains=int(num_chains),
        chain_method="sequential",
        progress_bar=False,
    )
    t0 = time.perf_counter()
    mcmc.run(key_run, users, items, values, extra_fields=("diverging", "num_steps", "adapt_state.step_size"))
    samples = mcmc.get_samples()
    jax.block_until_ready(samples)
    seconds = time.perf_counter() - t0
    # Rows with no fitted rating (all of them outside max_users / max_items) were never
    # constrained by data: they are predicted as cold, under each draw's prior.
    posterior = _posterior_from_samples(samples, mu, hyper, seen_rows(users, items, train.num_users, train.num_items))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    check_u, check_i = np.asarray(users)[check], np.asarray(items)[check]
    r_hat, ess = prediction_diagnostics(posterior, check_u, check_i, num_chains=int(num_chains))
    info = NUTSInfo(
        num_divergences=np.asarray(extra["diverging"]).sum(axis=1),
        step_size=np.asarray(extra["adapt_state.step_size"])[:, -1],
        mean_tree_depth=np.log2(np.asarray(extra["num_steps"]) + 1.0).mean(axis=1),
        r_hat=r_hat,
        ess=ess,
        check_users=check_u,
        check_items=check_i,
        seconds=seconds,
    )
    return NUTSResult(posterior, info)


# ------------------------------------------------------------------------------------ SVI


class SVIResult(NamedTuple):
    """``posterior``: ``num_samples`` draws from the fitted guide; ``elbo``: (num_epochs,) mean
    ELBO estimate per epoch (nats, full-data scale); ``params``: the guide's parameters."""

    posterior: Posterior
    elbo: np.ndarray
    params: dict

    num_chains = 1

    @property
    def rank(self) -> int:
        return self.posterior.rank

    @property
    def num_samples(self) -> int:
        return int(self.posterior.num_samples)

    def predict(self, users, items):
        return self.posterior.predict(users, items)

    def predictive(self, users, items):
        return self.posterior.predictive(users, items)


# The named tuples a saved model of this fitter may hold (`probmf.persistence` rebuilds only these).
SAVED_TYPES = (NUTSInfo, NUTSResult, SVIResult)


def make_guide(model, guide: str, *, init_scale: float = 0.1, guide_rank: int | None = None):
    """AutoNormal (mean-field) or AutoLowRankMultivariateNormal over every latent site,
    initialised at small random factors and the other sites' prior medians."""
    init = init_small_factors(scale=init_scale)
    if guide == "normal":
        return AutoNormal(model, init_loc_fn=init, init_scale=0.01)
    if guide == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=0.01, rank=guide_rank)
    raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")


_LOG_2PI = float(np.log(2.0 * np.pi))
_BIG_DATA_STEPS = 256  # optimizer steps per epoch above which the default batch grows (see default_batch_size)


def mf_log_joint(z: dict, users, items, ratings, *, mu, num_ratings=None, hyper="gamma", priors=DEFAULT_PRIORS):
    """log p(r_batch, theta) of `mf_model` ("fixed" or "gamma") at unconstrained values ``z``.

    ``z`` maps each latent site to its value, the positive sites (tau, lam_*) as z = log x with
    the Jacobian of that change included (log p(z) = log p(x) + z), the density NumPyro's
    `Trace_ELBO` evaluates for an `AutoNormal` guide. The likelihood of the B ratings is
    scaled by ``num_ratings`` / B (None: 1). Elementwise work runs on flat views of W and U
    (XLA's CPU loops vectorise poorly along a minor axis of k).
    """
    p = priors

    def log_gamma(name, a, b):  # log density of z = log x, x ~ Gamma(a, b)
        return jnp.sum(a * np.log(b) - math.lgamma(a) + a * z[name] - b * jnp.exp(z[name]))

    if hyper == "gamma":
        names = ("lam_w", "lam_u", "lam_b", "lam_c")
        lam, log_lam = {n: jnp.exp(z[n]) for n in names}, {n: z[n] for n in names}
        shape_rate = {"lam_w": (p.a_lam, p.b_lam), "lam_u": (p.a_lam, p.b_lam), "lam_b": (p.a_bias, p.b_bias),
                      "lam_c": (p.a_bias, p.b_bias)}  # fmt: skip
        log_p = sum(log_gamma(n, *shape_rate[n]) for n in names)
    elif hyper == "fixed":
        lam = {"lam_w": p.lam, "lam_u": p.lam, "lam_b": p.lam_bias, "lam_c": p.lam_bias}
        log_lam = {n: np.log(v) for n, v in lam.items()}
        log_p = 0.0
    else:
        raise ValueError(f"mf_log_joint takes hyper 'fixed' or 'gamma', got {hyper!r}")
    for name, lam_name in (("W", "lam_w"), ("U", "lam_u"), ("b", "lam_b"), ("c", "lam_c")):
        x = z[name]  # (rows, k) with (k,) precisions, or (rows,) with one
        prec = jnp.broadcast_to(lam[lam_name], x.shape).reshape(-1)
        rows = x.size // np.size(log_lam[lam_name])
        log_p = log_p + (
            0.5 * rows * jnp.sum(log_lam[lam_name]) - 0.5 * jnp.sum(prec * jnp.square(x.reshape(-1)))
            - 0.5 * x.size * _LOG_2PI
        )  # fmt: skip
    log_p = log_p + log_gamma("tau", p.a_tau, p.b_tau)
    mean = predict(MFParams(z["W"], z["U"], z["b"], z["c"], mu), users, items)
    scale = 1.0 if num_ratings is None else num_ratings / users.shape[0]
    log_lik = scale * jnp.sum(0.5 * z["tau"] - 0.5 * _LOG_2PI - 0.5 * jnp.exp(z["tau"]) * jnp.square(ratings - mean))
    return log_lik + log_p


def meanfield_elbo(
    params, rng_key, users, items, ratings, *, mu, num_ratings=None, hyper="gamma", priors=DEFAULT_PRIORS
):
    """One-draw reparameterised ELBO estimate of `mf_model` ("fixed" or "gamma") under a
    mean-field normal guide: `Trace_ELBO` with `AutoNormal`, written out for speed.

    ``params`` maps every latent site to ``(loc, log_scale)``: q(z) = N(loc, exp(log_scale)^2)
    independently for each entry of the site's unconstrained value z, the AutoNormal family
    with its scale on the log scale (as in ADVI). Returns log p(r_batch, z) + H[q] at
    z = loc + exp(log_scale) eps, eps ~ N(0, I) from ``rng_key`` (`mf_log_joint`). The entropy
    is in closed form (sum log_scale + const): its gradient equals that of Trace_ELBO's
    -log q(z) for reparameterised z, so the gradient estimator is Trace_ELBO's. A step costs
    one normal draw and a few elementwise passes per variational parameter, O(B k) for the
    likelihood, and no softplus or log of the dense parameters.
    """
    z, entropy = {}, 0.0
    for i, name in enumerate(sorted(params)):
        loc, log_s = params[name]
        eps = jax.random.normal(jax.random.fold_in(rng_key, i), (loc.size,))
        z[name] = (loc.reshape(-1) + jnp.exp(log_s.reshape(-1)) * eps).reshape(loc.shape)
        entropy = entropy + jnp.sum(log_s.reshape(-1)) + 0.5 * (1.0 + _LOG_2PI) * loc.size
    return mf_log_joint(z, users, items, ratings, mu=mu, num_ratings=num_ratings, hyper=hyper, priors=priors) + entropy


def default_batch_size(num_ratings: int) -> int:
    """4096 ratings per step, or n / 256 when that is larger (at most 256 steps per epoch).

    A step costs O(B) for the likelihood plus O((N + M) k) for drawing, scoring and updating
    every variational parameter, so an epoch costs (n / B) x that dense part, which dominates
    at B = 4096 on big data. ML-100K and ML-1M keep B = 4096 (20 and 195-244 steps per epoch);
    synthetic ML-20M (20M ratings) gets B = 78,126: 256 steps per epoch, 30,720 Adam steps
    over the default 120 epochs, 13 times what an ML-100K fit takes. Chosen on the training
    data only (synthetic ML-20M, a 10% validation split of its training ratings, rank 10,
    5 epochs each, 18M ratings): final ELBO / validation RMSE -15.41M / 0.5166 at 256 steps
    per epoch, -15.61M / 0.5175 at 512, -16.51M / 0.5241 at B = 4096 (4,394 steps): at equal
    epochs, fewer and larger steps fit better, besides being 10 times cheaper.
    """
    return max(4096, -(-int(num_ratings) // _BIG_DATA_STEPS))


class SVITrainer(NamedTuple):
    """A prepared SVI run (`svi_trainer`): ``run_epochs(state, first, num) -> state`` runs epochs
    ``first .. first + num - 1`` (each a fixed function of (state, epoch): its shuffle is seeded
    by (key, epoch)); ``finish(state)`` draws the posterior. ``state`` is (optimiser state,
    ELBO trace (num_epochs,) float64); ``batch`` ratings per step, ``steps`` per epoch."""

    state: tuple
    run_epochs: Callable
    finish: Callable
    num_epochs: int
    batch: int
    steps: int
    mesh: Any


def _check_svi_options(rank, guide, hyper, num_epochs, batch_size, learning_rate, num_samples, guide_rank,
                       init_scale, devices):  # fmt: skip
    _check_common(rank, hyper, num_epochs=num_epochs, num_samples=num_samples, guide_rank=guide_rank,
                  **({} if batch_size is None else {"batch_size": batch_size}))  # fmt: skip
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
    if not learning_rate > 0 or not init_scale > 0:
        raise ValueError("learning_rate and init_scale must be > 0")
    return check_devices(devices)


def svi_trainer(
    rng_key,
    train: Ratings,
    *,
    rank: int = 10,
    guide: str = "normal",
    hyper: str = "gamma",
    num_epochs: int = 120,
    batch_size: int | None = None,
    learning_rate: float = 0.05,
    num_samples: int = 100,
    guide_rank: int = 4,
    init_scale: float = 0.1,
    devices: int = 1,
) -> SVITrainer:
    """The state and epoch runner of `fit_svi` (same options, less the checkpoint): for
    fitting in chunks and for timing epochs (``experiments/bench.py``)."""
    devices = _check_svi_options(rank, guide, hyper, num_epochs, batch_size, learning_rate, num_samples, guide_rank,
                                 init_scale, devices)  # fmt: skip
    users, items, values = _device_data(train)
    seen = seen_rows(train.users, train.items, train.num_users, train.num_items)
    n = users.shape[0]
    batch = min(default_batch_size(n) if batch_size is None else int(batch_size), n)
    mesh = device_mesh(devices)  # enough devices?
    if batch % devices:
        raise ValueError(f"batch size {batch} must divide by devices={devices} (each device takes an equal share)")
    steps = n // batch
    hand_written = guide == "normal" and hyper in ("fixed", "gamma")
    # mu and n enter as traced arguments, so fits with the same shapes and options share
    # one compiled epoch (a second fit does not retrace).
    data_kwargs = {"mu": jnp.mean(values), "num_ratings": jnp.float32(n)}
    init, epoch, to_params, draw = _svi_program(
        train.num_users, train.num_items, int(rank), hyper, guide, int(guide_rank), float(init_scale),
        float(learning_rate), int(num_epochs) * steps, hand_written,
    )  # fmt: skip
    key_init, key_shuffle, key_draw = jax.random.split(rng_key, 3)
    state = init(key_init, users[:batch], items[:batch], values[:batch], data_kwargs)
    users, items, values, data_kwargs = replicated(mesh, (users, items, values, data_kwargs))
    seed = [int(w) for w in np.asarray(jax.random.key_data(key_shuffle)).ravel()]

    def run_epochs(full_state, first: int, num: int):
        state, elbo = replicated(mesh, full_state[0]), np.array(full_state[1], np.float64)
        for e in range(first, first + num):
            perm = np.random.default_rng([*seed, e]).permutation(n)
            idx = perm[: steps * batch].reshape(steps, batch).astype(np.int32)
            idx = split_along(mesh, idx, axis=1) if mesh is not None else jnp.asarray(idx)
            state, losses = epoch(state, idx, users, items, values, data_kwargs)
            elbo[e] = -float(jnp.mean(losses))
        return state, elbo

    def finish(full_state) -> SVIResult:
        state, elbo = full_state
        params = to_params(state)
        draws = draw(jax.random.split(key_draw, int(num_samples)), params)
        posterior = _posterior_from_samples(draws, float(data_kwargs["mu"]), hyper, seen)
        return SVIResult(posterior, np.asarray(elbo), params)

    full_state = (replicated(mesh, state), np.full(int(num_epochs), np.nan))
    return SVITrainer(full_state, run_epochs, finish, int(num_epochs), batch, steps, mesh)


def fit_svi(
    rng_key,
    train: Ratings,
    *,
    rank: int = 10,
    guide: str = "normal",
    hyper: str = "gamma",
    num_epochs: int = 120,
    batch_size: int | None = None,
    learning_rate: float = 0.05,
    num_samples: int = 100,
    guide_rank: int = 4,
    init_scale: float = 0.1,
    devices: int = 1,
    checkpoint: str | None = None,
    checkpoint_every: int = 1,
) -> SVIResult:
    """Fit `mf_model` by stochastic variational inference on minibatches of ratings.

    Maximises ELBO = E_q[log p(R, theta) - log q(theta)] on minibatches of B ratings
    (likelihood scaled by n / B), Adam with a cosine-decayed step size. Each epoch is one
    host permutation of the ratings, seeded by (key, epoch), cut into floor(n / B) batches
    (the remainder rotates with the shuffle). A step costs O(B) for the likelihood and
    O((N + M) k) for the guide, prior and Adam update, never O(n).

    The gradient is Trace_ELBO's one-draw reparameterised estimate. For the default guide
    ("normal", hyper "fixed" or "gamma", mean-field) it is computed by `meanfield_elbo`, a
    hand-written equivalent of NumPyro's `Trace_ELBO` + `AutoNormal` that keeps the parameters
    flat and avoids softplus and logs of the dense parameters (the cost of NumPyro's step on
    CPU); "lowrank" and hyper "wishart" run NumPyro's `SVI` itself. Posterior draws of the
    mean-field guide come in antithetic pairs (`_meanfield_draw`).

    Args:
      rng_key: PRNG key (initialisation, shuffles, ELBO noise, posterior draws).
      train: training `Ratings` (every id known).
      rank: k >= 1.
      guide: "normal" (mean-field) or "lowrank" (AutoLowRankMultivariateNormal with
        ``guide_rank`` directions of covariance).
      hyper: "fixed", "gamma" or "wishart" (see `mf_model`).
      num_epochs: passes over the ratings; batch_size: B ratings per step (None:
        `default_batch_size`: 4096 up to about 1M ratings, then n / 256).
      learning_rate: Adam's initial step size.
      num_samples: draws from the fitted guide kept in ``posterior``.
      init_scale: sd of the initial factor means.
      devices: data parallel over this many devices (`probmf.sharding`): every batch is split
        across them, everything else is replicated; B must divide by it.
      checkpoint: a folder to save the run's state in every ``checkpoint_every`` epochs and to
        resume it from (`probmf.checkpoint`; a resumed fit equals an uninterrupted one).

    Returns:
      `SVIResult(posterior, elbo, params)`.

    Example:
      >>> from probmf.data.synthetic import synthetic_preset
      >>> train, _ = synthetic_preset("tiny")
      >>> res = fit_svi(jax.random.PRNGKey(0), train, rank=2, num_epochs=2, batch_size=256, num_samples=5)
      >>> res.posterior.draws.W.shape, res.elbo.shape
      ((5, 60, 2), (2,))
    """
    options = dict(rank=rank, guide=guide, hyper=hyper, num_epochs=num_epochs, batch_size=batch_size,
                   learning_rate=learning_rate, num_samples=num_samples, guide_rank=guide_rank,
                   init_scale=init_scale, devices=devices)  # fmt: skip
    _check_svi_options(**options)
    check_every(checkpoint_every)
    ckpt = None
    if checkpoint is not None:
        _device_data(train)  # the data's own errors first
        ckpt = fit_checkpoint(checkpoint, checkpoint_every, "svi", rng_key, train, options)
    trainer = svi_trainer(rng_key, train, **options)
    state = run_steps(trainer.run_epochs, trainer.state, trainer.num_epochs, ckpt, desc="SVI epochs")
    return trainer.finish(state)


def _meanfield_init(rng_key, sites: dict, *, init_scale: float, priors: Hyperpriors) -> dict:
    """Initial {site: (loc, log scale)} of the hand-written path, as `make_guide` starts
    AutoNormal: factor means ~ N(0, init_scale^2); every other site at the median of 15 draws
    from its prior given the sites before it (NumPyro's ``init_to_median``, in log space for
    the positive sites); every scale 0.01."""
    p = priors
    keys = dict(zip(sites, jax.random.split(rng_key, len(sites)), strict=True))

    def median(name, draw):  # init_to_median: the median of 15 draws
        return jnp.median(draw(keys[name], (15, *sites[name])), axis=0)

    def gamma(a, b):
        return lambda key, shape: jax.random.gamma(key, a, shape) / b

    loc = {}
    for name, a, b in (("lam_w", p.a_lam, p.b_lam), ("lam_u", p.a_lam, p.b_lam), ("lam_b", p.a_bias, p.b_bias),
                       ("lam_c", p.a_bias, p.b_bias)):  # fmt: skip
        if name in sites:
            loc[name] = jnp.log(median(name, gamma(a, b)))
    loc["tau"] = jnp.log(median("tau", gamma(p.a_tau, p.b_tau)))
    for name, lam_name in (("b", "lam_b"), ("c", "lam_c")):
        sd = jnp.exp(-0.5 * loc[lam_name]) if lam_name in loc else p.lam_bias**-0.5
        loc[name] = median(name, lambda key, shape, sd=sd: sd * jax.random.normal(key, shape))
    for name in ("W", "U"):
        loc[name] = init_scale * jax.random.normal(keys[name], sites[name])
    return {name: (loc[name].astype(jnp.float32), jnp.full(shape, np.log(0.01), jnp.float32))
            for name, shape in sites.items()}  # fmt: skip


def _meanfield_draw(keys, params: dict):
    """Draws {W, U, b, c, tau, lam_*} (each with a leading (S,) axis) from the mean-field guide, in
    antithetic pairs: draw S/2 + j is the reflection loc - (z_j - loc) of draw j (each draw is
    still an exact draw from q; the pairs cancel the Monte Carlo error of every term linear in
    the noise, so the predictive mean over S draws is far less noisy)."""
    num = keys.shape[0]
    half = (num + 1) // 2
    out = {}
    positive = ("tau", "lam_w", "lam_u", "lam_b", "lam_c")
    for i, name in enumerate(n for n in ("W", "U", "b", "c") + positive if n in params):
        loc, log_s = params[name]
        eps = jax.vmap(lambda k, i=i, shape=loc.shape: jax.random.normal(jax.random.fold_in(k, i), shape))(keys[:half])
        eps = jnp.concatenate([eps, -eps[: num - half]])
        z = loc + jnp.exp(log_s) * eps
        out[name] = jnp.exp(z) if name in positive else z
    return out


@functools.lru_cache(maxsize=8)
def _svi_program(
    num_users, num_items, rank, hyper, guide, guide_rank, init_scale, learning_rate, total_steps, hand_written
):
    """(init, epoch, to_params, draw) for one configuration: ``init(key, users, items, values,
    data_kwargs)`` (one batch, for NumPyro to trace the model) -> state, ``epoch(state, idx
    (steps, B), users, items, values, data_kwargs) -> (state, losses (steps,))``,
    ``to_params(state)`` (the guide's constrained parameters, AutoNormal's names on the
    hand-written path) and ``draw(keys (S,), params)`` -> {W, U, b, c, tau, ...} draws.

    With ``hand_written`` the state is (params {site: (loc, log scale)}, Adam state, ELBO key,
    step) of `meanfield_elbo`, step s drawing its noise from fold_in(key, s), and NumPyro is
    not involved; else NumPyro's `SVIState`. Both use Adam with the same cosine-decayed step
    size."""
    schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1), alpha=0.01)
    adam = optax.adam(schedule)
    if hand_written:
        sites = {"W": (num_users, rank), "b": (num_users,), "U": (num_items, rank), "c": (num_items,), "tau": ()}
        if hyper == "gamma":
            sites.update(lam_w=(rank,), lam_u=(rank,), lam_b=(), lam_c=())

        # The state holds every site flat (W, U as (N k,), (M k,)): Adam's and the prior's
        # elementwise loops then vectorise on CPU; they are viewed as (N, k), (M, k) for the ELBO.
        def flat(params):
            return {name: (loc.reshape(-1), log_s.reshape(-1)) for name, (loc, log_s) in params.items()}

        def shaped(params):
            return {
                name: (loc.reshape(sites[name]), log_s.reshape(sites[name])) for name, (loc, log_s) in params.items()
            }

        def init(key, users, items, values, data_kwargs):
            key_params, key_elbo = jax.random.split(key)
            params = flat(_meanfield_init(key_params, sites, init_scale=init_scale, priors=DEFAULT_PRIORS))
            return params, adam.init(params), key_elbo, jnp.zeros((), jnp.int32)

        def neg_elbo(params, key, users, items, values, data_kwargs):
            return -meanfield_elbo(shaped(params), key, users, items, values, hyper=hyper, **data_kwargs)

        def update(state, users, items, values, data_kwargs):
            params, opt_state, key, step = state
            loss, grads = jax.value_and_grad(neg_elbo)(
                params, jax.random.fold_in(key, step), users, items, values, data_kwargs
            )
            updates, opt_state = adam.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, key, step + 1), loss

        def to_params(state):
            out = {}
            for site, (loc, log_s) in shaped(state[0]).items():
                out[f"{site}_auto_loc"], out[f"{site}_auto_scale"] = loc, jnp.exp(log_s)
            return out

        @jax.jit
        def draw(keys, params):
            sites_params = {s: (params[f"{s}_auto_loc"], jnp.log(params[f"{s}_auto_scale"])) for s in sites}
            return _meanfield_draw(keys, sites_params)

    else:
        model = functools.partial(mf_model, num_users=num_users, num_items=num_items, rank=rank, hyper=hyper)
        q = make_guide(model, guide, init_scale=init_scale, guide_rank=guide_rank)
        svi = SVI(model, q, numpyro.optim.optax_to_numpyro(adam), Trace_ELBO())

        def init(key, users, items, values, data_kwargs):
            return svi.init(key, users, items, values, **data_kwargs)

        def update(state, users, items, values, data_kwargs):
            return svi.update(state, users, items, values, **data_kwargs)

        to_params = svi.get_params

        @jax.jit
        def draw(keys, params):
            return jax.lax.map(lambda k: q.sample_posterior(k, params), keys)

    @jax.jit
    def epoch(state, idx, users, items, values, data_kwargs):
        def step(s, batch_idx):
            return update(s, users[batch_idx], items[batch_idx], values[batch_idx], data_kwargs)

        return jax.lax.scan(step, state, idx)

    return init, epoch, to_params, draw
